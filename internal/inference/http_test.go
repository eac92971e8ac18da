package inference

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const served = "fashion"

// serveTestModel serves the example model as "fashion" on a loopback
// server.
func serveTestModel(t testing.TB, opts Options, hopts ...HandlerOption) (*httptest.Server, *Model) {
	t.Helper()
	m := openTestModel(t, opts)
	srv := httptest.NewServer(NewHandler(served, m, hopts...))
	t.Cleanup(srv.Close)
	return srv, m
}

// call sends a request and decodes a JSON answer into a generic value.
func call(t testing.TB, method, url string, body []byte) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); method != http.MethodHead && ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, url, ct)
	}
	var doc map[string]any
	if method != http.MethodHead {
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatalf("%s %s: answer is not a JSON object: %v: %s", method, url, err, raw)
		}
	}
	return resp.StatusCode, doc
}

// tfRows is a TF Serving row-format request for images.
func tfRows(images ...[]float32) []byte {
	rows := make([]any, len(images))
	for i, img := range images {
		rows[i] = reshape(img, 1, 28, 28)
	}
	b, _ := json.Marshal(map[string]any{"instances": rows})
	return b
}

// tfColumns is a TF Serving columnar request for images.
func tfColumns(images ...[]float32) []byte {
	b, _ := json.Marshal(map[string]any{"inputs": reshape(imageBatch(images...).Data.([]float32), len(images), 1, 28, 28)})
	return b
}

// v2Request is an Open Inference Protocol request for images, data flat or
// nested.
func v2Request(id string, nested bool, images ...[]float32) []byte {
	data := any(imageBatch(images...).Data)
	if nested {
		data = reshape(data.([]float32), len(images), 1, 28, 28)
	}
	b, _ := json.Marshal(map[string]any{"id": id, "inputs": []any{map[string]any{
		"name": "input", "shape": []int{len(images), 1, 28, 28}, "datatype": "FP32", "data": data,
	}}})
	return b
}

// logitsOf reads [n][10] logits out of a decoded answer.
func logitsOf(t testing.TB, v any, n int) [][]float32 {
	t.Helper()
	rows, ok := v.([]any)
	if !ok || len(rows) != n {
		t.Fatalf("want %d rows of logits, got %v", n, v)
	}
	out := make([][]float32, n)
	for i, r := range rows {
		out[i] = floats(t, r, 10)
	}
	return out
}

func floats(t testing.TB, v any, n int) []float32 {
	t.Helper()
	xs, ok := v.([]any)
	if !ok || len(xs) != n {
		t.Fatalf("want %d numbers, got %v", n, v)
	}
	out := make([]float32, n)
	for i, x := range xs {
		f, ok := x.(float64)
		if !ok {
			t.Fatalf("want a number, got %v", x)
		}
		out[i] = float32(f)
	}
	return out
}

// TestHTTPAccuracy classifies the whole Fashion-MNIST test set through the
// handler in each protocol and format, from concurrent clients, and checks
// the answers against the model run directly.
func TestHTTPAccuracy(t *testing.T) {
	if testing.Short() {
		t.Skip("sends the 10,000-image test set four times")
	}
	srv, m := serveTestModel(t, DefaultOptions())
	ds := loadTestSet(t)
	want := make([][]float32, len(ds.images))
	for i := 0; i < len(ds.images); i += 100 {
		out, err := m.run([]Tensor{imageBatch(ds.images[i : i+100]...)}, 100)
		if err != nil {
			t.Fatal(err)
		}
		for r := range 100 {
			want[i+r] = out[0].Data.([]float32)[r*10 : (r+1)*10]
		}
	}
	type protocol struct {
		name    string
		rows    int // per request
		request func(id string, images [][]float32) []byte
		url     string
		logits  func(t testing.TB, doc map[string]any, id string, n int) [][]float32
	}
	tfAnswer := func(key string) func(testing.TB, map[string]any, string, int) [][]float32 {
		return func(t testing.TB, doc map[string]any, _ string, n int) [][]float32 { return logitsOf(t, doc[key], n) }
	}
	v2Answer := func(t testing.TB, doc map[string]any, id string, n int) [][]float32 {
		outs, _ := doc["outputs"].([]any)
		if doc["id"] != id || doc["model_name"] != served || len(outs) != 1 {
			t.Fatalf("answer %v: want id %q, model_name %q, one output", doc, id, served)
		}
		out := outs[0].(map[string]any)
		if out["name"] != "logits" || out["datatype"] != "FP32" || fmt.Sprint(out["shape"]) != fmt.Sprintf("[%d 10]", n) {
			t.Fatalf("output %v", out)
		}
		flat := floats(t, out["data"], n*10)
		rows := make([][]float32, n)
		for i := range rows {
			rows[i] = flat[i*10 : (i+1)*10]
		}
		return rows
	}
	for _, p := range []protocol{
		{"tfserving/instances", 2, func(_ string, imgs [][]float32) []byte { return tfRows(imgs...) }, "/v1/models/fashion:predict", tfAnswer("predictions")},
		{"tfserving/inputs", 20, func(_ string, imgs [][]float32) []byte { return tfColumns(imgs...) }, "/v1/models/fashion:predict", tfAnswer("outputs")},
		{"v2/flat", 5, func(id string, imgs [][]float32) []byte { return v2Request(id, false, imgs...) }, "/v2/models/fashion/infer", v2Answer},
		{"v2/nested", 50, func(id string, imgs [][]float32) []byte { return v2Request(id, true, imgs...) }, "/v2/models/fashion/infer", v2Answer},
	} {
		t.Run(p.name, func(t *testing.T) {
			const clients = 8
			var right sync.Map
			var wg sync.WaitGroup
			for c := range clients {
				wg.Go(func() {
					n := 0
					for i := c * p.rows; i < len(ds.images); i += clients * p.rows {
						imgs := ds.images[i:min(i+p.rows, len(ds.images))]
						id := "req-" + strconv.Itoa(i)
						status, doc := call(t, http.MethodPost, srv.URL+p.url, p.request(id, imgs))
						if status != http.StatusOK {
							t.Errorf("status %d: %v", status, doc)
							return
						}
						for r, got := range p.logits(t, doc, id, len(imgs)) {
							if !closeTo(got, want[i+r]) {
								t.Errorf("image %d: %v over HTTP, %v directly", i+r, got, want[i+r])
							}
							if argmax(got) == ds.labels[i+r] {
								n++
							}
						}
					}
					right.Store(c, n)
				})
			}
			wg.Wait()
			total := 0
			right.Range(func(_, n any) bool { total += n.(int); return true })
			acc := float64(total) / float64(len(ds.images))
			t.Logf("accuracy %.4f on %d images", acc, len(ds.images))
			if acc < 0.85 {
				t.Errorf("accuracy %.4f, want >= 0.85", acc)
			}
		})
	}
	st := m.Stats()
	t.Logf("%+v", st)
	if st.Runs >= st.Requests {
		t.Errorf("no batching happened: %+v", st)
	}
}

// TestHTTPDocuments checks the protocols' status and metadata documents.
func TestHTTPDocuments(t *testing.T) {
	srv, m := serveTestModel(t, DefaultOptions())
	for _, tc := range []struct {
		path string
		want string
	}{
		{"/v1/models/fashion", `{"model_version_status":[{"state":"AVAILABLE","status":{"error_code":"OK","error_message":""},"version":"1"}]}`},
		{"/v1/models/fashion/versions/1", `{"model_version_status":[{"state":"AVAILABLE","status":{"error_code":"OK","error_message":""},"version":"1"}]}`},
		{"/v1/models/fashion/metadata", `{"metadata":{"signature_def":{"signature_def":{"serving_default":{"inputs":{"input":{"dtype":"DT_FLOAT","name":"input","tensor_shape":{"dim":[{"name":"","size":"-1"},{"name":"","size":"1"},{"name":"","size":"28"},{"name":"","size":"28"}],"unknown_rank":false}}},"method_name":"tensorflow/serving/predict","outputs":{"logits":{"dtype":"DT_FLOAT","name":"logits","tensor_shape":{"dim":[{"name":"","size":"-1"},{"name":"","size":"10"}],"unknown_rank":false}}}}}}},"model_spec":{"name":"fashion","signature_name":"","version":"1"}}`},
		{"/v2/models/fashion", `{"inputs":[{"datatype":"FP32","name":"input","shape":[-1,1,28,28]}],"name":"fashion","outputs":[{"datatype":"FP32","name":"logits","shape":[-1,10]}],"platform":"onnxruntime_onnx","versions":["1"]}`},
		{"/v2/models/fashion/versions/1", `{"inputs":[{"datatype":"FP32","name":"input","shape":[-1,1,28,28]}],"name":"fashion","outputs":[{"datatype":"FP32","name":"logits","shape":[-1,10]}],"platform":"onnxruntime_onnx","versions":["1"]}`},
		{"/v2/models/fashion/ready", `{"name":"fashion","ready":true}`},
		{"/v2/health/ready", `{"ready":true}`},
		{"/v2/health/live", `{"live":true}`},
	} {
		status, doc := call(t, http.MethodGet, srv.URL+tc.path, nil)
		got, _ := json.Marshal(doc) // sorted keys
		if status != http.StatusOK || string(got) != tc.want {
			t.Errorf("GET %s: %d %s\nwant 200 %s", tc.path, status, got, tc.want)
		}
	}
	status, doc := call(t, http.MethodGet, srv.URL+"/v2", nil)
	if status != http.StatusOK || doc["name"] != "spotml" || doc["version"] == "" || doc["extensions"] == nil {
		t.Errorf("GET /v2: %d %v", status, doc)
	}

	// Closed, the model is no longer ready and requests are refused.
	m.Close()
	for _, path := range []string{"/v2/models/fashion/ready", "/v2/health/ready"} {
		if status, doc := call(t, http.MethodGet, srv.URL+path, nil); status != http.StatusServiceUnavailable || doc["ready"] != false {
			t.Errorf("GET %s after close: %d %v, want 503 ready false", path, status, doc)
		}
	}
	if status, doc := call(t, http.MethodGet, srv.URL+"/v1/models/fashion", nil); status != http.StatusOK || !strings.Contains(fmt.Sprint(doc), "END") {
		t.Errorf("TF status after close: %d %v, want state END", status, doc)
	}
	status, doc = call(t, http.MethodPost, srv.URL+"/v1/models/fashion:predict", tfRows(make([]float32, 784)))
	if status != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(doc["error"]), "closed") {
		t.Errorf("predict after close: %d %v, want 503", status, doc)
	}
}

// TestHTTPBadRequests: every class of bad request gets the right status and
// a JSON error naming what is wrong, and the server goes on serving.
func TestHTTPBadRequests(t *testing.T) {
	srv, m := serveTestModel(t, DefaultOptions(), WithMaxBodyBytes(64<<10))
	img := make([]float32, 784)
	flat := func(shape string, datatype string, data string) string {
		return `{"inputs": [{"name": "input", "shape": ` + shape + `, "datatype": "` + datatype + `", "data": ` + data + `}]}`
	}
	zeros := func(n int) string { return "[" + strings.TrimSuffix(strings.Repeat("0,", n), ",") + "]" }
	tf, v2 := "/v1/models/fashion:predict", "/v2/models/fashion/infer"
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		err                      string
	}{
		{"tf not JSON", "POST", tf, `{"instances": [1,}`, 400, "invalid JSON at byte 17"},
		{"v2 not JSON", "POST", v2, `hello`, 400, "invalid JSON at byte 0"},
		{"tf wrong shape", "POST", tf, `{"instances": [` + zeros(784) + `]}`, 400, `input "input": shape [1,784] does not match the model's [-1,1,28,28]`},
		{"v2 wrong shape", "POST", v2, flat("[1, 784]", "FP32", zeros(784)), 400, `input "input": shape [1,784] does not match the model's [-1,1,28,28]`},
		{"v2 wrong datatype", "POST", v2, flat("[1, 1, 28, 28]", "FP64", zeros(784)), 400, `input "input": datatype FP64 does not match the model's FP32`},
		{"tf wrong type", "POST", tf, `{"instances": [[[[true]]]]}`, 400, `true is not a valid FP32 value`},
		{"tf empty", "POST", tf, `{"instances": []}`, 400, `"instances" is empty`},
		{"v2 empty", "POST", v2, flat("[0, 1, 28, 28]", "FP32", "[]"), 400, `input "input": shape [0,1,28,28] is empty`},
		{"v2 no inputs", "POST", v2, `{"inputs": []}`, 400, `no "inputs"`},
		{"empty body", "POST", tf, ``, 400, "invalid JSON"},
		{"tf wrong input name", "POST", tf, `{"inputs": {"image": [1]}}`, 400, `the model has no input "image" (its inputs: "input")`},
		{"v2 wrong input name", "POST", v2, `{"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1]}]}`, 400, `the model has no input "image"`},
		{"v2 count mismatch", "POST", v2, flat("[2, 1, 28, 28]", "FP32", zeros(784)), 400, `784 values for shape [2,1,28,28], which holds 1568`},
		{"tf unknown model", "POST", "/v1/models/shoes:predict", string(tfRows(img)), 404, `model "shoes" not found (this server serves "fashion")`},
		{"v2 unknown model", "POST", "/v2/models/shoes/infer", string(v2Request("x", false, img)), 404, `model "shoes" not found`},
		{"v2 unknown version", "GET", "/v2/models/fashion/versions/2", ``, 404, `has no version "2"`},
		{"unknown path", "GET", "/v3/models", ``, 404, "no such endpoint GET /v3/models"},
		{"tf unknown verb", "POST", "/v1/models/fashion:explain", ``, 404, "no such endpoint"},
		{"tf classify", "POST", "/v1/models/fashion:classify", `{}`, 400, "classify is not supported"},
		{"predict by GET", "GET", tf, ``, 405, "GET /v1/models/fashion:predict takes POST"},
		{"infer by GET", "GET", v2, ``, 405, "takes POST"},
		{"too big", "POST", v2, string(v2Request("big", false, slices.Repeat([][]float32{img}, 50)...)), 413, "larger than 65536 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, doc := call(t, tc.method, srv.URL+tc.path, []byte(tc.body))
			msg, _ := doc["error"].(string)
			if status != tc.status || !strings.Contains(msg, tc.err) || len(doc) != 1 {
				t.Errorf("%d %v\nwant %d {\"error\": ...%s...}", status, doc, tc.status, tc.err)
			}
		})
	}
	// Chunked (no Content-Length): the limit applies while reading.
	resp, err := http.Post(srv.URL+v2, "application/json", io.MultiReader(strings.NewReader(`{"inputs": [`), strings.NewReader(strings.Repeat(" ", 70<<10))))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked body over the limit: %d, want 413", resp.StatusCode)
	}
	// Still serving.
	if status, doc := call(t, http.MethodPost, srv.URL+tf, tfRows(img)); status != http.StatusOK {
		t.Errorf("after bad requests: %d %v", status, doc)
	}
	if st := m.Stats(); st.Runs != 1 {
		t.Errorf("bad requests ran the model: %+v", st)
	}
}

// TestHTTPDefaultBodyLimit: 16 MiB by default.
func TestHTTPDefaultBodyLimit(t *testing.T) {
	srv, _ := serveTestModel(t, DefaultOptions())
	body := append([]byte(`{"instances": [`), bytes.Repeat([]byte(" "), DefaultMaxBodyBytes)...)
	status, doc := call(t, http.MethodPost, srv.URL+"/v1/models/fashion:predict", body)
	if status != http.StatusRequestEntityTooLarge || !strings.Contains(fmt.Sprint(doc["error"]), "16777216") {
		t.Errorf("%d %v, want 413", status, doc)
	}
}

// TestHTTPQueueFull: when the model's queue is full, requests are refused
// with 503 and Retry-After rather than left to wait.
func TestHTTPQueueFull(t *testing.T) {
	srv, m := serveTestModel(t, Options{MaxBatch: 1, MaxQueue: 1, MaxQueueDelay: 0})
	body := tfRows(make([]float32, 784))
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for range 32 {
		wg.Go(func() {
			for range 20 {
				resp, err := http.Post(srv.URL+"/v1/models/fashion:predict", "application/json", bytes.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
					t.Error("503 without Retry-After")
				}
				mu.Lock()
				codes[resp.StatusCode]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("status codes %v, %+v", codes, m.Stats())
	if codes[200] == 0 || codes[503] == 0 || codes[200]+codes[503] != 32*20 {
		t.Errorf("status codes %v: want some 200s and some 503s, nothing else", codes)
	}
}

// Clients that declare a 16 MiB body and send two bytes hold no 16 MiB
// buffers: the body buffer grows as bytes arrive. (Before, each got a
// buffer of its declared size at once.)
func TestHTTPSlowClientsHoldNoMemory(t *testing.T) {
	var entered sync.WaitGroup
	const clients = 20
	entered.Add(clients)
	h := NewHandler(served, nil) // the model is never reached
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered.Done()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)

	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	for range clients {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "POST /v1/models/%s:predict HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"", served, DefaultMaxBodyBytes)
	}
	entered.Wait()
	time.Sleep(200 * time.Millisecond) // each handler reaches its read
	grew := int64(heap()) - int64(before)
	t.Logf("heap grew by %d KiB for %d clients declaring %d bytes", grew>>10, clients, DefaultMaxBodyBytes)
	if grew > 16<<20 {
		t.Errorf("heap grew by %d MiB for %d clients that sent 2 bytes each; want well under 16 MiB", grew>>20, clients)
	}
}

// A body that stalls past the server's read timeout is answered 408, not
// logged as a server failure.
func TestHTTPSlowBodyTimesOut(t *testing.T) {
	srv := httptest.NewUnstartedServer(NewHandler(served, nil))
	srv.Config.ReadTimeout = 300 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v2/models/%s/infer HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"", served)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	if res.StatusCode != http.StatusRequestTimeout {
		t.Errorf("stalled body: %d, want 408", res.StatusCode)
	}
}
