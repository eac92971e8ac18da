package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
)

// listGate holds an S3 stand-in's listings after their first page until
// it is opened: a BatchInference's listing is mid-way, by construction,
// however fast the machine.
type listGate struct {
	next   http.Handler
	held   atomic.Int32 // requests for a later page that came to the gate
	open   chan struct{}
	opened atomic.Bool
}

func (g *listGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	later := q.Get("continuation-token") != "" || q.Get("marker") != "" || q.Get("start-after") != ""
	if r.Method == http.MethodGet && later && !g.opened.Load() {
		g.held.Add(1)
		select {
		case <-g.open:
		case <-r.Context().Done(): // the control plane was killed
			return
		}
	}
	g.next.ServeHTTP(w, r)
}

// TestBatchInferenceListing: a BatchInference over 5,000 inputs in an S3
// bucket. The apply lists one page and returns; the control plane lists
// and queues the rest after it, a page at a time. With the listing held
// after its first page, the batch shows it is listing, does not finish
// though every item queued so far is settled, and a control-plane SIGKILL
// there loses and duplicates nothing: the restarted control plane lists
// again, and once the listing goes through, the batch has exactly one item
// per input.
func TestBatchInferenceListing(t *testing.T) {
	requireORT(t)
	const n = 5000
	var keys []string
	gate := &listGate{open: make(chan struct{})}
	input := s3Uploads(t, func(put func(string, []byte)) {
		for i := range n {
			key := fmt.Sprintf("%02d/%05d.png", i/1000, i)
			keys = append(keys, key)
			// Not images: each item fails at once, which settles it.
			put(key, []byte("x"))
		}
	}, func(h http.Handler) http.Handler { gate.next = h; return gate })
	t.Cleanup(func() {
		if gate.opened.CompareAndSwap(false, true) {
			close(gate.open)
		}
	})

	c := newServingCluster(t)
	c.putModel("models/fmnist.onnx")
	start := time.Now()
	c.apply(pool("od", "ondemand", 1) + strings.Replace(batchYAML("big", `"`+input+`"`, "**/*.png", "od", ""),
		"workers: {min: 0, max: 3, itemsPerWorker: 300}", "workers: {min: 0, max: 1}", 1))
	t.Logf("apply of %d inputs returned in %s", n, time.Since(start).Round(time.Millisecond))

	// The listing is held after its first page: the batch shows it, and
	// does not finish once the items queued so far are settled.
	waitFor(t, 30*time.Second, "the listing to reach its second page", func() bool { return gate.held.Load() >= 1 })
	waitFor(t, 60*time.Second, "the first page's items settled", func() bool { b := c.batch("big"); return b.Done+b.Failed == 1000 })
	if b := c.batch("big"); !b.Listing || b.Total != 1000 || b.State != "running" {
		t.Fatalf("mid-listing: %+v; want running, listing, 1000 items (one page)", b)
	}
	if table := c.mustCLI("get", "batchinference", "big"); !strings.Contains(table, "running+listing") {
		t.Errorf("get batchinference does not show the listing:\n%s", table)
	}
	time.Sleep(time.Second) // reconcile passes (every 200ms) with nothing left but the listing
	if b := c.batch("big"); b.State != "running" {
		t.Fatalf("finished while listing: %+v", b)
	}

	// SIGKILL mid-listing; the restarted control plane lists from the
	// start again, up to the gate.
	held := gate.held.Load()
	c.stop(syscall.SIGKILL)
	c.start()
	waitFor(t, 30*time.Second, "the restarted listing to reach its second page", func() bool { return gate.held.Load() > held })
	if b := c.batch("big"); !b.Listing || b.Total != 1000 {
		t.Fatalf("listed again after the restart: %+v; want still listing, the same 1000 items", b)
	}
	gate.opened.Store(true)
	close(gate.open)
	waitFor(t, 60*time.Second, "the listing to end", func() bool { return !c.batch("big").Listing })
	waitFor(t, 120*time.Second, "the batch to finish", func() bool { return c.batch("big").State != "running" })

	var items []api.BatchItem
	if err := json.Unmarshal([]byte(c.api("/batchinferences/big/items")), &items); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range items {
		got = append(got, it.Input)
	}
	slices.Sort(got)
	if !slices.Equal(got, keys) {
		t.Fatalf("%d items, %d distinct; want each of the %d inputs once", len(got), len(slices.Compact(slices.Clone(got))), n)
	}
	if b := c.batch("big"); b.Total != n || b.Failed != n || b.Listing {
		t.Fatalf("finished: %+v; want %d items, each failed once (not images)", b, n)
	}
}
