package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/spotml/spotml/internal/gateway"
	"github.com/spotml/spotml/internal/inference"
	"github.com/spotml/spotml/internal/inference/kservev2"
)

// serveReplica runs `spotml serve` in this process, as an agent runs it for
// a replica, and returns its address; it stops when stop is called or the
// test ends.
func serveReplica(t *testing.T, name string) (addr string, stop func()) {
	t.Helper()
	lib, err := inference.FindLibrary(os.Getenv, filepath.Join("..", "..", "build", "onnxruntime"))
	model := filepath.Join("..", "..", "examples", "fashion-mnist", "model.onnx")
	if _, statErr := os.Stat(model); err != nil || statErr != nil {
		if os.Getenv("SPOTML_REQUIRE_ORT") == "1" {
			t.Fatalf("ONNX Runtime or the example model missing: %v %v", err, statErr)
		}
		t.Skipf("skipping: ONNX Runtime or the example model missing: %v %v", err, statErr)
	}
	getenv := func(k string) string {
		if k == inference.LibraryEnv {
			return lib
		}
		return ""
	}
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--model", model, "--name", name, "--addr", "127.0.0.1:0", "--data", t.TempDir(), "--threads", "1"}, getenv, &stdout, &stderr)
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("spotml serve stopped with %v\n%s", err, stderr.String())
			}
		case <-time.After(30 * time.Second):
			t.Error("spotml serve did not stop")
		}
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(30 * time.Second); ; {
		if m := regexp.MustCompile(`GRPCInferenceService on (\S+) `).FindStringSubmatch(stdout.String()); m != nil {
			return m[1], stop
		}
		select {
		case err := <-done:
			t.Fatalf("spotml serve exited: %v\n%s", err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no address printed: %s %s", stdout.String(), stderr.String())
		}
	}
}

// TestGatewayRoutesGRPC: a client generated from grpc_predict_v2.proto calls
// real `spotml serve` replicas through the gateway's own server, over h2c:
// routed by the request's model name (or the spotml-service metadata),
// keyed by the x-api-key metadata, balanced over the replicas, kept away
// from a draining replica, retried past a replica that is gone, and counted
// in QPS, Stats and the metrics.
func TestGatewayRoutesGRPC(t *testing.T) {
	addr1, _ := serveReplica(t, "fmnist")
	addr2, stop2 := serveReplica(t, "fmnist")

	gw := gateway.New(gateway.Config{Now: time.Now})
	routes := func(replicas ...gateway.Replica) {
		gw.Update([]gateway.Route{{Service: "fmnist", Keys: []string{"sekret"}, Replicas: replicas}})
	}
	r1 := gateway.Replica{ID: "fmnist-1", Addr: addr1, Priority: "spot"}
	r2 := gateway.Replica{ID: "fmnist-2", Addr: addr2, Priority: "ondemand"}
	routes(r1, r2)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newGatewayServer(gw, gatewayTimeouts)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	conn, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := kservev2.NewGRPCInferenceServiceClient(conn)
	keyed := metadata.AppendToOutgoingContext(t.Context(), "x-api-key", "sekret")
	infer := &kservev2.ModelInferRequest{ModelName: "fmnist",
		Inputs: []*kservev2.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 1, 28, 28},
			Contents: &kservev2.InferTensorContents{Fp32Contents: make([]float32, 784)}}}}
	inferOK := func(ctx context.Context) error {
		r, err := client.ModelInfer(ctx, infer)
		if err == nil && (len(r.Outputs) != 1 || len(r.Outputs[0].Contents.GetFp32Contents()) != 10 || r.ModelName != "fmnist") {
			t.Errorf("ModelInfer answer: %v", r)
		}
		return err
	}

	// Keys: none, a wrong one, then the right one in either header.
	for _, ctx := range []context.Context{t.Context(), metadata.AppendToOutgoingContext(t.Context(), "x-api-key", "wrong")} {
		if err := inferOK(ctx); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "x-api-key") {
			t.Errorf("ModelInfer without the key: %v, want Unauthenticated naming x-api-key", err)
		}
	}
	if err := inferOK(metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer sekret")); err != nil {
		t.Errorf("ModelInfer with a bearer key: %v", err)
	}

	// Server-level calls: the gateway's own without a service named, a
	// replica's with one.
	if r, err := client.ServerLive(t.Context(), &kservev2.ServerLiveRequest{}); err != nil || !r.Live {
		t.Errorf("ServerLive at the gateway: %v %v", r, err)
	}
	if r, err := client.ServerReady(t.Context(), &kservev2.ServerReadyRequest{}); err != nil || !r.Ready {
		t.Errorf("ServerReady at the gateway: %v %v", r, err)
	}
	named := metadata.AppendToOutgoingContext(keyed, "spotml-service", "fmnist")
	if r, err := client.ServerLive(named, &kservev2.ServerLiveRequest{}); err != nil || !r.Live {
		t.Errorf("ServerLive at a replica: %v %v", r, err)
	}
	if r, err := client.ServerMetadata(named, &kservev2.ServerMetadataRequest{}); err != nil || r.Name != "spotml" {
		t.Errorf("ServerMetadata at a replica: %v %v", r, err)
	}
	md, err := client.ModelMetadata(keyed, &kservev2.ModelMetadataRequest{Name: "fmnist"})
	if err != nil || md.Name != "fmnist" || len(md.Inputs) != 1 || md.Inputs[0].Datatype != "FP32" {
		t.Errorf("ModelMetadata: %v %v", md, err)
	}
	if _, err := client.ModelMetadata(keyed, &kservev2.ModelMetadataRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("ModelMetadata of an unknown model: %v, want NotFound", err)
	}
	// A replica's own error status passes through with its message.
	bad := &kservev2.ModelInferRequest{ModelName: "fmnist", Inputs: []*kservev2.ModelInferRequest_InferInputTensor{{Name: "nope", Datatype: "FP32", Shape: []int64{1}}}}
	if _, err := client.ModelInfer(keyed, bad); status.Code(err) != codes.InvalidArgument {
		t.Errorf("ModelInfer with a bad input: %v, want the replica's InvalidArgument", err)
	}

	// Balance: both replicas take calls.
	for range 40 {
		if err := inferOK(keyed); err != nil {
			t.Fatalf("ModelInfer: %v", err)
		}
	}
	perReplica := func() map[string]int64 {
		out := map[string]int64{}
		for _, s := range gw.Stats() {
			for _, r := range s.Replicas {
				out[r.ID] = r.Requests
			}
		}
		return out
	}
	before := perReplica()
	if before["fmnist-1"] == 0 || before["fmnist-2"] == 0 {
		t.Errorf("calls per replica %v: want both used", before)
	}

	// Draining: replica 1 has a notice and gets no new call.
	r1.Draining = true
	routes(r1, r2)
	for range 20 {
		if err := inferOK(keyed); err != nil {
			t.Fatalf("ModelInfer while replica 1 drains: %v", err)
		}
	}
	if after := perReplica(); after["fmnist-1"] != before["fmnist-1"] {
		t.Errorf("draining replica got %d calls", after["fmnist-1"]-before["fmnist-1"])
	}

	// Retries: replica 2 is gone but still in the table (its node died
	// before the control plane noticed); the calls go to replica 1.
	r1.Draining = false
	routes(r1, r2)
	stop2()
	for range 20 {
		if err := inferOK(keyed); err != nil {
			t.Fatalf("ModelInfer with replica 2 gone: %v", err)
		}
	}

	if q := gw.QPS(time.Minute)["fmnist"]; q <= 0 {
		t.Errorf("QPS %v: gRPC calls must count", q)
	}
	rec := httpGet(t, "http://"+ln.Addr().String()+"/metrics")
	for _, want := range []string{
		`spotml_gateway_grpc_calls_total{grpc_code="OK",service="fmnist"}`,
		`spotml_gateway_grpc_calls_total{grpc_code="Unauthenticated",service="fmnist"} 2`,
		`spotml_gateway_requests_total{code="200",replica="fmnist-1",service="fmnist"}`,
	} {
		if !strings.Contains(rec, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if !regexp.MustCompile(`spotml_gateway_retries_total\{service="fmnist"\} [1-9]`).MatchString(rec) {
		t.Errorf("no retry counted after replica 2 went:\n%s", rec)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}
