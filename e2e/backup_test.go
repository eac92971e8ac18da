package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/proc"
)

// TestBackupRestore: a spotml with pools, a finished job with outputs, a
// serving service and cost history is backed up while it runs and serves;
// the backup restored into a fresh data directory (with the blob store
// copied after it, as the README says) starts as a spotml that has all of
// it, serves the service again on nodes of its own, and leaves the first
// spotml's nodes alone.
func TestBackupRestore(t *testing.T) {
	c := newCluster(t)
	model := filepath.Join(t.TempDir(), "model.txt")
	os.WriteFile(model, []byte("a model\n"), 0o644)
	c.mustCLI("blob", "put", model, "models/echo/model.txt")
	c.apply(spotPool("spot-b", "azure", 3) + jobYAML("backed", "pool: spot-b", 2, 3, "0.05") + `---
apiVersion: spotml/v1
kind: Service
metadata: {name: echo}
spec:
  model: {uri: models/echo/model.txt}
  runtime: {type: command, command: [sh, -c, 'exec python3 -m http.server "$PORT" --bind 127.0.0.1']}
  resources: {cpu: 1, memory: 128Mi}
  replicas: {min: 1}
  placement: {tier: dev}
`)
	if out, err := c.cli("wait", "job", "backed", "--timeout", "90s", "-q"); err != nil {
		t.Fatalf("job: %v\n%s", err, out)
	}
	waitFor(t, 60*time.Second, "service echo ready", func() bool { return len(c.readyReplicas("echo")) == 1 })
	before := c.costNow()
	if before.Spent <= 0 || len(before.Lines) == 0 {
		t.Fatalf("no cost yet: %+v", before)
	}
	oldNodes := map[string]bool{}
	for _, n := range c.nodes() {
		oldNodes[n.Name] = true
	}

	// The backup is taken while the service answers requests through the
	// gateway, without a failed one.
	var served, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := http.Get("http://" + c.gw + "/services/echo/")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if err != nil || resp.StatusCode != http.StatusOK {
				failed.Add(1)
			} else {
				served.Add(1)
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	file := filepath.Join(t.TempDir(), "spotml.backup")
	out := c.mustCLI("backup", file)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if !strings.Contains(out, "SHA-256") {
		t.Errorf("backup said %q", out)
	}
	if served.Load() == 0 || failed.Load() != 0 {
		t.Errorf("while backing up: %d requests served, %d failed", served.Load(), failed.Load())
	}

	// Restore: refused over the running store, done into a new directory,
	// blobs copied after the backup.
	if _, err := c.cli("restore", file, "--data", c.data); err == nil || !strings.Contains(err.Error(), "holds a store already") {
		t.Errorf("restore over the running store: %v", err)
	}
	data := filepath.Join(t.TempDir(), "restored")
	c.mustCLI("restore", file, "--data", data)
	if err := copyDir(filepath.Join(c.data, "blobs"), filepath.Join(data, "blobs")); err != nil {
		t.Fatal(err)
	}
	r := newClusterIn(t, data)

	var pools []api.Pool
	if err := json.Unmarshal([]byte(r.mustCLI("get", "pools", "-o", "json")), &pools); err != nil || len(pools) != 1 || pools[0].Spec.Metadata.Name != "spot-b" {
		t.Errorf("restored pools: %+v %v", pools, err)
	}
	j := r.job("backed")
	if j.State != api.JobSucceeded || len(j.Tasks) != 2 {
		t.Errorf("restored job: %s with %d tasks", j.State, len(j.Tasks))
	}
	for _, task := range j.Tasks {
		if task.State != api.TaskSucceeded || len(task.Attempts) == 0 {
			t.Errorf("restored task %s: %s, attempts %+v", task.Name, task.State, task.Attempts)
		}
		got := r.mustCLI("blob", "get", "outputs/backed/out/"+task.Name+"/result.txt", "-")
		if !strings.Contains(got, task.Name+" done") {
			t.Errorf("restored output of %s: %q", task.Name, got)
		}
		if logs := r.mustCLI("logs", "backed/"+task.Name); !strings.Contains(logs, "starts at step") {
			t.Errorf("restored logs of %s: %q", task.Name, logs)
		}
	}
	after := r.costNow()
	if after.Spent < before.Spent || len(after.Lines) != len(before.Lines) {
		t.Errorf("restored cost %+v, before the backup %+v", after, before)
	}
	var hist api.CostHistory
	if err := json.Unmarshal([]byte(r.api("/cost/history?points=10")), &hist); err != nil || len(hist.Times) != 10 || hist.Total.Spent[9] < before.Spent {
		t.Errorf("restored cost history: %+v %v", hist, err)
	}
	found := false
	for _, e := range r.events() {
		found = found || (e.Object == "job/backed" && e.Kind == "Succeeded")
	}
	if !found {
		t.Error("restored events lack job/backed's Succeeded")
	}
	if s := r.service("echo"); s.Generation != 1 || s.Model != "models/echo/model.txt" {
		t.Errorf("restored service: %+v", s)
	}

	// The restored spotml finds the nodes of the backup gone (they are the
	// first spotml's) and serves on its own.
	waitFor(t, 90*time.Second, "restored service echo ready on a node of its own", func() bool {
		for _, rp := range r.readyReplicas("echo") {
			if !oldNodes[rp.Node] {
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "the restored gateway to serve echo", func() bool { return get(r.gw, "/services/echo/") == nil })
	// The restored spotml stopped the nodes it found lost, which are the
	// first spotml's: their agents must still run, and serve.
	for name := range oldNodes {
		ids, err := proc.ReadFile(filepath.Join(c.nodeDir(name), "agent.pid"))
		if err != nil || len(ids) != 1 {
			t.Fatalf("agent of %s: %v %v", name, ids, err)
		}
		if now, err := proc.Identify(ids[0].PID); err != nil || now != ids[0] {
			t.Errorf("the first spotml's agent of %s was killed by the restored one", name)
		}
	}
	if err := get(c.gw, "/services/echo/"); err != nil {
		t.Errorf("the first spotml's gateway: %v", err)
	}
}

// get GETs path from addr and wants 200.
func get(addr, path string) error {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s%s: %s", addr, path, resp.Status)
	}
	return nil
}

// costNow is GET /cost.
func (c *cluster) costNow() api.Cost {
	c.t.Helper()
	var s api.Cost
	if err := json.Unmarshal([]byte(c.mustCLI("cost", "-o", "json")), &s); err != nil {
		c.t.Fatal(err)
	}
	return s
}

// api GETs an API path with the cluster's admin token.
func (c *cluster) api(path string) string {
	c.t.Helper()
	token, err := os.ReadFile(filepath.Join(c.data, "token"))
	if err != nil {
		c.t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.addr+api.Prefix+path, nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		c.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return string(b)
}

// copyDir copies the files under src to dst, as cp -r would.
func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: not a regular file", p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, 0o644)
	})
}
