package client

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestDownloadNoTotalTimeout: a download that takes longer than both the
// API calls' timeout and the stall timeout succeeds while bytes keep
// arriving; one that stops arriving fails, naming the stall.
func TestDownloadNoTotalTimeout(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			for range 30 {
				w.Write([]byte("x"))
				w.(http.Flusher).Flush()
				time.Sleep(50 * time.Millisecond)
			}
		case "/stalled":
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}
	}))
	defer srv.Close()
	c := New(srv.URL, "t")
	c.http.Timeout = 500 * time.Millisecond
	c.stall = time.Second

	body, err := c.Download(t.Context(), "/slow")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(body)
	body.Close()
	if err != nil || string(b) != strings.Repeat("x", 30) {
		t.Errorf("slow download: %q, %v; want 30 bytes", b, err)
	}

	c.stall = 200 * time.Millisecond
	body, err = c.Download(t.Context(), "/stalled")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(body)
	body.Close()
	if err == nil || !strings.Contains(err.Error(), "no data moved for 200ms") {
		t.Errorf("stalled download: %v, want a stall error", err)
	}
}

// TestUploadErrors: a refused upload's error is the server's message.
func TestUploadErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":"blob path \"../x\" leaves the store"}`)
	}))
	defer srv.Close()
	err := New(srv.URL, "t").Upload(t.Context(), http.MethodPut, "/x", bytes.NewReader([]byte("abc")), 3)
	if Code(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "leaves the store") {
		t.Errorf("Upload = %v, want the server's 400", err)
	}
}
