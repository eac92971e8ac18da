package inference

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultMaxBodyBytes bounds a request body unless WithMaxBodyBytes says
// otherwise: 16 MiB is about 1,000 Fashion-MNIST images as JSON.
const DefaultMaxBodyBytes = 16 << 20

// modelVersion is the one version a served model has, as both protocols
// insist on versions.
const modelVersion = "1"

// Handler serves one model over HTTP in two protocols:
//
//   - TensorFlow Serving's REST API: POST /v1/models/NAME:predict (row
//     "instances" or columnar "inputs"), GET /v1/models/NAME (status) and
//     GET /v1/models/NAME/metadata.
//   - KServe's Open Inference Protocol (v2): POST /v2/models/NAME/infer,
//     GET /v2/models/NAME (metadata), GET /v2/models/NAME/ready,
//     GET /v2/health/live, GET /v2/health/ready and GET /v2.
//
// Errors are JSON documents {"error": "..."} in both, as both protocols
// define them: 400 for a request the model cannot take, 404 for an unknown
// model or path, 413 for a body over the limit, 503 when the queue is full or
// the model closed.
type Handler struct {
	name    string
	model   *Model
	maxBody int64
	log     *slog.Logger
	mux     *http.ServeMux
	bufs    sync.Pool // *[]byte: request bodies and responses
}

// HandlerOption configures a Handler.
type HandlerOption func(*Handler)

// WithMaxBodyBytes bounds request bodies (default DefaultMaxBodyBytes).
func WithMaxBodyBytes(n int64) HandlerOption { return func(h *Handler) { h.maxBody = n } }

// WithLogger sets where the handler logs failures (default: discarded).
func WithLogger(l *slog.Logger) HandlerOption { return func(h *Handler) { h.log = l } }

// NewHandler serves m under the model name name.
func NewHandler(name string, m *Model, opts ...HandlerOption) *Handler {
	h := &Handler{name: name, model: m, maxBody: DefaultMaxBodyBytes, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(h)
	}
	h.bufs.New = func() any { b := make([]byte, 0, 64<<10); return &b }
	// Methods are checked by the handlers, so that a wrong one gets a JSON
	// error like every other failure.
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/models/{path...}", h.tfServing)
	mux.HandleFunc("/v2/models/{name}/infer", h.v2Infer)
	mux.HandleFunc("/v2/models/{name}/versions/{version}/infer", h.v2Infer)
	mux.HandleFunc("/v2/models/{name}", h.v2Metadata)
	mux.HandleFunc("/v2/models/{name}/versions/{version}", h.v2Metadata)
	mux.HandleFunc("/v2/models/{name}/ready", h.v2ModelReady)
	mux.HandleFunc("/v2/models/{name}/versions/{version}/ready", h.v2ModelReady)
	mux.HandleFunc("/v2/health/live", h.v2Live)
	mux.HandleFunc("/v2/health/ready", h.v2Ready)
	mux.HandleFunc("/v2", h.v2Server)
	mux.HandleFunc("GET /metrics", h.metrics)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.fail(w, notFoundf("no such endpoint %s %s: this server speaks TensorFlow Serving (/v1/models/%s:predict) and the Open Inference Protocol (/v2/models/%s/infer)",
			r.Method, r.URL.Path, h.name, h.name))
	})
	h.mux = mux
	return h
}

var _ http.Handler = (*Handler)(nil)

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// metrics writes the model's Stats in Prometheus' text format: requests,
// runs, rows, and the seconds spent per phase (decoding requests, waiting
// in the queue, running the model, encoding answers), from which the cost
// of a request splits into its parts.
func (h *Handler) metrics(w http.ResponseWriter, _ *http.Request) {
	st := h.model.Stats()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	b := h.getBuf()
	defer h.putBuf(b)
	for _, c := range []struct {
		name, help string
		v          float64
	}{
		{"requests_total", "Requests answered by a model run.", float64(st.Requests)},
		{"runs_total", "Model runs (one per batch).", float64(st.Runs)},
		{"rows_total", "Rows run, over all runs.", float64(st.Rows)},
		{"decode_seconds_total", "Time decoding requests into tensors, summed over requests.", st.Decode.Seconds()},
		{"queue_seconds_total", "Time requests waited for their batch's run, summed over requests.", st.Queue.Seconds()},
		{"run_seconds_total", "Time running the model (stacking a batch included), summed over runs.", st.Run.Seconds()},
		{"encode_seconds_total", "Time encoding answers, summed over requests.", st.Encode.Seconds()},
	} {
		name := "spotml_inference_" + c.name
		*b = fmt.Appendf(*b, "# HELP %s %s\n# TYPE %s counter\n%s %g\n", name, c.help, name, name, c.v)
	}
	w.Write(*b)
}

// errNotFound marks errors answered with 404: an unknown model, version or
// path.
var errNotFound = errors.New("not found")

type notFoundError struct{ msg string }

func (e *notFoundError) Error() string        { return e.msg }
func (e *notFoundError) Is(target error) bool { return target == errNotFound }

func notFoundf(format string, args ...any) error {
	return &notFoundError{fmt.Sprintf(format, args...)}
}

var errMethod = errors.New("method not allowed")

// checkModel resolves the model name and version of a path.
func (h *Handler) checkModel(name, version string) error { return checkModel(h.name, name, version) }

// checkModel resolves a request's model name and version against the one
// model served, served.
func checkModel(served, name, version string) error {
	if name != served {
		return notFoundf("model %q not found (this server serves %q)", name, served)
	}
	if version != "" && version != modelVersion {
		return notFoundf("model %q has no version %q (it has version %s)", name, version, modelVersion)
	}
	return nil
}

// allow checks the request's method; GET also allows HEAD.
func allow(r *http.Request, method string) error {
	if r.Method == method || (method == http.MethodGet && r.Method == http.MethodHead) {
		return nil
	}
	return fmt.Errorf("%w: %s %s takes %s", errMethod, r.Method, r.URL.Path, method)
}

// readBody reads the request body into a pooled buffer that the caller
// gives back with putBuf. Decoding copies everything it keeps out of the
// body, so the buffer can be reused as soon as the request is decoded.
//
// The buffer grows as bytes arrive, never to a declared Content-Length: a
// client that declares 16 MiB and sends two bytes holds a pooled buffer,
// not 16 MiB.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) (*[]byte, error) {
	if r.ContentLength > h.maxBody {
		return nil, &http.MaxBytesError{Limit: h.maxBody}
	}
	buf := h.getBuf()
	b := *buf
	body := http.MaxBytesReader(w, r.Body, h.maxBody)
	for {
		if len(b) == cap(b) {
			b = slices.Grow(b, cap(b))
		}
		n, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			*buf = b
			h.putBuf(buf)
			return nil, err
		}
	}
	*buf = b
	return buf, nil
}

func (h *Handler) getBuf() *[]byte { b := h.bufs.Get().(*[]byte); *b = (*b)[:0]; return b }

// putBuf returns a buffer to the pool, unless a huge request made it too big
// to be worth keeping.
func (h *Handler) putBuf(b *[]byte) {
	if cap(*b) <= 4<<20 {
		h.bufs.Put(b)
	}
}

// answer appends a protocol's response for the outputs of a request to buf.
// binaryAt is where binary data (the binary tensor extension) begins after
// the JSON, -1 when the response is all JSON.
type answer func(buf []byte, outputs []Tensor) (out []byte, binaryAt int)

// predict decodes a body with decode (a protocol's request decoder), runs
// the model and writes the answer.
func (h *Handler) predict(w http.ResponseWriter, r *http.Request, decode func(body []byte) ([]Tensor, answer, error)) {
	body, err := h.readBody(w, r)
	if err != nil {
		h.fail(w, err)
		return
	}
	start := time.Now()
	inputs, encode, err := decode(*body)
	decoded := time.Now()
	h.putBuf(body)
	if err != nil {
		h.fail(w, err)
		return
	}
	outputs, err := h.model.Predict(r.Context(), inputs)
	if err != nil {
		h.fail(w, err)
		return
	}
	out := h.getBuf()
	defer h.putBuf(out)
	var binaryAt int
	predicted := time.Now()
	*out, binaryAt = encode(*out, outputs)
	h.model.NoteCodec(decoded.Sub(start), time.Since(predicted))
	if binaryAt >= 0 {
		w.Header().Set(headerLengthKey, strconv.Itoa(binaryAt))
		w.Header().Set("Content-Type", "application/octet-stream")
	} else {
		w.Header().Set("Content-Type", "application/json")
	}
	w.Write(*out)
}

// fail answers err as {"error": "..."} with the status it calls for.
func (h *Handler) fail(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	msg := err.Error()
	var tooBig *http.MaxBytesError
	var timeout net.Error
	switch {
	case errors.As(err, &tooBig):
		status = http.StatusRequestEntityTooLarge
		msg = fmt.Sprintf("the request body is larger than %d bytes: send fewer rows per request", tooBig.Limit)
	case errors.Is(err, ErrInvalidInput):
		status = http.StatusBadRequest
	case errors.Is(err, errNotFound):
		status = http.StatusNotFound
	case errors.Is(err, errMethod):
		status = http.StatusMethodNotAllowed
	case errors.Is(err, ErrQueueFull), errors.Is(err, ErrClosed):
		status = http.StatusServiceUnavailable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The client went away or gave up; it will not read this.
		status = http.StatusServiceUnavailable
		msg = "the request was cancelled before the model ran it"
	case errors.As(err, &timeout) && timeout.Timeout():
		// The server's read timeout cut off a client too slow to send its
		// body.
		status = http.StatusRequestTimeout
		msg = "the request body did not arrive in time"
	default:
		h.log.Error("inference request failed", "model", h.name, "err", err)
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"cannot encode the response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// appendString appends s as a JSON string.
func appendString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s)
			return append(buf, b...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}

// appendNested appends the elements of data from off on as nested JSON
// arrays of the given shape.
func appendNested(buf []byte, k *kind, data any, shape []int64, off int) []byte {
	switch len(shape) {
	case 0:
		return k.appendJSON(buf, data, off, off+1)
	case 1:
		buf = append(buf, '[')
		buf = k.appendJSON(buf, data, off, off+int(shape[0]))
		return append(buf, ']')
	}
	stride := int(elements(shape[1:]))
	buf = append(buf, '[')
	for i := range int(shape[0]) {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendNested(buf, k, data, shape[1:], off+i*stride)
	}
	return append(buf, ']')
}

// serverVersion is spotml's module version, for the v2 server metadata.
func serverVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return strings.TrimPrefix(bi.Main.Version, "v")
	}
	return "devel"
}
