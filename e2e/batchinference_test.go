package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/batchinf"
	"github.com/spotml/spotml/internal/blob/blobtest"
	"github.com/spotml/spotml/internal/inference"
	"github.com/spotml/spotml/internal/spec"
)

// writePNGs writes n Fashion-MNIST test images as PNG files under dir,
// spread over ten sub-directories, and returns their keys relative to it.
func writePNGs(t *testing.T, dir string, n int) []string {
	t.Helper()
	xs, _ := testSet(t, n)
	var keys []string
	for i, x := range xs {
		img := image.NewGray(image.Rect(0, 0, 28, 28))
		for j, v := range x {
			img.Pix[j] = uint8(math.Round(float64(v) * 255))
		}
		key := fmt.Sprintf("batch-%d/img-%05d.png", i%10, i)
		p := filepath.Join(dir, filepath.FromSlash(key))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := png.Encode(f, img); err != nil {
			t.Fatal(err)
		}
		f.Close()
		keys = append(keys, key)
	}
	return keys
}

func (c *cluster) batch(name string) api.BatchInference {
	c.t.Helper()
	var bs []api.BatchInference
	out := c.mustCLI("get", "batchinference", name, "-o", "json")
	if err := json.Unmarshal([]byte(out), &bs); err != nil || len(bs) != 1 {
		c.t.Fatalf("get batchinference %s: %v: %s", name, err, out)
	}
	return bs[0]
}

// readGate lets an S3 stand-in serve a set number of object reads and
// holds the rest until the limit is raised: the workers of a
// BatchInference are mid-run, holding leases, by construction, however
// fast the machine.
type readGate struct {
	next    http.Handler
	mu      sync.Mutex
	cond    *sync.Cond
	served  int // object reads let through
	limit   int // -1: no limit
	waiting int // reads held now
}

func newReadGate(next http.Handler, limit int) *readGate {
	g := &readGate{next: next, limit: limit}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *readGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// /BUCKET/KEY is an object; /BUCKET?list-type=2 a listing.
	object := strings.Count(strings.Trim(r.URL.Path, "/"), "/") > 0
	if r.Method == http.MethodGet && object {
		g.mu.Lock()
		for g.limit >= 0 && g.served >= g.limit {
			g.waiting++
			g.cond.Wait()
			g.waiting--
		}
		g.served++
		g.mu.Unlock()
	}
	g.next.ServeHTTP(w, r)
}

// setLimit lets reads through up to limit in all (-1: all of them).
func (g *readGate) setLimit(limit int) {
	g.mu.Lock()
	g.limit = limit
	g.mu.Unlock()
	g.cond.Broadcast()
}

// raise lets by more reads through than have been so far.
func (g *readGate) raise(by int) {
	g.mu.Lock()
	g.limit = g.served + by
	g.mu.Unlock()
	g.cond.Broadcast()
}

// holding says whether the gate has let limit reads through and holds
// at least one more.
func (g *readGate) holding() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.limit >= 0 && g.served >= g.limit && g.waiting > 0
}

// s3Uploads points this test's processes at an S3 stand-in (call it
// before starting the cluster), fills a bucket under uploads/ with what
// fill puts, serves it through wrap and returns the input URI.
func s3Uploads(t *testing.T, fill func(put func(key string, data []byte)), wrap func(http.Handler) http.Handler) string {
	t.Helper()
	for _, kv := range blobtest.S3Env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	backend := s3mem.New()
	bucket := blobtest.BucketName()
	if err := backend.CreateBucket(bucket); err != nil {
		t.Fatal(err)
	}
	fill(func(key string, b []byte) {
		if _, err := backend.PutObject(bucket, "uploads/"+key, map[string]string{}, bytes.NewReader(b), int64(len(b)), nil); err != nil {
			t.Fatal(err)
		}
	})
	srv := httptest.NewServer(wrap(gofakes3.New(backend).Server()))
	t.Cleanup(srv.Close)
	q := url.Values{"endpoint": {srv.URL}, "use_path_style": {"true"}, "region": {"us-east-1"}, "response_checksum_validation": {"when_required"}}
	return "s3://" + bucket + "/uploads/?" + q.Encode()
}

// gatedS3Input uploads the files keys (relative to dir) to an S3
// stand-in (see s3Uploads) behind a readGate letting limit reads
// through, and returns the input URI (quoted for YAML) and the gate,
// which opens when the test ends.
func gatedS3Input(t *testing.T, dir string, keys []string, limit int) (string, *readGate) {
	t.Helper()
	var gate *readGate
	input := s3Uploads(t, func(put func(string, []byte)) {
		for _, k := range keys {
			b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(k)))
			if err != nil {
				t.Fatal(err)
			}
			put(k, b)
		}
	}, func(h http.Handler) http.Handler { gate = newReadGate(h, limit); return gate })
	t.Cleanup(func() { gate.setLimit(-1) })
	return `"` + input + `"`, gate
}

// TestBatchInferenceExactlyOnce scores Fashion-MNIST PNGs, read from an
// S3 bucket, with the shipped model on a spot pool. Mid-run every spot
// node is evicted (3s notice), later the control plane is SIGKILLed and
// restarted; the bucket holds the workers' reads at each point, so both
// land mid-run on any machine. At the end there is exactly one result per
// good input, each the same as scoring the file in this process, none for
// the undecodable inputs, which are listed as failed with their reason.
func TestBatchInferenceExactlyOnce(t *testing.T) {
	requireORT(t)
	const n = 3000
	in := t.TempDir()
	keys := writePNGs(t, in, n)
	bad := []string{"batch-0/broken.png", "batch-1/empty.png"}
	os.WriteFile(filepath.Join(in, "batch-0", "broken.png"), []byte("not a png"), 0o644)
	os.WriteFile(filepath.Join(in, "batch-1", "empty.png"), nil, 0o644)
	os.WriteFile(filepath.Join(in, "batch-2", "notes.txt"), []byte("not matched by the pattern"), 0o644)
	// Before the cluster starts: its processes take the S3 settings from
	// the environment.
	input, gate := gatedS3Input(t, in, append(append(slices.Clone(keys), bad...), "batch-2/notes.txt"), 600)
	c := newServingCluster(t)
	c.putModel("models/fmnist.onnx")

	// Bad input is refused at apply time, naming the field.
	f := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(f, []byte(pool("spot-a", "spot", 3)+batchYAML("nothing", "empty/", "**/*.png", "spot-a", "")), 0o644)
	if _, err := c.cli("apply", "-f", f); err == nil || !strings.Contains(err.Error(), "spec.input") {
		t.Fatalf("apply with an empty prefix: %v; want an error naming spec.input", err)
	}

	c.apply(pool("spot-a", "spot", 3) + batchYAML("score", input, "**/*.png", "spot-a", ""))
	start := time.Now()
	waitFor(t, 30*time.Second, "the input listed", func() bool { return !c.batch("score").Listing })
	if b := c.batch("score"); b.Total != n+len(bad) {
		t.Fatalf("total = %d, want %d (the PNGs, not notes.txt)", b.Total, n+len(bad))
	}

	// Every spot node evicted, at one instant, while the workers hold
	// leases they cannot finish (the bucket holds their reads after the
	// first 600).
	waitFor(t, 60*time.Second, "the workers held at the bucket", gate.holding)
	evicted := c.evictReady("spot-a")
	// Noticed, the workers may finish the leases in hand (reads for up to
	// 3 leases of 256 let through) and give back the rest; the
	// replacements' reads are held again after those.
	c.waitNoticed("spot-a", evicted)
	gate.raise(768)
	// A worker's eviction is counted once its task ends.
	waitFor(t, 60*time.Second, fmt.Sprintf("%d evictions recorded", evicted), func() bool {
		b := c.batch("score")
		return b.Evictions >= evicted || b.State != "running"
	})
	if b := c.batch("score"); b.Evictions < evicted {
		t.Fatalf("the batch finished before the evictions landed: %+v", b)
	}
	// The control plane SIGKILLed while the replacements' workers hold
	// leases again (reads held after 600 more), and restarted.
	gate.raise(600)
	waitFor(t, 60*time.Second, "the replacement workers held at the bucket", gate.holding)
	c.stop(syscall.SIGKILL)
	time.Sleep(time.Second)
	c.start()
	gate.setLimit(-1)

	waitFor(t, 90*time.Second, "the batch to finish", func() bool { return c.batch("score").State != "running" })
	b := c.batch("score")
	t.Logf("scored %d items in %s: %.0f items/s, %d evictions, %d released, %d expired, %d scored again, cost $%.5f (on demand $%.5f)",
		b.Done, time.Since(start).Round(time.Second), float64(b.Done)/time.Since(start).Seconds(), b.Evictions, b.Released, b.Expired, b.Redone, b.Cost, b.OnDemandCost)
	if b.Done != n || b.Failed != len(bad) || b.Pending+b.InFlight != 0 {
		t.Fatalf("done %d, failed %d, left %d; want %d, %d, 0", b.Done, b.Failed, b.Pending+b.InFlight, n, len(bad))
	}
	if b.Evictions < evicted {
		t.Errorf("evictions = %d, want at least %d", b.Evictions, evicted)
	}

	// Results: one per good input, none for the bad ones, nothing else.
	out := filepath.Join(c.data, "blobs", "scored")
	var got []string
	filepath.WalkDir(out, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(out, p)
			got = append(got, filepath.ToSlash(rel))
		}
		return nil
	})
	if len(got) != n {
		t.Fatalf("%d objects under scored/, want %d", len(got), n)
	}
	checkBatchResults(t, in, out, keys)
	// The failed items, with their reasons.
	logs := c.mustCLI("logs", "batchinference/score")
	for _, k := range bad {
		if !strings.Contains(logs, k) || !strings.Contains(logs, "decode image") {
			t.Errorf("spotml logs batchinference/score does not list %s with its reason:\n%s", k, logs)
		}
	}
	if table := c.mustCLI("get", "batchinference"); !strings.Contains(table, "score") || !strings.Contains(table, "succeeded") ||
		!strings.Contains(table, "TOTAL") || !strings.Contains(table, "IN-FLIGHT") || !strings.Contains(table, "ETA") ||
		!strings.Contains(table, "EVICTIONS") || !strings.Contains(table, "ON-DEMAND") {
		t.Errorf("get batchinference:\n%s", table)
	}
	// Scaled to zero: no worker left.
	waitFor(t, 20*time.Second, "workers to end", func() bool { b := c.batch("score"); return b.Workers+b.WorkersPending == 0 })
}

// waitNoticed waits until n nodes of pool have had their notice.
func (c *cluster) waitNoticed(pool string, n int) {
	c.t.Helper()
	waitFor(c.t, 30*time.Second, fmt.Sprintf("%d nodes of %s noticed", n, pool), func() bool {
		k := 0
		for _, nd := range c.nodes() {
			if nd.Pool == pool && nd.State != "ready" && nd.State != "provisioning" {
				k++
			}
		}
		return k >= n
	})
}

// evictReady gives every ready node of pool its notice at one instant
// (one spotml evict for all of them) and returns how many it evicted.
func (c *cluster) evictReady(pool string) int {
	c.t.Helper()
	var names []string
	for _, nd := range c.nodes() {
		if nd.Pool == pool && nd.State == "ready" {
			names = append(names, nd.Name)
		}
	}
	if len(names) == 0 {
		c.t.Fatalf("no ready node of pool %s to evict", pool)
	}
	c.mustCLI(append([]string{"evict"}, names...)...)
	return len(names)
}

func batchYAML(name, input, pattern, pool, extra string) string {
	return fmt.Sprintf(`apiVersion: spotml/v1
kind: BatchInference
metadata: {name: %s}
spec:
  input: {uri: %s, pattern: "%s"}
  output: {uri: scored/, format: jsonl}
  model: {uri: models/fmnist.onnx}
  runtime: {type: builtin, batchSize: 32, threads: 1}
  preprocess: {image: {grayscale: true, size: [28, 28], scale: 1/255}}
  pool: %s
  resources: {cpu: 1, memory: 512Mi}
  workers: {min: 0, max: 3, itemsPerWorker: 300}
  queue: {leaseTimeout: 10s}
%s`, name, input, pattern, pool, extra)
}

// TestBatchInferenceWatch: with trigger: watch, blobs that arrive under
// the prefix are scored within seconds, workers start from zero and go
// back to zero when idle, and across a control-plane SIGKILL nothing is
// queued twice.
func TestBatchInferenceWatch(t *testing.T) {
	requireORT(t)
	c := newServingCluster(t)
	c.putModel("models/fmnist.onnx")
	in := filepath.Join(c.data, "blobs", "incoming")
	c.apply(pool("spot-a", "spot", 2) + strings.Replace(batchYAML("watch", "incoming/", "**/*.png", "spot-a", "  trigger: watch\n"),
		"queue: {leaseTimeout: 10s}", "queue: {leaseTimeout: 10s, pollInterval: 1s, idleTimeout: 4s}", 1))
	if b := c.batch("watch"); b.Total != 0 || b.Workers+b.WorkersPending != 0 || b.State != "running" {
		t.Fatalf("watch before any input: %+v", b)
	}
	writePNGs(t, filepath.Join(in, "first"), 150)
	arrived := time.Now()
	waitFor(t, 60*time.Second, "the first 150 scored", func() bool { return c.batch("watch").Done == 150 })
	t.Logf("150 new blobs scored %s after they arrived (workers started from zero)", time.Since(arrived).Round(100*time.Millisecond))
	waitFor(t, 30*time.Second, "workers back to zero", func() bool { b := c.batch("watch"); return b.Workers+b.WorkersPending == 0 })

	c.stop(syscall.SIGKILL)
	c.start()
	writePNGs(t, filepath.Join(in, "second"), 40)
	waitFor(t, 60*time.Second, "the next 40 scored", func() bool { return c.batch("watch").Done == 190 })
	time.Sleep(3 * time.Second) // a few more polls
	if b := c.batch("watch"); b.Total != 190 || b.Done != 190 || b.State != "running" {
		t.Fatalf("after a restart: %+v; want each of 190 inputs queued and scored once", b)
	}
	results, _ := filepath.Glob(filepath.Join(c.data, "blobs", "scored", "*", "*", "*.png.jsonl"))
	if len(results) != 190 {
		t.Fatalf("%d results, want 190", len(results))
	}
}

// checkBatchResults checks the result of each input key under out
// against scoring the file under in in this process: one JSON line, the
// same class and outputs.
func checkBatchResults(t *testing.T, in, out string, keys []string) {
	t.Helper()
	lib := os.Getenv("SPOTML_ONNXRUNTIME_LIB")
	model, err := inference.Open(filepath.Join("..", "examples", "fashion-mnist", "model.onnx"), inference.Options{Library: lib, Threads: 1, MaxBatch: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer model.Close()
	pre, _ := batchinf.NewPreprocessor(spec.Preprocess{Image: &spec.ImagePreprocess{Grayscale: true, Size: []int{28, 28}, Scale: "1/255"}})
	info := model.Inputs()[0]
	for _, k := range keys {
		data, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(batchinf.ResultKey(k, spec.FormatJSONL))))
		if err != nil {
			t.Fatalf("result of %s: %v", k, err)
		}
		if strings.Count(string(data), "\n") != 1 {
			t.Fatalf("result of %s has %d lines, want 1", k, strings.Count(string(data), "\n"))
		}
		var res batchinf.Result
		if err := json.Unmarshal(data, &res); err != nil {
			t.Fatalf("result of %s: %v", k, err)
		}
		png, _ := os.ReadFile(filepath.Join(in, filepath.FromSlash(k)))
		row, err := pre.Row(png)
		if err != nil {
			t.Fatal(err)
		}
		shape := append([]int64{1}, info.Shape[1:]...)
		outs, err := model.Predict(t.Context(), []inference.Tensor{{Name: info.Name, Shape: shape, Data: row}})
		if err != nil {
			t.Fatal(err)
		}
		want, _ := batchinf.RowResult(k, outs, 0)
		if res.Input != k || res.Class == nil || *res.Class != *want.Class {
			t.Fatalf("result of %s = %s; want class %d", k, data, *want.Class)
		}
		for name, vs := range want.Outputs {
			for i, v := range vs {
				if math.Abs(res.Outputs[name][i]-v) > 1e-3*math.Max(1, math.Abs(v)) {
					t.Fatalf("result of %s: %s[%d] = %g, scored here %g", k, name, i, res.Outputs[name][i], v)
				}
			}
		}
	}
}
