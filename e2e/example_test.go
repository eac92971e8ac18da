package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
)

// TestFashionMNISTExample runs the shipped example as the demo does: the
// real pools.yaml and job.yaml, train.py uploaded to the blob store, one
// eviction of the training's node once it has a checkpoint. The model must
// reach 85 % test accuracy, resumed from the checkpoint, with its outputs in
// the blob api. It takes a few minutes; it needs Debian's python3-torch
// and dataset-fashion-mnist (.ci/run installs them and sets
// SPOTML_REQUIRE_EXAMPLE=1 so that their absence fails instead of skipping).
func TestFashionMNISTExample(t *testing.T) {
	if testing.Short() {
		t.Skip("takes minutes; skipped with -short")
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import torch, onnx").Run(); err != nil {
		if os.Getenv("SPOTML_REQUIRE_EXAMPLE") != "" {
			t.Fatalf("python3-torch / python3-onnx missing: %v", err)
		}
		t.Skip("python3-torch or python3-onnx not installed")
	}
	if _, err := os.Stat("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"); err != nil {
		if os.Getenv("SPOTML_REQUIRE_EXAMPLE") != "" {
			t.Fatal("dataset-fashion-mnist missing")
		}
		t.Skip("dataset-fashion-mnist not installed")
	}
	c := newCluster(t)
	ex := filepath.Join("..", "examples", "fashion-mnist")
	c.mustCLI("blob", "put", filepath.Join(ex, "train.py"), "examples/fashion-mnist/train.py")
	c.mustCLI("apply", "-f", filepath.Join(ex, "pools.yaml"), "-f", filepath.Join(ex, "job.yaml"))

	var node string
	waitFor(t, 2*time.Minute, "a checkpoint of the first attempt", func() bool {
		ts := c.job("fashion-mnist").Tasks
		if len(ts) == 0 || ts[0].State != api.TaskRunning || ts[0].Attempt != 1 {
			return false
		}
		node = ts[0].Node
		out, _ := c.cli("blob", "ls", "checkpoints/fashion-mnist/")
		return strings.Contains(out, "LATEST")
	})
	time.Sleep(10 * time.Second)
	// train.py reports its step through SPOTML_PROGRESS_FILE.
	if p := c.job("fashion-mnist").Tasks[0]; p.Progress == nil || *p.Progress <= 0 || !strings.Contains(p.ProgressMessage, "epoch") {
		t.Errorf("no progress from the training task: %v %q", p.Progress, p.ProgressMessage)
	}
	c.mustCLI("evict", node, "--notice", "10s")
	if out, err := c.cli("wait", "job", "fashion-mnist", "--timeout", "15m", "-q"); err != nil {
		logs, _ := c.cli("logs", "fashion-mnist/train")
		t.Fatalf("training failed: %v\n%s\n%s", err, out, tail(logs, 4000))
	}
	task := c.job("fashion-mnist").Tasks[0]
	if task.Evictions < 1 || task.Failures != 0 {
		t.Errorf("attempt %d, evictions %d, failures %d", task.Attempt, task.Evictions, task.Failures)
	}
	out := filepath.Join(c.data, "blobs", "outputs", "fashion-mnist", "out")
	b, err := os.ReadFile(filepath.Join(out, "metrics.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		TestAccuracy    float64 `json:"test_accuracy"`
		ResumedFromStep *int    `json:"resumed_from_step"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	resumed := "none"
	if m.ResumedFromStep != nil {
		resumed = strconv.Itoa(*m.ResumedFromStep)
	}
	t.Logf("test accuracy %.4f, resumed from step %s", m.TestAccuracy, resumed)
	if m.TestAccuracy < 0.85 {
		t.Errorf("test accuracy %.4f < 0.85", m.TestAccuracy)
	}
	if task.Evictions > 0 && (m.ResumedFromStep == nil || *m.ResumedFromStep == 0) {
		t.Errorf("the last attempt did not resume from a checkpoint: %s", b)
	}
	for _, f := range []string{"model.onnx", "model.pt"} {
		if fi, err := os.Stat(filepath.Join(out, f)); err != nil || fi.Size() < 1000 {
			t.Errorf("%s: %v", f, err)
		}
	}
	if logs := c.mustCLI("logs", "fashion-mnist/train"); !strings.Contains(logs, "resumed from checkpoint") {
		t.Errorf("logs lack the resume line:\n%s", tail(logs, 3000))
	}
}
