package inference

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkORT measures the model in-process: "run" is ONNX Runtime alone
// (one run of a batch), "predict" adds validation and the batcher's hand-off
// (one caller, so no batching). Figures: inferences/s (rows per second).
//
//	go test ./internal/inference -run '^$' -bench BenchmarkORT -benchtime 3s
func BenchmarkORT(b *testing.B) {
	m := openTestModel(b, DefaultOptions())
	ds := loadTestSet(b)
	for _, rows := range []int{1, 32} {
		in := imageBatch(ds.images[:rows]...)
		b.Run(fmt.Sprintf("run/batch=%d", rows), func(b *testing.B) {
			for b.Loop() {
				if _, err := m.run([]Tensor{in}, rows); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, rows)
		})
		b.Run(fmt.Sprintf("predict/batch=%d", rows), func(b *testing.B) {
			ctx := context.Background()
			for b.Loop() {
				if _, err := m.Predict(ctx, []Tensor{in}); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, rows)
		})
	}
}

// reportRate reports rows per second over the benchmark's loop.
func reportRate(b *testing.B, rowsPerOp int) {
	b.ReportMetric(float64(b.N*rowsPerOp)/b.Elapsed().Seconds(), "inferences/s")
}

// BenchmarkHTTP measures whole requests of one image through the handler on
// loopback, from 1 and from 64 concurrent clients (client and server share
// the machine's cores). Figures: requests/s, which are inferences/s here.
//
//	go test ./internal/inference -run '^$' -bench BenchmarkHTTP -benchtime 5s
func BenchmarkHTTP(b *testing.B) {
	srv, m := serveTestModel(b, DefaultOptions())
	ds := loadTestSet(b)
	transport := &http.Transport{MaxIdleConnsPerHost: 256}
	b.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Transport: transport}
	protocols := []struct {
		name, path string
		body       []byte
	}{
		{"tfserving", "/v1/models/fashion:predict", tfRows(ds.images[0])},
		{"v2", "/v2/models/fashion/infer", v2Request("bench", false, ds.images[0])},
	}
	for _, p := range protocols {
		for _, clients := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/clients=%d", p.name, clients), func(b *testing.B) {
				before := m.Stats()
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				for range clients {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							resp, err := client.Post(srv.URL+p.path, "application/json", bytes.NewReader(p.body))
							if err != nil {
								b.Error(err)
								return
							}
							io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
							if resp.StatusCode != http.StatusOK {
								b.Errorf("status %d", resp.StatusCode)
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				reportRate(b, 1)
				after := m.Stats()
				if runs := after.Runs - before.Runs; runs > 0 {
					b.ReportMetric(float64(after.Rows-before.Rows)/float64(runs), "rows/run")
				}
			})
		}
	}
}
