package gateway_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
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
