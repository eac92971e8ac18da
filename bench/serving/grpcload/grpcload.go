// Package grpcload drives KServe v2 gRPC ModelInfer calls at a server, as
// a Triton or KServe client does: a client generated from
// grpc_predict_v2.proto, one HTTP/2 connection, a number of callers each
// calling in a closed loop, one image per call in raw_input_contents. The
// figures come back as a wrk.Result, so that the benches print them beside
// wrk's.
package grpcload

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/spotml/spotml/bench/serving/wrk"
	"github.com/spotml/spotml/internal/inference/kservev2"
)

// Options says what to call.
type Options struct {
	Addr     string // host:port, h2c
	Model    string
	Key      string    // sent as the x-api-key metadata when set
	Image    []float32 // one 1×1×28×28 image
	Callers  int
	Duration time.Duration
}

// Run calls for o.Duration and returns the calls per second and their
// latency percentiles. One warm-up call opens the connection first; a
// failing warm-up is an error, failed calls after it are counted.
func Run(ctx context.Context, o Options) (wrk.Result, error) {
	res := wrk.Result{Command: fmt.Sprintf("grpcload: ModelInfer %s at %s, %d callers on one connection, raw FP32 contents, %s", o.Model, o.Addr, o.Callers, o.Duration)}
	raw := make([]byte, 0, 4*len(o.Image))
	for _, f := range o.Image {
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(f))
	}
	conn, err := grpc.NewClient("passthrough:///"+o.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return res, err
	}
	defer conn.Close()
	client := kservev2.NewGRPCInferenceServiceClient(conn)
	if o.Key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-api-key", o.Key)
	}
	req := &kservev2.ModelInferRequest{ModelName: o.Model,
		Inputs:           []*kservev2.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 1, 28, 28}}},
		RawInputContents: [][]byte{raw}}
	for range 20 { // connect and warm up
		if _, err := client.ModelInfer(ctx, req); err != nil {
			return res, fmt.Errorf("warm-up call: %w", err)
		}
	}
	lat := make([][]time.Duration, o.Callers)
	var errs atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	deadline := start.Add(o.Duration)
	var wg sync.WaitGroup
	for i := range o.Callers {
		wg.Go(func() {
			for {
				t0 := time.Now()
				if !t0.Before(deadline) || ctx.Err() != nil {
					return
				}
				if _, err := client.ModelInfer(ctx, req); err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	res.Elapsed = time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	res.Requests, res.Errors = int64(len(all)), errs.Load()
	res.RPS = float64(len(all)) / res.Elapsed.Seconds()
	if len(all) > 0 {
		res.P50, res.P90, res.P99, res.Max = all[len(all)/2], all[len(all)*9/10], all[len(all)*99/100], all[len(all)-1]
	}
	if e, ok := firstErr.Load().(string); ok {
		res.Detail = e
	}
	return res, nil
}
