package inference

import (
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

func TestCheckONNX(t *testing.T) {
	model, err := os.ReadFile("../../examples/fashion-mnist/model.onnx")
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckONNX(model); err != nil {
		t.Fatalf("the shipped model: %v", err)
	}
	png := []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x1c\x00\x00\x00\x1c\x08\x00\x00\x00\x00")
	// A message with an IR version and a graph with no inputs.
	noInputs := protowire.AppendTag(nil, 1, protowire.VarintType)
	noInputs = protowire.AppendVarint(noInputs, 9)
	noInputs = protowire.AppendTag(noInputs, 7, protowire.BytesType)
	noInputs = protowire.AppendBytes(noInputs, protowire.AppendString(protowire.AppendTag(nil, 2, protowire.BytesType), "g"))
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "no IR version"},
		{"text", []byte("this is not a model, it is a README\n"), "not an ONNX model"},
		{"png", png, "not an ONNX model"},
		{"truncated", model[:len(model)/2], "not an ONNX model"},
		{"64 junk bytes", []byte(strings.Repeat("\xff\x07", 32)), "not an ONNX model"},
		{"no inputs", noInputs, "0 inputs"},
	} {
		err := CheckONNX(tc.b)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v; want it to say %q", tc.name, err, tc.want)
		}
	}
}
