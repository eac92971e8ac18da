package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spotml/spotml/bench/chaos"
)

// TestSoak is the chaos soak (bench/soak) for 90 seconds: evictions,
// SIGKILLed nodes, tasks, replicas and control plane, jobs, two services
// under load and hostile input at once, then every check of the soak.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("the chaos soak takes about three minutes")
	}
	requireORT(t)
	dir := t.TempDir()
	var progress bytes.Buffer
	rep, err := chaos.Run(context.Background(), chaos.Config{
		Duration:    90 * time.Second,
		Seed:        1,
		Rate:        20,
		Bin:         binary,
		Dir:         dir,
		ModelFile:   filepath.Join("..", "examples", "fashion-mnist", "model.onnx"),
		RequestFile: filepath.Join("..", "examples", "fashion-mnist", "sample-request.json"),
		ORTLib:      os.Getenv("SPOTML_ONNXRUNTIME_LIB"),
		Drain:       2 * time.Minute,
		Progress:    &progress,
	})
	if rep != nil {
		var out bytes.Buffer
		rep.Print(&out)
		t.Log(out.String())
		for _, c := range rep.Checks {
			if c.Status == chaos.Fail {
				t.Errorf("%s: %s", c.Name, c.Detail)
			}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if t.Failed() {
		t.Logf("soak progress:\n%s", tail(progress.String(), 12000))
		b, _ := os.ReadFile(filepath.Join(dir, "data", "up.log"))
		t.Logf("spotml up log (tail):\n%s", tail(string(b), 6000))
	}
}
