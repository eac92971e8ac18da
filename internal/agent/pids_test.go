package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestWritePIDsConcurrent: attempts that end at once (a notice stops every
// task of a node) each record the task process groups; no write may fail
// for another's (they shared one temporary file). That an older list
// cannot land last follows from the same lock; this test does not see it.
func TestWritePIDsConcurrent(t *testing.T) {
	var logs strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), nil))
	dir := t.TempDir()
	a := New(Config{Node: "n1", Server: "http://127.0.0.1:1", WorkDir: dir}, log, time.Now)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				a.writePIDs()
			}
		})
	}
	wg.Wait()
	if s := logs.String(); strings.Contains(s, "cannot record") {
		t.Errorf("concurrent writes failed:\n%s", s)
	}
	if _, err := os.Stat(filepath.Join(dir, "tasks.pids")); err != nil {
		t.Error(err)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
