package control_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
)

// recordingPublisher is the broker seen from the control plane: it keeps
// what was sent, or refuses while err is set.
type recordingPublisher struct {
	mu   sync.Mutex
	sent []api.BatchMessage
	err  error
}

func (r *recordingPublisher) Publish(_ context.Context, topic string, msgs []api.BatchMessage) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	if topic != "nats://score" {
		return fmt.Errorf("topic %q", topic)
	}
	r.sent = append(r.sent, msgs...)
	return nil
}

func (r *recordingPublisher) items() (n int, groups []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.sent {
		n += len(m.Items)
		groups = append(groups, len(m.Items))
	}
	return n, groups
}

// TestBatchBrokerSends: a broker batch's items go out in messages of
// groupSize only while a worker runs, at most two leases per worker
// unclaimed; a refused send is sent again on the next pass, and what no
// worker claimed within the lease timeout is sent again.
func TestBatchBrokerSends(t *testing.T) {
	pub := &recordingPublisher{}
	p := newPlaneWith(t, control.Options{BatchPublisher: pub})
	p.apply(cpuPool)
	docs, err := spec.Parse([]byte(`apiVersion: spotml/v1
kind: BatchInference
metadata: {name: b}
spec:
  input: {uri: in/}
  output: {uri: out/}
  model: {uri: m.onnx}
  runtime: {batchSize: 4}
  pool: cpu
  workers: {max: 1}
  queue: {uri: "nats://score", groupSize: 3, leaseTimeout: 30s}
`))
	if err != nil {
		t.Fatal(err)
	}
	var inputs []string
	for i := range 40 {
		inputs = append(inputs, fmt.Sprintf("%02d.png", i))
	}
	if _, err := p.st.ApplyBatch(p.ctx, *docs[0].BatchInference, inputs); err != nil {
		t.Fatal(err)
	}
	if got := control.LeaseSize(docs[0].BatchInference.Spec); got != 6 {
		t.Fatalf("lease size = %d, want 6 (two groups of 3 hold a batch of 4)", got)
	}
	p.reconcile() // a worker job, a node launched
	if n, _ := pub.items(); n != 0 {
		t.Fatalf("sent %d items before any worker runs; a broker may drop them", n)
	}
	p.heartbeat()
	p.reconcile() // the worker runs
	p.reconcile()
	n, groups := pub.items()
	if n != 12 || len(groups) != 4 || groups[0] != 3 {
		t.Fatalf("sent %d items in groups %v; want 12 (two leases of 6) in groups of 3", n, groups)
	}
	// Nothing claimed: nothing more until the lease timeout, then the same
	// items again.
	p.reconcile()
	if n, _ := pub.items(); n != 12 {
		t.Fatalf("sent %d items with the window full, want 12", n)
	}
	pub.mu.Lock()
	pub.err = errors.New("broker down")
	pub.mu.Unlock()
	p.clock.Advance(31 * time.Second)
	p.heartbeat()
	if err := p.p.Reconcile(p.ctx); err == nil {
		t.Fatal("a refused send is not reported")
	}
	pub.mu.Lock()
	pub.err = nil
	first := pub.sent[0].Items[0].ID
	pub.sent = nil
	pub.mu.Unlock()
	p.reconcile()
	if n, _ := pub.items(); n != 12 || pub.sent[0].Items[0].ID != first {
		t.Fatalf("after a refused send: %d items sent, first %d; want the same 12 again", n, pub.sent[0].Items[0].ID)
	}
}

// TestBatchListing: after an apply the control plane lists the input a
// page at a time; a listing cut short (a crash: here the lister fails
// after two pages) keeps what it queued, and the next listing queues the
// rest, each input once; the batch does not finish while it lists, even
// with every queued item settled.
func TestBatchListing(t *testing.T) {
	var all []string
	for i := range 10 {
		all = append(all, fmt.Sprintf("%02d.png", i))
	}
	failAfter := 2 // pages; 0: never
	list := func(_ context.Context, _ spec.BatchInput, page func([]string) error) error {
		for i, start := 0, 0; start < len(all); i, start = i+1, start+3 {
			if failAfter > 0 && i == failAfter {
				return errors.New("control plane killed")
			}
			if err := page(all[start:min(start+3, len(all))]); err != nil {
				return err
			}
		}
		return nil
	}
	p := newPlaneWith(t, control.Options{BatchInputs: list})
	p.apply(cpuPool)
	docs, err := spec.Parse([]byte(`apiVersion: spotml/v1
kind: BatchInference
metadata: {name: b}
spec:
  input: {uri: in/}
  output: {uri: out/}
  model: {uri: m.onnx}
  pool: cpu
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.st.ApplyBatch(p.ctx, *docs[0].BatchInference, all[:3]); err != nil {
		t.Fatal(err)
	}
	settle := func() {
		t.Helper()
		items, err := p.st.LeaseBatchItems(p.ctx, "b", "n:w", 100, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		var ids []int64
		for _, it := range items {
			ids = append(ids, it.ID)
		}
		if _, err := p.st.AckBatchItems(p.ctx, "b", ids); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.p.ListBatchInputs(p.ctx); err == nil {
		t.Fatal("a listing cut short is not reported")
	}
	b, err := p.st.GetBatch(p.ctx, "b")
	if err != nil || !b.Listing || b.Counts.Total != 6 {
		t.Fatalf("after a listing cut short: %+v, %v; want listing with 6 items", b, err)
	}
	settle()
	p.reconcile()
	if b, _ := p.st.GetBatch(p.ctx, "b"); b.State != "running" {
		t.Fatalf("finished while listing: %+v", b)
	}
	failAfter = 0
	if err := p.p.ListBatchInputs(p.ctx); err != nil {
		t.Fatal(err)
	}
	items, err := p.st.BatchItems(p.ctx, "b", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range items {
		got = append(got, it.Input)
	}
	if !slices.Equal(got, all) {
		t.Fatalf("items after the listing: %q; want each input once: %q", got, all)
	}
	if b, _ := p.st.GetBatch(p.ctx, "b"); b.Listing || b.State != "running" {
		t.Fatalf("after the listing: %+v; want running (4 items left), listed", b)
	}
	settle()
	p.reconcile()
	if b, _ := p.st.GetBatch(p.ctx, "b"); b.State != "succeeded" || b.Counts.Done != 10 {
		t.Fatalf("all settled: %+v; want succeeded with 10 done", b)
	}
}

// TestBatchWorkersFallBackToOnDemand: a BatchInference's
// onDemandAfterPreemptions reaches its worker jobs, which the control
// plane then steers like any job's tasks (TestOnDemandAfterPreemptions).
func TestBatchWorkersFallBackToOnDemand(t *testing.T) {
	p := newPlane(t)
	p.apply(deadlinePools)
	docs, err := spec.Parse([]byte(`apiVersion: spotml/v1
kind: BatchInference
metadata: {name: b}
spec:
  input: {uri: in/}
  output: {uri: out/}
  model: {uri: m.onnx}
  priority: spot
  onDemandAfterPreemptions: 1
  workers: {max: 1}
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.st.ApplyBatch(p.ctx, *docs[0].BatchInference, []string{"a.png", "b.png"}); err != nil {
		t.Fatal(err)
	}
	p.reconcile()
	j := p.job(api.BatchWorkerJob("b", 1))
	if js := j.Spec.Spec; js.OnDemandAfterPreemptions != 1 || js.Priority != spec.PrioritySpot || js.Pool != "" || !control.Steered(j.Spec) {
		t.Fatalf("worker job spec = %+v; want priority spot, onDemandAfterPreemptions 1, steered", js)
	}
}

// BatchWorkers: ceil(left / itemsPerWorker), within min and max; min when
// nothing is left (0: scaled to zero).
func TestBatchWorkers(t *testing.T) {
	for _, c := range []struct {
		w          spec.BatchWorkers
		left, want int
	}{
		{spec.BatchWorkers{Max: 8, ItemsPerWorker: 500}, 0, 0},
		{spec.BatchWorkers{Min: 1, Max: 8, ItemsPerWorker: 500}, 0, 1},
		{spec.BatchWorkers{Max: 8, ItemsPerWorker: 500}, 1, 1},
		{spec.BatchWorkers{Max: 8, ItemsPerWorker: 500}, 1001, 3},
		{spec.BatchWorkers{Max: 8, ItemsPerWorker: 500}, 70000, 8},
		{spec.BatchWorkers{Min: 2, Max: 8, ItemsPerWorker: 500}, 10, 2},
		{spec.BatchWorkers{Max: 4}, 3, 3}, // itemsPerWorker unset: one a worker
	} {
		if got := control.BatchWorkers(c.w, c.left); got != c.want {
			t.Errorf("BatchWorkers(%+v, %d) = %d, want %d", c.w, c.left, got, c.want)
		}
	}
}
