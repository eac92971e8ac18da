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
