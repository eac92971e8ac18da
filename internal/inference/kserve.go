package inference

import (
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
)

// KServe's Open Inference Protocol (v2), REST binding
// (kserve.github.io/website, "Open Inference Protocol"):
//
//	POST /v2/models/NAME[/versions/N]/infer
//	     {"id": "...", "inputs": [{"name", "shape", "datatype", "data"}],
//	      "outputs": [{"name"}]}  ->  {"model_name", "model_version", "id",
//	                                   "outputs": [{"name", "shape", "datatype", "data"}]}
//	GET  /v2/models/NAME[/versions/N]         model metadata
//	GET  /v2/models/NAME[/versions/N]/ready   model readiness
//	GET  /v2/health/live, /v2/health/ready    server liveness, readiness
//	GET  /v2                                  server metadata
//
// Request data may be flat (row-major) or nested; response data is flat.
// "outputs" in a request picks which outputs to return (default: all).
//
// The binary tensor extension (Triton's binary_tensor_data, which KServe
// clients speak too) is supported both ways: a request whose
// Inference-Header-Content-Length header says its first N bytes are the JSON
// carries, after them, the data of each input whose parameters give
// "binary_data_size" (in the order of "inputs", elements little-endian,
// BYTES each prefixed by its 4-byte length); outputs asked for with
// "parameters": {"binary_data": true} (or all of them, with the request's
// "parameters": {"binary_data_output": true}) come back the same way.

const platform = "onnxruntime_onnx"

func (h *Handler) v2Infer(w http.ResponseWriter, r *http.Request) {
	if err := h.checkModel(r.PathValue("name"), r.PathValue("version")); err != nil {
		h.fail(w, err)
		return
	}
	if err := allow(r, http.MethodPost); err != nil {
		h.fail(w, err)
		return
	}
	headerLen := -1
	if v := r.Header.Get(headerLengthKey); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			h.fail(w, invalidf("%s: %q is not a length in bytes", headerLengthKey, v))
			return
		}
		headerLen = n
	}
	h.predict(w, r, func(body []byte) ([]Tensor, answer, error) {
		var bin []byte
		if headerLen >= 0 {
			if headerLen > len(body) {
				return nil, nil, invalidf("%s is %d, but the body has only %d bytes", headerLengthKey, headerLen, len(body))
			}
			body, bin = body[:headerLen], body[headerLen:]
		}
		return h.model.decodeV2(body, bin, headerLen >= 0, h.name)
	})
}

func (h *Handler) v2Metadata(w http.ResponseWriter, r *http.Request) {
	if err := h.checkModel(r.PathValue("name"), r.PathValue("version")); err != nil {
		h.fail(w, err)
		return
	}
	if err := allow(r, http.MethodGet); err != nil {
		h.fail(w, err)
		return
	}
	type tensorMetadata struct {
		Name     string   `json:"name"`
		Datatype DataType `json:"datatype"`
		Shape    []int64  `json:"shape"`
	}
	describe := func(infos []TensorInfo) []tensorMetadata {
		out := make([]tensorMetadata, len(infos))
		for i, t := range infos {
			out[i] = tensorMetadata{Name: t.Name, Datatype: t.DataType, Shape: t.Shape}
		}
		return out
	}
	writeJSON(w, http.StatusOK, struct {
		Name     string           `json:"name"`
		Versions []string         `json:"versions"`
		Platform string           `json:"platform"`
		Inputs   []tensorMetadata `json:"inputs"`
		Outputs  []tensorMetadata `json:"outputs"`
	}{h.name, []string{modelVersion}, platform, describe(h.model.Inputs()), describe(h.model.Outputs())})
}

// headerLengthKey is the binary tensor extension's header: how many bytes
// of the body are JSON.
const headerLengthKey = "Inference-Header-Content-Length"

// v2ModelReady answers 200 while the model takes requests, 503 after it
// has been closed (the status code is what the protocol checks).
func (h *Handler) v2ModelReady(w http.ResponseWriter, r *http.Request) {
	if err := h.checkModel(r.PathValue("name"), r.PathValue("version")); err != nil {
		h.fail(w, err)
		return
	}
	if err := allow(r, http.MethodGet); err != nil {
		h.fail(w, err)
		return
	}
	ready := h.model.Ready()
	writeJSON(w, readyStatus(ready), map[string]any{"name": h.name, "ready": ready})
}

func (h *Handler) v2Ready(w http.ResponseWriter, r *http.Request) {
	if err := allow(r, http.MethodGet); err != nil {
		h.fail(w, err)
		return
	}
	ready := h.model.Ready()
	writeJSON(w, readyStatus(ready), map[string]bool{"ready": ready})
}

func (h *Handler) v2Live(w http.ResponseWriter, r *http.Request) {
	if err := allow(r, http.MethodGet); err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"live": true})
}

func (h *Handler) v2Server(w http.ResponseWriter, r *http.Request) {
	if err := allow(r, http.MethodGet); err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": "spotml", "version": serverVersion(), "extensions": serverExtensions})
}

// serverExtensions are the protocol extensions ServerMetadata lists.
var serverExtensions = []string{"binary_tensor_data"}

func readyStatus(ready bool) int {
	if ready {
		return http.StatusOK
	}
	return http.StatusServiceUnavailable
}

// decodeV2 reads an inference request: body is its JSON, bin the binary
// data after it (hasBin: the request had an Inference-Header-Content-Length
// header). The answer it returns writes the response, with the request's id
// and only the outputs it asked for.
func (m *Model) decodeV2(body, bin []byte, hasBin bool, name string) ([]Tensor, answer, error) {
	r := &reader{b: body}
	var (
		inputs []Tensor
		id     string
		hasID  bool
		want   []string // requested outputs, in the order asked
		binOut []int8   // per requested output: -1 JSON, 1 binary, 0 not said
		allBin bool     // binary_data_output
		binAt  []int    // per input: its binary data's size, -1 for JSON data
	)
	err := r.object(func(key string) error {
		var err error
		switch key {
		case "id":
			if r.peek() != '"' {
				return invalidf(`"id" must be a string`)
			}
			id, err = r.string()
			hasID = true
		case "inputs":
			if r.peek() != '[' {
				return invalidf(`"inputs" must be a list of tensors`)
			}
			err = r.array(func() error {
				t, size, err := m.decodeV2Input(r, len(inputs))
				inputs = append(inputs, t)
				binAt = append(binAt, size)
				return err
			})
		case "outputs":
			if r.peek() != '[' {
				return invalidf(`"outputs" must be a list of {"name": ...} objects`)
			}
			err = r.array(func() error {
				name, binary, err := decodeV2Output(r, len(want))
				if err == nil && indexOf(m.outputs, name) < 0 {
					err = invalidf("the model has no output %q (its outputs: %s)", name, names(m.outputs))
				}
				want = append(want, name)
				binOut = append(binOut, binary)
				return err
			})
		case "parameters":
			err = readParameters(r, `request "parameters"`, func(key string, v param) error {
				if key != "binary_data_output" {
					return nil
				}
				if !v.isBool {
					return invalidf(`"binary_data_output" must be true or false`)
				}
				allBin = v.b
				return nil
			})
		default: // anything a newer client adds
			_, err = r.value()
		}
		return err
	})
	if err == nil {
		err = r.end()
	}
	if err != nil {
		return nil, nil, asInvalid(err)
	}
	if len(inputs) == 0 {
		return nil, nil, invalidf(`the request has no "inputs" (the model's inputs: %s)`, names(m.inputs))
	}
	if err := m.binaryInputs(inputs, binAt, bin, hasBin); err != nil {
		return nil, nil, err
	}
	// Which outputs go back as binary: binary_data_output for all, unless
	// an output says otherwise for itself.
	binary := func(out string) bool {
		if i := slices.Index(want, out); i >= 0 && binOut[i] != 0 {
			return binOut[i] > 0
		}
		return allBin
	}
	return inputs, func(buf []byte, outputs []Tensor) ([]byte, int) {
		return m.encodeV2(buf, outputs, name, id, hasID, want, binary)
	}, nil
}

// binaryInputs fills in the data of inputs sent in the binary format, in
// order, from bin; every byte of bin must belong to one of them.
func (m *Model) binaryInputs(inputs []Tensor, sizes []int, bin []byte, hasBin bool) error {
	for i, size := range sizes {
		if size < 0 {
			continue
		}
		t := &inputs[i]
		if !hasBin {
			return invalidf(`input %q has "binary_data_size" but the request has no %s header saying where the JSON ends`, t.Name, headerLengthKey)
		}
		if size > len(bin) {
			return invalidf(`input %q: "binary_data_size" is %d, but only %d bytes of binary data are left`, t.Name, size, len(bin))
		}
		k := m.inKinds[indexOf(m.inputs, t.Name)]
		data, err := k.fromRaw(bin[:size], int(elements(t.Shape)))
		if err != nil {
			return invalidf("input %q: binary data: %v", t.Name, err)
		}
		t.Data = data
		bin = bin[size:]
	}
	if len(bin) > 0 {
		return invalidf(`%d bytes of binary data after the JSON are not claimed by any input's "binary_data_size"`, len(bin))
	}
	return nil
}

// param is one value of a "parameters" object: a bool, an integer or a
// string (the protocol allows nothing else).
type param struct {
	isBool, isInt bool
	b             bool
	i             int64
}

// readParameters reads a "parameters" object, calling each with its
// values; strings and other keys pass unread.
func readParameters(r *reader, what string, each func(key string, v param) error) error {
	if r.peek() != '{' {
		return notAnObject(r, "%s must be an object", what)
	}
	return r.object(func(key string) error {
		raw, err := r.value()
		if err != nil {
			return err
		}
		var v param
		switch string(raw) {
		case "true", "false":
			v.isBool, v.b = true, string(raw) == "true"
		default:
			if n, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
				v.isInt, v.i = true, n
			}
		}
		return each(key, v)
	})
}

// decodeV2Input reads the n-th input tensor. Its data is read last, when
// its datatype is known, as the members may come in any order. binSize is
// the size of its data in the binary part of the body, -1 when its data is
// in the JSON.
func (m *Model) decodeV2Input(r *reader, n int) (t Tensor, binSize int, err error) {
	var (
		datatype   string
		hasName    bool
		shapeGiven bool
		dataAt     = -1
	)
	binSize = -1
	if r.peek() != '{' {
		return t, -1, notAnObject(r, "input %d is not an object with name, shape, datatype and data", n)
	}
	// resolve finds the input's kind and size once its name, datatype and
	// shape are known; its errors are reported after the whole object.
	resolve := func() (*kind, int64, bool) {
		i := indexOf(m.inputs, t.Name)
		if i < 0 {
			return nil, 0, false
		}
		k, ok := kindOf(DataType(datatype))
		want := elements(t.Shape)
		return k, want, ok && k.dt == m.inputs[i].DataType && want >= 0
	}
	// parseData reads the data at rd into t: flat or nested, only the
	// number of elements has to agree with the shape.
	parseData := func(rd *reader, k *kind, want int64) error {
		_, values, err := k.parse(rd, int(min(want, int64(len(rd.b)/2+1))))
		if err != nil {
			return err
		}
		if got := k.length(values); int64(got) != want {
			return invalidf("%d values for shape %s, which holds %d", got, shapeString(t.Shape), want)
		}
		t.Data = values
		return nil
	}
	parsed := false
	err = r.object(func(key string) error {
		var err error
		switch key {
		case "name":
			t.Name, err = r.string()
			hasName = true
		case "datatype":
			datatype, err = r.string()
		case "shape":
			var nesting []int64
			nesting, t.Shape, err = parseArray(r, 8, parseShapeDim)
			if err == nil && len(nesting) != 1 {
				err = invalidf(`"shape" must be a list of dimensions`)
			}
			shapeGiven = true
		case "data":
			dataAt = r.i
			// Clients write name, shape and datatype first: the data can
			// then be read straight into its tensor, in one pass.
			if hasName && datatype != "" && shapeGiven {
				if k, want, ok := resolve(); ok {
					parsed = true
					return parseData(r, k, want)
				}
			}
			_, err = r.value()
		case "parameters":
			err = readParameters(r, `input "parameters"`, func(key string, v param) error {
				if key != "binary_data_size" {
					return nil
				}
				if !v.isInt || v.i < 0 || v.i > math.MaxInt32 {
					return invalidf(`"binary_data_size" must be a number of bytes`)
				}
				binSize = int(v.i)
				return nil
			})
		default:
			_, err = r.value()
		}
		return err
	})
	label := func() string {
		if hasName {
			return "input " + strconv.Quote(t.Name)
		}
		return "input " + strconv.Itoa(n)
	}
	switch {
	case err != nil:
		return t, -1, invalidf("%s: %v", label(), err)
	case !hasName:
		return t, -1, invalidf(`input %d has no "name"`, n)
	case datatype == "":
		return t, -1, invalidf(`%s has no "datatype"`, label())
	case !shapeGiven:
		return t, -1, invalidf(`%s has no "shape"`, label())
	case dataAt < 0 && binSize < 0:
		return t, -1, invalidf(`%s has no "data" (nor "parameters": {"binary_data_size": N} with the data after the JSON)`, label())
	case dataAt >= 0 && binSize >= 0:
		return t, -1, invalidf(`%s has both "data" and "binary_data_size": send its data one way`, label())
	}
	i := indexOf(m.inputs, t.Name)
	if i < 0 {
		return t, -1, invalidf("the model has no input %q (its inputs: %s)", t.Name, names(m.inputs))
	}
	k, ok := kindOf(DataType(datatype))
	if !ok {
		return t, -1, invalidf("%s: datatype %q is not supported (the model's is %s)", label(), datatype, m.inputs[i].DataType)
	}
	if k.dt != m.inputs[i].DataType {
		return t, -1, invalidf("%s: datatype %s does not match the model's %s", label(), datatype, m.inputs[i].DataType)
	}
	want := elements(t.Shape)
	if want < 0 {
		return t, -1, invalidf("%s: shape %s is too large", label(), shapeString(t.Shape))
	}
	if binSize >= 0 {
		return t, binSize, nil // filled in by binaryInputs
	}
	if !parsed {
		if err := parseData(&reader{b: r.b, i: dataAt}, k, want); err != nil {
			return t, -1, invalidf("%s: %v", label(), err)
		}
	}
	return t, -1, nil
}

func parseShapeDim(tok []byte) (int64, error) {
	d, ok := parseInt[int64](64)(tok)
	if !ok || d < 0 {
		return 0, invalidf("%s is not a dimension", tok)
	}
	return d, nil
}

// decodeV2Output reads the n-th requested output, {"name": ...,
// "parameters": {"binary_data": true}}; binary is 1 when it asks for binary
// data, -1 when it asks for JSON, 0 when it does not say.
func decodeV2Output(r *reader, n int) (name string, binary int8, err error) {
	if r.peek() != '{' {
		return "", 0, notAnObject(r, `output %d is not an object {"name": ...}`, n)
	}
	hasName := false
	err = r.object(func(key string) error {
		switch key {
		case "name":
			var err error
			name, err = r.string()
			hasName = true
			return err
		case "parameters":
			return readParameters(r, fmt.Sprintf(`output %d's "parameters"`, n), func(key string, v param) error {
				if key != "binary_data" {
					return nil
				}
				if !v.isBool {
					return invalidf(`output %d: "binary_data" must be true or false`, n)
				}
				binary = -1
				if v.b {
					binary = 1
				}
				return nil
			})
		}
		_, err := r.value()
		return err
	})
	if err == nil && !hasName {
		err = invalidf(`output %d has no "name"`, n)
	}
	return name, binary, err
}

// encodeV2 writes the inference response: the outputs asked for (all when
// want is empty), data flat, in the JSON or, for those binary says, after
// it. binaryAt is where the binary data starts, -1 when there is none.
func (m *Model) encodeV2(buf []byte, outputs []Tensor, name, id string, hasID bool, want []string, binary func(string) bool) (out []byte, binaryAt int) {
	var binOuts []int // outputs to append after the JSON
	buf = append(buf, `{"model_name":`...)
	buf = appendString(buf, name)
	buf = append(buf, `,"model_version":"`+modelVersion+`"`...)
	if hasID {
		buf = append(buf, `,"id":`...)
		buf = appendString(buf, id)
	}
	buf = append(buf, `,"outputs":[`...)
	first := true
	for i, out := range outputs {
		if len(want) > 0 && !slices.Contains(want, out.Name) {
			continue
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		k := m.outKinds[i]
		buf = append(buf, `{"name":`...)
		buf = appendString(buf, out.Name)
		buf = append(buf, `,"datatype":"`...)
		buf = append(buf, k.dt...)
		buf = append(buf, `","shape":[`...)
		for j, d := range out.Shape {
			if j > 0 {
				buf = append(buf, ',')
			}
			buf = strconv.AppendInt(buf, d, 10)
		}
		buf = append(buf, ']')
		if binary(out.Name) {
			buf = append(buf, `,"parameters":{"binary_data_size":`...)
			buf = strconv.AppendInt(buf, int64(rawSize(k, out.Data)), 10)
			buf = append(buf, "}}"...)
			binOuts = append(binOuts, i)
			continue
		}
		buf = append(buf, `,"data":[`...)
		buf = k.appendJSON(buf, out.Data, 0, k.length(out.Data))
		buf = append(buf, "]}"...)
	}
	buf = append(buf, "]}"...)
	if len(binOuts) == 0 {
		return append(buf, '\n'), -1
	}
	binaryAt = len(buf)
	for _, i := range binOuts {
		k := m.outKinds[i]
		buf = k.appendRaw(buf, outputs[i].Data, 0, k.length(outputs[i].Data))
	}
	return buf, binaryAt
}

// rawSize is the size of data in the binary format.
func rawSize(k *kind, data any) int {
	if k.size > 0 {
		return k.size * k.length(data)
	}
	n := 0
	for _, e := range data.([][]byte) {
		n += 4 + len(e)
	}
	return n
}
