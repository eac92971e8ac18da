// Package pgtest starts a throwaway PostgreSQL 15 cluster for the tests of
// one package: initdb and pg_ctl from Debian's PostgreSQL, run as the
// postgres user when the tests run as root (initdb refuses root), in a
// temporary directory, listening only on a unix socket there
// (listen_addresses=”), with fsync off (for tests only: a crash of the
// test machine may lose the cluster, which is thrown away anyway). Each
// test gets a database of its own.
//
//	var cluster *pgtest.Cluster
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &cluster)) }
//
//	func TestX(t *testing.T) { dsn := cluster.DB(t) … }
//
// Where PostgreSQL is not installed the tests that ask for a database are
// skipped, saying so, unless SPOTML_REQUIRE_POSTGRES=1 (CI), where they
// fail.
package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
)

// Bin is where Debian installs PostgreSQL 15's programs.
const Bin = "/usr/lib/postgresql/15/bin"

// RequireEnv, set to 1, makes a missing PostgreSQL a test failure.
const RequireEnv = "SPOTML_REQUIRE_POSTGRES"

// Cluster is a running throwaway PostgreSQL cluster.
type Cluster struct {
	dir   string // holds data/, the socket and the log
	admin *sql.DB
	cred  *syscall.Credential // the postgres user's, when running as root
	next  atomic.Int64
	// err is why there is no cluster (not installed, failed to start).
	err error
}

// Main starts a cluster into *c, runs the package's tests and stops the
// cluster; it returns the exit code for os.Exit. When the cluster cannot
// start, *c says why and its DB skips (or fails) each test.
func Main(m *testing.M, c **Cluster) int {
	cl, err := Start(context.Background())
	if err != nil {
		cl = &Cluster{err: err}
	}
	*c = cl
	code := m.Run()
	if err := cl.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// New starts a cluster for one test or benchmark and stops it when that
// ends; where it cannot start, the Cluster's DB skips (or fails) as in
// Main. For a benchmark that wants PostgreSQL beside SQLite without every
// test of its package paying for a cluster.
func New(tb testing.TB) *Cluster {
	tb.Helper()
	c, err := Start(tb.Context())
	if err != nil {
		return &Cluster{err: err}
	}
	tb.Cleanup(func() {
		if err := c.Stop(); err != nil {
			tb.Errorf("pgtest: %v", err)
		}
	})
	return c
}

// Start initializes and starts a cluster in a new temporary directory.
func Start(ctx context.Context) (*Cluster, error) {
	if _, err := os.Stat(filepath.Join(Bin, "initdb")); err != nil {
		return nil, fmt.Errorf("PostgreSQL 15 is not installed (%s/initdb: %w); install it with apt-get install postgresql", Bin, err)
	}
	parent := ""
	if os.Geteuid() == 0 {
		// The postgres user must reach the directory: $TMPDIR may be
		// under root's home.
		parent = "/tmp"
	}
	dir, err := os.MkdirTemp(parent, "spotml-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("initdb refuses root and there is no postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	if err := c.run(ctx, "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	opts := "-c listen_addresses='' -k " + dir + " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
	if err := c.run(ctx, "pg_ctl", "-D", data, "-l", filepath.Join(dir, "log"), "-o", opts, "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%w\n%s", err, log)
	}
	c.admin, err = sql.Open("pgx", c.DSN("postgres"))
	if err == nil {
		err = c.admin.PingContext(ctx)
	}
	if err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// DSN is the URL of database name in the cluster.
func (c *Cluster) DSN(name string) string {
	return "postgres:///" + name + "?host=" + url.QueryEscape(c.dir) + "&user=postgres"
}

// DB creates an empty database for the test and returns its DSN; it is
// dropped when the test ends. Without a cluster it skips the test, or
// fails it when SPOTML_REQUIRE_POSTGRES=1.
func (c *Cluster) DB(tb testing.TB) string {
	tb.Helper()
	if c == nil || c.err != nil {
		why := "no cluster: call pgtest.Main from TestMain"
		if c != nil {
			why = c.err.Error()
		}
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatalf("PostgreSQL is required (%s=1) but: %s", RequireEnv, why)
		}
		tb.Skipf("skipping the PostgreSQL test: %s (set %s=1 to make this a failure)", why, RequireEnv)
	}
	name := fmt.Sprintf("t%d_%d", os.Getpid(), c.next.Add(1))
	if _, err := c.admin.Exec(`CREATE DATABASE ` + name + ` TEMPLATE template0`); err != nil {
		tb.Fatalf("create database: %v", err)
	}
	tb.Cleanup(func() {
		// WITH (FORCE): a store the test left open must not keep it.
		if _, err := c.admin.Exec(`DROP DATABASE IF EXISTS ` + name + ` WITH (FORCE)`); err != nil {
			tb.Errorf("drop database %s: %v", name, err)
		}
	})
	return c.DSN(name)
}

// Stop stops the cluster at once and removes its directory.
func (c *Cluster) Stop() error {
	if c == nil || c.dir == "" {
		return nil
	}
	if c.admin != nil {
		c.admin.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := c.run(ctx, "pg_ctl", "-D", filepath.Join(c.dir, "data"), "-m", "immediate", "-w", "stop")
	return errors.Join(err, os.RemoveAll(c.dir))
}

// run runs one of PostgreSQL's programs, as the postgres user when we are
// root.
func (c *Cluster) run(ctx context.Context, prog string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(Bin, prog), args...)
	cmd.Dir = c.dir
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	// pg_ctl's server would otherwise hold our output pipes open.
	out, err := os.CreateTemp("", "spotml-pg-out-")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(out.Name())
		return fmt.Errorf("%s: %w\n%s", prog, err, b)
	}
	return nil
}

var _ = stdlib.GetDefaultDriver // registers the "pgx" database/sql driver
