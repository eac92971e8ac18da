package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/inference/kservev2"
	"github.com/spotml/spotml/internal/spec"
)

// grpcLoad is a steady stream of KServe v2 ModelInfer calls through the
// gateway from a client generated from grpc_predict_v2.proto, each one image
// whose class is checked against its label.
type grpcLoad struct {
	ok, failed, right atomic.Int64
	mu                sync.Mutex
	errs              []string
	cancel            context.CancelFunc
	wg                sync.WaitGroup
}

func startGRPCLoad(ctx context.Context, client kservev2.GRPCInferenceServiceClient, model string, xs [][]float32, ys []int, workers int) *grpcLoad {
	ctx, cancel := context.WithCancel(ctx)
	l := &grpcLoad{cancel: cancel}
	for w := range workers {
		l.wg.Go(func() {
			for i := w; ctx.Err() == nil; i += workers {
				k := i % len(xs)
				r, err := client.ModelInfer(ctx, &kservev2.ModelInferRequest{ModelName: model,
					Inputs: []*kservev2.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 1, 28, 28},
						Contents: &kservev2.InferTensorContents{Fp32Contents: xs[k]}}}})
				if ctx.Err() != nil {
					return // the load stopped, not the call
				}
				var scores []float32
				if err == nil {
					if len(r.Outputs) != 1 || len(r.Outputs[0].Contents.GetFp32Contents()) != 10 {
						err = fmt.Errorf("bad answer %v", r)
					} else {
						scores = r.Outputs[0].Contents.GetFp32Contents()
					}
				}
				if err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 20 {
						l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
					}
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
				best := 0
				for c := range scores {
					if scores[c] > scores[best] {
						best = c
					}
				}
				if best == ys[k] {
					l.right.Add(1)
				}
			}
		})
	}
	return l
}

func (l *grpcLoad) finish(t *testing.T) {
	t.Helper()
	l.cancel()
	l.wg.Wait()
	t.Logf("gRPC load: %d calls answered (%d classified right), %d failed", l.ok.Load(), l.right.Load(), l.failed.Load())
	if n := l.failed.Load(); n > 0 {
		t.Errorf("%d calls failed; first ones:\n%s", n, strings.Join(l.errs, "\n"))
	}
	if ok := l.ok.Load(); ok == 0 || float64(l.right.Load()) < 0.8*float64(ok) {
		t.Errorf("%d calls answered, %d right: want some, at least 80 %% right", ok, l.right.Load())
	}
}

// TestGRPCThroughGatewayWhileSpotEvicted: a strict service (an on-demand
// base plus spot replicas) with an API key is called over KServe v2 gRPC
// through the gateway by an unchanged generated client, under a steady
// load, while every spot replica's node is evicted at once. No call may
// fail; a call without the key gets UNAUTHENTICATED.
func TestGRPCThroughGatewayWhileSpotEvicted(t *testing.T) {
	requireORT(t)
	xs, ys := testSet(t, 500)
	c := newServingCluster(t)
	c.putModel("models/fmnist.onnx")
	c.apply(pool("spot-a", "spot", 3) + pool("od", "ondemand", 2) +
		serviceYAML("grpcsvc", "models/fmnist.onnx", "strict", 3, 3, "") + "  auth: {keys: [grpc-e2e-key]}\n")
	waitFor(t, 90*time.Second, "3 ready replicas of grpcsvc", func() bool { return len(c.readyReplicas("grpcsvc")) == 3 })
	s := c.service("grpcsvc")
	if s.Ready[spec.PriorityOnDemand] < 1 || s.Ready[spec.PrioritySpot] < 1 {
		t.Fatalf("strict tier: want on-demand and spot replicas, have %v", s.Ready)
	}

	conn, err := grpc.NewClient("passthrough:///"+c.gw, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := kservev2.NewGRPCInferenceServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-api-key", "grpc-e2e-key")
	waitFor(t, 5*time.Second, "the gateway to route gRPC to grpcsvc", func() bool {
		r, err := client.ModelReady(ctx, &kservev2.ModelReadyRequest{Name: "grpcsvc"})
		return err == nil && r.Ready
	})
	if _, err := client.ModelMetadata(t.Context(), &kservev2.ModelMetadataRequest{Name: "grpcsvc"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("ModelMetadata without the key: %v, want Unauthenticated", err)
	}
	md, err := client.ModelMetadata(ctx, &kservev2.ModelMetadataRequest{Name: "grpcsvc"})
	if err != nil || len(md.Inputs) != 1 || md.Inputs[0].Datatype != "FP32" {
		t.Fatalf("ModelMetadata: %v %v", md, err)
	}

	l := startGRPCLoad(ctx, client, "grpcsvc", xs, ys, 4)
	time.Sleep(2 * time.Second)
	var spots []string
	for _, n := range c.nodes() {
		if n.Priority == spec.PrioritySpot && n.State == api.NodeReady {
			spots = append(spots, n.Name)
		}
	}
	t.Logf("evicting every spot node at once: %v", spots)
	var wg sync.WaitGroup
	for _, n := range spots {
		wg.Go(func() { c.mustCLI("evict", n, "--notice", "3s") })
	}
	wg.Wait()
	waitFor(t, 30*time.Second, "the spot nodes gone", func() bool {
		for _, n := range c.nodes() {
			for _, v := range spots {
				if n.Name == v {
					return false
				}
			}
		}
		return true
	})
	waitFor(t, 90*time.Second, "3 ready replicas again", func() bool { return len(c.readyReplicas("grpcsvc")) == 3 })
	time.Sleep(time.Second) // calls on the replacements too
	l.finish(t)
	if l.ok.Load() < 100 {
		t.Errorf("only %d calls answered", l.ok.Load())
	}
}
