package inference

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// CheckONNX checks that b is an ONNX model as far as it can be told
// without ONNX Runtime: a ModelProto in protobuf's wire format with an IR
// version and a graph, the graph well-formed with at least one input and
// one output. It catches a wrong file (an image, a PyTorch checkpoint,
// text, a truncated upload) where the file is given, so that the error
// names the model rather than surfacing in every worker. Operators ONNX
// Runtime cannot run are only found when a session opens the model.
func CheckONNX(b []byte) error {
	var irVersion uint64
	var graph []byte
	if err := walkFields(b, func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error {
		switch {
		case num == 1 && typ == protowire.VarintType: // ir_version
			irVersion = u
		case num == 7 && typ == protowire.BytesType: // graph
			graph = v
		case num == 1 || num == 7:
			return fmt.Errorf("field %d has the wrong wire type", num)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("not an ONNX model: %w", err)
	}
	switch {
	case irVersion == 0:
		return errors.New("not an ONNX model: it has no IR version")
	case graph == nil:
		return errors.New("not an ONNX model: it has no graph")
	}
	var inputs, outputs int
	if err := walkFields(graph, func(num protowire.Number, typ protowire.Type, _ []byte, _ uint64) error {
		switch {
		case num == 11 && typ == protowire.BytesType:
			inputs++
		case num == 12 && typ == protowire.BytesType:
			outputs++
		}
		return nil
	}); err != nil {
		return fmt.Errorf("not an ONNX model: its graph: %w", err)
	}
	if inputs == 0 || outputs == 0 {
		return fmt.Errorf("not an ONNX model: its graph has %d inputs and %d outputs", inputs, outputs)
	}
	return nil
}

// walkFields calls f for each field of a protobuf message in wire format:
// v for length-delimited fields, u for varints; it fails on anything that
// is not well-formed wire format (protobuf parsers refuse it too).
func walkFields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, u uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		var u uint64
		switch typ {
		case protowire.VarintType:
			u, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := f(num, typ, v, u); err != nil {
			return err
		}
	}
	return nil
}
