package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
)

// TestBlobRoundTrip: put and get through the real blob API, byte for byte,
// a file, a directory and stdout.
func TestBlobRoundTrip(t *testing.T) {
	p := newTestPlane(t)
	dir := t.TempDir()
	data := make([]byte, 5<<20+3)
	rand.Read(data)
	src := filepath.Join(dir, "model.bin")
	os.WriteFile(src, data, 0o644)
	if out, err := spotml(t, p.url, "blob", "put", src, "models/a/model.bin"); err != nil || !strings.Contains(out, "(5242883 bytes)") {
		t.Fatalf("blob put: %q, %v", out, err)
	}
	dest := filepath.Join(dir, "got.bin")
	if _, err := spotml(t, p.url, "blob", "get", "models/a/model.bin", dest); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, data) {
		t.Errorf("blob get wrote %d bytes, want the %d put", len(got), len(data))
	}
	if _, err := spotml(t, p.url, "blob", "get", "models/", filepath.Join(dir, "all")); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "all", "a", "model.bin")); !bytes.Equal(got, data) {
		t.Errorf("blob get models/ wrote %d bytes, want the %d put", len(got), len(data))
	}
	if out, err := spotml(t, p.url, "blob", "get", "models/a/model.bin", "-"); err != nil || out != string(data) {
		t.Errorf("blob get to stdout: %d bytes, %v", len(out), err)
	}
	if _, err := spotml(t, p.url, "blob", "get", "models/a/nope", filepath.Join(dir, "nope")); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("blob get of a missing object: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "nope")); !os.IsNotExist(err) {
		t.Errorf("a failed get left %s", filepath.Join(dir, "nope"))
	}
}

// TestBlobPutStreams: put sends a file as it reads it. The file is a pipe
// whose writer waits for the server to have received the first MiB before
// it closes: a put that reads the whole file first never gets there.
func TestBlobPutStreams(t *testing.T) {
	received := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n int64
		buf := make([]byte, 64<<10)
		for {
			k, err := r.Body.Read(buf)
			if n < 1<<20 && n+int64(k) >= 1<<20 {
				close(received)
			}
			n += int64(k)
			if err != nil {
				break
			}
		}
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	fifo := filepath.Join(t.TempDir(), "pipe")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := spotml(t, srv.URL, "blob", "put", fifo, "big.bin")
		done <- err
	}()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(make([]byte, 1<<20))
	select {
	case <-received:
	case <-time.After(10 * time.Second):
		t.Error("the server got no first MiB while the file was still open: put buffers the whole file")
	}
	w.Write(make([]byte, 1<<20))
	w.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestBlobGetStreams: get writes what arrives before the download ends.
// The server sends 1 MiB and holds the rest back until the CLI has written
// some of it.
func TestBlobGetStreams(t *testing.T) {
	wrote := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, 1<<20))
		w.(http.Flusher).Flush()
		select {
		case <-wrote:
		case <-time.After(10 * time.Second):
		}
		w.Write(make([]byte, 1<<20))
	}))
	defer srv.Close()
	out := &firstWrite{wrote: wrote}
	env := map[string]string{"SPOTML_SERVER": srv.URL, "SPOTML_TOKEN": "t"}
	start := time.Now()
	if err := run(t.Context(), []string{"blob", "get", "big.bin", "-"}, func(k string) string { return env[k] }, out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !out.early {
		t.Errorf("get wrote nothing until the whole object had arrived (%s)", time.Since(start).Round(time.Second))
	}
	if out.n != 2<<20 {
		t.Errorf("get wrote %d bytes, want %d", out.n, 2<<20)
	}
}

// firstWrite closes wrote on the first write; early says whether that was
// before the server sent the second half.
type firstWrite struct {
	wrote chan struct{}
	n     int
	early bool
}

func (f *firstWrite) Write(p []byte) (int, error) {
	if f.n == 0 {
		f.early = len(p) < 2<<20
		close(f.wrote)
	}
	f.n += len(p)
	return len(p), nil
}

// TestBlobGetRefusesEscape: keys a hostile server lists under the prefix
// that would land outside the destination directory are refused, and
// nothing is written.
func TestBlobGetRefusesEscape(t *testing.T) {
	for _, key := range []string{"out/../../evil", "out/a/../../../evil", "other/evil", "out//evil/..", "out/"} {
		t.Run(key, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Query().Has("prefix") {
					json.NewEncoder(w).Encode([]api.BlobObject{{Key: key, Size: 4}})
					return
				}
				io.WriteString(w, "evil")
			}))
			defer srv.Close()
			root := t.TempDir()
			dest := filepath.Join(root, "a", "b")
			_, err := spotml(t, srv.URL, "blob", "get", "out/", dest)
			if err == nil || !strings.Contains(err.Error(), "would be written outside") {
				t.Errorf("blob get out/ with key %q: %v, want it refused", key, err)
			}
			filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					t.Errorf("wrote %s", p)
				}
				return nil
			})
		})
	}
}
