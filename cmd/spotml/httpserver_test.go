package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store/sqlite"
	"golang.org/x/sync/errgroup"
)

// dial opens a raw connection to addr, closed with the test.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reports whether the server closes c within d (reading
// and discarding whatever it sends before).
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 4096)
	for {
		_, err := c.Read(buf)
		if err != nil {
			return !errors.Is(err, os.ErrDeadlineExceeded)
		}
	}
}

// The gateway that spotml up and spotml gateway run cuts off a client
// whose body stalls (408, then the connection closes) and an idle
// keep-alive connection. (Before, the gateway set only a header timeout:
// both held their connection, and a buffer, for ever.)
func TestGatewayServerCutsSlowAndIdleClients(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "spotml.db"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	g, gctx := errgroup.WithContext(ctx)
	t.Cleanup(func() {
		cancel()
		_ = g.Wait()
		st.Close()
	})
	opts := gatewayOptions{timeouts: timeouts{read: 300 * time.Millisecond, write: 2 * time.Second, idle: 300 * time.Millisecond}}
	url, _, err := runGateway(gctx, g, st, "127.0.0.1:0", "test", opts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(url, "http://")

	// No service is routed, so the gateway answers 404 without reading
	// the body; the server then reads the rest of a small body before
	// it answers, and that read is what a stalled client must not hold
	// for ever.
	slow := dial(t, addr)
	fmt.Fprintf(slow, "POST /v1/models/m:predict HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n{\"")
	if !closedWithin(slow, 3*time.Second) {
		t.Error("stalled body: connection still open after the read timeout")
	}

	idle := dial(t, addr)
	fmt.Fprintf(idle, "GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
	br := bufio.NewReader(idle)
	if res, err := http.ReadResponse(br, nil); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %v", err)
	}
	if !closedWithin(idle, 3*time.Second) {
		t.Error("idle keep-alive connection still open after the idle timeout")
	}
}

// The API's deadlines move with progress: a stream with pauses longer than
// the write timeout and a steady upload longer than the read timeout go
// through whole; a stalled upload and an idle connection are cut off.
func TestAPIServerStallTimeouts(t *testing.T) {
	const d = 300 * time.Millisecond
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			if i > 0 {
				time.Sleep(2 * d) // longer than the write timeout
			}
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
		}
	})
	got := make(chan error, 1)
	mux.HandleFunc("PUT /upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		got <- err
		fmt.Fprint(w, n)
	})
	srv := newAPIServer(mux, timeouts{read: d, write: d, idle: d})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	base := "http://" + ln.Addr().String()

	res, err := http.Get(base + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || strings.Count(string(b), "data:") != 3 {
		t.Errorf("stream with pauses over the write timeout: %q %v, want 3 events", b, err)
	}

	// 8 chunks, one every d/2: 4 read timeouts long in all.
	pr, pw := io.Pipe()
	go func() {
		for range 8 {
			time.Sleep(d / 2)
			pw.Write([]byte("chunk"))
		}
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPut, base+"/upload", pr)
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("steady upload: %v", err)
	}
	b, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if string(b) != "40" {
		t.Errorf("steady upload longer than the read timeout: server read %q bytes, want 40", b)
	}
	<-got

	stalled := dial(t, ln.Addr().String())
	fmt.Fprintf(stalled, "PUT /upload HTTP/1.1\r\nHost: api\r\nContent-Length: 1000\r\n\r\nab")
	select {
	case err := <-got:
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			t.Errorf("stalled upload: handler read error %v, want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stalled upload: the handler is still reading")
	}
	if !closedWithin(stalled, 3*time.Second) {
		t.Error("stalled upload: connection still open")
	}

	idle := dial(t, ln.Addr().String())
	fmt.Fprintf(idle, "GET /stream HTTP/1.1\r\nHost: api\r\n\r\n")
	if !closedWithin(idle, 5*time.Second) {
		t.Error("idle keep-alive connection still open after the idle timeout")
	}
}
