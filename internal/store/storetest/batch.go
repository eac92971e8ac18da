package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

func batchDoc(t testing.TB, name string, maxAttempts int) spec.BatchInference {
	t.Helper()
	docs, err := spec.Parse(fmt.Appendf(nil, `apiVersion: spotml/v1
kind: BatchInference
metadata: {name: %s}
spec:
  input: {uri: in/, pattern: "**/*.png"}
  output: {uri: out/}
  model: {uri: models/m.onnx}
  queue: {maxAttempts: %d}
`, name, maxAttempts))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return *docs[0].BatchInference
}

func inputs(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("img/%04d.png", i))
	}
	return out
}

func (h *Harness) batch(name string) store.Batch {
	h.T.Helper()
	b, err := h.St.GetBatch(h.Ctx, name)
	if err != nil {
		h.T.Fatalf("get batch: %v", err)
	}
	return b
}

func ids(items []store.BatchItem) []int64 {
	var out []int64
	for _, it := range items {
		out = append(out, it.ID)
	}
	return out
}

// testBatchQueue walks items through lease, ack, fail and release, and
// checks the apply rules (immutable, nothing queued twice).
func testBatchQueue(t *testing.T, h *Harness) {
	doc := batchDoc(t, "b1", 3)
	res, err := h.St.ApplyBatch(h.Ctx, doc, inputs(1000))
	if err != nil || res.Action != "created" {
		t.Fatalf("apply = %+v, %v", res, err)
	}
	if res, err := h.St.ApplyBatch(h.Ctx, doc, inputs(1000)); err != nil || res.Action != "unchanged" {
		t.Fatalf("apply again = %+v, %v; want unchanged", res, err)
	}
	other := batchDoc(t, "b1", 4)
	if _, err := h.St.ApplyBatch(h.Ctx, other, inputs(3)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("apply changed spec: err = %v, want ErrConflict", err)
	}
	if c := h.batch("b1").Counts; c.Total != 1000 || c.Pending != 1000 {
		t.Fatalf("counts = %+v, want 1000 pending", c)
	}

	a, err := h.St.LeaseBatchItems(h.Ctx, "b1", "w1", 64, time.Minute)
	if err != nil || len(a) != 64 || a[0].Input != "img/0000.png" || a[63].Input != "img/0063.png" {
		t.Fatalf("lease w1 = %d items (%v), err %v; want img/0000..0063", len(a), a[:min(len(a), 1)], err)
	}
	b, err := h.St.LeaseBatchItems(h.Ctx, "b1", "w2", 64, time.Minute)
	if err != nil || len(b) != 64 || b[0].Input != "img/0064.png" {
		t.Fatalf("lease w2 = %d items, err %v; want the next 64", len(b), err)
	}
	// w1 scores 60, fails 2, and is evicted holding 2.
	if n, err := h.St.AckBatchItems(h.Ctx, "b1", ids(a[:60])); err != nil || n != 60 {
		t.Fatalf("ack = %d, %v", n, err)
	}
	if n, err := h.St.AckBatchItems(h.Ctx, "b1", ids(a[:60])); err != nil || n != 0 {
		t.Fatalf("second ack = %d, %v; want 0 (done once)", n, err)
	}
	if r := h.batch("b1").Counts.Redone; r != 60 {
		t.Fatalf("redone = %d after acking 60 items twice", r)
	}
	if n, err := h.St.FailBatchItems(h.Ctx, "b1", []store.ItemFailure{{ID: a[60].ID, Reason: "png: invalid format"}, {ID: a[61].ID, Reason: "bad shape"}}); err != nil || n != 2 {
		t.Fatalf("fail = %d, %v", n, err)
	}
	// Another worker's items are not w1's to release.
	if n, err := h.St.ReleaseBatchItems(h.Ctx, "b1", "w1", ids(b[:2])); err != nil || n != 0 {
		t.Fatalf("release of w2's items by w1 = %d, %v; want 0", n, err)
	}
	if n, err := h.St.ReleaseBatchItems(h.Ctx, "b1", "w1", ids(a[62:])); err != nil || n != 2 {
		t.Fatalf("release = %d, %v", n, err)
	}
	c := h.batch("b1").Counts
	if c.Done != 60 || c.Failed != 2 || c.Leased != 64 || c.Pending != 874 || c.Released != 2 || c.Total != 1000 {
		t.Fatalf("counts = %+v", c)
	}
	failed, err := h.St.BatchItems(h.Ctx, "b1", store.ItemFailed, 0)
	if err != nil || len(failed) != 2 || failed[0].Reason != "png: invalid format" {
		t.Fatalf("failed items = %+v, %v", failed, err)
	}
	// Released items come first again, and their lease was not an attempt.
	again, err := h.St.LeaseBatchItems(h.Ctx, "b1", "w3", 2, time.Minute)
	if err != nil || len(again) != 2 || again[0].ID != a[62].ID || again[0].Attempts != 1 {
		t.Fatalf("lease after release = %+v, %v; want item %d on its first attempt", again, err, a[62].ID)
	}

	// A watch adds only what is new, whatever it lists again.
	n, err := h.St.AddBatchItems(h.Ctx, "b1", inputs(1010))
	if err != nil || n != 10 {
		t.Fatalf("add items = %d, %v; want 10 new", n, err)
	}
	h.Reopen()
	if n, err := h.St.AddBatchItems(h.Ctx, "b1", inputs(1010)); err != nil || n != 0 {
		t.Fatalf("add after reopen = %d, %v; want 0", n, err)
	}
	if c := h.batch("b1").Counts; c.Total != 1010 {
		t.Fatalf("total = %d, want 1010", c.Total)
	}

	// Applied, a batch is listing until the control plane has listed its
	// whole input; till then it does not finish.
	if bs, err := h.St.ListingBatches(h.Ctx); err != nil || len(bs) != 1 || bs[0].Name != "b1" || !bs[0].Listing {
		t.Fatalf("listing batches = %+v, %v; want b1", bs, err)
	}
	if err := h.St.FinishBatch(h.Ctx, "b1", store.BatchSucceeded, "done"); err != nil {
		t.Fatal(err)
	}
	if b := h.batch("b1"); b.State != store.BatchRunning {
		t.Fatalf("finished while listing: %+v", b)
	}
	if err := h.St.EndBatchListing(h.Ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	if bs, err := h.St.ListingBatches(h.Ctx); err != nil || len(bs) != 0 || h.batch("b1").Listing {
		t.Fatalf("after the listing: listing batches = %+v, %v", bs, err)
	}
	if left, err := h.St.BatchLeft(h.Ctx, "b1"); err != nil || left != h.batch("b1").Counts.Left() {
		t.Fatalf("left = %d, %v; want %d", left, err, h.batch("b1").Counts.Left())
	}
	// The control loop's read: every batch, its spec and state, no counts.
	specs, err := h.St.ListBatchSpecs(h.Ctx)
	if err != nil || len(specs) == 0 {
		t.Fatalf("batch specs = %+v, %v", specs, err)
	}
	for _, b := range specs {
		if b.Name == "b1" && (b.State != store.BatchRunning || b.Spec.Metadata.Name != "b1" || b.Counts.Total != 0) {
			t.Fatalf("spec of b1 = %+v; want running, its spec, no counts", b)
		}
	}
	if err := h.St.FinishBatch(h.Ctx, "b1", store.BatchSucceeded, "done"); err != nil {
		t.Fatal(err)
	}
	if it, err := h.St.LeaseBatchItems(h.Ctx, "b1", "w1", 10, time.Minute); err != nil || len(it) != 0 {
		t.Fatalf("lease from a finished batch = %d items, %v; want none", len(it), err)
	}
	if err := h.St.DeleteBatch(h.Ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.St.GetBatch(h.Ctx, "b1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get deleted batch: %v, want ErrNotFound", err)
	}
	if it, _ := h.St.BatchItems(h.Ctx, "b1", "", 0); len(it) != 0 {
		t.Fatalf("deleted batch left %d items", len(it))
	}
}

// testBatchLeaseExpiry: a vanished worker's items come back after the
// lease timeout, and fail after maxAttempts leases.
func testBatchLeaseExpiry(t *testing.T, h *Harness) {
	if _, err := h.St.ApplyBatch(h.Ctx, batchDoc(t, "b2", 2), inputs(3)); err != nil {
		t.Fatal(err)
	}
	a, err := h.St.LeaseBatchItems(h.Ctx, "b2", "w1", 3, 10*time.Second)
	if err != nil || len(a) != 3 {
		t.Fatalf("lease = %d, %v", len(a), err)
	}
	h.Clock.Advance(5 * time.Second)
	if r, f, err := h.St.ExpireBatchLeases(h.Ctx); err != nil || r != 0 || f != 0 {
		t.Fatalf("expire before the timeout = %d, %d, %v; want nothing", r, f, err)
	}
	h.Clock.Advance(6 * time.Second)
	if r, f, err := h.St.ExpireBatchLeases(h.Ctx); err != nil || r != 3 || f != 0 {
		t.Fatalf("expire = %d requeued, %d failed, %v; want 3, 0", r, f, err)
	}
	if c := h.batch("b2").Counts; c.Pending != 3 || c.Expired != 3 {
		t.Fatalf("counts = %+v", c)
	}
	// The second lease is the last allowed: expiring it fails the items.
	b, _ := h.St.LeaseBatchItems(h.Ctx, "b2", "w2", 3, 10*time.Second)
	if len(b) != 3 || b[0].Attempts != 2 {
		t.Fatalf("second lease = %+v", b)
	}
	// w1 wakes up and acks one it no longer holds: the result is the
	// same object, so it counts, once.
	if n, _ := h.St.AckBatchItems(h.Ctx, "b2", []int64{a[0].ID}); n != 1 {
		t.Fatalf("late ack = %d, want 1", n)
	}
	h.Clock.Advance(11 * time.Second)
	if r, f, err := h.St.ExpireBatchLeases(h.Ctx); err != nil || r != 0 || f != 2 {
		t.Fatalf("expire at max attempts = %d, %d, %v; want 0, 2", r, f, err)
	}
	c := h.batch("b2").Counts
	if c.Done != 1 || c.Failed != 2 || c.Left() != 0 {
		t.Fatalf("counts = %+v", c)
	}
}

// testBatchConcurrentLeases: workers leasing at once never get the same
// item.
func testBatchConcurrentLeases(t *testing.T, h *Harness) {
	if _, err := h.St.ApplyBatch(h.Ctx, batchDoc(t, "b3", 3), inputs(600)); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []int64
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for {
				items, err := h.St.LeaseBatchItems(h.Ctx, "b3", fmt.Sprint("w", w), 25, time.Minute)
				if err != nil {
					t.Error(err)
					return
				}
				if len(items) == 0 {
					return
				}
				mu.Lock()
				got = append(got, ids(items)...)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(got)
	if len(got) != 600 || len(slices.Compact(got)) != 600 {
		t.Fatalf("leased %d items, want each of 600 once", len(got))
	}
}

// testBatchBrokerLedger: the ledger of a broker queue. Items are sent in
// a bounded window, claimed once however often their message comes,
// sent again when no worker claimed them in time, and at once when a
// worker gives them back or its lease runs out.
func testBatchBrokerLedger(t *testing.T, h *Harness) {
	if _, err := h.St.ApplyBatch(h.Ctx, batchDoc(t, "b4", 3), inputs(10)); err != nil {
		t.Fatal(err)
	}
	resend := func() time.Time { return h.Clock.Now().Add(-10 * time.Second) }
	a, err := h.St.SendBatchItems(h.Ctx, "b4", 4, resend())
	if err != nil || len(a) != 4 || a[0].Input != "img/0000.png" {
		t.Fatalf("send = %+v, %v; want the first 4", a, err)
	}
	if more, _ := h.St.SendBatchItems(h.Ctx, "b4", 4, resend()); len(more) != 0 {
		t.Fatalf("send with a full window = %d items, want 0", len(more))
	}
	// Delivered twice: claimed once.
	c1, err := h.St.ClaimBatchItems(h.Ctx, "b4", "w1", ids(a[:2]), time.Minute)
	if err != nil || len(c1) != 2 || c1[0].Worker != "w1" {
		t.Fatalf("claim = %+v, %v", c1, err)
	}
	if again, _ := h.St.ClaimBatchItems(h.Ctx, "b4", "w2", ids(a[:2]), time.Minute); len(again) != 0 {
		t.Fatalf("claim of held items = %+v, want none", again)
	}
	if c := h.batch("b4").Counts; c.Leased != 2 || c.Pending != 8 {
		t.Fatalf("counts = %+v", c)
	}
	// Two claimed, so two more may go out.
	b, _ := h.St.SendBatchItems(h.Ctx, "b4", 4, resend())
	if len(b) != 2 || b[0].Input != "img/0004.png" {
		t.Fatalf("send after claims = %+v, want items 4 and 5", b)
	}
	if n, _ := h.St.AckBatchItems(h.Ctx, "b4", ids(c1[:1])); n != 1 {
		t.Fatal("ack")
	}
	if done, _ := h.St.ClaimBatchItems(h.Ctx, "b4", "w2", ids(c1[:1]), time.Minute); len(done) != 0 {
		t.Fatalf("claim of a done item = %+v, want none", done)
	}
	// Items 2..5 were lost on the way: after the resend time they go out
	// again.
	h.Clock.Advance(11 * time.Second)
	r, _ := h.St.SendBatchItems(h.Ctx, "b4", 4, resend())
	if len(r) != 4 || r[0].Input != "img/0002.png" {
		t.Fatalf("resend = %+v, want items 2..5", r)
	}
	// A worker gives back what it held and a message it never claimed:
	// both are sent again at once, not after the resend time.
	if n, err := h.St.ReleaseBatchItems(h.Ctx, "b4", "w1", []int64{c1[1].ID, r[0].ID}); err != nil || n != 1 {
		t.Fatalf("release = %d, %v; want 1", n, err)
	}
	back, _ := h.St.SendBatchItems(h.Ctx, "b4", 5, resend())
	if len(back) != 2 || back[0].ID != c1[1].ID || back[1].ID != r[0].ID {
		t.Fatalf("send after release = %+v, want items 1 and 2", back)
	}
	// A worker subscribes: what went out before and is not claimed may
	// have been dropped, and is sent again.
	h.Clock.Advance(time.Second)
	if n, err := h.St.ResendBatchItems(h.Ctx, "b4", h.Clock.Now()); err != nil || n != 5 {
		t.Fatalf("resend on subscribe = %d, %v; want the 5 sent, unclaimed items", n, err)
	}
	back, _ = h.St.SendBatchItems(h.Ctx, "b4", 5, resend())
	if len(back) != 5 || back[0].ID != c1[1].ID {
		t.Fatalf("send after a subscribe = %+v", back)
	}
	back = back[:2]
	// A vanished worker's lease runs out: sent again at once.
	w, _ := h.St.ClaimBatchItems(h.Ctx, "b4", "w3", ids(back), time.Second)
	if len(w) != 2 {
		t.Fatalf("claim = %+v", w)
	}
	h.Clock.Advance(2 * time.Second)
	if rq, _, err := h.St.ExpireBatchLeases(h.Ctx); err != nil || rq != 2 {
		t.Fatalf("expire = %d, %v", rq, err)
	}
	exp, _ := h.St.SendBatchItems(h.Ctx, "b4", 8, resend())
	if len(exp) < 2 || exp[0].ID != w[0].ID {
		t.Fatalf("send after expiry = %+v, want items 1 and 2 first", exp)
	}
	if c := h.batch("b4").Counts; c.Done != 1 || c.Leased != 0 || c.Pending != 9 || c.Released != 1 || c.Expired != 2 {
		t.Fatalf("counts = %+v", c)
	}
}
