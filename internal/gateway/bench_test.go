package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/gateway"
)

// BenchmarkGateway measures what the gateway adds to a request: the same
// client POSTs an MNIST-sized predict request (a 28×28 image as JSON,
// about 3 KB; a small JSON answer) to one loopback replica, straight
// ("direct") and through the gateway ("gateway"), one request at a time
// (c=1) and 64 at a time (c=64). Besides ns/op it reports p50 and p99
// latency in µs and requests per second; compare direct with gateway at
// the same concurrency.
func BenchmarkGateway(b *testing.B) {
	answer := []byte(`{"predictions":[[0.01,0.02,0.9,0.01,0.01,0.01,0.01,0.01,0.01,0.01]]}`)
	replica := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(answer)
	}))
	defer replica.Close()
	g := gateway.New(gateway.Config{})
	g.Update([]gateway.Route{route("mnist", gateway.Replica{ID: "mnist-1", Addr: replica.Listener.Addr().String()})})
	front := httptest.NewServer(g)
	defer front.Close()

	pixels := make([]string, 28*28)
	for i := range pixels {
		pixels[i] = fmt.Sprintf("%.2f", float64(i%255)/255)
	}
	body := []byte(`{"instances":[[` + strings.Join(pixels, ",") + `]]}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512}}
	defer client.CloseIdleConnections()
	const path = "/v1/models/mnist:predict"

	for _, conc := range []int{1, 64} {
		for _, target := range []struct{ name, url string }{
			{"direct", replica.URL + path},
			{"gateway", front.URL + path},
		} {
			b.Run(fmt.Sprintf("c=%d/%s", conc, target.name), func(b *testing.B) {
				post := func() time.Duration {
					t0 := time.Now()
					res, err := client.Post(target.url, "application/json", bytes.NewReader(body))
					if err != nil {
						b.Fatal(err)
					}
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != http.StatusOK {
						b.Fatalf("status %d", res.StatusCode)
					}
					return time.Since(t0)
				}
				var (
					mu  sync.Mutex
					lat []time.Duration
				)
				b.ReportAllocs()
				start := time.Now()
				if conc == 1 {
					for b.Loop() {
						lat = append(lat, post())
					}
				} else {
					b.SetParallelism((conc + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
					b.RunParallel(func(pb *testing.PB) {
						var mine []time.Duration
						for pb.Next() {
							mine = append(mine, post())
						}
						mu.Lock()
						lat = append(lat, mine...)
						mu.Unlock()
					})
				}
				elapsed := time.Since(start)
				slices.Sort(lat)
				if len(lat) > 0 {
					b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
					b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
					b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "req/s")
				}
			})
		}
	}
}

// BenchmarkProxyPath measures the gateway's own work per request, what
// allocs/op is about: Gateway.ServeHTTP called directly with a request as
// net/http's server hands one over (its own context, a body to read) and
// a minimal ResponseWriter, forwarding over the gateway's keep-alive hop
// to a loopback replica that answers from a fixed buffer and allocates
// nothing itself. The HTTP server in front of the gateway is left out:
// it allocates what it does for any handler (BenchmarkGateway includes
// it, and its client's and replica's work too).
func BenchmarkProxyPath(b *testing.B) {
	addr := rawReplica(b, []byte(`{"predictions":[[0.01,0.02,0.9,0.01,0.01,0.01,0.01,0.01,0.01,0.01]]}`))
	g := gateway.New(gateway.Config{})
	g.Update([]gateway.Route{route("mnist", gateway.Replica{ID: "mnist-1", Addr: addr})})
	body := bytes.Repeat([]byte("0.25,"), 800) // an MNIST-sized JSON body
	req, _ := http.NewRequest("POST", "http://gateway/v1/models/mnist:predict", nil)
	req.RemoteAddr = "127.0.0.1:40000"
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "bench")
	req.Header.Set("Accept", "*/*")
	req.ContentLength = int64(len(body))
	var rb rewindBody
	w := &nullWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithCancel(context.Background()) // one per request, as the server makes
		rb.Reset(body)
		r := req.WithContext(ctx)
		r.Body = &rb
		clear(w.h)
		w.code = 0
		g.ServeHTTP(w, r)
		cancel()
		if w.code != http.StatusOK {
			b.Fatalf("status %d", w.code)
		}
	}
}

// rewindBody is a request body the benchmark reuses.
type rewindBody struct{ bytes.Reader }

func (*rewindBody) Close() error { return nil }

type nullWriter struct {
	h    http.Header
	code int
}

func (w *nullWriter) Header() http.Header { return w.h }
func (w *nullWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}
func (w *nullWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return len(p), nil
}

// rawReplica serves HTTP/1.1 keep-alive on loopback, answering every
// request with answer from buffers it reuses, so that it adds no
// allocations to a benchmark's count.
func rawReplica(b *testing.B, answer []byte) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	resp := append([]byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Mon, 30 Nov 2026 02:00:00 GMT\r\nContent-Length: "+strconv.Itoa(len(answer))+"\r\n\r\n"), answer...)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReaderSize(c, 64<<10)
				for {
					length := 0
					for {
						line, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
						if len(line) > 15 && bytes.EqualFold(line[:15], []byte("Content-Length:")) {
							length, _ = strconv.Atoi(string(bytes.TrimSpace(line[15:])))
						}
					}
					if _, err := br.Discard(length); err != nil {
						return
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}
