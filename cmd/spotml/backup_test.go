package main

import (
	"database/sql"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/store"
)

const backupSpecs = `
apiVersion: spotml/v1
kind: Pool
metadata: {name: cpu}
spec: {provider: local, priority: spot, instanceType: local-small, max: 3}
---
apiVersion: spotml/v1
kind: Job
metadata: {name: train}
spec: {pool: cpu, count: 2, template: {command: [x]}}
`

// newBackupPlane is newTestPlane with online backups, as spotml up has.
func newBackupPlane(t *testing.T) *testPlane {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(t.Context(), filepath.Join(dir, "spotml.db"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	blobs, err := blob.NewStore("file://" + filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(server.New(server.Config{Store: st, Blobs: blobs, Token: "admin", Backup: st, BackupDir: dir,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now}))
	t.Cleanup(srv.Close)
	return &testPlane{url: srv.URL, store: st, blobs: blobs}
}

// TestBackupAndRestore: spotml backup writes a whole, checked store;
// spotml restore makes it a new data directory's store and refuses a
// directory that has one, a file that is not a spotml store and a store
// newer than this spotml, leaving the directory as it was.
func TestBackupAndRestore(t *testing.T) {
	p := newBackupPlane(t)
	p.apply(t, backupSpecs)
	dir := t.TempDir()
	file := filepath.Join(dir, "b.db")
	for range 2 { // the second replaces the first
		out, err := spotml(t, p.url, "backup", file)
		if err != nil || !strings.Contains(out, "backup "+file) {
			t.Fatalf("backup: %q %v", out, err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	data := filepath.Join(t.TempDir(), "restored")
	if _, err := spotml(t, p.url, "restore", file); err == nil || !strings.Contains(err.Error(), "--data") {
		t.Errorf("restore without --data: %v", err)
	}
	out, err := spotml(t, p.url, "restore", file, "--data", data)
	if err != nil || !strings.Contains(out, "spotml up --data "+data) {
		t.Fatalf("restore: %q %v", out, err)
	}
	st, err := store.Open(t.Context(), filepath.Join(data, "spotml.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	j, err := st.GetJob(t.Context(), "train")
	if err != nil || len(j.Tasks) != 2 {
		t.Errorf("restored job: %+v %v", j, err)
	}
	st.Close()
	entries, _ := os.ReadDir(data)
	if len(entries) != 1 || entries[0].Name() != "spotml.db" {
		t.Errorf("restored data directory holds %v, want spotml.db alone", entries)
	}

	// Refusals.
	_, err = spotml(t, p.url, "restore", file, "--data", data)
	if err == nil || !strings.Contains(err.Error(), "--data "+data+": holds a store already") || !strings.Contains(err.Error(), "new directory") {
		t.Errorf("restore over a store: %v", err)
	}
	notDB := filepath.Join(dir, "notes.txt")
	os.WriteFile(notDB, []byte("hello"), 0o644)
	otherDB := filepath.Join(dir, "other.db")
	db, err := sql.Open("sqlite", otherDB)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE t (x)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	newer := filepath.Join(dir, "newer.db")
	b, _ := os.ReadFile(file)
	os.WriteFile(newer, b, 0o644)
	db, err = sql.Open("sqlite", newer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE schema_version SET version = 9999`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	for _, c := range []struct{ file, want string }{
		{notDB, "not a SQLite database"},
		{otherDB, "not a spotml store"},
		{newer, "schema version 9999"},
		{filepath.Join(dir, "missing.db"), "no such file"},
	} {
		fresh := filepath.Join(t.TempDir(), "fresh")
		_, err := spotml(t, p.url, "restore", c.file, "--data", fresh)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("restore %s: %v, want an error with %q", filepath.Base(c.file), err, c.want)
		}
		if _, err := os.Stat(fresh); err == nil {
			t.Errorf("restore %s made %s", filepath.Base(c.file), fresh)
		}
	}
}

// TestBackupWithoutOnlineBackup: a control plane whose store has no online
// backup says so, and no file is written.
func TestBackupWithoutOnlineBackup(t *testing.T) {
	p := newTestPlane(t)
	file := filepath.Join(t.TempDir(), "b.db")
	if _, err := spotml(t, p.url, "backup", file); err == nil || !strings.Contains(err.Error(), "pg_dump") {
		t.Errorf("backup: %v", err)
	}
	if _, err := os.Stat(file); err == nil {
		t.Error("a file was written")
	}
}

// TestBackupDamagedOnTheWay: a body that does not match the SHA-256 the
// server sent, or is cut off, is refused and the older backup stays.
func TestBackupDamagedOnTheWay(t *testing.T) {
	file := filepath.Join(t.TempDir(), "b.db")
	os.WriteFile(file, []byte("the older backup"), 0o600)
	for _, c := range []struct {
		name, want string
		serve      func(w http.ResponseWriter)
	}{
		{"damaged", "damaged on the way", func(w http.ResponseWriter) {
			w.Header().Set(api.BackupSHA256Header, strings.Repeat("0", 64))
			w.Write([]byte("SQLite format 3\x00 and more"))
		}},
		{"cut off", "unexpected EOF", func(w http.ResponseWriter) {
			w.Header().Set(api.BackupSHA256Header, strings.Repeat("0", 64))
			w.Header().Set("Content-Length", "1000")
			w.Write([]byte("SQLite format 3\x00"))
		}},
		{"no hash", "no " + api.BackupSHA256Header, func(w http.ResponseWriter) {
			w.Write([]byte("SQLite format 3\x00"))
		}},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { c.serve(w) }))
		_, err := spotml(t, srv.URL, "backup", file)
		srv.Close()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
		if b, _ := os.ReadFile(file); string(b) != "the older backup" {
			t.Errorf("%s: the older backup was replaced by %q", c.name, b)
		}
		if left, _ := filepath.Glob(filepath.Join(filepath.Dir(file), ".*tmp")); len(left) != 0 {
			t.Errorf("%s: temporary files left: %v", c.name, left)
		}
	}
}
