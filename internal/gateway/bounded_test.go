package gateway_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/gateway"
)

// slowClient opens a connection to the gateway, sends the header of a
// predict request that declares declared bytes of body, and only the
// first two of them.
func slowClient(t *testing.T, addr string, declared int) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := fmt.Fprintf(c, "POST /v1/models/mnist:predict HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"", declared); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitInFlight waits until the gateway holds n requests of mnist.
func waitInFlight(t *testing.T, g *gateway.Gateway, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got int64
		for _, s := range g.Stats() {
			if s.Service == "mnist" {
				got = s.InFlight
			}
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway holds %d requests of mnist, want %d", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// Clients that declare a 16 MiB body and send two bytes cost the gateway a
// connection, not 16 MiB each: buffers grow as bytes arrive. (Before, 20
// of them made the heap grow by 320 MiB.)
func TestSlowClientsHoldNoMemory(t *testing.T) {
	rp := newReplica(t, "r1")
	g, front := newFront(t, gateway.Config{})
	g.Update([]gateway.Route{route("mnist", rp.replica())})
	addr := front.Listener.Addr().String()

	before := heapInUse()
	const clients = 20
	for range clients {
		slowClient(t, addr, 16<<20)
	}
	waitInFlight(t, g, clients)
	grew := int64(heapInUse()) - int64(before)
	t.Logf("heap grew by %d KiB for %d clients declaring 16 MiB", grew>>10, clients)
	if grew > 16<<20 {
		t.Errorf("heap grew by %d MiB for %d clients that sent 2 bytes each; want well under 16 MiB", grew>>20, clients)
	}
	if n := rp.hits.Load(); n != 0 {
		t.Errorf("replica got %d requests whose bodies never arrived", n)
	}
}

func TestMaxRequestBytes(t *testing.T) {
	rp := newReplica(t, "r1")
	for _, tc := range []struct {
		name string
		cfg  gateway.Config
	}{
		{"buffered", gateway.Config{}},
		{"streamed", gateway.Config{MaxRetryBody: 100}}, // bodies over 100 bytes are streamed
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, front := newFront(t, tc.cfg)
			rt := route("mnist", rp.replica())
			rt.MaxRequestBytes = 1000
			g.Update([]gateway.Route{rt})
			url := front.URL + "/v1/models/mnist:predict"
			c := front.Client()

			if a := call(t, c, http.MethodPost, url, bytes.Repeat([]byte("x"), 1000)); a.code != http.StatusOK || a.echo.Body != 1000 {
				t.Errorf("1000 bytes: %d %s, want 200 and 1000 bytes at the replica", a.code, a.body)
			}
			a := call(t, c, http.MethodPost, url, bytes.Repeat([]byte("x"), 1001))
			if a.code != http.StatusRequestEntityTooLarge || !strings.Contains(string(a.body), "maxRequestBytes") {
				t.Errorf("1001 bytes declared: %d %s, want 413 naming maxRequestBytes", a.code, a.body)
			}
			// Unknown length (chunked): cut off as the bytes pass the limit.
			req, _ := http.NewRequest(http.MethodPost, url, io.MultiReader(strings.NewReader(strings.Repeat("x", 1001))))
			req.ContentLength = -1
			if a := do(c, req); a.code != http.StatusRequestEntityTooLarge {
				t.Errorf("1001 bytes chunked: %d %s %v, want 413", a.code, a.body, a.err)
			}
		})
	}
}

func TestMaxInFlight(t *testing.T) {
	rp := newReplica(t, "r1")
	g, front := newFront(t, gateway.Config{})
	rt := route("mnist", rp.replica())
	rt.MaxInFlight = 2
	g.Update([]gateway.Route{rt})
	url := front.URL + "/v1/models/mnist:predict"
	c := front.Client()

	held := []<-chan answer{holdOne(t, c, url, rp), holdOne(t, c, url, rp)}
	a := call(t, c, http.MethodPost, url, []byte(`{"instances":[1]}`))
	if a.code != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" || !strings.Contains(string(a.body), "maxInFlight") {
		t.Errorf("third request: %d Retry-After %q %s, want 429 with Retry-After naming maxInFlight", a.code, a.header.Get("Retry-After"), a.body)
	}
	if got := metric(t, front, `spotml_gateway_requests_total{code="429",replica="",service="mnist"}`); got != "1" {
		t.Errorf("429s counted: %q, want 1", got)
	}
	rp.releaseHeld()
	for _, ch := range held {
		if a := <-ch; a.code != http.StatusOK {
			t.Errorf("held request: %d %v", a.code, a.err)
		}
	}
	if a := call(t, c, http.MethodPost, url, []byte(`{"instances":[1]}`)); a.code != http.StatusOK {
		t.Errorf("after the held ones finished: %d %s, want 200", a.code, a.body)
	}
}

// The bytes held in request buffers across all requests are capped: past
// the cap a request gets 429, not memory.
func TestMaxBufferedBytes(t *testing.T) {
	rp := newReplica(t, "r1")
	g, front := newFront(t, gateway.Config{MaxBufferedBytes: 100 << 10})
	g.Update([]gateway.Route{route("mnist", rp.replica())})
	url := front.URL + "/v1/models/mnist:predict"
	c := front.Client()

	// A slow client holds the first 64 KiB of buffer while its 1 MiB
	// body trickles in.
	slow := slowClient(t, front.Listener.Addr().String(), 1<<20)
	waitInFlight(t, g, 1)
	if got := metric(t, front, "spotml_gateway_buffered_bytes"); got != "65536" {
		t.Errorf("spotml_gateway_buffered_bytes = %q with one slow client, want 65536", got)
	}
	a := call(t, c, http.MethodPost, url, bytes.Repeat([]byte("x"), 50<<10))
	if a.code != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" {
		t.Errorf("50 KiB beside a held 64 KiB buffer, cap 100 KiB: %d Retry-After %q %s, want 429 with Retry-After", a.code, a.header.Get("Retry-After"), a.body)
	}
	slow.Close()
	waitInFlight(t, g, 0)
	if got := metric(t, front, "spotml_gateway_buffered_bytes"); got != "0" {
		t.Errorf("spotml_gateway_buffered_bytes = %q once the slow client left, want 0", got)
	}
	if a := call(t, c, http.MethodPost, url, bytes.Repeat([]byte("x"), 50<<10)); a.code != http.StatusOK || a.echo.Body != 50<<10 {
		t.Errorf("50 KiB once the buffers are free: %d %s, want 200", a.code, a.body)
	}
	// A body that grows past the cap is refused as it grows.
	if a := call(t, c, http.MethodPost, url, bytes.Repeat([]byte("x"), 200<<10)); a.code != http.StatusTooManyRequests {
		t.Errorf("200 KiB, cap 100 KiB: %d %s, want 429", a.code, a.body)
	}
}

// A client whose body stalls past the server's read timeout gets 408 and
// loses its connection; the gateway keeps nothing of it.
func TestSlowBodyTimesOut(t *testing.T) {
	rp := newReplica(t, "r1")
	g := gateway.New(gateway.Config{})
	g.Update([]gateway.Route{route("mnist", rp.replica())})
	front := httptest.NewUnstartedServer(g)
	front.Config.ReadTimeout = 300 * time.Millisecond
	front.Start()
	t.Cleanup(front.Close)

	conn := slowClient(t, front.Listener.Addr().String(), 1000)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	if res.StatusCode != http.StatusRequestTimeout {
		t.Errorf("stalled body: %d, want 408", res.StatusCode)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("connection still open after the read timeout")
	}
	waitInFlight(t, g, 0)
}
