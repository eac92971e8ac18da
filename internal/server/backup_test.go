package server_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/store"
)

// TestBackup: GET /backup streams a store that opens on its own and holds
// what was there, taken while writers keep committing; each copy is one
// commit's state (a job is there with all its tasks, or not at all).
func TestBackup(t *testing.T) {
	dir := t.TempDir()
	a := newAPI(t, func(c *server.Config) { c.Backup, c.BackupDir = c.Store, dir })
	a.admin("POST", "/apply", applyFiles("p.yaml", poolYAML), http.StatusOK)

	// A writer applies jobs of five tasks, one transaction each, as fast
	// as it can while the backups are taken.
	const tasks = 5
	stop := make(chan struct{})
	applied := make(chan int)
	go func() {
		n := 0
		defer func() { applied <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			job := fmt.Sprintf("apiVersion: spotml/v1\nkind: Job\nmetadata: {name: j%d}\nspec:\n  pool: cpu\n  count: %d\n  template:\n    command: [\"true\"]\n", n, tasks)
			body, _ := json.Marshal(applyFiles("j.yaml", job))
			req, _ := http.NewRequest(http.MethodPost, a.url+api.Prefix+"/apply", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+adminToken)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return
			}
			n++
		}
	}()
	var sizes []int
	for i := range 5 {
		r := a.admin("GET", "/backup", nil, http.StatusOK)
		if ct := r.header.Get("Content-Type"); ct != api.BackupContentType {
			t.Errorf("backup Content-Type %q", ct)
		}
		if sum := sha256.Sum256(r.body); r.header.Get(api.BackupSHA256Header) != hex.EncodeToString(sum[:]) {
			t.Errorf("backup %s %q, body's %x", api.BackupSHA256Header, r.header.Get(api.BackupSHA256Header), sum)
		}
		if cl := r.header.Get("Content-Length"); cl != fmt.Sprint(len(r.body)) {
			t.Errorf("backup Content-Length %s, body %d bytes", cl, len(r.body))
		}
		file := filepath.Join(t.TempDir(), fmt.Sprintf("backup-%d.db", i))
		if err := os.WriteFile(file, r.body, 0o600); err != nil {
			t.Fatal(err)
		}
		if v, err := store.CheckBackup(a.ctx, file); err != nil || v < 1 {
			t.Fatalf("backup %d: version %d, %v", i, v, err)
		}
		st, err := store.Open(a.ctx, file, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ps, err := st.ListPools(a.ctx); err != nil || len(ps) != 1 || ps[0].Spec.Metadata.Name != "cpu" {
			t.Errorf("backup %d pools: %+v %v", i, ps, err)
		}
		js, err := st.ListJobs(a.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range js {
			if n := j.Counts[store.TaskPending] + j.Counts[store.TaskRunning] + j.Counts[store.TaskSucceeded] + j.Counts[store.TaskFailed]; n != tasks {
				t.Errorf("backup %d: job %s with %d of its %d tasks: not one commit's state", i, j.Spec.Metadata.Name, n, tasks)
			}
		}
		sizes = append(sizes, len(js))
		st.Close()
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	n := <-applied
	t.Logf("jobs in the backups: %v; %d applied", sizes, n)
	if n < 2 || sizes[len(sizes)-1] == sizes[0] {
		t.Errorf("jobs in the backups %v, %d applied in all: the writer did not go on while backups were taken", sizes, n)
	}
	// The snapshots' temporary files are gone.
	if left, _ := filepath.Glob(filepath.Join(dir, ".backup-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// TestBackupNeedsStoreSupport: without a store that backs up online the
// endpoint says what to do instead.
func TestBackupNeedsStoreSupport(t *testing.T) {
	a := newAPI(t)
	r := a.admin("GET", "/backup", nil, http.StatusNotImplemented)
	if msg := r.errorText(t); !strings.Contains(msg, "pg_dump") {
		t.Errorf("501 message: %s", msg)
	}
	viewer := a.token("screen", store.RoleViewer)
	if r := a.do("GET", api.Prefix+"/backup", viewer, nil); r.code != http.StatusForbidden {
		t.Errorf("a viewer's backup: %s", r)
	}
}
