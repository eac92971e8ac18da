package main

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/spotml/spotml/internal/inference"
	"github.com/spotml/spotml/internal/inference/kservev2"
)

// syncBuffer is a bytes.Buffer safe to read while the command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestServeHTTPAndGRPCOnOneAddress: spotml serve answers HTTP/1.1 and
// KServe v2 gRPC on the one address it prints, and stops cleanly.
func TestServeHTTPAndGRPCOnOneAddress(t *testing.T) {
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
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--model", model, "--name", "fmnist", "--addr", "127.0.0.1:0", "--data", t.TempDir()}, getenv, &stdout, &stderr)
	}()
	var addr string
	for deadline := time.Now().Add(30 * time.Second); addr == ""; {
		if m := regexp.MustCompile(`GRPCInferenceService on (\S+) `).FindStringSubmatch(stdout.String()); m != nil {
			addr = m[1]
			break
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

	resp, err := http.Get("http://" + addr + "/v2/models/fmnist/ready")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP: %v %v", resp, err)
	}
	resp.Body.Close()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := kservev2.NewGRPCInferenceServiceClient(conn)
	r, err := client.ModelInfer(ctx, &kservev2.ModelInferRequest{ModelName: "fmnist",
		Inputs: []*kservev2.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 1, 28, 28},
			Contents: &kservev2.InferTensorContents{Fp32Contents: make([]float32, 784)}}}})
	if err != nil || len(r.Outputs) != 1 || len(r.Outputs[0].Contents.GetFp32Contents()) != 10 {
		t.Fatalf("gRPC ModelInfer: %v %v", r, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("spotml serve stopped with %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("spotml serve did not stop")
	}
	if !regexp.MustCompile(`model server stopped.* requests=1 `).MatchString(stderr.String()) {
		t.Errorf("stop log: %s", stderr.String())
	}
}
