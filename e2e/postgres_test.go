package e2e

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/postgres/pgtest"
)

// TestUpOnPostgres: spotml up --store postgres://… runs a job on local spot
// nodes to the end, with every output, through a SIGKILL of the control
// plane mid-job: the state it restarts over is PostgreSQL's (there is no
// SQLite file in --data).
func TestUpOnPostgres(t *testing.T) {
	dsn := pgtest.New(t).DB(t)
	c := newCluster(t, "--store", dsn)
	c.apply(spotPool("spot-a", "azure", 2) + jobYAML("pg", "pool: spot-a", 3, 20, "0.2"))
	waitFor(t, 30*time.Second, "tasks running", func() bool { return c.job("pg").Counts[store.TaskRunning] == 3 })
	c.stop(syscall.SIGKILL)
	time.Sleep(2 * time.Second)
	c.start()
	if out, err := c.cli("wait", "job", "pg", "--timeout", "90s", "-q"); err != nil {
		t.Fatalf("job did not complete after restart: %v\n%s\n%s", err, out, c.mustCLI("get", "tasks", "pg"))
	}
	for _, task := range c.job("pg").Tasks {
		if task.State != store.TaskSucceeded || task.Failures != 0 {
			t.Errorf("%s: %s with %d failures", task.Name, task.State, task.Failures)
		}
		if _, err := os.Stat(filepath.Join(c.data, "blobs", "outputs", "pg", "out", task.Name, "result.txt")); err != nil {
			t.Errorf("output of %s: %v", task.Name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(c.data, "spotml.db")); !os.IsNotExist(err) {
		t.Errorf("a SQLite store in --data: %v", err)
	}
}
