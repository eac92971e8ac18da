package inference

import (
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
// Only JSON tensors are supported, not the binary tensor extension.

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
	h.predict(w, r, func(body []byte) ([]Tensor, answer, error) {
		return h.model.decodeV2(body, h.name)
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
	writeJSON(w, http.StatusOK, map[string]any{"name": "spotml", "version": serverVersion(), "extensions": []string{}})
}

func readyStatus(ready bool) int {
	if ready {
		return http.StatusOK
	}
	return http.StatusServiceUnavailable
}

// decodeV2 reads an inference request; the answer it returns writes the
// response, with the request's id and only the outputs it asked for.
func (m *Model) decodeV2(body []byte, name string) ([]Tensor, answer, error) {
	r := &reader{b: body}
	var (
		inputs []Tensor
		id     string
		hasID  bool
		want   []string // requested outputs, in the order asked
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
				t, err := m.decodeV2Input(r, len(inputs))
				inputs = append(inputs, t)
				return err
			})
		case "outputs":
			if r.peek() != '[' {
				return invalidf(`"outputs" must be a list of {"name": ...} objects`)
			}
			err = r.array(func() error {
				name, err := decodeV2Output(r, len(want))
				if err == nil && indexOf(m.outputs, name) < 0 {
					err = invalidf("the model has no output %q (its outputs: %s)", name, names(m.outputs))
				}
				want = append(want, name)
				return err
			})
		default: // parameters, and anything a newer client adds
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
	return inputs, func(buf []byte, outputs []Tensor) []byte {
		return m.encodeV2(buf, outputs, name, id, hasID, want)
	}, nil
}

// decodeV2Input reads the n-th input tensor. Its data is read last, when
// its datatype is known, as the members may come in any order.
func (m *Model) decodeV2Input(r *reader, n int) (Tensor, error) {
	var (
		t          Tensor
		datatype   string
		hasName    bool
		shapeGiven bool
		dataAt     = -1
	)
	if r.peek() != '{' {
		return t, notAnObject(r, "input %d is not an object with name, shape, datatype and data", n)
	}
	err := r.object(func(key string) error {
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
			_, err = r.value()
		default: // parameters
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
		return t, invalidf("%s: %v", label(), err)
	case !hasName:
		return t, invalidf(`input %d has no "name"`, n)
	case datatype == "":
		return t, invalidf(`%s has no "datatype"`, label())
	case !shapeGiven:
		return t, invalidf(`%s has no "shape"`, label())
	case dataAt < 0:
		return t, invalidf(`%s has no "data"`, label())
	}
	i := indexOf(m.inputs, t.Name)
	if i < 0 {
		return t, invalidf("the model has no input %q (its inputs: %s)", t.Name, names(m.inputs))
	}
	k, ok := kindOf(DataType(datatype))
	if !ok {
		return t, invalidf("%s: datatype %q is not supported (the model's is %s)", label(), datatype, m.inputs[i].DataType)
	}
	if k.dt != m.inputs[i].DataType {
		return t, invalidf("%s: datatype %s does not match the model's %s", label(), datatype, m.inputs[i].DataType)
	}
	want := elements(t.Shape)
	if want < 0 {
		return t, invalidf("%s: shape %s is too large", label(), shapeString(t.Shape))
	}
	// The data is flat or nested: only the number of elements has to agree
	// with the shape.
	data := &reader{b: r.b, i: dataAt}
	_, values, err := k.parse(data, int(min(want, int64(len(r.b)/2+1))))
	if err != nil {
		return t, invalidf("%s: %v", label(), err)
	}
	if got := k.length(values); int64(got) != want {
		return t, invalidf("%s: %d values for shape %s, which holds %d", label(), got, shapeString(t.Shape), want)
	}
	t.Data = values
	return t, nil
}

func parseShapeDim(tok []byte) (int64, error) {
	d, ok := parseInt[int64](64)(tok)
	if !ok || d < 0 {
		return 0, invalidf("%s is not a dimension", tok)
	}
	return d, nil
}

// decodeV2Output reads the n-th requested output, {"name": ...}.
func decodeV2Output(r *reader, n int) (string, error) {
	if r.peek() != '{' {
		return "", notAnObject(r, `output %d is not an object {"name": ...}`, n)
	}
	name, hasName := "", false
	err := r.object(func(key string) error {
		if key != "name" {
			_, err := r.value() // parameters
			return err
		}
		var err error
		name, err = r.string()
		hasName = true
		return err
	})
	if err == nil && !hasName {
		err = invalidf(`output %d has no "name"`, n)
	}
	return name, err
}

// encodeV2 writes the inference response: the outputs asked for (all when
// want is empty), data flat.
func (m *Model) encodeV2(buf []byte, outputs []Tensor, name, id string, hasID bool, want []string) []byte {
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
		buf = append(buf, `],"data":[`...)
		buf = k.appendJSON(buf, out.Data, 0, k.length(out.Data))
		buf = append(buf, "]}"...)
	}
	return append(buf, "]}\n"...)
}
