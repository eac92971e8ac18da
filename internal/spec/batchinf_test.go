package spec

import (
	"strings"
	"testing"
)

const batchOK = `apiVersion: spotml/v1
kind: BatchInference
metadata: {name: score-uploads}
spec:
  input:  {uri: uploads/, pattern: "**/*.png"}
  output: {uri: scored/, format: jsonl}
  model:  {uri: outputs/fashion-mnist/out/model.onnx}
  runtime: {type: builtin}
  preprocess: {image: {grayscale: true, size: [28, 28], scale: 1/255}}
  pool: spot-a
  workers: {min: 0, max: 8, itemsPerWorker: 500}
  trigger: once
  queue: {uri: store}
`

func TestBatchInferenceParses(t *testing.T) {
	docs, err := Parse([]byte(batchOK))
	if err != nil {
		t.Fatal(err)
	}
	b := docs[0].BatchInference
	if b == nil || docs[0].Kind != KindBatchInference || docs[0].Name != "score-uploads" {
		t.Fatalf("doc = %+v", docs[0])
	}
	sp := b.Spec
	if sp.Workers.Max != 8 || sp.Workers.ItemsPerWorker != 500 || sp.Runtime.BatchSize != DefaultBatchSize || sp.Queue.LeaseTimeout.Duration != DefaultLeaseTimeout ||
		sp.Preprocess.Image.Size[0] != 28 || sp.Resources.CPU != 1 {
		t.Fatalf("spec = %+v", sp)
	}
	if s, err := ParseScale(sp.Preprocess.Image.Scale); err != nil || s != 1.0/255 {
		t.Fatalf("scale = %v, %v", s, err)
	}
	// The fallback: any spot pool, then on-demand after 2 preemptions.
	docs, err = Parse([]byte(strings.Replace(batchOK, "pool: spot-a", "priority: spot\n  onDemandAfterPreemptions: 2", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if sp := docs[0].BatchInference.Spec; sp.Priority != PrioritySpot || sp.OnDemandAfterPreemptions != 2 {
		t.Fatalf("spec = %+v", sp)
	}
}

func TestBatchInferenceErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ from, to, field string }{
		{`pattern: "**/*.png"`, `pattern: "**/[a.png"`, "spec.input.pattern"},
		{`{uri: uploads/, pattern`, `{uri: /uploads, pattern`, "spec.input.uri"},
		{`output: {uri: scored/, format: jsonl}`, `output: {uri: uploads/scored/}`, "spec.output.uri"},
		{`format: jsonl`, `format: csv`, "spec.output.format"},
		{`model:  {uri: outputs/fashion-mnist/out/model.onnx}`, `model: {uri: models/}`, "spec.model.uri"},
		{`scale: 1/255`, `scale: 1/0`, "spec.preprocess.image.scale"},
		{`size: [28, 28]`, `size: [28]`, "spec.preprocess.image.size"},
		{`max: 8,`, `max: -1,`, "spec.workers.max"},
		{`min: 0, max: 8`, `min: 9, max: 8`, "spec.workers.max"},
		{`trigger: once`, `trigger: hourly`, "spec.trigger"},
		{`type: builtin}`, `type: torch}`, "spec.runtime.type"},
		{`queue: {uri: store}`, `queue: {uri: "not a url"}`, "spec.queue.uri"},
		{`queue: {uri: store}`, `queue: {uri: store, leaseTimeout: 10ms}`, "spec.queue.leaseTimeout"},
		{`itemsPerWorker: 500}`, `itemsPerWorker: 500, extra: 1}`, "spec.workers.extra"},
		{`queue: {uri: store}`, `queue: {uri: "kafka://topic"}`, "spec.queue.uri"},
		{`queue: {uri: store}`, `queue: {uri: "nats://"}`, "spec.queue.uri"},
		{`queue: {uri: store}`, `queue: {uri: "rabbit://scores"}`, "spec.queue.subscription"},
		{`queue: {uri: store}`, `queue: {uri: "azuresb://scores"}`, "spec.queue.subscription"},
		{`queue: {uri: store}`, `queue: {uri: "nats://scores", subscription: "rabbit://q"}`, "spec.queue.subscription"},
		{`queue: {uri: store}`, `queue: {uri: store, subscription: "nats://x"}`, "spec.queue.subscription"},
		{`queue: {uri: store}`, `queue: {uri: store, groupSize: 5000}`, "spec.queue.groupSize"},
		{`queue: {uri: store}`, `queue: {uri: store, groupSize: -1}`, "spec.queue.groupSize"},
		{`type: builtin}`, `type: command}`, "spec.runtime.command"},
		{`type: builtin}`, `type: builtin, command: [python3, server.py]}`, "spec.runtime.command"},
		{`type: builtin}`, `type: command, command: [python3, s.py], threads: 2}`, "spec.runtime.threads"},
		{`type: builtin}`, `type: command, command: [python3, s.py], env: {PORT: "1"}}`, "spec.runtime.env.PORT"},
		{`type: builtin}`, `type: command, command: [python3, s.py], port: 70000}`, "spec.runtime.port"},
		{`pool: spot-a`, "pool: spot-a\n  onDemandAfterPreemptions: 2", "spec.pool"},
		{`pool: spot-a`, "priority: spot\n  onDemandAfterPreemptions: -1", "spec.onDemandAfterPreemptions"},
	} {
		in := strings.Replace(batchOK, tc.from, tc.to, 1)
		if in == batchOK {
			t.Fatalf("%s: %q not in the spec", tc.field, tc.from)
		}
		_, err := Parse([]byte(in))
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: err = %v; want it to name %s", tc.to, err, tc.field)
		}
	}
}

func TestBatchInferenceBrokerAndCommand(t *testing.T) {
	for _, q := range []string{
		`{uri: "nats://score.uploads", groupSize: 16}`,
		`{uri: "rabbit://scores", subscription: "rabbit://scores-q"}`,
		`{uri: "azuresb://scores", subscription: "azuresb://scores?subscription=workers"}`,
		`{uri: "awssqs://sqs.us-east-2.amazonaws.com/123456789012/scores?awssdk=v2"}`,
		`{uri: "gcppubsub://projects/p/topics/scores", subscription: "gcppubsub://projects/p/subscriptions/workers"}`,
	} {
		in := strings.Replace(batchOK, `queue: {uri: store}`, "queue: "+q, 1)
		in = strings.Replace(in, `runtime: {type: builtin}`, `runtime: {type: command, command: "python3 serve.py", env: {MODE: fast}}`, 1)
		docs, err := Parse([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		sp := docs[0].BatchInference.Spec
		if sp.Runtime.Threads != 0 || sp.Runtime.StartTimeout.Duration != DefaultBatchStartTimeout || len(sp.Runtime.Command) != 3 {
			t.Errorf("%s: runtime = %+v", q, sp.Runtime)
		}
		if want := map[bool]int{true: 16, false: 1}[strings.Contains(q, "groupSize")]; sp.Queue.GroupSize != want {
			t.Errorf("%s: groupSize = %d, want %d", q, sp.Queue.GroupSize, want)
		}
	}
}
