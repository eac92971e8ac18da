package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store/postgres"
	"github.com/spotml/spotml/internal/store/postgres/pgtest"
	"github.com/spotml/spotml/internal/store/sqlstore"
	"github.com/spotml/spotml/internal/store/storetest"
)

// cluster is this package's PostgreSQL (TestMain, in blobstore_test.go).
var cluster *pgtest.Cluster

// TestStoreBadDSN: a --store that names no store is refused with the flag
// named and the fix, before anything is created, by server and gateway.
func TestStoreBadDSN(t *testing.T) {
	for _, args := range [][]string{
		{"server", "--store", "mysql://u:secret@db/spotml", "--addr", "127.0.0.1:0", "--gateway-addr", ""},
		{"server", "--store", "spotml.db", "--addr", "127.0.0.1:0", "--gateway-addr", ""},
		{"gateway", "--store", "mysql://u:secret@db/spotml", "--addr", "127.0.0.1:0"},
	} {
		data := filepath.Join(t.TempDir(), "data")
		err := run(t.Context(), append(args, "--data", data), func(string) string { return "" }, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--store") || !strings.Contains(err.Error(), "postgres://USER:PASSWORD@HOST:5432/DB") {
			t.Errorf("%v: err = %v, want one naming --store and the forms it takes", args, err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%v: the error shows the password: %v", args, err)
		}
		if _, err := os.Stat(filepath.Join(data, "spotml.db")); !os.IsNotExist(err) {
			t.Errorf("%v: a SQLite store was made: %v", args, err)
		}
	}
}

// TestServerOnPostgres: spotml server --store postgres://… migrates the
// database, serves the API over it, and what is applied is in PostgreSQL
// (not in a SQLite file in --data) after it stops.
func TestServerOnPostgres(t *testing.T) {
	dsn := cluster.DB(t)
	data := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"server", "--store", dsn, "--data", data, "--addr", "127.0.0.1:0", "--gateway-addr", ""},
			func(string) string { return "" }, pw, io.Discard)
		pw.Close()
	}()
	var url string
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "API:"); ok {
			url = strings.TrimSpace(u)
			break
		}
	}
	go io.Copy(io.Discard, pr)
	if url == "" {
		cancel()
		t.Fatalf("server did not come up: %v", <-done)
	}
	token, err := os.ReadFile(filepath.Join(data, "token"))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "pool.yaml")
	if err := os.WriteFile(file, []byte(storetest.PoolCPU), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SPOTML_SERVER": url, "SPOTML_TOKEN": strings.TrimSpace(string(token)), "SPOTML_DATA": t.TempDir()}
	getenv := func(k string) string { return env[k] }
	if err := run(t.Context(), []string{"apply", "-f", file}, getenv, io.Discard, io.Discard); err != nil {
		t.Fatalf("apply: %v", err)
	}
	var out strings.Builder
	if err := run(t.Context(), []string{"get", "pools"}, getenv, &out, io.Discard); err != nil || !strings.Contains(out.String(), "cpu") {
		t.Fatalf("get pools = %q, %v; want pool cpu", out.String(), err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("server: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("server did not stop")
	}
	if _, err := os.Stat(filepath.Join(data, "spotml.db")); !os.IsNotExist(err) {
		t.Errorf("a SQLite store was made in --data: %v", err)
	}
	st, err := postgres.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.GetPool(t.Context(), "cpu"); err != nil {
		t.Errorf("pool cpu in PostgreSQL: %v", err)
	}
	var v int
	if err := st.DB().QueryRow(`SELECT version FROM schema_version`).Scan(&v); err != nil || v != sqlstore.SchemaVersion() {
		t.Errorf("schema version = %d, %v; want %d", v, err, sqlstore.SchemaVersion())
	}
}
