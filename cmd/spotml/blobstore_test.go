package main

import (
	"bytes"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/blob/blobtest"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/store/postgres/pgtest"
	"github.com/spotml/spotml/internal/store/sqlite"
)

// TestMain starts a throwaway PostgreSQL cluster for the --store tests
// (store_test.go) and stops the Azurite the blob tests started.
func TestMain(m *testing.M) {
	// The control-plane tests (ha_test.go) run spotml as separate
	// processes: this test binary, which is spotml's main when asked.
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	code := pgtest.Main(m, &cluster)
	blobtest.StopAzurite()
	os.Exit(code)
}

// TestBlobCLICloudStores: spotml blob put, ls and get through a control
// plane whose default store is each cloud's, against its stand-in.
func TestBlobCLICloudStores(t *testing.T) {
	for _, kind := range []string{"s3", "gs", "azblob"} {
		t.Run(kind, func(t *testing.T) {
			var bucket string
			switch kind {
			case "s3":
				bucket = blobtest.StartS3(t).Bucket(t)
			case "gs":
				bucket = blobtest.StartGCS(t).Bucket(t)
			case "azblob":
				bucket = blobtest.StartAzurite(t).Bucket(t)
			}
			u, _ := url.Parse(bucket)
			u.Path = "/spotml"
			blobs, err := openBlobStore(t.Context(), u.String(), t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer blobs.Close()
			p := newTestPlaneWith(t, blobs)

			dir := t.TempDir()
			data := make([]byte, 6<<20+5)
			rand.Read(data)
			src := filepath.Join(dir, "model.bin")
			os.WriteFile(src, data, 0o644)
			if _, err := spotml(t, p.url, "blob", "put", src, "models/a/model.bin"); err != nil {
				t.Fatal(err)
			}
			if out, err := spotml(t, p.url, "blob", "ls", "models/"); err != nil || !strings.Contains(out, "models/a/model.bin") {
				t.Errorf("blob ls = %q, %v", out, err)
			}
			dest := filepath.Join(dir, "got.bin")
			if _, err := spotml(t, p.url, "blob", "get", "models/a/model.bin", dest); err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(dest); !bytes.Equal(got, data) {
				t.Errorf("blob get wrote %d bytes, want the %d put", len(got), len(data))
			}
			// It is in the bucket, under the store's prefix.
			if got, err := blobs.ReadAll(t.Context(), blobs.Join(bucket, "spotml/models/a/model.bin")); err != nil || !bytes.Equal(got, data) {
				t.Errorf("object in the bucket: %d bytes, %v", len(got), err)
			}
			if _, err := spotml(t, p.url, "blob", "get", "models/a/nope", filepath.Join(dir, "nope")); err == nil || !strings.Contains(err.Error(), "not found") {
				t.Errorf("blob get of a missing object: %v", err)
			}
		})
	}
}

// TestServerBlobStoreErrors: a --blob-store that cannot be used stops the
// server before it starts, with the flag named and the fix.
func TestServerBlobStoreErrors(t *testing.T) {
	s3 := blobtest.StartS3(t)
	for _, tt := range []struct {
		store string
		want  []string
	}{
		{"ftp://host/x", []string{"--blob-store", "scheme ftp is not supported: use s3://BUCKET/PATH"}},
		{"/var/blobs", []string{"--blob-store", "want a URL such as file:///var/lib/spotml/blobs"}},
		{s3.URL("missing-bucket"), []string{"--blob-store", `bucket "missing-bucket" does not exist: create it`}},
		{"s3://b/x?regoin=us-east-1", []string{"--blob-store", `unknown query parameter "regoin"`, "AWS_ACCESS_KEY_ID"}},
	} {
		data := filepath.Join(t.TempDir(), "data")
		err := run(t.Context(), []string{"server", "--data", data, "--blob-store", tt.store, "--addr", "127.0.0.1:0", "--gateway-addr", ""},
			func(string) string { return "" }, io.Discard, io.Discard)
		for _, w := range tt.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("--blob-store %s: err = %v, want it to say %q", tt.store, err, w)
			}
		}
		if _, err := os.Stat(data); !os.IsNotExist(err) {
			t.Errorf("--blob-store %s: data directory created: %v", tt.store, err)
		}
	}
}

func newTestPlaneWith(t *testing.T, blobs *blob.Store) *testPlane {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "spotml.db"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv := httptest.NewServer(server.New(server.Config{Store: st, Blobs: blobs, Token: "admin",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now}))
	t.Cleanup(srv.Close)
	return &testPlane{url: srv.URL, store: st, blobs: blobs}
}
