package inference

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/spotml/spotml/internal/inference/kservev2"
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

// BenchmarkDecodeV2 measures decoding a KServe v2 JSON request of 1 and
// of 32 images (the numbers as Go writes float32s, as clients do), per
// image: the request handling the runtime adds to the model.
//
//	go test ./internal/inference -run '^$' -bench BenchmarkDecodeV2 -benchmem
func BenchmarkDecodeV2(b *testing.B) {
	m := imageModel(b)
	ds := loadTestSet(b)
	for _, n := range []int{1, 32} {
		body := v2Request("bench", false, ds.images[:n]...)
		b.Run(fmt.Sprintf("images=%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := m.decodeV2(body, nil, false, "m"); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/image")
		})
	}
}

// BenchmarkGRPC measures ModelInfer of one image (raw contents) from 64
// concurrent calls over one connection, served two ways on one address:
// "native", the Split listener handing HTTP/2 connections to grpc.Server
// (what spotml serve does), and "servehttp", net/http's unencrypted HTTP/2
// with grpc.Server.ServeHTTP as its handler.
//
//	go test ./internal/inference -run '^$' -bench BenchmarkGRPC -benchtime 5s
func BenchmarkGRPC(b *testing.B) {
	m := openTestModel(b, DefaultOptions())
	ds := loadTestSet(b)
	raw := float32Bytes(ds.images[0]...)
	for _, mode := range []string{"native", "servehttp"} {
		b.Run(mode, func(b *testing.B) {
			var client kservev2.GRPCInferenceServiceClient
			if mode == "native" {
				_, client = serveBoth(b, served, m)
			} else {
				client = serveHTTP2(b, m)
			}
			req := &kservev2.ModelInferRequest{ModelName: served,
				Inputs:           []*kservev2.ModelInferRequest_InferInputTensor{{Name: modelInput, Datatype: "FP32", Shape: []int64{1, 1, 28, 28}}},
				RawInputContents: [][]byte{raw}}
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ReportAllocs()
			b.ResetTimer()
			for range 64 {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						if _, err := client.ModelInfer(b.Context(), req); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			reportRate(b, 1)
		})
	}
}

// serveHTTP2 serves m's gRPC service through net/http (cleartext HTTP/2).
func serveHTTP2(b *testing.B, m *Model) kservev2.GRPCInferenceServiceClient {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: NewGRPCServer(NewGRPCService(served, m, nil), DefaultMaxBodyBytes), Protocols: &protocols}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	conn, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return kservev2.NewGRPCInferenceServiceClient(conn)
}
