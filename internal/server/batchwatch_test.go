package server_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
)

// The watch stream carries the BatchInferences as "batches": all of them
// at once, again when an item settles, and not again while nothing
// changes (the clock is fixed here, so throughput and cost hold still).
func TestWatchBatches(t *testing.T) {
	a := newAPI(t)
	for _, k := range []string{"in/1.png", "in/2.png", "in/3.png", "models/m.onnx"} {
		data := bytes.Repeat([]byte{8}, 64)
		if k == "models/m.onnx" {
			data = onnxModel(t)
		}
		if err := a.blobs.Write(a.ctx, k, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	ch := a.watch()
	batches := func() []api.BatchInference {
		t.Helper()
		var bs []api.BatchInference
		if err := json.Unmarshal([]byte(next(t, ch, "batches")), &bs); err != nil {
			t.Fatal(err)
		}
		return bs
	}
	if bs := batches(); len(bs) != 0 {
		t.Fatalf("first batches = %+v, want none", bs)
	}
	a.admin(http.MethodPost, "/apply", applyFiles("b.yaml", poolYAML+"---\n"+batchDoc("in/", "")), http.StatusOK)
	bs := batches()
	if len(bs) != 1 || bs[0].Name != "b" || bs[0].Total != 3 || bs[0].Pending != 3 || bs[0].State != "running" {
		t.Fatalf("batches after apply = %+v", bs)
	}

	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	if len(a.prov.launched) < 1 {
		t.Fatalf("launched %q, want a node for the workers", a.prov.launched)
	}
	n1 := a.prov.launched[0]
	w1 := n1 + ":" + api.BatchWorkerJob("b", 1) + "/task-0#1"
	l := decode[api.LeaseResponse](t, a.agentAs(a.cred(n1), "/batches/b/lease", api.LeaseRequest{Worker: w1, Max: 2}, http.StatusOK))
	if len(l.Items) != 2 {
		t.Fatalf("lease: %+v", l)
	}
	a.agentAs(a.cred(n1), "/batches/b/ack", api.AckRequest{Worker: w1, Done: []int64{l.Items[0].ID},
		Failed: []api.ItemFailed{{ID: l.Items[1].ID, Reason: "decode image: png: invalid format"}}}, http.StatusOK)
	for {
		bs = batches()
		if len(bs) != 1 {
			t.Fatalf("batches = %+v", bs)
		}
		if bs[0].Done == 1 {
			break
		}
	}
	if b := bs[0]; b.Failed != 1 || b.Pending != 1 || b.InFlight != 0 || b.WorkersPending+b.Workers == 0 {
		t.Fatalf("batches after an ack and a failure = %+v", b)
	}

	// Nothing changes: nothing is resent over a few of the stream's ticks.
	quiet := time.After(2500 * time.Millisecond)
	for {
		select {
		case ev := <-ch:
			if ev.name == "batches" {
				t.Fatalf("batches resent with nothing changed: %s", ev.data)
			}
			continue
		case <-quiet:
		}
		break
	}
}
