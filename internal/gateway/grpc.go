package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/spotml/spotml/internal/inference/kservev2"
)

// gRPC calls (the KServe v2 / Open Inference Protocol's
// inference.GRPCInferenceService, or any gRPC service a custom replica
// serves) reach the gateway as HTTP/2 requests: over cleartext with prior
// knowledge (h2c, as gRPC clients connect to a plain address) or over TLS
// with ALPN h2 where the gateway's server has a certificate (ServeProtocols).
// The gateway proxies them as HTTP/2 requests to the replica's one port,
// which hands HTTP/2 connections to its native gRPC server.
//
// Why a transparent HTTP/2 proxy in net/http and not a grpc-go server with
// a raw-bytes codec: the call arrives in the handler that HTTP already goes
// through, so routing, API keys, limits, balancing, ejection, statistics
// and QPS are the same code; the replica's answer (headers, length-prefixed
// messages, trailers) passes through untouched, whatever the service, and a
// round trip tells exactly whether the replica answered at all, which is
// what deciding a retry needs. grpc-go's client folds "never reached the
// replica" and "the replica said UNAVAILABLE" into one status, and its
// reconnect backoff would hide a dead replica behind its own waiting.
//
// How a call names its service, first match wins:
//
//  1. the metadata spotml-service: NAME (any method, any service);
//  2. for inference.GRPCInferenceService's ModelInfer, ModelMetadata and
//     ModelReady, the request's model name (field 1 of the message), just
//     as /v2/models/NAME/... names it over HTTP, so that Triton and KServe
//     clients work unchanged: replicas serve the model under the service's
//     name;
//  3. ServerLive and ServerReady without the metadata are answered by the
//     gateway itself, as /v2/health/live and /v2/health/ready are.
//
// :authority is not used: clients dial the gateway's own address, so it
// names the gateway, not a service, unless DNS gives each service a name.

// GRPCServiceHeader is the metadata key that names the service of a gRPC
// call (canonical form; on the wire it is spotml-service).
const GRPCServiceHeader = "Spotml-Service"

// kserveService is the Open Inference Protocol's gRPC service path prefix.
const kserveService = "/inference.GRPCInferenceService/"

// ServeProtocols sets srv to speak what the gateway routes: HTTP/1.1, and
// HTTP/2 over cleartext (h2c with prior knowledge) and over TLS (ALPN h2,
// when srv serves TLS) for gRPC.
func ServeProtocols(srv *http.Server) {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	srv.Protocols = &p
	if srv.HTTP2 == nil {
		srv.HTTP2 = &http.HTTP2Config{}
	}
	if srv.HTTP2.MaxConcurrentStreams == 0 {
		// One gRPC connection carries a client's concurrent calls; the
		// routes' in-flight limits bound them, not the stream count.
		srv.HTTP2.MaxConcurrentStreams = DefaultMaxInFlight
	}
}

// isGRPC reports whether an HTTP/2 request is a gRPC call.
func isGRPC(h http.Header) bool {
	ct := h.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc") && (len(ct) == 16 || ct[16] == '+' || ct[16] == ';')
}

// serveGRPC routes one gRPC call: the gateway's counterpart of ServeHTTP and
// forward for HTTP/2 gRPC requests. Every answer, the gateway's own errors
// included, is a gRPC status, never a bare HTTP error.
func (g *Gateway) serveGRPC(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeGRPCStatus(w, codes.Unimplemented, fmt.Sprintf("gRPC calls are POST requests, not %s", r.Method))
		return
	}
	method := r.URL.Path
	name := r.Header.Get(GRPCServiceHeader)
	byModel := name == "" && strings.HasPrefix(method, kserveService)
	if name == "" && !byModel {
		writeGRPCStatus(w, codes.InvalidArgument, fmt.Sprintf("%s: name the service with the metadata spotml-service: NAME", method))
		return
	}
	t := g.table.Load()
	if byModel {
		switch method[len(kserveService):] {
		case "ServerLive":
			g.grpcAnswer(w, &kservev2.ServerLiveResponse{Live: true})
			return
		case "ServerReady":
			g.grpcAnswer(w, &kservev2.ServerReadyResponse{Ready: t.ready(g.now().UnixNano())})
			return
		case "ModelInfer", "ModelMetadata", "ModelReady":
		default:
			writeGRPCStatus(w, codes.InvalidArgument, fmt.Sprintf("%s: name the service with the metadata spotml-service: NAME (this call names no model)", method))
			return
		}
	}

	// The body is read before the service is known when the message names
	// it, so up to the largest limit of any route; the service's own limit
	// is checked once it is known.
	var s *service
	limit := g.maxBody
	if !byModel {
		if s = t.services[name]; s == nil {
			g.grpcNoService(w, name)
			return
		}
		limit = s.maxBody
	} else {
		for _, sv := range t.services {
			limit = max(limit, sv.maxBody)
		}
	}
	start := time.Now()
	var body body
	defer func() {
		g.buffered.Add(-body.reserved)
		body.free()
	}()
	if err := g.readBody(w, r, limit, &body); err != nil {
		g.grpcBodyError(w, err)
		return
	}
	if byModel {
		var err error
		if name, err = grpcModelName(&body); err != nil {
			writeGRPCStatus(w, codes.InvalidArgument, fmt.Sprintf("%s: %v", method, err))
			return
		}
		if s = t.services[name]; s == nil {
			g.grpcNoService(w, name)
			return
		}
		if body.replayable && int64(len(body.buf)) > s.maxBody {
			g.grpcBodyError(w, &http.MaxBytesError{Limit: s.maxBody})
			return
		}
	}
	strip, ok := s.authorize(r.Header)
	if !ok {
		s.state.answered(http.StatusUnauthorized)
		g.grpcCalls.WithLabelValues(s.name, codes.Unauthenticated.String()).Inc()
		writeGRPCStatus(w, codes.Unauthenticated, fmt.Sprintf("service %q needs an API key: send the metadata x-api-key: KEY (or authorization: Bearer KEY)", s.name))
		return
	}
	if s.state.inflight.Add(1) > s.maxInFlight {
		s.state.inflight.Add(-1)
		s.state.rate.add(g.now().Unix()) // the demand is real
		s.state.answered(http.StatusTooManyRequests)
		g.grpcCalls.WithLabelValues(s.name, codes.ResourceExhausted.String()).Inc()
		writeGRPCStatus(w, codes.ResourceExhausted, fmt.Sprintf("service %q has %d calls in flight, its maxInFlight; retry later", s.name, s.maxInFlight))
		return
	}
	g.forwardGRPC(w, r, s, strip, &body, start)
}

// forwardGRPC sends a call to a replica of s and relays the answer,
// retrying on another replica as forward does for HTTP:
//
//   - when the replica could not be reached (connection refused, dial
//     timeout): it never saw the call;
//   - when the connection failed before any answer header, for
//     inference.GRPCInferenceService's methods only: each of them is a read
//     or a pure function of its request, so running one twice does no harm,
//     while another service's method may have acted;
//   - when a replica that is draining or gone from the table answered
//     UNAVAILABLE without a message (trailers only): a server that is
//     shutting down refuses new calls so.
//
// GOAWAY and REFUSED_STREAM (the replica did not process the stream) are
// retried by the HTTP/2 transport itself, on a new connection to the same
// replica; if that fails, the rules above apply. Only whole buffered bodies
// are sent again; nothing is retried after answer bytes reached the client.
func (g *Gateway) forwardGRPC(w http.ResponseWriter, r *http.Request, s *service, strip string, body *body, start time.Time) {
	var (
		code   = codes.OK
		status int // HTTP equivalent of code, for the shared accounting
		broken bool
		last   *backend
	)
	s.state.conc.change(g.now(), 1) // the autoscaler's in-flight meter, as forward keeps it
	defer func() {
		g.grpcCalls.WithLabelValues(s.name, code.String()).Inc()
		g.finish(s, last, status, broken, time.Since(start))
		s.state.conc.change(g.now(), -1)
		s.state.inflight.Add(-1)
	}()
	fail := func(c codes.Code, msg string) {
		code, status = c, grpcHTTPStatus(c)
		writeGRPCStatus(w, c, msg)
	}

	header := r.Header.Clone()
	removeHopHeaders(header)
	header.Del(GRPCServiceHeader)
	if strip != "" {
		header.Del(strip)
	}
	header.Set("Te", "trailers") // gRPC servers require it; removeHopHeaders dropped it
	idempotent := strings.HasPrefix(r.URL.Path, kserveService)

	tried := make([]*backend, 0, 4)
	e := s.pick(g.now().UnixNano(), tried, g.intn)
	if e == nil {
		s.state.noReplica.Add(1)
		fail(codes.Unavailable, fmt.Sprintf("service %q has no ready replica; retry later", s.name))
		return
	}
	for {
		tried = append(tried, e.b)
		last = e.b
		a := g.sendGRPC(r, e, header, body)
		if a.fail == failNone {
			code, broken = a.relay(w)
			status = grpcHTTPStatus(code)
			if broken {
				panic(http.ErrAbortHandler) // the client must not take a cut answer for a whole one
			}
			return
		}
		switch a.fail {
		case failClient:
			a.end(reasonNone)
			code, status = codes.Canceled, 499
			return
		case failTimeout:
			a.end(reasonTimeout)
			fail(codes.DeadlineExceeded, fmt.Sprintf("replica %s of %q did not answer within %v", e.ID, s.name, g.timeout))
			return
		}
		if a.fail == failConn {
			g.eject(e.b, a.err)
		}
		retryable := a.fail == failGone || notSent(a.err) || idempotent
		var next *entry
		why := ""
		switch {
		case !retryable:
			why = "not retried: the replica may have acted on the call"
		case !body.replayable:
			why = fmt.Sprintf("not retried: a message over %d bytes is streamed, not buffered", g.maxRetryBody)
		case len(tried) > g.maxRetries:
			why = fmt.Sprintf("gave up after %d attempts", len(tried))
		default:
			next = s.pick(g.now().UnixNano(), tried, g.intn)
		}
		if next != nil {
			a.discard()
			s.state.retries.Add(1)
			g.log.Debug("gateway: retrying a gRPC call on another replica", "service", s.name, "failed", e.ID, "next", next.ID, "err", a.err)
			e = next
			continue
		}
		if a.resp != nil {
			// The replica's own UNAVAILABLE says more than ours would.
			code, broken = a.relay(w)
			status = grpcHTTPStatus(code)
			if broken {
				panic(http.ErrAbortHandler)
			}
			return
		}
		a.end(reasonConnect)
		if why != "" {
			fail(codes.Unavailable, fmt.Sprintf("replica %s of %q failed: %v; %s", e.ID, s.name, a.err, why))
		} else {
			fail(codes.Unavailable, fmt.Sprintf("service %q has no ready replica: %s failed (%v) and no other replica is ready; retry later", s.name, e.ID, a.err))
		}
		return
	}
}

// grpcAttempt is one try of a gRPC call on one replica.
type grpcAttempt struct {
	g      *Gateway
	e      *entry
	client context.Context
	cancel context.CancelFunc // ends the attempt's timeout; after the relay
	start  time.Time
	resp   *http.Response
	err    error
	fail   failure
	unary  bool // a KServe v2 call: one message each way
}

// sendGRPC makes one attempt, up to the answer's headers.
func (g *Gateway) sendGRPC(r *http.Request, e *entry, header http.Header, body *body) *grpcAttempt {
	a := &grpcAttempt{g: g, e: e, client: r.Context(), start: time.Now(), unary: strings.HasPrefix(r.URL.Path, kserveService)}
	ctx, cancel := context.WithTimeout(r.Context(), g.timeout)
	a.cancel = cancel
	e.b.inflight.Add(1)

	out := &http.Request{
		Method: http.MethodPost, Header: header, Host: e.b.addr,
		URL:   &url.URL{Scheme: "http", Host: e.b.addr, Path: r.URL.Path, RawPath: r.URL.RawPath},
		Proto: "HTTP/2.0", ProtoMajor: 2,
	}
	if body.replayable {
		buf := body.buf
		out.ContentLength = int64(len(buf))
		out.Body = io.NopCloser(bytes.NewReader(buf))
		// The transport sends the call again itself after a GOAWAY or
		// REFUSED_STREAM: the replica did not process it.
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	} else {
		out.ContentLength = body.length
		out.Body = io.NopCloser(body.stream)
	}
	out = out.WithContext(ctx)

	a.resp, a.err = e.b.h2.transport(e.b.addr).RoundTrip(out)
	switch {
	case a.err == nil:
		e.b.answered()
		if grpcTrailersOnly(a.resp, codes.Unavailable) && g.vanished(e.b) {
			a.fail = failGone
		}
	case r.Context().Err() != nil:
		a.fail = failClient
	case ctx.Err() != nil:
		a.fail = failTimeout
	case body.err() != nil:
		a.fail = failClient
	default:
		a.fail = failConn
	}
	return a
}

// relay copies the replica's answer (headers, messages, trailers) to the
// client and returns the call's status; broken: the answer broke off after
// its headers were sent.
func (a *grpcAttempt) relay(w http.ResponseWriter) (code codes.Code, broken bool) {
	resp := a.resp
	removeHopHeaders(resp.Header)
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	w.WriteHeader(resp.StatusCode)
	// A KServe call is unary: its one answer message goes out with the
	// trailers when the handler returns (one write fewer). Other services'
	// messages are flushed as they come, so that server streams stream.
	readErr, writeErr := copyBody(w, resp.Body, !a.unary)
	resp.Body.Close()
	for k, vv := range resp.Trailer {
		h[http.TrailerPrefix+k] = vv
	}
	code = grpcCode(resp)
	r := reasonNone
	switch {
	case writeErr != nil, readErr != nil && a.client.Err() != nil:
		code, broken = codes.Canceled, true
	case readErr != nil:
		code, broken, r = codes.Unavailable, true, reasonBroken
		a.g.log.Warn("gateway: gRPC answer broke off", "service", a.e.b.service, "replica", a.e.ID, "err", readErr)
	case a.fail == failGone:
		r = reasonGone
	case grpcHTTPStatus(code) >= 500:
		r = reasonStatus
	}
	a.end(r)
	return code, broken
}

// discard drops an attempt that is going to be retried.
func (a *grpcAttempt) discard() {
	r := reasonConnect
	if a.resp != nil {
		r = reasonGone
		_, _ = io.CopyN(io.Discard, a.resp.Body, 4<<10)
		a.resp.Body.Close()
	}
	a.end(r)
}

// end settles an attempt's accounting, as attempt.end does.
func (a *grpcAttempt) end(r reason) {
	a.cancel()
	b := a.e.b
	b.inflight.Add(-1)
	if r != reasonNone {
		b.errs[r].Add(1)
	}
	b.lat.add(a.g.now().Unix(), time.Since(a.start), r != reasonNone)
}

// notSent reports whether a round trip failed before the replica could see
// the call: the connection was never made.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// h2Hop is a replica's HTTP/2 client, made on its first gRPC call: one
// multiplexed connection carries every concurrent call, more are opened
// only when the replica limits the streams of one.
type h2Hop struct {
	mu     sync.Mutex
	tr     *http.Transport
	closed bool
}

func (h *h2Hop) transport(addr string) *http.Transport {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.tr == nil {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true) // prior knowledge: the replica's port sniffs the preface
		d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
		h.tr = &http.Transport{
			Protocols:          &p,
			DialContext:        d.DialContext,
			IdleConnTimeout:    idleTimeout,
			DisableCompression: true,
			HTTP2: &http.HTTP2Config{
				// A node that vanished without closing its connections is
				// found by pings, not by the next call's timeout.
				SendPingTimeout: 10 * time.Second,
				PingTimeout:     5 * time.Second,
			},
		}
	}
	if h.closed {
		// The replica left while a call was on its way: serve it, keep
		// nothing for later.
		h.tr.CloseIdleConnections()
	}
	return h.tr
}

// close drops the idle connections of a replica that left the table; calls
// in flight finish on theirs, which close when idle.
func (h *h2Hop) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	if h.tr != nil {
		h.tr.CloseIdleConnections()
	}
}

// grpcModelName reads the model name (field 1) from a KServe v2 request
// message: the first length-prefixed message of the body.
func grpcModelName(b *body) (string, error) {
	if !b.replayable {
		return "", fmt.Errorf("the message is over the gateway's buffer for routing by model name: name the service with the metadata spotml-service: NAME")
	}
	buf := b.buf
	if len(buf) < 5 {
		return "", fmt.Errorf("no request message (want a 5-byte gRPC message prefix, got %d bytes)", len(buf))
	}
	if buf[0] != 0 {
		return "", fmt.Errorf("a compressed message cannot be routed by its model name: send it uncompressed, or name the service with the metadata spotml-service: NAME")
	}
	n := binary.BigEndian.Uint32(buf[1:5])
	if uint64(n) > uint64(len(buf)-5) {
		return "", fmt.Errorf("the message declares %d bytes but %d came", n, len(buf)-5)
	}
	msg := buf[5 : 5+n]
	name := ""
	for len(msg) > 0 {
		num, typ, k := protowire.ConsumeTag(msg)
		if k < 0 {
			return "", fmt.Errorf("malformed request message: %v", protowire.ParseError(k))
		}
		msg = msg[k:]
		if num == 1 && typ == protowire.BytesType {
			v, k := protowire.ConsumeBytes(msg)
			if k < 0 {
				return "", fmt.Errorf("malformed model name: %v", protowire.ParseError(k))
			}
			name, msg = string(v), msg[k:]
			continue
		}
		k = protowire.ConsumeFieldValue(num, typ, msg)
		if k < 0 {
			return "", fmt.Errorf("malformed request message: %v", protowire.ParseError(k))
		}
		msg = msg[k:]
	}
	if name == "" {
		return "", fmt.Errorf("the request names no model: set its model name to the service's name, or name the service with the metadata spotml-service: NAME")
	}
	return name, nil
}

// grpcAnswer answers a call the gateway serves itself.
func (g *Gateway) grpcAnswer(w http.ResponseWriter, m proto.Message) {
	b, err := proto.Marshal(m)
	if err != nil {
		writeGRPCStatus(w, codes.Internal, err.Error())
		return
	}
	frame := make([]byte, 5+len(b))
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(b)))
	copy(frame[5:], b)
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Trailer", "Grpc-Status")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(frame)
	h.Set("Grpc-Status", "0")
}

func (g *Gateway) grpcNoService(w http.ResponseWriter, name string) {
	writeGRPCStatus(w, codes.NotFound, fmt.Sprintf("model %q not found: no service of that name is running (see `spotml get services`)", name))
}

// grpcBodyError answers a call whose message could not be read, as
// bodyError does for HTTP.
func (g *Gateway) grpcBodyError(w http.ResponseWriter, err error) {
	var tooBig *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.Is(err, errBuffersFull):
		writeGRPCStatus(w, codes.ResourceExhausted, fmt.Sprintf("the gateway holds %d bytes of request bodies, its limit (the max-buffered-bytes flag); retry later", g.maxBuffered))
	case errors.As(err, &tooBig):
		writeGRPCStatus(w, codes.ResourceExhausted, fmt.Sprintf("the request message is larger than %d bytes, the service's maxRequestBytes: send less per call, or raise spec.limits.maxRequestBytes", tooBig.Limit))
	case errors.As(err, &ne) && ne.Timeout():
		writeGRPCStatus(w, codes.DeadlineExceeded, fmt.Sprintf("the request message did not arrive in time: %v", err))
	default:
		writeGRPCStatus(w, codes.Canceled, fmt.Sprintf("reading the request message: %v", err))
	}
}

// writeGRPCStatus ends a call with a status and no message: a
// "trailers-only" answer, the status in the headers.
func writeGRPCStatus(w http.ResponseWriter, c codes.Code, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(int(c)))
	h.Set("Grpc-Message", grpcEncode(msg))
	w.WriteHeader(http.StatusOK)
}

// grpcEncode percent-encodes a grpc-message as the gRPC HTTP/2 protocol
// asks: bytes outside printable ASCII, and '%'.
func grpcEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// grpcTrailersOnly reports whether an answer is a bare status c with no
// message (the status in the headers).
func grpcTrailersOnly(resp *http.Response, c codes.Code) bool {
	return resp.Header.Get("Grpc-Status") == strconv.Itoa(int(c))
}

// grpcCode is the status of a relayed answer: in its trailers, or in its
// headers when it had no message. A reply that is not gRPC at all counts
// as Unknown (Unavailable for a 5xx one).
func grpcCode(resp *http.Response) codes.Code {
	v := resp.Trailer.Get("Grpc-Status")
	if v == "" {
		v = resp.Header.Get("Grpc-Status")
	}
	if n, err := strconv.Atoi(v); err == nil && v != "" {
		return codes.Code(n)
	}
	if resp.StatusCode >= 500 {
		return codes.Unavailable
	}
	return codes.Unknown
}

// grpcHTTPStatus maps a gRPC status to the HTTP status the gateway's shared
// accounting counts (requests_total's code, Stats' errors: 5xx), as
// grpc-gateway maps them.
func grpcHTTPStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.Canceled:
		return 499
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// newGRPCCalls counts gRPC calls by service and gRPC status; they are also
// in spotml_gateway_requests_total with the HTTP equivalent of their status.
func newGRPCCalls() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "spotml_gateway_grpc_calls_total",
		Help: "gRPC calls answered, by service and gRPC status (they count in spotml_gateway_requests_total too, under the HTTP equivalent of the status).",
	}, []string{"service", "grpc_code"})
}
