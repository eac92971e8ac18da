package e2e

import (
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/batchinf/broker/brokertest"
)

// brokers are the real brokers the broker test runs against, each started
// for the test from Debian's package (brokertest): core NATS (what
// gocloud's natspubsub speaks: at most once, no JetStream, so a message
// nobody is subscribed for is dropped and the ledger's resend covers it),
// and RabbitMQ (acknowledged delivery: a worker's nack, or its connection
// ending with its node, hands its messages to another worker); and
// Google's own Pub/Sub fake (pstest, in this process, on a loopback port
// the control plane and agents reach through PUBSUB_EMULATOR_HOST), with
// the topic and subscription a user would create, at the default 10s ack
// deadline: a nacked message comes back at once, one whose worker
// vanished when its ack deadline passes; and Amazon SQS as moto_server
// serves it (brokertest.SQS), reached through the AWS SDK's
// AWS_ENDPOINT_URL_SQS, with a queue of a 10s visibility timeout.
var brokers = []struct {
	name  string
	env   string                  // where the control plane and workers find the server
	start func(testing.TB) string // starts the server, returns its URL
	queue string                  // the spec's queue, less leaseTimeout
	// other is a broker queue whose server setting is not set: apply
	// must refuse it.
	other string
}{
	{"nats", "NATS_SERVER_URL", brokertest.NATS,
		`uri: "nats://spotml.score", groupSize: 4`,
		`uri: "rabbit://scores", subscription: "rabbit://scores-q"`},
	{"rabbitmq", "RABBIT_SERVER_URL", brokertest.RabbitMQ,
		`uri: "rabbit://spotml.score", subscription: "rabbit://spotml.score-workers", groupSize: 4`,
		`uri: "nats://spotml.score"`},
	{"gcppubsub", "PUBSUB_EMULATOR_HOST", pubSubFake,
		`uri: "gcppubsub://projects/spotml-e2e/topics/score", subscription: "gcppubsub://projects/spotml-e2e/subscriptions/score-workers", groupSize: 4`,
		`uri: "rabbit://scores", subscription: "rabbit://scores-q"`},
	{"awssqs", "AWS_ENDPOINT_URL_SQS", sqsFake,
		`uri: "awssqs://sqs.us-east-1.amazonaws.com/123456789012/spotml-score?region=us-east-1", groupSize: 4`,
		`uri: "nats://spotml.score"`},
}

// pubSubFake starts Google's Pub/Sub fake with the topic and subscription
// the gcppubsub case's queue names, and returns its address.
func pubSubFake(t testing.TB) string {
	ps := brokertest.NewPubSub(t)
	topic := ps.Topic(t, "spotml-e2e", "score")
	ps.Subscription(t, "spotml-e2e", "score-workers", topic, 10*time.Second)
	return ps.Addr
}

// sqsFake starts moto_server with the queue the awssqs case's queue names,
// sets the AWS SDK's credentials for it (moto takes any), and returns its
// endpoint.
func sqsFake(t testing.TB) string {
	s := brokertest.NewSQS(t)
	for k, v := range s.SQSEnv() {
		t.Setenv(k, v)
	}
	s.Queue(t, "spotml-score", 10*time.Second)
	return s.Endpoint
}

// TestBatchInferenceBroker scores 3,000 images through each broker
// (four items per message), with every spot node evicted mid-run: the
// counts stay right while it runs, and at the end there is exactly one
// result per good input, each the same as scoring the file here. A broker
// that does not answer is refused at apply, naming spec.queue.uri.
func TestBatchInferenceBroker(t *testing.T) {
	requireORT(t)
	for _, bk := range brokers {
		t.Run(bk.name, func(t *testing.T) {
			server := bk.start(t)
			// The control plane sends with it, the agents' workers receive
			// with it; the other brokers' settings are cleared, whatever
			// the caller's environment holds.
			for _, other := range brokers {
				t.Setenv(other.env, "")
			}
			t.Setenv(bk.env, server)
			testBatchInferenceBroker(t, bk.name, bk.queue, bk.other)
		})
	}
}

func testBatchInferenceBroker(t *testing.T, broker, queue, other string) {
	const n = 3000
	in := t.TempDir()
	keys := writePNGs(t, in, n)
	os.WriteFile(filepath.Join(in, "batch-0", "broken.png"), []byte("not a png"), 0o644)
	// The workers read from a bucket that holds their reads after the
	// first 600, so that the evictions land mid-run on any machine.
	input, gate := gatedS3Input(t, in, append(slices.Clone(keys), "batch-0/broken.png"), 600)
	c := newServingCluster(t)
	c.putModel("models/fmnist.onnx")

	f := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(f, []byte(pool("spot-a", "spot", 3)+batchYAML("refused", input, "**/*.png", "spot-a", "")), 0o644)
	bad, _ := os.ReadFile(f)
	os.WriteFile(f, []byte(strings.Replace(string(bad), "queue: {leaseTimeout: 10s}",
		"queue: {"+other+", leaseTimeout: 10s}", 1)), 0o644)
	if _, err := c.cli("apply", "-f", f); err == nil || !strings.Contains(err.Error(), "spec.queue.uri") || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("apply with a broker that does not answer: %v; want an error naming spec.queue.uri", err)
	}
	if broker == "gcppubsub" {
		// A subscription that does not exist would lose what is sent
		// (Pub/Sub keeps messages only for the subscriptions there are).
		os.WriteFile(f, []byte(strings.Replace(string(bad), "queue: {leaseTimeout: 10s}",
			"queue: {"+strings.Replace(queue, "score-workers", "nope", 1)+", leaseTimeout: 10s}", 1)), 0o644)
		if _, err := c.cli("apply", "-f", f); err == nil || !strings.Contains(err.Error(), "spec.queue.subscription") || !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("apply with a Pub/Sub subscription that does not exist: %v; want an error naming spec.queue.subscription", err)
		}
	}
	if out, _ := c.cli("get", "batchinference"); strings.Contains(out, "refused") {
		t.Fatalf("a refused batch was stored:\n%s", out)
	}

	c.apply(pool("spot-a", "spot", 3) + strings.Replace(batchYAML("score", input, "**/*.png", "spot-a", ""),
		"queue: {leaseTimeout: 10s}", "queue: {"+queue+", leaseTimeout: 10s}", 1))
	start := time.Now()
	waitFor(t, 30*time.Second, "the input listed", func() bool { return !c.batch("score").Listing })
	if b := c.batch("score"); b.Total != n+1 {
		t.Fatalf("total = %d, want %d", b.Total, n+1)
	}
	// Every spot node evicted, at one instant, while the workers hold
	// messages they cannot finish (their reads held at the bucket).
	waitFor(t, 60*time.Second, "the workers held at the bucket", gate.holding)
	evicted := c.evictReady("spot-a")
	// Noticed, the workers may finish what they hold (reads for up to 3
	// leases of 256 let through) and give back the rest.
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
	gate.setLimit(-1)
	// While it runs the ledger adds up: every item pending (waiting or on
	// the broker), in flight, done or failed.
	for range 10 {
		b := c.batch("score")
		if b.Pending+b.InFlight+b.Done+b.Failed != b.Total || b.Total != n+1 {
			t.Fatalf("counts do not add up: %+v", b)
		}
		if b.State != "running" {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	waitFor(t, 120*time.Second, "the batch to finish", func() bool { return c.batch("score").State != "running" })
	b := c.batch("score")
	t.Logf("scored %d items over %s in %s, %d evictions, %d released, %d expired, %d scored again",
		b.Done, broker, time.Since(start).Round(time.Second), b.Evictions, b.Released, b.Expired, b.Redone)
	if b.Done != n || b.Failed != 1 || b.Pending+b.InFlight != 0 {
		t.Fatalf("done %d, failed %d, left %d; want %d, 1, 0", b.Done, b.Failed, b.Pending+b.InFlight, n)
	}
	if b.Evictions < evicted {
		t.Errorf("evictions = %d, want at least %d", b.Evictions, evicted)
	}
	out := filepath.Join(c.data, "blobs", "scored")
	got, _ := filepath.Glob(filepath.Join(out, "*", "*.png.jsonl"))
	if len(got) != n {
		t.Fatalf("%d results, want %d", len(got), n)
	}
	checkBatchResults(t, in, out, keys)
	if logs := c.mustCLI("logs", "batchinference/score"); !strings.Contains(logs, "broken.png") {
		t.Errorf("logs do not list broken.png:\n%s", logs)
	}
	waitFor(t, 30*time.Second, "workers to end", func() bool { b := c.batch("score"); return b.Workers+b.WorkersPending == 0 })
}

// kserveServer is a small KServe v2 server in Python, the kind of model
// server a user brings: its "model" is each row's mean pixel and its
// complement, and it refuses an all-black image (400), as a server
// refusing bad input does.
const kserveServer = `
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

model = open(os.environ["SPOTML_MODEL_PATH"]).read().strip()

class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def send(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        if self.path == "/v2/health/ready":
            return self.send(200, {})
        if self.path == "/v2/models/" + os.environ["SPOTML_BATCH"]:
            return self.send(200, {"name": model, "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 784]}]})
        self.send(404, {"error": "no " + self.path})
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        t = req["inputs"][0]
        n, w = t["shape"][0], t["shape"][1]
        rows = [t["data"][i*w:(i+1)*w] for i in range(n)]
        if t["name"] != "pixels":
            return self.send(400, {"error": "unknown input " + t["name"]})
        if any(max(r) == 0 for r in rows):
            return self.send(400, {"error": "an all-black image"})
        out = []
        for r in rows:
            m = sum(r) / len(r)
            out += [m, 1 - m]
        self.send(200, {"model_name": model, "outputs": [{"name": "brightness", "shape": [n, 2], "datatype": "FP32", "data": out}]})

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
`

// TestBatchInferenceCommand scores images with runtime: command, a Python
// KServe v2 server the worker starts: each result is the server's answer
// for that image, and an image the server refuses fails with its reason.
func TestBatchInferenceCommand(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		missing(t, "SPOTML_REQUIRE_PYTHON", "python3 not installed")
	}
	c := newCluster(t)
	in := filepath.Join(c.data, "blobs", "pics")
	const n = 60
	var keys []string
	for i := range n {
		img := image.NewGray(image.Rect(0, 0, 28, 28))
		for j := range img.Pix {
			img.Pix[j] = uint8((i*7 + j) % 256)
		}
		keys = append(keys, writePNG(t, in, fmt.Sprintf("p/%03d.png", i), img))
	}
	writePNG(t, in, "p/black.png", image.NewGray(image.Rect(0, 0, 28, 28)))
	dir := t.TempDir()
	server := filepath.Join(dir, "server.py")
	os.WriteFile(server, []byte(kserveServer), 0o644)
	model := filepath.Join(dir, "model.txt")
	os.WriteFile(model, []byte("brightness-v1\n"), 0o644)
	c.mustCLI("blob", "put", model, "models/brightness.txt")

	c.apply(pool("od", "ondemand", 2) + fmt.Sprintf(`apiVersion: spotml/v1
kind: BatchInference
metadata: {name: bright}
spec:
  input: {uri: pics/, pattern: "**/*.png"}
  output: {uri: scored/, format: jsonl}
  model: {uri: models/brightness.txt}
  runtime: {type: command, command: [python3, %q], batchSize: 16}
  preprocess: {image: {grayscale: true, size: [28, 28], scale: 1/255}}
  pool: od
  workers: {max: 2, itemsPerWorker: 30}
  queue: {groupSize: 8}
`, server))
	waitFor(t, 90*time.Second, "the batch to finish", func() bool { return c.batch("bright").State != "running" })
	b := c.batch("bright")
	if b.Total != n+1 || b.Failed < 1 {
		t.Fatalf("batch = %+v; want %d items, the black one failed", b, n+1)
	}
	// The black image fails, and so may the others of its batch (the server
	// refuses the whole request): each of them is listed with the reason.
	logs := c.mustCLI("logs", "batchinference/bright")
	if !strings.Contains(logs, "black.png") || !strings.Contains(logs, "all-black") {
		t.Fatalf("logs do not list black.png with the server's reason:\n%s", logs)
	}
	failed := map[string]bool{}
	for line := range strings.SplitSeq(strings.TrimSpace(logs), "\n") {
		k, _, _ := strings.Cut(line, "\t")
		failed[k] = true
	}
	if b.Done+b.Failed != n+1 {
		t.Fatalf("done %d + failed %d, want %d", b.Done, b.Failed, n+1)
	}
	scored := 0
	for i, k := range keys {
		data, err := os.ReadFile(filepath.Join(c.data, "blobs", "scored", k+".jsonl"))
		if failed[k] {
			if err == nil {
				t.Errorf("%s failed but has a result", k)
			}
			continue
		}
		if err != nil {
			t.Fatalf("result of %s: %v", k, err)
		}
		scored++
		var sum float64
		for j := range 784 {
			sum += float64(float32(float64((i*7+j)%256) * (1.0 / 255)))
		}
		mean := sum / 784
		want := fmt.Sprintf(`"input":%q`, k)
		if !strings.Contains(string(data), want) || !strings.Contains(string(data), `"brightness":[`) {
			t.Fatalf("result of %s = %s", k, data)
		}
		var got struct {
			Class   *int                 `json:"class"`
			Outputs map[string][]float64 `json:"outputs"`
		}
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatal(err)
		}
		br := got.Outputs["brightness"]
		if len(br) != 2 || abs(br[0]-mean) > 1e-4 || abs(br[1]-(1-mean)) > 1e-4 || got.Class == nil || *got.Class != map[bool]int{true: 0, false: 1}[mean > 0.5] {
			t.Fatalf("result of %s = %s; want brightness [%.5f %.5f]", k, data, mean, 1-mean)
		}
	}
	if scored != b.Done {
		t.Fatalf("%d results checked, %d done", scored, b.Done)
	}
}

func writePNG(t *testing.T, dir, key string, img image.Image) string {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
	return key
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
