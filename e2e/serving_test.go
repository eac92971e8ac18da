package e2e

import (
	"bytes"
	"compress/gzip"
	binpkg "encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/spec"
)

// The serving tests run the shipped Fashion-MNIST model on the builtin
// runtime, which needs ONNX Runtime's shared library (fetched by
// scripts/fetch-onnxruntime.sh into build/onnxruntime), and four of them
// score it on the Fashion-MNIST test set (Debian's dataset-fashion-mnist).
// Without either they skip, unless SPOTML_REQUIRE_ORT=1 (scripts/test.sh
// and so CI set it) makes that a failure.
func requireORT(t testing.TB) {
	t.Helper()
	if os.Getenv("SPOTML_ONNXRUNTIME_LIB") != "" {
		return
	}
	lib, _ := filepath.Abs(filepath.Join("..", "build", "onnxruntime", "libonnxruntime.so"))
	if _, err := os.Stat(lib); err == nil {
		t.Setenv("SPOTML_ONNXRUNTIME_LIB", lib)
		return
	}
	missing(t, "SPOTML_REQUIRE_ORT", "ONNX Runtime not found: run `bash scripts/fetch-onnxruntime.sh` or set SPOTML_ONNXRUNTIME_LIB")
}

// missing ends a test whose prerequisite is absent: a skip, or a failure
// when the environment variable env says the prerequisite is required.
func missing(t testing.TB, env, msg string) {
	t.Helper()
	if os.Getenv(env) == "1" {
		t.Fatalf("%s (%s=1 makes this a failure, not a skip)", msg, env)
	}
	t.Skip(msg)
}

const fmnistDir = "/usr/share/datasets/fashion-mnist"

// testSet reads n images (scaled to 0..1) and labels of the Fashion-MNIST
// test set from Debian's dataset-fashion-mnist.
func testSet(t testing.TB, n int) ([][]float32, []int) { return testSetFrom(t, fmnistDir, n) }

func testSetFrom(t testing.TB, dir string, n int) ([][]float32, []int) {
	t.Helper()
	read := func(name string) []byte {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			missing(t, "SPOTML_REQUIRE_ORT", fmt.Sprintf("Fashion-MNIST test set missing (apt-get install dataset-fashion-mnist): %v", err))
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	img, lab := read("t10k-images-idx3-ubyte.gz"), read("t10k-labels-idx1-ubyte.gz")
	total := int(binpkg.BigEndian.Uint32(img[4:8]))
	n = min(n, total)
	xs := make([][]float32, n)
	ys := make([]int, n)
	for i := range n {
		px := img[16+i*784 : 16+(i+1)*784]
		x := make([]float32, 784)
		for j, p := range px {
			x[j] = float32(p) / 255
		}
		xs[i], ys[i] = x, int(lab[8+i])
	}
	return xs, ys
}

// v2Body is a KServe v2 inference request for a batch of images.
func v2Body(xs [][]float32) []byte {
	data := make([]float32, 0, len(xs)*784)
	for _, x := range xs {
		data = append(data, x...)
	}
	b, _ := json.Marshal(map[string]any{"inputs": []any{map[string]any{
		"name": "input", "datatype": "FP32", "shape": []int{len(xs), 1, 28, 28}, "data": data}}})
	return b
}

// v2Classes sends a batch through the gateway and returns the argmax of
// each row's scores.
func v2Classes(gw, model string, xs [][]float32) ([]int, error) {
	resp, err := http.Post("http://"+gw+"/v2/models/"+model+"/infer", "application/json", bytes.NewReader(v2Body(xs)))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s: %s", resp.Status, b)
	}
	var out struct {
		Outputs []struct {
			Shape []int     `json:"shape"`
			Data  []float64 `json:"data"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(b, &out); err != nil || len(out.Outputs) != 1 {
		return nil, fmt.Errorf("bad answer %q: %v", b, err)
	}
	o := out.Outputs[0]
	if len(o.Data) != len(xs)*10 {
		return nil, fmt.Errorf("want %d scores, got %d (shape %v)", len(xs)*10, len(o.Data), o.Shape)
	}
	cls := make([]int, len(xs))
	for i := range xs {
		best := 0
		for k := 1; k < 10; k++ {
			if o.Data[i*10+k] > o.Data[i*10+best] {
				best = k
			}
		}
		cls[i] = best
	}
	return cls, nil
}

// load is a steady request stream through the gateway, each request one
// image whose answer is checked.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       chan struct{}
	wg         sync.WaitGroup
}

// startLoad runs workers each sending a request every interval (0: as
// fast as answers come).
func startLoad(gw, model string, xs [][]float32, ys []int, workers int, interval time.Duration) *load {
	l := &load{stop: make(chan struct{})}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := w; ; i += workers {
				select {
				case <-l.stop:
					return
				default:
				}
				start := time.Now()
				k := i % len(xs)
				cls, err := v2Classes(gw, model, xs[k:k+1])
				if err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 20 {
						l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
					}
					l.mu.Unlock()
				} else {
					l.ok.Add(1)
					_ = cls // correctness is checked on the whole test set apart
				}
				if d := interval - time.Since(start); d > 0 {
					select {
					case <-l.stop:
						return
					case <-time.After(d):
					}
				}
			}
		}()
	}
	return l
}

func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	t.Logf("load: %d requests answered, %d failed", l.ok.Load(), l.failed.Load())
	if n := l.failed.Load(); n > 0 {
		t.Errorf("%d requests failed; first ones:\n%s", n, strings.Join(l.errs, "\n"))
	}
	if l.ok.Load() == 0 {
		t.Error("no request was answered")
	}
}

func (c *cluster) service(name string) api.Service {
	c.t.Helper()
	var ss []api.Service
	if err := json.Unmarshal([]byte(c.mustCLI("get", "services", name, "-o", "json")), &ss); err != nil || len(ss) != 1 {
		c.t.Fatalf("get service %s: %v", name, err)
	}
	return ss[0]
}

// readyReplicas returns the service's ready replicas without a notice.
func (c *cluster) readyReplicas(name string) []api.Replica {
	var out []api.Replica
	for _, r := range c.service(name).Replicas {
		if r.State == api.ReplicaReady && !r.Noticed {
			out = append(out, r)
		}
	}
	return out
}

func pool(name, priority string, max int) string {
	notice := ""
	if priority == spec.PrioritySpot {
		notice = "\n  local: {notice: 3s}"
	}
	return fmt.Sprintf(`apiVersion: spotml/v1
kind: Pool
metadata: {name: %s}
spec:
  provider: local
  priority: %s
  instanceType: local-small
  zones: ["1"]
  min: 0
  max: %d%s
  idleTimeout: 20s
---
`, name, priority, max, notice)
}

func serviceYAML(name, model, tier string, min, max int, extra string) string {
	return fmt.Sprintf(`apiVersion: spotml/v1
kind: Service
metadata: {name: %s}
spec:
  model: {uri: %s}
  runtime: {type: builtin, threads: 1}
  replicas: {min: %d, max: %d%s}
  placement: {tier: %s}
  readiness: {period: 200ms}
  resources: {cpu: 1, memory: 512Mi}
`, name, model, min, max, extra, tier)
}

// newServingCluster is newCluster that, on failure, also logs the events
// and the replicas' stderr.
func newServingCluster(t *testing.T) *cluster {
	c := newCluster(t)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		if out, err := c.cli("get", "events"); err == nil {
			t.Logf("events:\n%s", tail(out, 8000))
		}
		logs, _ := filepath.Glob(filepath.Join(c.data, "nodes", "*", "replicas", "*", "stderr.log"))
		for _, f := range logs {
			b, _ := os.ReadFile(f)
			t.Logf("%s:\n%s", f, tail(string(b), 1500))
		}
	})
	return c
}

// waitServing waits until the service has n ready replicas and the
// gateway routes to them (it reloads its routes every 200ms).
func (c *cluster) waitServing(name string, n int, d time.Duration) {
	c.t.Helper()
	waitFor(c.t, d, fmt.Sprintf("%d ready replicas of %s", n, name), func() bool { return len(c.readyReplicas(name)) == n })
	waitFor(c.t, 5*time.Second, "the gateway to route to "+name, func() bool {
		resp, err := http.Get("http://" + c.gw + "/v2/models/" + name + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func (c *cluster) putModel(dst string) {
	c.t.Helper()
	src, _ := filepath.Abs(filepath.Join("..", "examples", "fashion-mnist", "model.onnx"))
	c.mustCLI("blob", "put", src, dst)
}

// TestServingSurvivesEvictions serves the shipped model (prod tier: two
// spot replicas in two pools) under a steady request stream while the
// nodes of its replicas are evicted one after the other with a short
// notice. No request may fail; the model must be right on the test set
// through the gateway, in both protocols.
func TestServingSurvivesEvictions(t *testing.T) {
	requireORT(t)
	xs, ys := testSet(t, 10000)
	c := newServingCluster(t)
	c.putModel("models/fmnist.onnx")
	c.apply(pool("spot-a", "spot", 2) + pool("spot-b", "spot", 2) + pool("od", "ondemand", 2) +
		serviceYAML("fmnist", "models/fmnist.onnx", "prod", 2, 2, ""))
	c.waitServing("fmnist", 2, 90*time.Second)

	// Metadata (KServe v2) tells the exact shape.
	resp, err := http.Get("http://" + c.gw + "/v2/models/fmnist")
	if err != nil {
		t.Fatal(err)
	}
	meta, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(meta), `"FP32"`) || !strings.Contains(string(meta), "28") {
		t.Fatalf("GET /v2/models/fmnist: %s %s", resp.Status, meta)
	}

	// Accuracy on the whole test set, through the gateway.
	right := 0
	for i := 0; i < len(xs); i += 250 {
		cls, err := v2Classes(c.gw, "fmnist", xs[i:min(i+250, len(xs))])
		if err != nil {
			t.Fatal(err)
		}
		for k, cl := range cls {
			if cl == ys[i+k] {
				right++
			}
		}
	}
	acc := float64(right) / float64(len(xs))
	t.Logf("test accuracy through the gateway: %.2f %% of %d images", 100*acc, len(xs))
	if acc < 0.85 {
		t.Fatalf("accuracy %.3f < 0.85", acc)
	}
	// TF Serving REST: one image as an instance.
	inst, _ := json.Marshal(map[string]any{"instances": [][][][]float32{{to2D(xs[0])}}})
	resp, err = http.Post("http://"+c.gw+"/v1/models/fmnist:predict", "application/json", bytes.NewReader(inst))
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		Predictions [][]float64 `json:"predictions"`
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err := json.Unmarshal(b, &tf); err != nil || resp.StatusCode != 200 || len(tf.Predictions) != 1 || len(tf.Predictions[0]) != 10 {
		t.Fatalf("TF Serving predict: %s %s (%v)", resp.Status, b, err)
	}

	l := startLoad(c.gw, "fmnist", xs, ys, 4, 0)
	for round := range 2 {
		time.Sleep(2 * time.Second)
		var victim api.Replica
		for _, r := range c.readyReplicas("fmnist") {
			if r.Priority == spec.PrioritySpot {
				victim = r
				break
			}
		}
		if victim.Node == "" {
			t.Fatalf("round %d: no ready spot replica to evict; replicas: %+v", round, c.service("fmnist").Replicas)
		}
		t.Logf("round %d: evicting %s (replica %s)", round, victim.Node, victim.Name)
		c.mustCLI("evict", victim.Node, "--notice", "3s")
		waitFor(t, 90*time.Second, "a replacement replica ready and the noticed one gone", func() bool {
			ready := c.readyReplicas("fmnist")
			if len(ready) < 2 {
				return false
			}
			for _, r := range ready {
				if r.Name == victim.Name {
					return false
				}
			}
			for _, n := range c.nodes() {
				if n.Name == victim.Node {
					return false // still live
				}
			}
			return true
		})
	}
	time.Sleep(time.Second)
	l.finish(t)
	if l.ok.Load() < 100 {
		t.Errorf("only %d requests answered", l.ok.Load())
	}
	created := 0
	for _, e := range c.events() {
		if e.Kind == "ReplicaCreated" && strings.Contains(e.Message, "notice") {
			created++
		}
	}
	if created < 2 {
		t.Errorf("want 2 replicas created because of notices, events show %d", created)
	}
}

func to2D(x []float32) [][]float32 {
	out := make([][]float32, 28)
	for r := range 28 {
		out[r] = x[r*28 : (r+1)*28]
	}
	return out
}

// TestServingStrictAllSpotEvicted: a strict service keeps answering when
// every spot node is evicted at once, on its on-demand base.
func TestServingStrictAllSpotEvicted(t *testing.T) {
	requireORT(t)
	xs, ys := testSet(t, 200)
	c := newServingCluster(t)
	c.putModel("models/fmnist.onnx")
	c.apply(pool("spot-a", "spot", 3) + pool("od", "ondemand", 2) +
		serviceYAML("strict", "models/fmnist.onnx", "strict", 3, 3, ""))
	c.waitServing("strict", 3, 90*time.Second)
	s := c.service("strict")
	if s.Ready[spec.PriorityOnDemand] < 1 || s.Ready[spec.PrioritySpot] < 1 {
		t.Fatalf("strict tier: want on-demand and spot replicas, have %v", s.Ready)
	}
	l := startLoad(c.gw, "strict", xs, ys, 4, 0)
	time.Sleep(2 * time.Second)
	var spots []string
	for _, n := range c.nodes() {
		if n.Priority == spec.PrioritySpot && n.State == api.NodeReady {
			spots = append(spots, n.Name)
		}
	}
	t.Logf("evicting every spot node at once: %v", spots)
	var wg sync.WaitGroup
	for _, n := range spots {
		wg.Add(1)
		go func() { defer wg.Done(); c.mustCLI("evict", n, "--notice", "3s") }()
	}
	wg.Wait()
	waitFor(t, 30*time.Second, "the spot nodes gone", func() bool {
		for _, n := range c.nodes() {
			for _, v := range spots {
				if n.Name == v {
					return false
				}
			}
		}
		return true
	})
	waitFor(t, 90*time.Second, "3 ready replicas again", func() bool { return len(c.readyReplicas("strict")) == 3 })
	l.finish(t)
}

// TestServingAutoscaleAndRollingUpdate: load above the target adds
// replicas, idleness removes them, and a new model version rolls out under
// load without a failed request.
func TestServingAutoscaleAndRollingUpdate(t *testing.T) {
	requireORT(t)
	xs, ys := testSet(t, 200)
	c := newServingCluster(t)
	c.putModel("models/v1.onnx")
	c.putModel("models/v2.onnx")
	scale := ", targetQPSPerReplica: 15, upscaleDelay: 1s, downscaleDelay: 3s"
	c.apply(pool("spot-a", "spot", 3) + pool("od", "ondemand", 1) + serviceYAML("auto", "models/v1.onnx", "dev", 1, 3, scale))
	c.waitServing("auto", 1, 90*time.Second)

	// ~60 requests/s against a target of 15 per replica: 3 replicas (max).
	l := startLoad(c.gw, "auto", xs, ys, 6, 100*time.Millisecond)
	waitFor(t, 90*time.Second, "scale-up to 3 ready replicas", func() bool { return len(c.readyReplicas("auto")) == 3 })
	l.finish(t)
	t.Logf("QPS seen by the autoscaler at the peak: %.1f", c.service("auto").QPS)
	waitFor(t, 90*time.Second, "scale-down to 1 replica", func() bool {
		s := c.service("auto")
		return s.Desired == 1 && len(s.Replicas) == 1
	})

	// Rolling update under load.
	l = startLoad(c.gw, "auto", xs, ys, 2, 50*time.Millisecond)
	time.Sleep(time.Second)
	c.apply(serviceYAML("auto", "models/v2.onnx", "dev", 1, 3, scale))
	waitFor(t, 90*time.Second, "version 2 alone", func() bool {
		s := c.service("auto")
		if s.Generation != 2 || len(s.Replicas) == 0 {
			return false
		}
		for _, r := range s.Replicas {
			if r.Version != 2 || r.State != api.ReplicaReady {
				return false
			}
		}
		return true
	})
	time.Sleep(time.Second)
	l.finish(t)
	if m := c.service("auto").Model; m != "models/v2.onnx" {
		t.Errorf("service model = %q, want models/v2.onnx", m)
	}
}

// TestServingStandInsWhileSpotIsShort: while the spot market refuses every
// launch, a prod service runs on on-demand stand-ins; once spot capacity
// is back, spot replicas replace them, and the stand-ins are stopped only
// after their replacements are ready, under load, without a failed request.
func TestServingStandInsWhileSpotIsShort(t *testing.T) {
	requireORT(t)
	xs, ys := testSet(t, 200)
	c := newServingCluster(t)
	c.putModel("models/fmnist.onnx")
	spot := func(shortage float64) string {
		return fmt.Sprintf(`apiVersion: spotml/v1
kind: Pool
metadata: {name: spot-a}
spec:
  provider: local
  priority: spot
  instanceType: local-small
  min: 0
  max: 3
  local:
    notice: 3s
    capacityShortage: %g
  idleTimeout: 20s
---
`, shortage)
	}
	c.apply(spot(1) + pool("od", "ondemand", 3) + serviceYAML("short", "models/fmnist.onnx", "prod", 2, 2, ""))
	c.waitServing("short", 2, 90*time.Second)
	s := c.service("short")
	if s.Ready[spec.PriorityOnDemand] != 2 {
		t.Fatalf("spot is short: want 2 on-demand stand-ins ready, have %v", s.Ready)
	}
	for _, r := range s.Replicas {
		if r.Priority == spec.PriorityOnDemand && !r.StandIn {
			t.Errorf("replica %s is on-demand but not marked a stand-in", r.Name)
		}
	}
	l := startLoad(c.gw, "short", xs, ys, 2, 20*time.Millisecond)
	c.apply(spot(0))
	waitFor(t, 90*time.Second, "2 spot replicas ready and no stand-in left", func() bool {
		s := c.service("short")
		return s.Ready[spec.PrioritySpot] == 2 && len(s.Replicas) == 2
	})
	time.Sleep(time.Second)
	l.finish(t)

	// A second gateway, a process of its own over the same store, routes
	// the same way.
	addr := freeAddr(t)
	gw := exec.Command(binary, "gateway", "--data", c.data, "--addr", addr)
	var gwOut bytes.Buffer
	gw.Stdout, gw.Stderr = &gwOut, &gwOut
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { gw.Process.Signal(syscall.SIGTERM); gw.Wait() }()
	waitFor(t, 10*time.Second, "spotml gateway to route", func() bool {
		resp, err := http.Get("http://" + addr + "/v2/models/short/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	cls, err := v2Classes(addr, "short", xs[:20])
	if err != nil {
		t.Fatalf("through spotml gateway: %v\n%s", err, gwOut.String())
	}
	right := 0
	for i, c := range cls {
		if c == ys[i] {
			right++
		}
	}
	if right < 15 {
		t.Errorf("spotml gateway: %d of 20 right", right)
	}
}

// TestMissingPrerequisite: without the test set, the serving tests skip,
// and fail when SPOTML_REQUIRE_ORT=1 (scripts/test.sh) says they must run,
// as the README says.
func TestMissingPrerequisite(t *testing.T) {
	for _, tc := range []struct{ env, want string }{{"", "skipped"}, {"0", "skipped"}, {"1", "failed"}} {
		t.Setenv("SPOTML_REQUIRE_ORT", tc.env)
		o := &outcome{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			testSetFrom(o, t.TempDir(), 1)
		}()
		<-done
		if o.end != tc.want {
			t.Errorf("SPOTML_REQUIRE_ORT=%q, no test set: the test %s (%s), want %s", tc.env, o.end, o.msg, tc.want)
		}
	}
}

// outcome records how a test helper ended a test.
type outcome struct {
	testing.TB
	end, msg string
}

func (o *outcome) Helper()                   {}
func (o *outcome) Fatal(args ...any)         { o.stop("failed", fmt.Sprint(args...)) }
func (o *outcome) Fatalf(f string, a ...any) { o.stop("failed", fmt.Sprintf(f, a...)) }
func (o *outcome) Skip(args ...any)          { o.stop("skipped", fmt.Sprint(args...)) }
func (o *outcome) Skipf(f string, a ...any)  { o.stop("skipped", fmt.Sprintf(f, a...)) }
func (o *outcome) stop(end, msg string)      { o.end, o.msg = end, msg; runtime.Goexit() }
