package inference

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// openModelAt opens one of testdata's models (make-models.py): fp16.onnx
// (y = x + x, FP16 [-1,4]) or bytes.onnx (t = s, BYTES [-1,2]).
func openModelAt(t testing.TB, file string) *Model {
	t.Helper()
	m, err := Open(filepath.Join("testdata", file), Options{Library: testLibrary(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestFastFloat: the fast path agrees with strconv bit for bit, for both
// widths, on random short decimals and on the edges of its conditions.
func TestFastFloat(t *testing.T) {
	toks := []string{"0", "-0", "0.0", "-0.0", "1", "0.5", "0.003921569", "123456789012345", "1234567890123456",
		"1e22", "1e23", "1e-22", "1e-23", "9007199254740993", "0.1", "3.4028235e38", "16777217", "33554435",
		"1.00000017881393432617187499", "0.000000000000000000000000000000000000000000001", "5e-324", "2.5e-45"}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		digits := r.IntN(17) + 1
		s := strconv.FormatUint(r.Uint64()%uint64(math.Pow10(digits)), 10)
		if p := r.IntN(len(s) + 1); p < len(s) {
			s = s[:p] + "." + s[p:]
			if s[0] == '.' {
				s = "0" + s
			}
		}
		if r.IntN(4) == 0 {
			s += "e" + strconv.Itoa(r.IntN(60)-30)
		}
		if r.IntN(2) == 0 {
			s = "-" + s
		}
		toks = append(toks, s)
	}
	for _, tok := range toks {
		for _, bits := range []int{32, 64} {
			f, ok := fastFloat([]byte(tok), bits)
			if !ok {
				continue
			}
			want, err := strconv.ParseFloat(tok, bits)
			if err != nil {
				t.Fatalf("%s (%d bits): fast path took it, strconv says %v", tok, bits, err)
			}
			got := f
			if bits == 32 {
				got = float64(float32(f))
			}
			if math.Float64bits(got) != math.Float64bits(want) {
				t.Fatalf("%s (%d bits): fast path %v, strconv %v", tok, bits, got, want)
			}
		}
	}
	if _, ok := fastFloat([]byte("0.003921569"), 32); !ok {
		t.Error("a pixel value (0.003921569) missed the fast path")
	}
}

// TestFloat16: every half survives a round trip through float32, and
// float32s round to the nearest half, ties to even, as NumPy does.
func TestFloat16(t *testing.T) {
	for h := range 1 << 16 {
		f := Float16(h).Float32()
		if math.IsNaN(float64(f)) {
			if g := Float16From(f); g&0x7c00 != 0x7c00 || g&0x3ff == 0 {
				t.Fatalf("NaN %#04x came back as %#04x", h, g)
			}
			continue
		}
		if g := Float16From(f); g != Float16(h) {
			t.Fatalf("%#04x = %v came back as %#04x", h, f, g)
		}
	}
	for _, c := range []struct {
		f    float32
		want Float16
	}{
		{1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff}, {65520, 0x7c00}, {1e6, 0x7c00},
		{1 + 1.0/2048, 0x3c00},        // halfway between 1 and the next half: to even
		{1 + 3.0/2048, 0x3c02},        // halfway, odd below: up
		{5.960464477539063e-08, 0x01}, // smallest subnormal
		{2.9802322387695312e-08, 0},   // half of it: ties to even, 0
		{3e-08, 0x01},
		{float32(math.Inf(-1)), 0xfc00},
	} {
		if got := Float16From(c.f); got != c.want {
			t.Errorf("Float16From(%v) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
}

// v2Binary builds a binary-extension request: JSON header, then the bytes.
func v2Binary(header string, data ...[]byte) (body []byte, headerLen int) {
	body = append([]byte(header), bytes.Join(data, nil)...)
	return body, len(header)
}

func postV2(t testing.TB, url string, body []byte, headerLen int) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if headerLen >= 0 {
		req.Header.Set(headerLengthKey, strconv.Itoa(headerLen))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func float32Bytes(fs ...float32) []byte {
	var b []byte
	for _, f := range fs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	return b
}

// TestHTTPBinaryTensors: an image sent as binary data gets the same logits
// as sent as JSON, back as JSON or binary as asked.
func TestHTTPBinaryTensors(t *testing.T) {
	srv, m := serveTestModel(t, DefaultOptions())
	ds := loadTestSet(t)
	img := ds.images[0]
	want, err := m.Predict(t.Context(), []Tensor{imageBatch(img)})
	if err != nil {
		t.Fatal(err)
	}
	logits := want[0].Data.([]float32)
	url := srv.URL + "/v2/models/fashion/infer"

	// Binary in, JSON out.
	body, n := v2Binary(`{"inputs":[{"name":"input","shape":[1,1,28,28],"datatype":"FP32","parameters":{"binary_data_size":3136}}]}`, float32Bytes(img...))
	resp, got := postV2(t, url, body, n)
	var doc struct {
		Outputs []struct {
			Name       string         `json:"name"`
			Data       []float32      `json:"data"`
			Parameters map[string]int `json:"parameters"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(got, &doc); resp.StatusCode != 200 || err != nil || !reflect.DeepEqual(doc.Outputs[0].Data, logits) {
		t.Fatalf("binary in, JSON out: %s %s (%v), want logits %v", resp.Status, got, err, logits)
	}
	if resp.Header.Get(headerLengthKey) != "" {
		t.Errorf("an all-JSON answer has %s", headerLengthKey)
	}

	// Binary in and out (binary_data_output), and JSON in with one output
	// asked for as binary: the same 40 bytes after the JSON.
	for _, c := range []struct {
		name, header string
		data         []byte
	}{
		{"binary_data_output", `{"parameters":{"binary_data_output":true},"inputs":[{"name":"input","shape":[1,1,28,28],"datatype":"FP32","parameters":{"binary_data_size":3136}}]}`, float32Bytes(img...)},
		{"output binary_data", string(v2Request("x", false, img)[:len(v2Request("x", false, img))-1]) + `,"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}`, nil},
	} {
		body, n := v2Binary(c.header, c.data)
		if c.data == nil {
			n = -1 // a plain JSON request may ask for binary outputs
		}
		resp, got := postV2(t, url, body, n)
		hl, err := strconv.Atoi(resp.Header.Get(headerLengthKey))
		if resp.StatusCode != 200 || err != nil || hl > len(got) {
			t.Fatalf("%s: %s, %s %q: %s", c.name, resp.Status, headerLengthKey, resp.Header.Get(headerLengthKey), got)
		}
		doc.Outputs = nil
		if err := json.Unmarshal(got[:hl], &doc); err != nil || doc.Outputs[0].Parameters["binary_data_size"] != 40 || doc.Outputs[0].Data != nil {
			t.Errorf("%s: header %s (%v)", c.name, got[:hl], err)
		}
		if !bytes.Equal(got[hl:], float32Bytes(logits...)) {
			t.Errorf("%s: binary logits %v, want %v", c.name, got[hl:], float32Bytes(logits...))
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/octet-stream" {
			t.Errorf("%s: Content-Type %q", c.name, ct)
		}
	}
}

// TestHTTPBinaryBadRequests: each malformed binary request is a 400 that
// says what is wrong, and runs nothing.
func TestHTTPBinaryBadRequests(t *testing.T) {
	srv, m := serveTestModel(t, DefaultOptions())
	img := float32Bytes(make([]float32, 784)...)
	in := func(params string) string {
		return `{"inputs":[{"name":"input","shape":[1,1,28,28],"datatype":"FP32","parameters":` + params + `}]}`
	}
	ok := in(`{"binary_data_size":3136}`)
	for _, tc := range []struct {
		name, header string
		headerLen    string // "" for len(header); "-" for none
		data         []byte
		err          string
	}{
		{"length not a number", ok, "x", img, `Inference-Header-Content-Length: "x" is not a length in bytes`},
		{"length past the body", ok, "99999", img, "Inference-Header-Content-Length is 99999, but the body has only"},
		{"no header", ok, "-", img, "unexpected data after the top-level value"}, // the binary data is trailing garbage
		{"binary_data_size without the header", ok, "-", nil, `input "input" has "binary_data_size" but the request has no Inference-Header-Content-Length header`},
		{"too few bytes", ok, "", img[:100], `"binary_data_size" is 3136, but only 100 bytes of binary data are left`},
		{"bytes left over", ok, "", append(img, 1, 2, 3), "3 bytes of binary data after the JSON are not claimed"},
		{"size disagrees with shape", in(`{"binary_data_size":3132}`), "", img[:3132], "3132 bytes of FP32 data for 784 elements, which take 3136"},
		{"data and binary", `{"inputs":[{"name":"input","shape":[1,1,28,28],"datatype":"FP32","data":[` + strings.Repeat("0,", 783) + `0],"parameters":{"binary_data_size":3136}}]}`, "", img, `has both "data" and "binary_data_size"`},
		{"size not a number", in(`{"binary_data_size":"3136"}`), "", img, `"binary_data_size" must be a number of bytes`},
		{"size negative", in(`{"binary_data_size":-1}`), "", img, `"binary_data_size" must be a number of bytes`},
		{"parameters not an object", in(`[1]`), "", img, `input "parameters" must be an object`},
		{"binary_data not a bool", ok[:len(ok)-1] + `,"outputs":[{"name":"logits","parameters":{"binary_data":1}}]}`, "", img, `output 0: "binary_data" must be true or false`},
		{"binary_data_output not a bool", `{"parameters":{"binary_data_output":"yes"},` + ok[1:], "", img, `"binary_data_output" must be true or false`},
		{"no data at all", in(`{}`), "", nil, `has no "data" (nor "parameters": {"binary_data_size": N}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := append([]byte(tc.header), tc.data...)
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v2/models/fashion/infer", bytes.NewReader(body))
			switch tc.headerLen {
			case "":
				req.Header.Set(headerLengthKey, strconv.Itoa(len(tc.header)))
			case "-":
			default:
				req.Header.Set(headerLengthKey, tc.headerLen)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var doc map[string]string
			json.NewDecoder(resp.Body).Decode(&doc)
			if resp.StatusCode != 400 || !strings.Contains(doc["error"], tc.err) {
				t.Errorf("%d %q, want 400 ...%s...", resp.StatusCode, doc["error"], tc.err)
			}
		})
	}
	if st := m.Stats(); st.Runs != 0 {
		t.Errorf("bad requests ran the model: %+v", st)
	}
}

// TestHTTPFP16: FP16 models take JSON numbers (rounded to halves) and
// binary halves, and answer in kind.
func TestHTTPFP16(t *testing.T) {
	m := openModelAt(t, "fp16.onnx")
	if in := m.Inputs()[0]; in.DataType != FP16 {
		t.Fatalf("fp16.onnx input: %+v", in)
	}
	srv := httptest.NewServer(NewHandler("half", m))
	t.Cleanup(srv.Close)
	url := srv.URL + "/v2/models/half/infer"

	resp, got := postV2(t, url, []byte(`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP16","data":[[1.5,-2,0.1,1000],[0,65504,-0.0001,3]]}]}`), -1)
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s", resp.Status, got)
	}
	var doc struct {
		Outputs []struct {
			Data []any `json:"data"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(got, &doc); err != nil {
		t.Fatal(err)
	}
	// 0.1 is 0.0999755859375 as a half; doubled, 0.199951171875. 65504+65504
	// overflows FP16: Inf, which JSON writes as null.
	want := []any{3.0, -4.0, 0.19995117, 2000.0, 0.0, nil, -0.00020003319, 6.0}
	if !reflect.DeepEqual(doc.Outputs[0].Data, want) {
		t.Errorf("FP16 JSON: %v, want %v", doc.Outputs[0].Data, want)
	}

	// Binary halves in and out.
	var in []byte
	for _, f := range []float32{1, 2, 3, 4} {
		in = binary.LittleEndian.AppendUint16(in, uint16(Float16From(f)))
	}
	body, n := v2Binary(`{"parameters":{"binary_data_output":true},"inputs":[{"name":"x","shape":[1,4],"datatype":"FP16","parameters":{"binary_data_size":8}}]}`, in)
	resp, got = postV2(t, url, body, n)
	hl, _ := strconv.Atoi(resp.Header.Get(headerLengthKey))
	var out []float32
	for b := got[hl:]; len(b) >= 2; b = b[2:] {
		out = append(out, Float16(binary.LittleEndian.Uint16(b)).Float32())
	}
	if resp.StatusCode != 200 || !reflect.DeepEqual(out, []float32{2, 4, 6, 8}) {
		t.Errorf("FP16 binary: %s %q -> %v", resp.Status, got, out)
	}

	// Out of FP16's range is refused, not turned into infinity.
	resp, got = postV2(t, url, []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP16","data":[1,2,3,70000]}]}`), -1)
	if resp.StatusCode != 400 || !strings.Contains(string(got), "70000 is not a valid FP16 value") {
		t.Errorf("FP16 out of range: %s %s", resp.Status, got)
	}
}

// TestHTTPBytes: BYTES models (ONNX string tensors) take strings and
// {"b64"} values in JSON (KServe v2 and TF Serving) and length-prefixed
// binary elements, and answer in kind; bytes that are not UTF-8 come back
// as {"b64"}.
func TestHTTPBytes(t *testing.T) {
	m := openModelAt(t, "bytes.onnx")
	if in := m.Inputs()[0]; in.DataType != BYTES {
		t.Fatalf("bytes.onnx input: %+v", in)
	}
	srv := httptest.NewServer(NewHandler("echo", m))
	t.Cleanup(srv.Close)
	v2 := srv.URL + "/v2/models/echo/infer"

	resp, got := postV2(t, v2, []byte(`{"inputs":[{"name":"s","shape":[2,2],"datatype":"BYTES","data":["héllo","",{"b64":"//4="},"\"q\""]}]}`), -1)
	if w := `"data":["héllo","",{"b64":"//4="},"\"q\""]`; resp.StatusCode != 200 || !strings.Contains(string(got), w) {
		t.Errorf("BYTES JSON: %s %s, want ...%s...", resp.Status, got, w)
	}

	resp, got = postV2(t, srv.URL+"/v1/models/echo:predict", []byte(`{"instances":[["a",{"b64":"YmluYXJ5"}]]}`), -1)
	if w := `{"predictions":[["a","binary"]]}`; resp.StatusCode != 200 || strings.TrimSpace(string(got)) != w {
		t.Errorf("BYTES TF Serving: %s %s, want %s", resp.Status, got, w)
	}

	var in []byte
	for _, e := range []string{"ab", "", "\xff\xfe", "z"} {
		in = binary.LittleEndian.AppendUint32(in, uint32(len(e)))
		in = append(in, e...)
	}
	body, n := v2Binary(`{"outputs":[{"name":"t","parameters":{"binary_data":true}}],"inputs":[{"name":"s","shape":[2,2],"datatype":"BYTES","parameters":{"binary_data_size":`+strconv.Itoa(len(in))+`}}]}`, in)
	resp, got = postV2(t, v2, body, n)
	hl, _ := strconv.Atoi(resp.Header.Get(headerLengthKey))
	if resp.StatusCode != 200 || hl == 0 || !bytes.Equal(got[hl:], in) {
		t.Errorf("BYTES binary: %s %q", resp.Status, got)
	}

	for _, tc := range []struct{ body, err string }{
		{`{"inputs":[{"name":"s","shape":[1,2],"datatype":"BYTES","data":["a",1]}]}`, `BYTES elements are strings or {\"b64\": \"...\"} objects`},
		{`{"inputs":[{"name":"s","shape":[1,2],"datatype":"BYTES","data":["a",{"b64":"!!"}]}]}`, `\"b64\" is not standard base64`},
		{`{"inputs":[{"name":"s","shape":[1,2],"datatype":"BYTES","data":["a",{"hex":"00"}]}]}`, `must be {\"b64\": \"base64 text\"}, not have \"hex\"`},
		{`{"inputs":[{"name":"s","shape":[1,2],"datatype":"FP32","data":[1,2]}]}`, `datatype FP32 does not match the model's BYTES`},
		{`{"inputs":[{"name":"s","shape":[1,2],"datatype":"BYTES","data":["a",{"b64":"YQBi"}]}]}`, `element 1 holds a NUL byte, which ONNX Runtime's string tensors cannot carry`},
	} {
		resp, got := postV2(t, v2, []byte(tc.body), -1)
		if resp.StatusCode != 400 || !strings.Contains(string(got), tc.err) {
			t.Errorf("%s: %s %s, want 400 ...%s...", tc.body, resp.Status, got, tc.err)
		}
	}
	for _, tc := range []struct {
		data []byte
		err  string
	}{
		{[]byte{5, 0, 0, 0, 'a'}, "BYTES element 0: length 5, but only 1 bytes are left"},
		{[]byte{1, 0, 0, 0, 'a', 1, 0}, "BYTES element 1: the data ends before its 4-byte length"},
	} {
		body, n := v2Binary(`{"inputs":[{"name":"s","shape":[1,2],"datatype":"BYTES","parameters":{"binary_data_size":`+strconv.Itoa(len(tc.data))+`}}]}`, tc.data)
		resp, got := postV2(t, v2, body, n)
		if resp.StatusCode != 400 || !strings.Contains(string(got), tc.err) {
			t.Errorf("%q: %s %s, want 400 ...%s...", tc.data, resp.Status, got, tc.err)
		}
	}
}

// TestFastFloatsMatchGeneral: reading arrays of numbers through fastFloats
// gives what the general reader gives (values bit for bit, shapes, and an
// error for the same bodies), malformed arrays included.
func TestFastFloatsMatchGeneral(t *testing.T) {
	k, _ := kindOf(FP32)
	general := func(b []byte) ([]int64, []float32, error) {
		leaf := parseFloat[float32](32)
		return parse(&arrayParser[float32]{r: &reader{b: b}, rank: -1, leaf: func(tok []byte) (float32, error) {
			v, ok := leaf(tok)
			if !ok {
				return 0, invalidf("bad")
			}
			return v, nil
		}})
	}
	toks := []string{"0", "-0", "0.5", "1e3", "1E-3", "0.003921569", "12345678901234567", "01", "1.", "-", ".5", "1e", "true",
		"3.4e39", "1e400", "0.1", " 2 ", "\n3", "[1]", "[]", "\"x\""}
	r := rand.New(rand.NewPCG(3, 4))
	for range 20000 {
		var sb strings.Builder
		nested := r.IntN(3) == 0
		if nested {
			sb.WriteString("[")
		}
		rows := 1 + r.IntN(3)
		for row := range rows {
			if row > 0 {
				sb.WriteString(",")
			}
			sb.WriteString("[")
			for i := range 1 + r.IntN(4) {
				if i > 0 {
					sb.WriteString([]string{",", " , ", ",,", ","}[r.IntN(4)])
				}
				sb.WriteString(toks[r.IntN(len(toks))])
			}
			sb.WriteString("]")
			if !nested {
				break
			}
		}
		if nested {
			sb.WriteString("]")
		}
		b := []byte(sb.String())
		shapeF, valsF, errF := k.parse(&reader{b: b}, 4)
		shapeG, valsG, errG := general(b)
		if (errF == nil) != (errG == nil) {
			t.Fatalf("%s: fast error %v, general error %v", b, errF, errG)
		}
		if errF != nil {
			continue
		}
		if !reflect.DeepEqual(shapeF, shapeG) || !reflect.DeepEqual(rawBytes(valsF.([]float32)), rawBytes(valsG)) {
			t.Fatalf("%s: fast %v %v, general %v %v", b, shapeF, valsF, shapeG, valsG)
		}
	}
}

// FuzzDecodeBinary: no binary-extension request, however malformed, makes
// the decoder panic or hand Predict tensors whose data disagrees with their
// shape; every refusal is the caller's (400).
func FuzzDecodeBinary(f *testing.F) {
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"ids","shape":[1],"datatype":"INT64","data":[3]}]}`),
		float32Bytes(1, 2))
	f.Add([]byte(`{"parameters":{"binary_data_output":true},"inputs":[{"name":"ids","shape":[2],"datatype":"INT64","parameters":{"binary_data_size":16}}],"outputs":[{"name":"y","parameters":{"binary_data":false}}]}`),
		make([]byte, 16))
	f.Add([]byte(`{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}`), []byte{1, 0, 0, 0, 'a', 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, header, bin []byte) {
		for _, m := range []*Model{pairModel(t), describedModel(t,
			[]TensorInfo{{Name: "s", DataType: BYTES, Shape: []int64{-1}}}, []TensorInfo{{Name: "t", DataType: BYTES, Shape: []int64{-1}}})} {
			inputs, _, err := m.decodeV2(header, bin, true, "m")
			if err != nil {
				if !errors.Is(err, ErrInvalidInput) {
					t.Fatalf("error %v is not ErrInvalidInput", err)
				}
				continue
			}
			for _, in := range inputs {
				i := indexOf(m.inputs, in.Name)
				if i < 0 || in.Data == nil {
					t.Fatalf("decoded input %q without data", in.Name)
				}
				if n := m.inKinds[i].length(in.Data); int64(n) != elements(in.Shape) {
					t.Fatalf("input %q: %d values for shape %v", in.Name, n, in.Shape)
				}
			}
			_, _, _ = m.check(inputs)
		}
	})
}
