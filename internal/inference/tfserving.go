package inference

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// TensorFlow Serving's REST API, as its documentation describes it
// (tensorflow.org/tfx/serving/api_rest):
//
//	POST /v1/models/NAME[/versions/N]:predict
//	     {"instances": [row, ...]}  ->  {"predictions": [row, ...]}
//	     {"inputs": tensor(s)}      ->  {"outputs": tensor(s)}
//	GET  /v1/models/NAME[/versions/N]            model status
//	GET  /v1/models/NAME[/versions/N]/metadata   signature
//
// In the row format each instance is one row of the batch: the value of the
// model's single input, or an object naming each input. In the columnar
// format the value (or each named value) is a whole tensor, batch dimension
// included. Answers mirror the request: one output is a bare value, several
// are named.

// tfServing routes everything under /v1/models/.
func (h *Handler) tfServing(w http.ResponseWriter, r *http.Request) {
	path := r.PathValue("path")
	path, verb, hasVerb := strings.Cut(path, ":")
	name, rest, _ := strings.Cut(path, "/")
	version := ""
	if v, ok := strings.CutPrefix(rest, "versions/"); ok {
		version, rest, _ = strings.Cut(v, "/")
	} else if l, ok := strings.CutPrefix(rest, "labels/"); ok {
		_, rest, _ = strings.Cut(l, "/") // one version, so any label is it
	}
	if err := h.checkModel(name, version); err != nil {
		h.fail(w, err)
		return
	}
	var err error
	switch {
	case hasVerb && rest == "" && verb == "predict":
		if err = allow(r, http.MethodPost); err == nil {
			h.predict(w, r, h.model.decodeTF)
			return
		}
	case hasVerb && rest == "" && (verb == "classify" || verb == "regress"):
		err = invalidf("%s is not supported: ONNX models have no TensorFlow Example signatures; use :predict", verb)
	case !hasVerb && rest == "":
		if err = allow(r, http.MethodGet); err == nil {
			writeJSON(w, http.StatusOK, h.tfStatus())
			return
		}
	case !hasVerb && rest == "metadata":
		if err = allow(r, http.MethodGet); err == nil {
			writeJSON(w, http.StatusOK, h.tfMetadata())
			return
		}
	default:
		err = notFoundf("no such endpoint %s %s (TensorFlow Serving has /v1/models/%s:predict, /v1/models/%s and /v1/models/%s/metadata)",
			r.Method, r.URL.Path, h.name, h.name, h.name)
	}
	h.fail(w, err)
}

// tfStatus is GetModelStatus' answer: one version, AVAILABLE while the model
// is open.
func (h *Handler) tfStatus() any {
	type status struct {
		ErrorCode    string `json:"error_code"`
		ErrorMessage string `json:"error_message"`
	}
	type versionStatus struct {
		Version string `json:"version"`
		State   string `json:"state"`
		Status  status `json:"status"`
	}
	state := "AVAILABLE"
	if !h.model.Ready() {
		state = "END"
	}
	return map[string][]versionStatus{
		"model_version_status": {{Version: modelVersion, State: state, Status: status{ErrorCode: "OK"}}},
	}
}

// tfMetadata is GetModelMetadata's answer: the model as the one signature,
// serving_default.
func (h *Handler) tfMetadata() any {
	type dim struct {
		Size string `json:"size"`
		Name string `json:"name"`
	}
	type tensorShape struct {
		Dim         []dim `json:"dim"`
		UnknownRank bool  `json:"unknown_rank"`
	}
	type tensorInfo struct {
		Dtype       string      `json:"dtype"`
		TensorShape tensorShape `json:"tensor_shape"`
		Name        string      `json:"name"`
	}
	describe := func(infos []TensorInfo) map[string]tensorInfo {
		out := map[string]tensorInfo{}
		for _, t := range infos {
			dt := "DT_INVALID"
			if k, ok := kindOf(t.DataType); ok {
				dt = k.tfType
			}
			ti := tensorInfo{Dtype: dt, Name: t.Name, TensorShape: tensorShape{Dim: []dim{}}}
			for _, d := range t.Shape {
				ti.TensorShape.Dim = append(ti.TensorShape.Dim, dim{Size: strconv.FormatInt(d, 10)})
			}
			out[t.Name] = ti
		}
		return out
	}
	return map[string]any{
		"model_spec": map[string]string{"name": h.name, "signature_name": "", "version": modelVersion},
		"metadata": map[string]any{"signature_def": map[string]any{"signature_def": map[string]any{
			"serving_default": map[string]any{
				"inputs":      describe(h.model.Inputs()),
				"outputs":     describe(h.model.Outputs()),
				"method_name": "tensorflow/serving/predict",
			},
		}}},
	}
}

// decodeTF reads a predict request; the answer it returns writes the
// response in the request's format.
func (m *Model) decodeTF(body []byte) ([]Tensor, answer, error) {
	r := &reader{b: body}
	var inputs []Tensor
	format := ""
	err := r.object(func(key string) error {
		switch key {
		case "instances", "inputs":
			if format != "" {
				return invalidf(`a request carries either "instances" or "inputs", not both`)
			}
			format = key
			var err error
			if key == "instances" {
				inputs, err = m.decodeInstances(r)
			} else {
				inputs, err = m.decodeColumns(r)
			}
			return err
		default: // signature_name (there is one signature) and anything else
			_, err := r.value()
			return err
		}
	})
	if err == nil {
		err = r.end()
	}
	if err != nil {
		return nil, nil, asInvalid(err)
	}
	if format == "" {
		return nil, nil, invalidf(`the request has neither "instances" (one element per row) nor "inputs" (whole tensors)`)
	}
	return inputs, func(buf []byte, outputs []Tensor) ([]byte, int) {
		return m.encodeTF(buf, outputs, format == "instances"), -1
	}, nil
}

// decodeInstances reads the row format.
func (m *Model) decodeInstances(r *reader) ([]Tensor, error) {
	if r.peek() != '[' {
		return nil, invalidf(`"instances" must be a list with one element per row`)
	}
	if r.firstElement() == '{' {
		return m.decodeNamedInstances(r)
	}
	if len(m.inputs) != 1 {
		return nil, invalidf(`the model has %d inputs (%s): each instance must be an object naming them`, len(m.inputs), names(m.inputs))
	}
	// The list of rows is the input tensor, batch dimension first.
	shape, data, err := m.inKinds[0].parse(r, m.rowElements(0))
	if err != nil {
		return nil, invalidf("input %q: %v", m.inputs[0].Name, err)
	}
	if shape[0] == 0 {
		return nil, invalidf(`"instances" is empty: send at least one row`)
	}
	return []Tensor{{Name: m.inputs[0].Name, Shape: shape, Data: data}}, nil
}

// decodeNamedInstances reads instances that are objects, {"input": row}:
// each input's rows are stacked into one tensor.
func (m *Model) decodeNamedInstances(r *reader) ([]Tensor, error) {
	type column struct {
		rowShape []int64
		parts    []any
	}
	cols := make([]column, len(m.inputs))
	rows := 0
	err := r.array(func() error {
		if r.peek() != '{' {
			return notAnObject(r, `instance %d is not an object: either every instance names the inputs or none does`, rows)
		}
		err := r.object(func(key string) error {
			i := indexOf(m.inputs, key)
			if i < 0 {
				return invalidf("instance %d: the model has no input %q (its inputs: %s)", rows, key, names(m.inputs))
			}
			shape, data, err := m.inKinds[i].parse(r, m.rowElements(i))
			if err != nil {
				return invalidf("instance %d: input %q: %v", rows, key, err)
			}
			c := &cols[i]
			if len(c.parts) != rows {
				return invalidf("instance %d: input %q is missing from an earlier instance or given twice", rows, key)
			}
			if rows == 0 {
				c.rowShape = shape
			} else if !slices.Equal(shape, c.rowShape) {
				return invalidf("instance %d: input %q has shape %s, but %s in instance 0", rows, key, shapeString(shape), shapeString(c.rowShape))
			}
			c.parts = append(c.parts, data)
			return nil
		})
		rows++
		return err
	})
	if err != nil {
		return nil, err
	}
	if rows == 0 {
		return nil, invalidf(`"instances" is empty: send at least one row`)
	}
	inputs := make([]Tensor, 0, len(m.inputs))
	for i, c := range cols {
		if len(c.parts) != rows {
			return nil, invalidf("input %q is missing from instance %d", m.inputs[i].Name, len(c.parts))
		}
		k := m.inKinds[i]
		per := k.length(c.parts[0])
		data := k.make(per * rows)
		for j, p := range c.parts {
			k.copyAt(data, j*per, p)
		}
		shape := append([]int64{int64(rows)}, c.rowShape...)
		inputs = append(inputs, Tensor{Name: m.inputs[i].Name, Shape: shape, Data: data})
	}
	return inputs, nil
}

// decodeColumns reads the columnar format: a tensor for the single input, or
// an object of tensors by input name.
func (m *Model) decodeColumns(r *reader) ([]Tensor, error) {
	if r.peek() != '{' {
		if len(m.inputs) != 1 {
			return nil, invalidf(`the model has %d inputs (%s): "inputs" must be an object naming them`, len(m.inputs), names(m.inputs))
		}
		shape, data, err := m.inKinds[0].parse(r, m.rowElements(0))
		if err != nil {
			return nil, invalidf("input %q: %v", m.inputs[0].Name, err)
		}
		return []Tensor{{Name: m.inputs[0].Name, Shape: shape, Data: data}}, nil
	}
	var inputs []Tensor
	err := r.object(func(key string) error {
		i := indexOf(m.inputs, key)
		if i < 0 {
			return invalidf("the model has no input %q (its inputs: %s)", key, names(m.inputs))
		}
		shape, data, err := m.inKinds[i].parse(r, m.rowElements(i))
		if err != nil {
			return invalidf("input %q: %v", key, err)
		}
		inputs = append(inputs, Tensor{Name: key, Shape: shape, Data: data})
		return nil
	})
	return inputs, err
}

// encodeTF writes the outputs (as Predict returned them) in the row format
// ("predictions") or the columnar one ("outputs").
func (m *Model) encodeTF(buf []byte, outputs []Tensor, rowFormat bool) []byte {
	single := len(outputs) == 1
	if rowFormat {
		buf = append(buf, `{"predictions":`...)
		if single {
			k := m.outKinds[0]
			buf = appendNested(buf, k, outputs[0].Data, outputs[0].Shape, 0)
			return append(buf, "}\n"...)
		}
		rows := int(outputs[0].Shape[0])
		buf = append(buf, '[')
		for row := range rows {
			if row > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, '{')
			for i, out := range outputs {
				if i > 0 {
					buf = append(buf, ',')
				}
				buf = appendString(buf, out.Name)
				buf = append(buf, ':')
				per := int(elements(out.Shape[1:]))
				buf = appendNested(buf, m.outKinds[i], out.Data, out.Shape[1:], row*per)
			}
			buf = append(buf, '}')
		}
		return append(buf, "]}\n"...)
	}
	buf = append(buf, `{"outputs":`...)
	if single {
		buf = appendNested(buf, m.outKinds[0], outputs[0].Data, outputs[0].Shape, 0)
		return append(buf, "}\n"...)
	}
	buf = append(buf, '{')
	for i, out := range outputs {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendString(buf, out.Name)
		buf = append(buf, ':')
		buf = appendNested(buf, m.outKinds[i], out.Data, out.Shape, 0)
	}
	return append(buf, "}}\n"...)
}

// rowElements is how many elements one row of input i holds, or 0 when the
// model leaves a dimension other than the batch dimension open.
func (m *Model) rowElements(i int) int {
	n := elements(m.inputs[i].Shape[1:])
	if n < 0 {
		return 0
	}
	return int(n)
}
