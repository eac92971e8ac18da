package inference

import (
	"bufio"
	"encoding/binary"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/spotml/spotml/internal/inference/kservev2"
)

// serveBoth serves m as name over HTTP/1.1 and gRPC on one loopback
// address, as spotml serve does, and returns the address and a gRPC client
// generated from grpc_predict_v2.proto.
func serveBoth(t testing.TB, name string, m *Model) (string, kservev2.GRPCInferenceServiceClient) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	split := NewSplit(ln, 5*time.Second)
	hsrv := &http.Server{Handler: NewHandler(name, m)}
	gsrv := NewGRPCServer(NewGRPCService(name, m, nil), DefaultMaxBodyBytes)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := split.Run(); err != nil {
			t.Error(err)
		}
	})
	wg.Go(func() { hsrv.Serve(split.HTTP()) })
	wg.Go(func() { gsrv.Serve(split.GRPC()) })
	t.Cleanup(func() {
		gsrv.Stop()
		hsrv.Close()
		ln.Close()
		wg.Wait()
	})
	conn, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ln.Addr().String(), kservev2.NewGRPCInferenceServiceClient(conn)
}

// TestGRPC: a client generated from the protocol's .proto gets health,
// metadata and the same logits as the model run directly, with typed and
// with raw contents, while HTTP/1.1 clients use the same address.
func TestGRPC(t *testing.T) {
	m := openTestModel(t, DefaultOptions())
	addr, client := serveBoth(t, served, m)
	ctx := t.Context()

	if r, err := client.ServerLive(ctx, &kservev2.ServerLiveRequest{}); err != nil || !r.Live {
		t.Errorf("ServerLive: %v %v", r, err)
	}
	if r, err := client.ServerReady(ctx, &kservev2.ServerReadyRequest{}); err != nil || !r.Ready {
		t.Errorf("ServerReady: %v %v", r, err)
	}
	if r, err := client.ModelReady(ctx, &kservev2.ModelReadyRequest{Name: served}); err != nil || !r.Ready {
		t.Errorf("ModelReady: %v %v", r, err)
	}
	if r, err := client.ServerMetadata(ctx, &kservev2.ServerMetadataRequest{}); err != nil || r.Name != "spotml" || !reflect.DeepEqual(r.Extensions, []string{"binary_tensor_data"}) {
		t.Errorf("ServerMetadata: %v %v", r, err)
	}
	md, err := client.ModelMetadata(ctx, &kservev2.ModelMetadataRequest{Name: served, Version: "1"})
	if err != nil || md.Platform != "onnxruntime_onnx" || len(md.Inputs) != 1 || md.Inputs[0].Datatype != "FP32" ||
		!reflect.DeepEqual(md.Inputs[0].Shape, []int64{-1, 1, 28, 28}) || md.Outputs[0].Name != modelOutput {
		t.Errorf("ModelMetadata: %v %v", md, err)
	}

	ds := loadTestSet(t)
	batch := imageBatch(ds.images[:3]...)
	direct, err := m.Predict(ctx, []Tensor{batch})
	if err != nil {
		t.Fatal(err)
	}
	want := direct[0].Data.([]float32)
	in := &kservev2.ModelInferRequest_InferInputTensor{Name: modelInput, Datatype: "FP32", Shape: batch.Shape}

	// Typed contents in, typed out.
	typed := &kservev2.ModelInferRequest_InferInputTensor{Name: in.Name, Datatype: in.Datatype, Shape: in.Shape,
		Contents: &kservev2.InferTensorContents{Fp32Contents: batch.Data.([]float32)}}
	r, err := client.ModelInfer(ctx, &kservev2.ModelInferRequest{ModelName: served, Id: "t-1", Inputs: []*kservev2.ModelInferRequest_InferInputTensor{typed}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Id != "t-1" || r.ModelName != served || len(r.Outputs) != 1 || r.Outputs[0].Datatype != "FP32" ||
		!reflect.DeepEqual(r.Outputs[0].Shape, []int64{3, 10}) || !reflect.DeepEqual(r.Outputs[0].Contents.GetFp32Contents(), want) || r.RawOutputContents != nil {
		t.Errorf("typed ModelInfer: %v, want logits %v", r, want)
	}

	// Raw in, raw out, as Triton's clients send it.
	raw := float32Bytes(batch.Data.([]float32)...)
	r, err = client.ModelInfer(ctx, &kservev2.ModelInferRequest{ModelName: served, Inputs: []*kservev2.ModelInferRequest_InferInputTensor{in},
		Outputs: []*kservev2.ModelInferRequest_InferRequestedOutputTensor{{Name: modelOutput}}, RawInputContents: [][]byte{raw}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.RawOutputContents) != 1 || r.Outputs[0].Contents != nil || string(r.RawOutputContents[0]) != string(float32Bytes(want...)) {
		t.Errorf("raw ModelInfer: %v, want logits %v", r, want)
	}

	// The same address serves HTTP/1.1.
	if status, doc := call(t, http.MethodGet, "http://"+addr+"/v2/health/ready", nil); status != 200 || doc["ready"] != true {
		t.Errorf("HTTP on the gRPC address: %d %v", status, doc)
	}

	// The per-phase costs count these calls: three requests run (the
	// direct Predict and two calls), two decoded and encoded.
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	metrics := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if name, v, ok := strings.Cut(sc.Text(), " "); ok && !strings.HasPrefix(name, "#") {
			metrics[name], _ = strconv.ParseFloat(v, 64)
		}
	}
	if metrics["spotml_inference_requests_total"] != 3 || metrics["spotml_inference_runs_total"] != 3 || metrics["spotml_inference_rows_total"] != 9 ||
		metrics["spotml_inference_decode_seconds_total"] <= 0 || metrics["spotml_inference_encode_seconds_total"] <= 0 ||
		metrics["spotml_inference_run_seconds_total"] <= 0 || metrics["spotml_inference_queue_seconds_total"] <= 0 {
		t.Errorf("metrics: %v", metrics)
	}
}

// TestGRPCConcurrent: many concurrent calls on one connection are batched
// and each gets its own image's answer.
func TestGRPCConcurrent(t *testing.T) {
	m := openTestModel(t, DefaultOptions())
	_, client := serveBoth(t, served, m)
	ds := loadTestSet(t)
	n := 256
	want, err := m.Predict(t.Context(), []Tensor{imageBatch(ds.images[:n]...)})
	if err != nil {
		t.Fatal(err)
	}
	logits := want[0].Data.([]float32)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, err := client.ModelInfer(t.Context(), &kservev2.ModelInferRequest{ModelName: served,
				Inputs:           []*kservev2.ModelInferRequest_InferInputTensor{{Name: modelInput, Datatype: "FP32", Shape: []int64{1, 1, 28, 28}}},
				RawInputContents: [][]byte{float32Bytes(ds.images[i]...)}})
			if err != nil {
				t.Error(err)
				return
			}
			if got := r.RawOutputContents[0]; string(got) != string(float32Bytes(logits[i*10:(i+1)*10]...)) {
				t.Errorf("image %d: wrong logits", i)
			}
		})
	}
	wg.Wait()
	if st := m.Stats(); st.Runs >= int64(n)+1 {
		t.Logf("no batching happened: %+v", st) // possible on a loaded machine; not a failure
	}
}

// TestGRPCErrors: each bad call gets the status code a KServe client
// expects and a message naming the problem; nothing runs.
func TestGRPCErrors(t *testing.T) {
	m := openTestModel(t, DefaultOptions())
	_, client := serveBoth(t, served, m)
	ctx := t.Context()
	img := make([]float32, 784)
	input := func(datatype string, shape ...int64) *kservev2.ModelInferRequest_InferInputTensor {
		return &kservev2.ModelInferRequest_InferInputTensor{Name: modelInput, Datatype: datatype, Shape: shape}
	}
	withFP32 := func(in *kservev2.ModelInferRequest_InferInputTensor, data []float32) *kservev2.ModelInferRequest_InferInputTensor {
		in.Contents = &kservev2.InferTensorContents{Fp32Contents: data}
		return in
	}
	ins := func(in ...*kservev2.ModelInferRequest_InferInputTensor) []*kservev2.ModelInferRequest_InferInputTensor {
		return in
	}
	for _, tc := range []struct {
		name string
		req  *kservev2.ModelInferRequest
		code codes.Code
		msg  string
	}{
		{"unknown model", &kservev2.ModelInferRequest{ModelName: "shoes"}, codes.NotFound, `model "shoes" not found (this server serves "fashion")`},
		{"unknown version", &kservev2.ModelInferRequest{ModelName: served, ModelVersion: "7"}, codes.NotFound, `has no version "7"`},
		{"no inputs", &kservev2.ModelInferRequest{ModelName: served}, codes.InvalidArgument, `the request has no inputs`},
		{"unknown input", &kservev2.ModelInferRequest{ModelName: served, Inputs: ins(&kservev2.ModelInferRequest_InferInputTensor{Name: "image", Datatype: "FP32"})}, codes.InvalidArgument, `inputs[0] "image": the model has no such input`},
		{"wrong datatype", &kservev2.ModelInferRequest{ModelName: served, Inputs: ins(input("FP64", 1, 1, 28, 28))}, codes.InvalidArgument, `datatype "FP64" does not match the model's FP32`},
		{"no contents", &kservev2.ModelInferRequest{ModelName: served, Inputs: ins(input("FP32", 1, 1, 28, 28))}, codes.InvalidArgument, `has no contents (and the request no raw_input_contents)`},
		{"count mismatch", &kservev2.ModelInferRequest{ModelName: served, Inputs: ins(withFP32(input("FP32", 2, 1, 28, 28), img))}, codes.InvalidArgument, `784 values for shape [2,1,28,28], which holds 1568`},
		{"wrong shape", &kservev2.ModelInferRequest{ModelName: served, Inputs: ins(withFP32(input("FP32", 1, 784), img))}, codes.InvalidArgument, `shape [1,784] does not match the model's [-1,1,28,28]`},
		{"negative dimension", &kservev2.ModelInferRequest{ModelName: served, Inputs: ins(withFP32(input("FP32", -1, 784), img))}, codes.InvalidArgument, `shape [-1,784] has a negative dimension`},
		{"wrong field", &kservev2.ModelInferRequest{ModelName: served, Inputs: ins(func() *kservev2.ModelInferRequest_InferInputTensor {
			in := input("FP32", 1, 1, 28, 28)
			in.Contents = &kservev2.InferTensorContents{Fp64Contents: make([]float64, 784)}
			return in
		}())}, codes.InvalidArgument, `0 values for shape [1,1,28,28], which holds 784`},
		{"raw count", &kservev2.ModelInferRequest{ModelName: served, Inputs: ins(input("FP32", 1, 1, 28, 28)), RawInputContents: [][]byte{{}, {}}}, codes.InvalidArgument, `raw_input_contents has 2 entries for 1 inputs`},
		{"raw size", &kservev2.ModelInferRequest{ModelName: served, Inputs: ins(input("FP32", 1, 1, 28, 28)), RawInputContents: [][]byte{make([]byte, 3135)}}, codes.InvalidArgument, `raw_input_contents[0]: 3135 bytes of FP32 data for 784 elements, which take 3136`},
		{"raw and typed", &kservev2.ModelInferRequest{ModelName: served, Inputs: ins(withFP32(input("FP32", 1, 1, 28, 28), img)), RawInputContents: [][]byte{make([]byte, 3136)}}, codes.InvalidArgument, `has contents, but the request also has raw_input_contents`},
		{"unknown output", &kservev2.ModelInferRequest{ModelName: served, Inputs: ins(withFP32(input("FP32", 1, 1, 28, 28), img)),
			Outputs: []*kservev2.ModelInferRequest_InferRequestedOutputTensor{{Name: "probs"}}}, codes.InvalidArgument, `outputs[0]: the model has no output "probs" (its outputs: "logits")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.ModelInfer(ctx, tc.req)
			if s, _ := status.FromError(err); s.Code() != tc.code || !strings.Contains(s.Message(), tc.msg) {
				t.Errorf("%v, want %s ...%s...", err, tc.code, tc.msg)
			}
		})
	}
	if _, err := client.ModelReady(ctx, &kservev2.ModelReadyRequest{Name: "shoes"}); status.Code(err) != codes.NotFound {
		t.Errorf("ModelReady of an unknown model: %v", err)
	}
	if _, err := client.ModelMetadata(ctx, &kservev2.ModelMetadataRequest{Name: "shoes"}); status.Code(err) != codes.NotFound {
		t.Errorf("ModelMetadata of an unknown model: %v", err)
	}
	if st := m.Stats(); st.Runs != 0 {
		t.Errorf("bad calls ran the model: %+v", st)
	}
	// A closed model: Unavailable, and not ready.
	m.Close()
	_, err := client.ModelInfer(ctx, &kservev2.ModelInferRequest{ModelName: served, Inputs: ins(withFP32(input("FP32", 1, 1, 28, 28), img))})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("closed model: %v, want Unavailable", err)
	}
	if r, err := client.ServerReady(ctx, &kservev2.ServerReadyRequest{}); err != nil || r.Ready {
		t.Errorf("ServerReady of a closed model: %v %v", r, err)
	}
}

// TestGRPCDatatypes: FP16 goes raw both ways (it has no typed field), and
// typed contents of it are refused; BYTES goes typed or raw.
func TestGRPCDatatypes(t *testing.T) {
	ctx := t.Context()
	_, half := serveBoth(t, "half", openModelAt(t, "fp16.onnx"))
	var raw []byte
	for _, f := range []float32{0.5, -1, 2, 1000} {
		raw = binary.LittleEndian.AppendUint16(raw, uint16(Float16From(f)))
	}
	in := &kservev2.ModelInferRequest_InferInputTensor{Name: "x", Datatype: "FP16", Shape: []int64{1, 4}}
	r, err := half.ModelInfer(ctx, &kservev2.ModelInferRequest{ModelName: "half", Inputs: []*kservev2.ModelInferRequest_InferInputTensor{in}, RawInputContents: [][]byte{raw}})
	if err != nil {
		t.Fatal(err)
	}
	var got []float32
	for b := r.RawOutputContents[0]; len(b) >= 2; b = b[2:] {
		got = append(got, Float16(binary.LittleEndian.Uint16(b)).Float32())
	}
	if !reflect.DeepEqual(got, []float32{1, -2, 4, 2000}) || r.Outputs[0].Datatype != "FP16" {
		t.Errorf("FP16: %v -> %v", r, got)
	}
	in.Contents = &kservev2.InferTensorContents{Fp32Contents: []float32{1, 2, 3, 4}}
	_, err = half.ModelInfer(ctx, &kservev2.ModelInferRequest{ModelName: "half", Inputs: []*kservev2.ModelInferRequest_InferInputTensor{in}})
	if s, _ := status.FromError(err); s.Code() != codes.InvalidArgument || !strings.Contains(s.Message(), "FP16 has no typed contents field: send it in raw_input_contents") {
		t.Errorf("typed FP16: %v", err)
	}

	_, echo := serveBoth(t, "echo", openModelAt(t, "bytes.onnx"))
	words := [][]byte{[]byte("a"), []byte("bé"), {0xff}, {}}
	r, err = echo.ModelInfer(ctx, &kservev2.ModelInferRequest{ModelName: "echo", Inputs: []*kservev2.ModelInferRequest_InferInputTensor{{
		Name: "s", Datatype: "BYTES", Shape: []int64{2, 2}, Contents: &kservev2.InferTensorContents{BytesContents: words}}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Outputs[0].Contents.GetBytesContents(); len(got) != 4 || string(got[1]) != "bé" || string(got[2]) != "\xff" || len(got[3]) != 0 {
		t.Errorf("typed BYTES: %v", r)
	}
	var rawWords []byte
	for _, w := range words {
		rawWords = binary.LittleEndian.AppendUint32(rawWords, uint32(len(w)))
		rawWords = append(rawWords, w...)
	}
	r, err = echo.ModelInfer(ctx, &kservev2.ModelInferRequest{ModelName: "echo", Inputs: []*kservev2.ModelInferRequest_InferInputTensor{{
		Name: "s", Datatype: "BYTES", Shape: []int64{2, 2}}}, RawInputContents: [][]byte{rawWords}})
	if err != nil || string(r.RawOutputContents[0]) != string(rawWords) {
		t.Errorf("raw BYTES: %v %v", r, err)
	}
}

// TestGRPCMessageLimit: a message over the limit (--max-body-bytes) is
// RESOURCE_EXHAUSTED, and runs nothing.
func TestGRPCMessageLimit(t *testing.T) {
	m := openTestModel(t, DefaultOptions())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewGRPCServer(NewGRPCService(served, m, nil), 1024)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = kservev2.NewGRPCInferenceServiceClient(conn).ModelInfer(t.Context(), &kservev2.ModelInferRequest{ModelName: served,
		Inputs:           []*kservev2.ModelInferRequest_InferInputTensor{{Name: modelInput, Datatype: "FP32", Shape: []int64{1, 1, 28, 28}}},
		RawInputContents: [][]byte{make([]byte, 3136)}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("%v, want ResourceExhausted", err)
	}
	if st := m.Stats(); st.Runs != 0 {
		t.Errorf("an oversized message ran the model: %+v", st)
	}
}
