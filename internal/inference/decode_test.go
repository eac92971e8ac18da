package inference

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// describedModel is a Model as far as the request decoders and validation
// see it, without ONNX Runtime: they only read its descriptions.
func describedModel(t testing.TB, inputs, outputs []TensorInfo) *Model {
	t.Helper()
	m := &Model{inputs: inputs, outputs: outputs, batches: true}
	for _, in := range inputs {
		k, ok := kindOf(in.DataType)
		if !ok {
			t.Fatalf("no kind for %s", in.DataType)
		}
		m.inKinds = append(m.inKinds, k)
	}
	for _, out := range outputs {
		k, ok := kindOf(out.DataType)
		if !ok {
			t.Fatalf("no kind for %s", out.DataType)
		}
		m.outKinds = append(m.outKinds, k)
	}
	return m
}

// imageModel describes the Fashion-MNIST model.
func imageModel(t testing.TB) *Model {
	return describedModel(t,
		[]TensorInfo{{Name: "input", DataType: FP32, Shape: []int64{-1, 1, 28, 28}}},
		[]TensorInfo{{Name: "logits", DataType: FP32, Shape: []int64{-1, 10}}})
}

// pairModel has two inputs of different types and two outputs.
func pairModel(t testing.TB) *Model {
	return describedModel(t,
		[]TensorInfo{{Name: "x", DataType: FP32, Shape: []int64{-1, 2}}, {Name: "ids", DataType: INT64, Shape: []int64{-1}}},
		[]TensorInfo{{Name: "y", DataType: FP32, Shape: []int64{-1, 2}}, {Name: "n", DataType: INT64, Shape: []int64{-1}}})
}

func TestParseArray(t *testing.T) {
	leaf := parseFloat[float64](64)
	parse := func(s string) ([]int64, []float64, error) {
		r := &reader{b: []byte(s)}
		shape, vals, err := parseArray(r, 0, func(tok []byte) (float64, error) {
			v, ok := leaf(tok)
			if !ok {
				return 0, fmt.Errorf("%s is not a number", tok)
			}
			return v, nil
		})
		if err == nil {
			err = r.end()
		}
		return shape, vals, err
	}
	for _, tc := range []struct {
		in    string
		shape []int64
		vals  []float64
	}{
		{`1.5`, []int64{}, []float64{1.5}},
		{`[]`, []int64{0}, []float64{}},
		{`[1,2,3]`, []int64{3}, []float64{1, 2, 3}},
		{` [ [1, 2] , [3,4] ,[5,6] ] `, []int64{3, 2}, []float64{1, 2, 3, 4, 5, 6}},
		{`[[[1],[2]]]`, []int64{1, 2, 1}, []float64{1, 2}},
		{`[[],[]]`, []int64{2, 0}, []float64{}},
		{`[-0, 0.25, 1e3, -2.5E-1, 1E+2]`, []int64{5}, []float64{0, 0.25, 1000, -0.25, 100}},
	} {
		shape, vals, err := parse(tc.in)
		if err != nil || !reflect.DeepEqual(shape, tc.shape) || !reflect.DeepEqual(vals, tc.vals) {
			t.Errorf("%s: got %v %v %v, want %v %v", tc.in, shape, vals, err, tc.shape, tc.vals)
		}
	}
	for _, tc := range []struct{ in, err string }{
		{`[[1,2],[3]]`, "ragged"},
		{`[[1],2]`, "ragged"},
		{`[1,[2]]`, "ragged"},
		{`[[],[1]]`, "ragged"},
		{`[[[]],[1]]`, "ragged"},
		{`[1,2`, "expected ',' or ']'"},
		{`[1 2]`, "expected ',' or ']'"},
		{`[01]`, "expected ',' or ']'"},
		{`[1.]`, "no digits after '.'"},
		{`[1e]`, "no digits in the exponent"},
		{`[.5]`, "unexpected character"},
		{`[+1]`, "unexpected character"},
		{`[NaN]`, "unexpected character"},
		{`[Infinity]`, "unexpected character"},
		{`["1"]`, "strings are not supported"},
		{`[true]`, "true is not a number"},
		{`[1e999]`, "1e999 is not a number"},
		{`[1] x`, "unexpected data after"},
		{strings.Repeat("[", 100) + strings.Repeat("]", 100), "nested more than 64 deep"},
		{``, "unexpected end"},
	} {
		_, _, err := parse(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%.30s: got error %v, want one containing %q", tc.in, err, tc.err)
		}
	}
}

func TestReaderStringsAndValues(t *testing.T) {
	r := &reader{b: []byte(`{"a\u00e9\n": "x\"y", "skip": {"n": [1, true, null, "s", {}]}, "b": []}`)}
	got := map[string]string{}
	err := r.object(func(key string) error {
		if key == "a\u00e9\n" {
			s, err := r.string()
			got[key] = s
			return err
		}
		raw, err := r.value()
		got[key] = string(raw)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a\u00e9\n": `x"y`, "skip": `{"n": [1, true, null, "s", {}]}`, "b": `[]`}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, bad := range []string{`{"a": "\x01"}`, `{"a": "\q"}`, `{"a" 1}`, `{"a": 1,}`, `{a: 1}`, `{"a": tru}`, `{"a": "x`} {
		r := &reader{b: []byte(bad)}
		if err := r.object(func(string) error { _, err := r.value(); return err }); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestDecodeTF(t *testing.T) {
	img := func(v float32) []float32 {
		d := make([]float32, 784)
		for i := range d {
			d[i] = v
		}
		return d
	}
	row := func(v float32) string { // one [1,28,28] image
		b, _ := json.Marshal(reshape(img(v), 1, 28, 28))
		return string(b)
	}
	m := imageModel(t)
	for _, tc := range []struct {
		name, body string
		shape      []int64
		first      float32
	}{
		{"row format", `{"instances": [` + row(0.5) + `,` + row(0.25) + `]}`, []int64{2, 1, 28, 28}, 0.5},
		{"named rows", `{"signature_name": "serving_default", "instances": [{"input": ` + row(0.75) + `}]}`, []int64{1, 1, 28, 28}, 0.75},
		{"columnar", `{"inputs": [` + row(0.125) + `]}`, []int64{1, 1, 28, 28}, 0.125},
		{"named columns", `{"inputs": {"input": [` + row(1) + `]}}`, []int64{1, 1, 28, 28}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inputs, _, err := m.decodeTF([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if len(inputs) != 1 || inputs[0].Name != "input" || !reflect.DeepEqual(inputs[0].Shape, tc.shape) {
				t.Fatalf("got %d inputs, first %q %v", len(inputs), inputs[0].Name, inputs[0].Shape)
			}
			if d := inputs[0].Data.([]float32); d[0] != tc.first || len(d) != int(elements(tc.shape)) {
				t.Errorf("data starts %v, %d values", d[0], len(d))
			}
		})
	}

	p := pairModel(t)
	inputs, answer, err := p.decodeTF([]byte(`{"instances": [{"x": [1, 2], "ids": 7}, {"ids": 8, "x": [3, 4]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Tensor{{Name: "x", Shape: []int64{2, 2}, Data: []float32{1, 2, 3, 4}}, {Name: "ids", Shape: []int64{2}, Data: []int64{7, 8}}}
	if !reflect.DeepEqual(inputs, want) {
		t.Errorf("got %+v, want %+v", inputs, want)
	}
	outs := []Tensor{{Name: "y", Shape: []int64{2, 2}, Data: []float32{0.5, 1, 1.5, 2}}, {Name: "n", Shape: []int64{2}, Data: []int64{1, 2}}}
	got, _ := answer(nil, outs)
	if w := `{"predictions":[{"y":[0.5,1],"n":1},{"y":[1.5,2],"n":2}]}` + "\n"; string(got) != w {
		t.Errorf("row answer %s, want %s", got, w)
	}
	_, answer, err = p.decodeTF([]byte(`{"inputs": {"x": [[1, 2], [3, 4]], "ids": [7, 8]}}`))
	if err != nil {
		t.Fatal(err)
	}
	got, _ = answer(nil, outs)
	if w := `{"outputs":{"y":[[0.5,1],[1.5,2]],"n":[1,2]}}` + "\n"; string(got) != w {
		t.Errorf("columnar answer %s, want %s", got, w)
	}
}

func TestDecodeV2(t *testing.T) {
	p := pairModel(t)
	body := `{"id": "r-1", "parameters": {"x": 1}, "inputs": [
		{"name": "ids", "shape": [2], "datatype": "INT64", "data": [7, 8]},
		{"data": [[1, 2], [3, 4]], "datatype": "FP32", "shape": [2, 2], "name": "x", "parameters": {}}],
		"outputs": [{"name": "n"}]}`
	inputs, answer, err := p.decodeV2([]byte(body), nil, false, "pair")
	if err != nil {
		t.Fatal(err)
	}
	want := []Tensor{{Name: "ids", Shape: []int64{2}, Data: []int64{7, 8}}, {Name: "x", Shape: []int64{2, 2}, Data: []float32{1, 2, 3, 4}}}
	if !reflect.DeepEqual(inputs, want) {
		t.Errorf("got %+v, want %+v", inputs, want)
	}
	outs := []Tensor{{Name: "y", Shape: []int64{2, 2}, Data: []float32{0.5, 1, 1.5, 2}}, {Name: "n", Shape: []int64{2}, Data: []int64{1, 2}}}
	got, _ := answer(nil, outs)
	if w := `{"model_name":"pair","model_version":"1","id":"r-1","outputs":[{"name":"n","datatype":"INT64","shape":[2],"data":[1,2]}]}` + "\n"; string(got) != w {
		t.Errorf("answer %s, want %s", got, w)
	}
}

// TestDecodeErrors: every bad request is ErrInvalidInput with a message that
// names what is wrong. (What Predict validates — shapes against the model —
// is tested with the real model.)
func TestDecodeErrors(t *testing.T) {
	m := imageModel(t)
	p := pairModel(t)
	for _, tc := range []struct {
		name  string
		model *Model
		v2    bool
		body  string
		err   string
	}{
		{"not JSON", m, false, `instances=1`, "invalid JSON at byte 0"},
		{"not an object", m, false, `[1]`, "expected an object"},
		{"trailing", m, false, `{"instances": [[1]]} {}`, "unexpected data after"},
		{"neither", m, false, `{"signature_name": "x"}`, `neither "instances" (one element per row) nor "inputs"`},
		{"both", m, false, `{"instances": [1], "inputs": [1]}`, `either "instances" or "inputs"`},
		{"instances not a list", m, false, `{"instances": 1}`, `"instances" must be a list`},
		{"empty instances", m, false, `{"instances": []}`, `"instances" is empty`},
		{"string element", m, false, `{"instances": [["a"]]}`, "strings are not supported"},
		{"ragged", m, false, `{"instances": [[1, 2], [3]]}`, "ragged"},
		{"wrong name", m, false, `{"instances": [{"image": [1]}]}`, `no input "image" (its inputs: "input")`},
		{"mixed rows", m, false, `{"instances": [{"input": [1]}, [1]]}`, "instance 1 is not an object"},
		{"named rows disagree", p, false, `{"instances": [{"x": [1, 2], "ids": 1}, {"x": [1], "ids": 2}]}`, `instance 1: input "x" has shape [1], but [2] in instance 0`},
		{"named row missing", p, false, `{"instances": [{"x": [1, 2], "ids": 1}, {"x": [1, 2]}]}`, `input "ids" is missing from instance 1`},
		{"int given a float", p, false, `{"inputs": {"x": [[1, 2]], "ids": [1.5]}}`, `input "ids": 1.5 is not a valid INT64 value`},
		{"unnamed for two inputs", p, false, `{"instances": [[1, 2]]}`, `the model has 2 inputs ("x", "ids")`},

		{"v2 not JSON", m, true, `{"inputs": [}`, "invalid JSON at byte 12: unexpected character '}'"},
		{"v2 no inputs", m, true, `{"id": "1"}`, `no "inputs"`},
		{"v2 inputs not a list", m, true, `{"inputs": {}}`, `"inputs" must be a list`},
		{"v2 id not a string", m, true, `{"id": 1, "inputs": []}`, `"id" must be a string`},
		{"v2 no name", m, true, `{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}`, `input 0 has no "name"`},
		{"v2 no datatype", m, true, `{"inputs": [{"name": "input", "shape": [1], "data": [1]}]}`, `input "input" has no "datatype"`},
		{"v2 no shape", m, true, `{"inputs": [{"name": "input", "datatype": "FP32", "data": [1]}]}`, `input "input" has no "shape"`},
		{"v2 no data", m, true, `{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1]}]}`, `input "input" has no "data"`},
		{"v2 bad shape", m, true, `{"inputs": [{"name": "input", "datatype": "FP32", "shape": [[1]], "data": [1]}]}`, `"shape" must be a list of dimensions`},
		{"v2 negative dim", m, true, `{"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1], "data": [1]}]}`, `-1 is not a dimension`},
		{"v2 wrong name", m, true, `{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1]}]}`, `no input "image"`},
		{"v2 wrong datatype", m, true, `{"inputs": [{"name": "input", "datatype": "INT64", "shape": [1], "data": [1]}]}`, `input "input": datatype INT64 does not match the model's FP32`},
		{"v2 unknown datatype", m, true, `{"inputs": [{"name": "input", "datatype": "FP8", "shape": [1], "data": [1]}]}`, `datatype "FP8" is not supported`},
		{"v2 count", m, true, `{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [1, 2]}]}`, `input "input": 2 values for shape [1,1,28,28], which holds 784`},
		{"v2 wrong output", m, true, `{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": [{"name": "probs"}]}`, `no output "probs" (its outputs: "logits")`},
		{"v2 huge shape", m, true, `{"inputs": [{"name": "input", "datatype": "FP32", "shape": [4294967296, 4294967296], "data": [1]}]}`, `too large`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.v2 {
				_, _, err = tc.model.decodeV2([]byte(tc.body), nil, false, "m")
			} else {
				_, _, err = tc.model.decodeTF([]byte(tc.body))
			}
			if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("got %v, want ErrInvalidInput containing %q", err, tc.err)
			}
		})
	}
}

// FuzzDecode: no body, however malformed, makes the decoders panic or hand
// Predict tensors whose data disagrees with their shape.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"instances": [[[1, 2]], [[3, 4]]]}`,
		`{"instances": [{"x": [1, 2], "ids": 7}]}`,
		`{"inputs": {"x": [[1, 2]], "ids": [1]}}`,
		`{"id": "a", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [[1, 2]]}], "outputs": [{"name": "y"}]}`,
		`{"inputs": [{"name": "ids", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}`,
		`[[[[`, `{"a": "\u00e9\"", "inputs": []}`, `-0.0e+1`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, m := range []*Model{imageModel(t), pairModel(t)} {
			tf, _, errTF := m.decodeTF(body)
			v2, _, errV2 := m.decodeV2(body, nil, false, "m")
			for _, c := range []struct {
				inputs []Tensor
				err    error
			}{{tf, errTF}, {v2, errV2}} {
				if c.err != nil {
					if !errors.Is(c.err, ErrInvalidInput) {
						t.Fatalf("error %v is not ErrInvalidInput", c.err)
					}
					continue
				}
				for _, in := range c.inputs {
					i := indexOf(m.inputs, in.Name)
					if i < 0 {
						t.Fatalf("decoded unknown input %q", in.Name)
					}
					if n := m.inKinds[i].length(in.Data); int64(n) != elements(in.Shape) {
						t.Fatalf("input %q: %d values for shape %v", in.Name, n, in.Shape)
					}
				}
				// Predict's validation must not panic on whatever was decoded.
				_, _, _ = m.check(c.inputs)
			}
		}
	})
}

// reshape nests flat data for json.Marshal.
func reshape(data []float32, dims ...int) any {
	if len(dims) == 1 {
		return data[:dims[0]]
	}
	per := len(data) / dims[0]
	out := make([]any, dims[0])
	for i := range out {
		out[i] = reshape(data[i*per:(i+1)*per], dims[1:]...)
	}
	return out
}
