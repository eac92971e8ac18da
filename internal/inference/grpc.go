package inference

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/spotml/spotml/internal/inference/kservev2"
)

// GRPCService serves one model over the Open Inference Protocol's gRPC API
// (inference.GRPCInferenceService, the KServe v2 / Triton protocol), so that
// clients generated from grpc_predict_v2.proto work unchanged. Errors are
// gRPC statuses: InvalidArgument for a request the model cannot take,
// NotFound for an unknown model or version, Unavailable when the queue is
// full or the model closed (retry), Canceled/DeadlineExceeded when the
// caller gave up.
type GRPCService struct {
	kservev2.UnimplementedGRPCInferenceServiceServer
	name  string
	model *Model
	log   *slog.Logger
}

var _ kservev2.GRPCInferenceServiceServer = (*GRPCService)(nil)

// NewGRPCService serves m under the model name name; log receives failures
// that are not the caller's.
func NewGRPCService(name string, m *Model, log *slog.Logger) *GRPCService {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &GRPCService{name: name, model: m, log: log}
}

// NewGRPCServer returns a gRPC server with s registered that takes messages
// up to maxMsgBytes (the HTTP side's body limit, so that both protocols take
// the same requests).
func NewGRPCServer(s *GRPCService, maxMsgBytes int) *grpc.Server {
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(maxMsgBytes), grpc.MaxSendMsgSize(maxMsgBytes))
	kservev2.RegisterGRPCInferenceServiceServer(srv, s)
	return srv
}

func (s *GRPCService) ServerLive(context.Context, *kservev2.ServerLiveRequest) (*kservev2.ServerLiveResponse, error) {
	return &kservev2.ServerLiveResponse{Live: true}, nil
}

func (s *GRPCService) ServerReady(context.Context, *kservev2.ServerReadyRequest) (*kservev2.ServerReadyResponse, error) {
	return &kservev2.ServerReadyResponse{Ready: s.model.Ready()}, nil
}

func (s *GRPCService) ModelReady(_ context.Context, req *kservev2.ModelReadyRequest) (*kservev2.ModelReadyResponse, error) {
	if err := checkModel(s.name, req.GetName(), req.GetVersion()); err != nil {
		return nil, s.status(err)
	}
	return &kservev2.ModelReadyResponse{Ready: s.model.Ready()}, nil
}

func (s *GRPCService) ServerMetadata(context.Context, *kservev2.ServerMetadataRequest) (*kservev2.ServerMetadataResponse, error) {
	return &kservev2.ServerMetadataResponse{Name: "spotml", Version: serverVersion(), Extensions: serverExtensions}, nil
}

func (s *GRPCService) ModelMetadata(_ context.Context, req *kservev2.ModelMetadataRequest) (*kservev2.ModelMetadataResponse, error) {
	if err := checkModel(s.name, req.GetName(), req.GetVersion()); err != nil {
		return nil, s.status(err)
	}
	describe := func(infos []TensorInfo) []*kservev2.ModelMetadataResponse_TensorMetadata {
		out := make([]*kservev2.ModelMetadataResponse_TensorMetadata, len(infos))
		for i, t := range infos {
			out[i] = &kservev2.ModelMetadataResponse_TensorMetadata{Name: t.Name, Datatype: string(t.DataType), Shape: t.Shape}
		}
		return out
	}
	return &kservev2.ModelMetadataResponse{Name: s.name, Versions: []string{modelVersion}, Platform: platform,
		Inputs: describe(s.model.Inputs()), Outputs: describe(s.model.Outputs())}, nil
}

// ModelInfer runs the model. Inputs come in typed contents or all in
// raw_input_contents; the answer mirrors the request (raw in, raw out, as
// KServe's servers do), except that FP16, which has no typed field, is
// always raw, and then so is every output.
func (s *GRPCService) ModelInfer(ctx context.Context, req *kservev2.ModelInferRequest) (*kservev2.ModelInferResponse, error) {
	if err := checkModel(s.name, req.GetModelName(), req.GetModelVersion()); err != nil {
		return nil, s.status(err)
	}
	start := time.Now()
	inputs, err := s.model.decodeGRPC(req)
	if err != nil {
		return nil, s.status(err)
	}
	var want []string
	for i, o := range req.GetOutputs() {
		if indexOf(s.model.outputs, o.GetName()) < 0 {
			return nil, s.status(invalidf("outputs[%d]: the model has no output %q (its outputs: %s)", i, o.GetName(), names(s.model.outputs)))
		}
		want = append(want, o.GetName())
	}
	decoded := time.Now()
	outputs, err := s.model.Predict(ctx, inputs)
	if err != nil {
		return nil, s.status(err)
	}
	predicted := time.Now()
	resp := &kservev2.ModelInferResponse{ModelName: s.name, ModelVersion: modelVersion, Id: req.GetId()}
	raw := len(req.GetRawInputContents()) > 0
	for i, out := range outputs {
		if s.model.outKinds[i].dt == FP16 && (len(want) == 0 || slices.Contains(want, out.Name)) {
			raw = true
		}
	}
	for i, out := range outputs {
		if len(want) > 0 && !slices.Contains(want, out.Name) {
			continue
		}
		k := s.model.outKinds[i]
		o := &kservev2.ModelInferResponse_InferOutputTensor{Name: out.Name, Datatype: string(k.dt), Shape: out.Shape}
		if raw {
			// The output's memory, not copied: it is this request's alone
			// and is not touched again before the message is sent.
			b := rawBytesOf(out.Data)
			if b == nil {
				b = k.appendRaw(nil, out.Data, 0, k.length(out.Data))
			}
			resp.RawOutputContents = append(resp.RawOutputContents, b)
		} else {
			o.Contents = typedContents(out.Data)
		}
		resp.Outputs = append(resp.Outputs, o)
	}
	s.model.NoteCodec(decoded.Sub(start), time.Since(predicted))
	return resp, nil
}

// decodeGRPC turns a request's inputs into tensors, sharing the message's
// memory where it can (typed contents of the model's own type, aligned raw
// contents).
func (m *Model) decodeGRPC(req *kservev2.ModelInferRequest) ([]Tensor, error) {
	raw := req.GetRawInputContents()
	ins := req.GetInputs()
	if len(ins) == 0 {
		return nil, invalidf("the request has no inputs (the model's inputs: %s)", names(m.inputs))
	}
	if len(raw) > 0 && len(raw) != len(ins) {
		return nil, invalidf("raw_input_contents has %d entries for %d inputs: give one per input, in the order of inputs", len(raw), len(ins))
	}
	inputs := make([]Tensor, len(ins))
	for n, in := range ins {
		label := fmt.Sprintf("inputs[%d] %q", n, in.GetName())
		i := indexOf(m.inputs, in.GetName())
		if i < 0 {
			return nil, invalidf("%s: the model has no such input (its inputs: %s)", label, names(m.inputs))
		}
		k := m.inKinds[i]
		if DataType(in.GetDatatype()) != k.dt {
			return nil, invalidf("%s: datatype %q does not match the model's %s", label, in.GetDatatype(), k.dt)
		}
		for _, d := range in.GetShape() {
			if d < 0 {
				return nil, invalidf("%s: shape %s has a negative dimension", label, shapeString(in.GetShape()))
			}
		}
		want := elements(in.GetShape())
		if want < 0 {
			return nil, invalidf("%s: shape %s is too large", label, shapeString(in.GetShape()))
		}
		t := Tensor{Name: in.GetName(), Shape: in.GetShape()}
		switch {
		case len(raw) > 0:
			if in.GetContents() != nil {
				return nil, invalidf("%s has contents, but the request also has raw_input_contents: send every input one way", label)
			}
			if data, ok := k.view(raw[n], int(want)); ok {
				t.Data = data
				break
			}
			data, err := k.fromRaw(raw[n], int(want))
			if err != nil {
				return nil, invalidf("%s: raw_input_contents[%d]: %v", label, n, err)
			}
			t.Data = data
		case in.GetContents() == nil:
			return nil, invalidf("%s has no contents (and the request no raw_input_contents)", label)
		default:
			data, err := fromContents(k.dt, in.GetContents())
			if err != nil {
				return nil, invalidf("%s: %v", label, err)
			}
			if got := k.length(data); int64(got) != want {
				return nil, invalidf("%s: %d values for shape %s, which holds %d", label, got, shapeString(t.Shape), want)
			}
			t.Data = data
		}
		inputs[n] = t
	}
	return inputs, nil
}

// fromContents takes the typed field the protocol gives dt, converting to
// the narrower integer types it shares a field with.
func fromContents(dt DataType, c *kservev2.InferTensorContents) (any, error) {
	switch dt {
	case BOOL:
		return c.GetBoolContents(), nil
	case INT8:
		return narrow[int8](c.GetIntContents(), dt)
	case INT16:
		return narrow[int16](c.GetIntContents(), dt)
	case INT32:
		return c.GetIntContents(), nil
	case INT64:
		return c.GetInt64Contents(), nil
	case UINT8:
		return narrow[uint8](c.GetUintContents(), dt)
	case UINT16:
		return narrow[uint16](c.GetUintContents(), dt)
	case UINT32:
		return c.GetUintContents(), nil
	case UINT64:
		return c.GetUint64Contents(), nil
	case FP32:
		return c.GetFp32Contents(), nil
	case FP64:
		return c.GetFp64Contents(), nil
	case BYTES:
		return c.GetBytesContents(), nil
	}
	return nil, fmt.Errorf("%s has no typed contents field: send it in raw_input_contents (little-endian)", dt)
}

func narrow[T int8 | int16 | uint8 | uint16, W int32 | uint32](wide []W, dt DataType) ([]T, error) {
	out := make([]T, len(wide))
	for i, v := range wide {
		out[i] = T(v)
		if W(out[i]) != v {
			return nil, fmt.Errorf("element %d, %d, is out of range for %s", i, v, dt)
		}
	}
	return out, nil
}

// typedContents puts data in the field the protocol gives its type.
func typedContents(data any) *kservev2.InferTensorContents {
	c := &kservev2.InferTensorContents{}
	switch d := data.(type) {
	case []bool:
		c.BoolContents = d
	case []int8:
		c.IntContents = widen[int32](d)
	case []int16:
		c.IntContents = widen[int32](d)
	case []int32:
		c.IntContents = d
	case []int64:
		c.Int64Contents = d
	case []uint8:
		c.UintContents = widen[uint32](d)
	case []uint16:
		c.UintContents = widen[uint32](d)
	case []uint32:
		c.UintContents = d
	case []uint64:
		c.Uint64Contents = d
	case []float32:
		c.Fp32Contents = d
	case []float64:
		c.Fp64Contents = d
	case [][]byte:
		c.BytesContents = d
	}
	return c
}

func widen[W int32 | uint32, T int8 | int16 | uint8 | uint16](d []T) []W {
	out := make([]W, len(d))
	for i, v := range d {
		out[i] = W(v)
	}
	return out
}

// rawBytesOf is the memory of fixed-size data, nil for BYTES.
func rawBytesOf(data any) []byte {
	switch d := data.(type) {
	case []bool:
		return rawBytes(d)
	case []int8:
		return rawBytes(d)
	case []int16:
		return rawBytes(d)
	case []int32:
		return rawBytes(d)
	case []int64:
		return rawBytes(d)
	case []uint8:
		return rawBytes(d)
	case []uint16:
		return rawBytes(d)
	case []uint32:
		return rawBytes(d)
	case []uint64:
		return rawBytes(d)
	case []float32:
		return rawBytes(d)
	case []float64:
		return rawBytes(d)
	case []Float16:
		return rawBytes(d)
	}
	return nil
}

// status maps an error to the gRPC status the protocol's clients expect.
func (s *GRPCService) status(err error) error {
	code := codes.Internal
	msg := err.Error()
	switch {
	case errors.Is(err, ErrInvalidInput):
		code = codes.InvalidArgument
	case errors.Is(err, errNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrQueueFull), errors.Is(err, ErrClosed):
		code = codes.Unavailable
	case errors.Is(err, context.Canceled):
		code, msg = codes.Canceled, "the request was cancelled before the model ran it"
	case errors.Is(err, context.DeadlineExceeded):
		code, msg = codes.DeadlineExceeded, "the request's deadline passed before the model ran it"
	default:
		s.log.Error("inference request failed", "model", s.name, "protocol", "grpc", "err", err)
	}
	return status.Error(code, msg)
}
