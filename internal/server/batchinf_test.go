package server_test

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/spec"
)

func batchDoc(input, extra string) string {
	return `apiVersion: spotml/v1
kind: BatchInference
metadata: {name: b}
spec:
  input: {uri: ` + input + `, pattern: "**/*.png"}
  output: {uri: scored/}
  model: {uri: models/m.onnx}
  pool: cpu
  workers: {max: 2, itemsPerWorker: 4}
  queue: {leaseTimeout: 30s}
` + extra
}

// TestBatchInferenceApplyAndQueue: apply refuses what the stores can tell
// is wrong, naming the field, and stores nothing then; a good apply
// queues one item per matching input; the plane adds workers as tasks of
// a worker job; a node's credential leases, acks, fails and releases for
// its own workers only.
func TestBatchInferenceApplyAndQueue(t *testing.T) {
	a := newAPI(t)
	put := func(key string, data []byte) {
		if err := a.blobs.Write(a.ctx, key, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"in/a/1.png", "in/a/2.png", "in/b/3.png", "in/b/4.png", "in/5.png", "in/b/notes.txt"} {
		put(k, []byte("x"))
	}
	for _, tc := range []struct {
		model       []byte // put as the model first, if not nil
		docs, field string
	}{
		{nil, poolYAML + "---\n" + batchDoc("in/", ""), "spec.model.uri"},
		{bytes.Repeat([]byte{8}, 64), poolYAML + "---\n" + batchDoc("in/", ""), "spec.model.uri: \"models/m.onnx\" (64 bytes): not an ONNX model"},
		{onnxModel(t), poolYAML + "---\n" + batchDoc("nothing/", ""), "spec.input"},
		{nil, batchDoc("in/", ""), "spec.pool"},
	} {
		if tc.model != nil {
			put("models/m.onnx", tc.model)
		}
		msg := a.admin("POST", "/apply", applyFiles("b.yaml", tc.docs), http.StatusBadRequest).errorText(t)
		if !strings.Contains(msg, tc.field) {
			t.Errorf("apply: %s; want it to name %s", msg, tc.field)
		}
		a.assertEmpty()
	}

	a.admin("POST", "/apply", applyFiles("b.yaml", poolYAML+"---\n"+batchDoc("in/", "")), http.StatusOK)
	// The apply queues the first page of the listing and leaves the rest
	// to the control plane, which lists the input again and ends the
	// listing: still one item per input.
	b := decode[api.BatchInference](t, a.admin("GET", "/batchinferences/b", nil, http.StatusOK))
	if b.Total != 5 || b.Pending != 5 || b.State != "running" || !b.Listing {
		t.Fatalf("after apply: %+v", b)
	}
	if err := a.plane.ListBatchInputs(a.ctx); err != nil {
		t.Fatal(err)
	}
	b = decode[api.BatchInference](t, a.admin("GET", "/batchinferences/b", nil, http.StatusOK))
	if b.Total != 5 || b.Pending != 5 || b.Listing {
		t.Fatalf("after the listing: %+v", b)
	}
	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	worker := api.BatchWorkerJob("b", 1)
	j := decode[api.Job](t, a.admin("GET", "/jobs/"+worker, nil, http.StatusOK))
	if len(j.Tasks) != 2 || j.Spec.Spec.Pool != "cpu" || j.Tasks[0].Spec.Env[api.EnvBatch] != "b" {
		t.Fatalf("worker job: %+v", j)
	}
	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	if r := a.admin("GET", "/jobs/"+api.BatchWorkerJob("b", 2), nil, http.StatusNotFound); r.code != 404 {
		t.Fatal("a second pass added workers again")
	}

	lease := func(node, worker string, max, code int) api.LeaseResponse {
		r := a.agentAs(a.cred(node), "/batches/b/lease", api.LeaseRequest{Worker: worker, Max: max}, code)
		if code != http.StatusOK {
			return api.LeaseResponse{}
		}
		return decode[api.LeaseResponse](t, r)
	}
	if len(a.prov.launched) < 1 {
		t.Fatalf("launched %q, want a node for the workers", a.prov.launched)
	}
	n1 := a.prov.launched[0]
	w1 := n1 + ":" + worker + "/task-0#1"
	lease(n1, "other-node:"+worker+"/task-1#1", 3, http.StatusForbidden) // only its own workers
	l := lease(n1, w1, 3, http.StatusOK)
	if len(l.Items) != 3 || l.Items[0].Input != "5.png" || l.LeaseTimeout != 30*time.Second || !l.Running || l.Left < 3 || l.Listing {
		t.Fatalf("lease: %+v", l)
	}
	a.agentAs(a.cred(n1), "/batches/b/ack", api.AckRequest{Worker: w1, Done: []int64{l.Items[0].ID},
		Failed: []api.ItemFailed{{ID: l.Items[1].ID, Reason: "decode image: png: invalid format"}}}, http.StatusOK)
	rel := decode[api.BatchCounts](t, a.agentAs(a.cred(n1), "/batches/b/release", api.ReleaseRequest{Worker: w1, IDs: []int64{l.Items[2].ID}}, http.StatusOK))
	if rel.Changed != 1 {
		t.Fatalf("release: %+v", rel)
	}
	b = decode[api.BatchInference](t, a.admin("GET", "/batchinferences/b", nil, http.StatusOK))
	if b.Done != 1 || b.Failed != 1 || b.Pending != 3 || b.Released != 1 {
		t.Fatalf("after ack and release: %+v", b)
	}
	// An empty claim changes nothing and says how the batch stands, with
	// what is left counted: a broker worker whose poll came back empty
	// asks so before it decides whether to exit.
	st := decode[api.LeaseResponse](t, a.agentAs(a.cred(n1), "/batches/b/claim", api.ClaimRequest{Worker: w1}, http.StatusOK))
	if !st.Running || st.Left != 3 || len(st.Items) != 0 {
		t.Fatalf("empty claim: %+v; want running, 3 left, no items", st)
	}
	// A worker killed while it held items: its agent gives back all it
	// held, and only its own.
	w2 := n1 + ":" + worker + "/task-1#1"
	held := lease(n1, w1, 2, http.StatusOK)
	other := lease(n1, w2, 1, http.StatusOK)
	if len(held.Items) != 2 || len(other.Items) != 1 {
		t.Fatalf("leases: %+v, %+v", held, other)
	}
	a.agentAs(a.cred(n1), "/batches/b/release", api.ReleaseRequest{Worker: w1, All: true, IDs: []int64{held.Items[0].ID}}, http.StatusBadRequest)
	a.agentAs(a.cred(n1), "/batches/b/release", api.ReleaseRequest{Worker: "other-node:" + worker + "/task-1#1", All: true}, http.StatusForbidden)
	rel = decode[api.BatchCounts](t, a.agentAs(a.cred(n1), "/batches/b/release", api.ReleaseRequest{Worker: w1, All: true}, http.StatusOK))
	if rel.Changed != 2 {
		t.Fatalf("release all: %+v, want the 2 items w1 held", rel)
	}
	if rel = decode[api.BatchCounts](t, a.agentAs(a.cred(n1), "/batches/b/release", api.ReleaseRequest{Worker: w1, All: true}, http.StatusOK)); rel.Changed != 0 {
		t.Fatalf("release all again: %+v, want nothing", rel)
	}
	a.agentAs(a.cred(n1), "/batches/b/release", api.ReleaseRequest{Worker: w2, IDs: []int64{other.Items[0].ID}}, http.StatusOK)
	b = decode[api.BatchInference](t, a.admin("GET", "/batchinferences/b", nil, http.StatusOK))
	if b.Pending != 3 || b.InFlight != 0 || b.Released != 4 {
		t.Fatalf("after the releases: %+v", b)
	}
	failed := decode[[]api.BatchItem](t, a.admin("GET", "/batchinferences/b/items?state=failed", nil, http.StatusOK))
	if len(failed) != 1 || !strings.Contains(failed[0].Reason, "png") {
		t.Fatalf("failed items: %+v", failed)
	}

	// All settled: the next pass finishes it, and workers are told.
	l = lease(n1, w1, 10, http.StatusOK)
	ids := []int64{}
	for _, it := range l.Items {
		ids = append(ids, it.ID)
	}
	a.agentAs(a.cred(n1), "/batches/b/ack", api.AckRequest{Worker: w1, Done: ids}, http.StatusOK)
	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	b = decode[api.BatchInference](t, a.admin("GET", "/batchinferences/b", nil, http.StatusOK))
	if b.State != "succeeded" || b.Done != 4 || b.Failed != 1 {
		t.Fatalf("finished: %+v", b)
	}
	if l := lease(n1, w1, 10, http.StatusOK); l.Running || len(l.Items) != 0 {
		t.Fatalf("lease after finish: %+v", l)
	}
	a.admin("DELETE", "/batchinferences/b", nil, http.StatusNoContent)
	a.admin("GET", "/jobs/"+worker, nil, http.StatusNotFound)
	_ = spec.KindBatchInference
}

// onnxModel is the shipped example's model: apply checks that a builtin
// runtime's model is an ONNX file.
func onnxModel(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "examples", "fashion-mnist", "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
