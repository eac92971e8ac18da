package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/blob/powercut"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// TestSucceededReportedOnlyWhenOutputsDurable runs a task whose outputs go
// to a file store on a powercut.Disk, and cuts the power the moment the
// control plane receives the report: in every state the cut could leave,
// the outputs of a task reported succeeded are all there, whole. With syncs
// dropped (the file store before outputs were made durable) the same check
// finds them missing or empty, so it can fail.
func TestSucceededReportedOnlyWhenOutputsDurable(t *testing.T) {
	for _, dropSyncs := range []bool{false, true} {
		t.Run(fmt.Sprintf("dropSyncs=%v", dropSyncs), func(t *testing.T) {
			bad := reportWithPowerCut(t, dropSyncs)
			switch {
			case !dropSyncs:
				for _, b := range bad {
					t.Error(b)
				}
			case len(bad) == 0:
				t.Error("with syncs dropped every output survived the cut; the check cannot see lost outputs")
			default:
				t.Logf("with syncs dropped: %d lost, e.g. %s", len(bad), bad[0])
			}
		})
	}
}

// reportWithPowerCut runs one task and returns what was wrong with the
// outputs in the states a power cut at the succeeded report could leave.
func reportWithPowerCut(t *testing.T, dropSyncs bool) (bad []string) {
	root := t.TempDir()
	d, err := powercut.New(root)
	if err != nil {
		t.Fatal(err)
	}
	if dropSyncs {
		d.DropSyncs()
	}
	blobs, err := blob.NewStore("file://"+filepath.ToSlash(root)+"/blobs", blob.WithDisk(d))
	if err != nil {
		t.Fatal(err)
	}
	workDir := t.TempDir()
	taskDir := filepath.Join(workDir, "tasks", "job1", "t0")

	var report api.ReportRequest
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.Prefix+"/agent/tasks/7/report", func(w http.ResponseWriter, r *http.Request) {
		if err := json.NewDecoder(r.Body).Decode(&report); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// The power goes the moment the report arrives.
		for o := range d.Outcomes() {
			dst := t.TempDir()
			if err := d.Materialize(o, dst); err != nil {
				bad = append(bad, fmt.Sprintf("outcome %d: %v", o, err))
				continue
			}
			for _, name := range []string{"a.txt", "sub/b.bin"} {
				want, err := os.ReadFile(filepath.Join(taskDir, "out", filepath.FromSlash(name)))
				if err != nil {
					bad = append(bad, fmt.Sprintf("task output %s: %v", name, err))
					continue
				}
				got, err := os.ReadFile(filepath.Join(dst, "blobs", "results", "job1", "out", filepath.FromSlash(name)))
				if err != nil || string(got) != string(want) {
					bad = append(bad, fmt.Sprintf("outcome %d: output %s after the cut holds %d bytes (err %v), want %d", o, name, len(got), err, len(want)))
				}
			}
		}
		w.WriteHeader(http.StatusNoContent)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	a := New(Config{Server: srv.URL, Node: "n1", WorkDir: workDir, LogUpload: time.Hour}, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now)
	a.blobs = blobs
	as := api.Assignment{TaskID: 7, Attempt: 1, Job: "job1", JobUID: "uid1", Task: "t0", Spec: spec.TaskSpec{
		Command:     spec.Command{"sh", "-c", "mkdir -p out/sub && printf 'the result' > out/a.txt && yes spotml | head -c 300000 > out/sub/b.bin"},
		OutputFiles: []spec.OutputFile{{Pattern: "out/**", Destination: "results/job1/"}},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	newAttempt(a, as).run(ctx)

	if report.Outcome != store.OutcomeSucceeded {
		t.Fatalf("report = %+v, want succeeded", report)
	}
	return bad
}
