// Package gateway is the load balancer in front of every spotml service.
//
// The control plane hands it a routing table (Update); it routes each
// request by model name — TensorFlow Serving REST (/v1/models/NAME…) and
// the KServe v2 / Open Inference Protocol (/v2/models/NAME…) — or by
// service prefix (/services/NAME/…, for custom model servers), picks a
// replica by least outstanding requests with power-of-two random choices,
// and retries on another replica a request whose replica vanished under it,
// which on spot capacity happens every day. It measures what the
// autoscaler and `spotml get services` need (QPS, Stats) and exports
// Prometheus metrics.
//
// Choices a caller may need to know:
//
//   - Draining replicas get no new request while any other replica can take
//     it. When every replica of a service is draining, the gateway still
//     sends to them: a draining replica answers until its node dies, and a
//     late answer beats a 503.
//   - A replica that gave a connection error is ejected (avoided) for
//     Config.EjectFor, doubling on each repeat up to Config.EjectMax. When
//     every replica is ejected the gateway tries them anyway ("panic mode"),
//     so that a network blip cannot take a whole service down.
//   - /v2/health/ready is 200 when at least one service has a replica that
//     is neither draining nor ejected: a load balancer in front of the
//     gateway should keep sending while anything can be served.
//   - A request is retried on another replica after a connection error
//     (refused, reset, EOF before any answer byte) or a 502/503 from a
//     replica that is draining or gone by the time it answers; a 502/503
//     from a replica that stays is the service's own answer and is passed
//     on. Only bodies up to Config.MaxRetryBody are buffered for that;
//     nothing is retried after answer bytes reached the client, nor after a
//     timeout. Config.Timeout bounds a whole attempt, answer body included.
//   - API keys that the gateway checked are not passed on to the replica.
//   - Memory is bounded whatever clients do: a request body is buffered as
//     its bytes arrive, never sized from the Content-Length it declares;
//     a body over the service's MaxRequestBytes gets 413; the bytes held
//     in buffers across all requests are capped (Config.MaxBufferedBytes)
//     and so are the requests in flight per service (Route.MaxInFlight):
//     past either the gateway answers 429 with Retry-After instead of
//     growing. Requests refused with 429 count in QPS, so that the
//     autoscaler sees the demand. The gateway sets no server timeouts
//     itself; whoever runs its http.Server does (see cmd/spotml).
//   - The hop to a replica is HTTP/1.1 on keep-alive connections kept per
//     replica (hop.go), written and read by the request's own goroutine;
//     see hop.go for why not http.Transport.
//   - gRPC calls (HTTP/2 requests with Content-Type application/grpc; serve
//     the gateway with ServeProtocols for h2c) are routed by grpc.go: by the
//     spotml-service metadata or the KServe v2 request's model name, with
//     the same balancing, draining, ejection, keys and accounting, each
//     answer a gRPC status, over HTTP/2 to the replica.
package gateway

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/spotml/spotml/internal/spec"
)

// Replica is one running copy of a service the gateway may send to.
type Replica struct {
	ID       string // stable across updates, e.g. "mnist-3"
	Addr     string // host:port, plain HTTP
	Version  int    // service generation it serves
	Node     string
	Priority string // "spot" | "ondemand"
	// Draining: its node has an eviction notice or it is being stopped, so
	// it gets no NEW requests (see the package comment for the exception).
	Draining bool
}

// Route is one service.
type Route struct {
	Service string
	// Keys are the API keys a request must carry (Authorization: Bearer KEY
	// or X-API-Key: KEY); empty means the service is open.
	Keys     []string
	Replicas []Replica
	// MaxRequestBytes is the largest request body the service takes;
	// larger ones get 413. 0: Config.MaxRequestBytes.
	MaxRequestBytes int64
	// MaxInFlight is how many requests of the service the gateway holds
	// at once, bodies being read included; past it requests get 429.
	// 0: Config.MaxInFlight.
	MaxInFlight int
}

// Config tunes a Gateway. The zero value is usable.
type Config struct {
	Log *slog.Logger
	// Now is the clock for QPS windows, Stats and ejections (time.Now when
	// nil). Latencies are measured with the monotonic clock regardless.
	Now func() time.Time
	// Timeout bounds one attempt, from sending the request to the last byte
	// of the answer. Default 60 s.
	Timeout time.Duration
	// MaxRetries is how many more replicas a failed request may be tried on.
	// Default 2; negative turns retries off.
	MaxRetries int
	// MaxRetryBody is the largest request body buffered so that the request
	// can be retried; larger bodies are streamed and never retried.
	// Default 16 MiB; negative streams every body.
	MaxRetryBody int64
	// MaxRequestBytes is the request body limit of a route that sets
	// none. Default 16 MiB.
	MaxRequestBytes int64
	// MaxInFlight is the in-flight limit of a route that sets none.
	// Default 1000.
	MaxInFlight int
	// MaxBufferedBytes caps the bytes held in request-body buffers across
	// all requests and services; a request that would go past it gets 429.
	// Default 256 MiB.
	MaxBufferedBytes int64
	// Registerer also receives the gateway's metrics (the gateway's own
	// /metrics serves them either way). Nil: only the gateway's registry.
	Registerer prometheus.Registerer
	// Rand drives the power-of-two choices; tests pass a seeded source.
	// Nil: the runtime's random numbers.
	Rand rand.Source
	// EjectFor is how long a replica that gave a connection error is
	// avoided the first time; it doubles on each failure without a success
	// in between, up to EjectMax. Defaults 5 s and 1 min.
	EjectFor, EjectMax time.Duration
}

// Defaults for Config's zero fields.
const (
	DefaultTimeout      = 60 * time.Second
	DefaultMaxRetries   = 2
	DefaultMaxRetryBody = 16 << 20

	// A route's limits default to what spec.limits documents.
	DefaultMaxRequestBytes  = spec.DefaultMaxRequestBytes
	DefaultMaxInFlight      = spec.DefaultMaxInFlight
	DefaultMaxBufferedBytes = 256 << 20
	DefaultEjectFor         = 5 * time.Second
	DefaultEjectMax         = time.Minute
)

// retryAfter is what a 503 tells clients to wait, in seconds: about the
// time a first ejection lasts or a replica needs to come back.
const retryAfter = "5"

// retryAfterBusy is what a 429 tells clients to wait: requests in flight
// finish within about that.
const retryAfterBusy = "1"

// Gateway routes requests to service replicas. It is an http.Handler and
// is safe for concurrent use; Update may be called at any time.
type Gateway struct {
	log          *slog.Logger
	now          func() time.Time
	timeout      time.Duration
	maxRetries   int
	maxRetryBody int64
	maxBody      int64 // routes' default MaxRequestBytes
	maxInFlight  int64 // routes' default MaxInFlight
	maxBuffered  int64
	ejectFor     time.Duration
	ejectMax     time.Duration
	intn         func(n int) int

	metrics   *metrics
	metricsH  http.Handler
	grpcCalls *prometheus.CounterVec // grpc.go

	// table is the routing table requests read without locking; Update
	// swaps it whole.
	table atomic.Pointer[table]
	// buffered is the bytes of request-body buffers in use.
	buffered atomic.Int64

	mu       sync.Mutex // serialises Update and guards the two maps below
	backends map[backendKey]*backend
	states   map[string]*serviceState
}

// New returns a Gateway with an empty routing table.
func New(cfg Config) *Gateway {
	g := &Gateway{
		log:          cfg.Log,
		now:          cfg.Now,
		timeout:      cfg.Timeout,
		maxRetries:   cfg.MaxRetries,
		maxRetryBody: cfg.MaxRetryBody,
		maxBody:      positiveOr(cfg.MaxRequestBytes, DefaultMaxRequestBytes),
		maxInFlight:  positiveOr(int64(cfg.MaxInFlight), DefaultMaxInFlight),
		maxBuffered:  positiveOr(cfg.MaxBufferedBytes, DefaultMaxBufferedBytes),
		ejectFor:     cfg.EjectFor,
		ejectMax:     cfg.EjectMax,
		intn:         newIntn(cfg.Rand),
		backends:     map[backendKey]*backend{},
		states:       map[string]*serviceState{},
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	if g.now == nil {
		g.now = time.Now
	}
	if g.timeout <= 0 {
		g.timeout = DefaultTimeout
	}
	switch {
	case g.maxRetries == 0:
		g.maxRetries = DefaultMaxRetries
	case g.maxRetries < 0:
		g.maxRetries = 0
	}
	if g.maxRetryBody == 0 {
		g.maxRetryBody = DefaultMaxRetryBody
	}
	if g.ejectFor <= 0 {
		g.ejectFor = DefaultEjectFor
	}
	if g.ejectMax <= 0 {
		g.ejectMax = DefaultEjectMax
	}
	g.table.Store(&table{services: map[string]*service{}})

	g.metrics = newMetrics(g)
	g.grpcCalls = newGRPCCalls()
	own := prometheus.NewRegistry()
	own.MustRegister(g.metrics, g.metrics.duration, g.grpcCalls)
	g.metricsH = promhttp.HandlerFor(own, promhttp.HandlerOpts{})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{g.metrics, g.metrics.duration, g.grpcCalls} {
			if err := cfg.Registerer.Register(c); err != nil {
				g.log.Error("gateway: register metrics", "err", err)
			}
		}
	}
	return g
}

func positiveOr(v, def int64) int64 {
	if v > 0 {
		return v
	}
	return def
}

// newIntn returns a concurrency-safe random int in [0, n).
func newIntn(src rand.Source) func(int) int {
	if src == nil {
		return rand.IntN
	}
	var mu sync.Mutex
	r := rand.New(src)
	return func(n int) int {
		mu.Lock()
		defer mu.Unlock()
		return r.IntN(n)
	}
}

// Update replaces the whole routing table at once. Requests in flight
// finish where they are; outstanding-request counts, passive-health state
// and statistics carry over for every service, and every replica ID that
// remains at the same address, so that the control plane can call Update
// as often as it likes. A replica ID at a new address starts afresh.
func (g *Gateway) Update(routes []Route) {
	g.mu.Lock()
	defer g.mu.Unlock()

	t := &table{services: make(map[string]*service, len(routes))}
	backends := make(map[backendKey]*backend, len(g.backends))
	states := make(map[string]*serviceState, len(routes))
	for _, rt := range routes {
		if rt.Service == "" {
			g.log.Warn("gateway: route without a service name ignored")
			continue
		}
		if _, dup := t.services[rt.Service]; dup {
			g.log.Warn("gateway: duplicate route ignored", "service", rt.Service)
			continue
		}
		st := g.states[rt.Service]
		if st == nil {
			st = newServiceState(rt.Service, g.metrics.duration.WithLabelValues(rt.Service))
		}
		states[rt.Service] = st
		s := &service{
			name: rt.Service, state: st, keys: hashKeys(rt.Keys),
			maxBody:     positiveOr(rt.MaxRequestBytes, g.maxBody),
			maxInFlight: positiveOr(int64(rt.MaxInFlight), g.maxInFlight),
		}
		for _, r := range rt.Replicas {
			k := backendKey{rt.Service, r.ID}
			if _, dup := backends[k]; dup {
				g.log.Warn("gateway: duplicate replica ignored", "service", rt.Service, "replica", r.ID)
				continue
			}
			b := g.backends[k]
			if b == nil || b.addr != r.Addr {
				// A new address is a new process: its health is unknown.
				b = newBackend(rt.Service, r.ID, r.Addr)
			}
			backends[k] = b
			s.replicas = append(s.replicas, &entry{Replica: r, b: b})
		}
		t.services[rt.Service] = s
	}

	for k, b := range g.backends {
		if nb := backends[k]; nb != b {
			// Idle keep-alive connections to replicas that left would
			// linger until their idle timeout.
			b.conns.close()
			b.h2.close()
		}
	}
	for name := range g.states {
		if states[name] == nil {
			g.metrics.duration.DeleteLabelValues(name)
			g.grpcCalls.DeletePartialMatch(prometheus.Labels{"service": name})
		}
	}
	g.backends, g.states = backends, states
	g.table.Store(t)
	g.log.Debug("gateway: routes updated", "services", len(t.services), "replicas", len(backends))
}

// hashKeys keeps API keys as SHA-256 digests, so that checking one is a
// map lookup that reveals nothing through timing about the keys.
func hashKeys(keys []string) map[[32]byte]bool {
	if len(keys) == 0 {
		return nil
	}
	m := make(map[[32]byte]bool, len(keys))
	for _, k := range keys {
		if k != "" {
			m[sha256.Sum256([]byte(k))] = true
		}
	}
	return m
}

// ServeHTTP routes one request: gateway endpoints first, then a service's
// replicas.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 2 && isGRPC(r.Header) {
		g.serveGRPC(w, r) // grpc.go
		return
	}
	switch r.URL.Path {
	case "/healthz":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
		return
	case "/metrics":
		g.metricsH.ServeHTTP(w, r)
		return
	case "/v2/health/live":
		writeJSON(w, http.StatusOK, map[string]bool{"live": true})
		return
	case "/v2/health/ready":
		code, ready := http.StatusOK, g.table.Load().ready(g.now().UnixNano())
		if !ready {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]bool{"ready": ready})
		return
	}

	tg, ok := parseTarget(r.URL)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no route for %s: call /v1/models/NAME:predict, /v2/models/NAME/infer or /services/NAME/...", r.URL.Path))
		return
	}
	s := g.table.Load().services[tg.service]
	if s == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model %q not found: no service of that name is running (see `spotml get services`)", tg.service))
		return
	}
	strip, ok := s.authorize(r.Header)
	if !ok {
		s.state.answered(http.StatusUnauthorized)
		w.Header().Set("WWW-Authenticate", `Bearer realm="spotml"`)
		writeError(w, http.StatusUnauthorized, fmt.Sprintf("service %q needs an API key: send Authorization: Bearer KEY or X-API-Key: KEY", tg.service))
		return
	}
	g.forward(w, r, s, tg, strip)
}

// target is what a request path asks for: a service and the path its
// replica gets.
type target struct {
	service string
	// path and rawPath are the replica's URL path, decoded and as sent.
	path, rawPath string
	// prefix is what was stripped ("/services/NAME"), for X-Forwarded-Prefix.
	prefix string
}

// parseTarget maps a request URL to a service. Model-protocol paths go to
// the replica unchanged (replicas serve the model under the service's
// name); /services/NAME/REST goes as /REST.
func parseTarget(u *url.URL) (target, bool) {
	p := u.Path
	for _, pre := range []string{"/v1/models/", "/v2/models/"} {
		rest, ok := strings.CutPrefix(p, pre)
		if !ok {
			continue
		}
		// TF Serving puts the verb after a colon (NAME:predict); both
		// protocols put versions and the rest after a slash.
		name := rest
		if i := strings.IndexAny(rest, "/:"); i >= 0 {
			name = rest[:i]
		}
		if name == "" {
			return target{}, false
		}
		return target{service: name, path: u.Path, rawPath: u.RawPath}, true
	}

	// Work on the escaped path so that an escaped slash in the rest of the
	// path reaches a custom server exactly as the client sent it.
	rest, ok := strings.CutPrefix(u.EscapedPath(), "/services/")
	if !ok {
		return target{}, false
	}
	escName, escRest, _ := strings.Cut(rest, "/")
	name, err := url.PathUnescape(escName)
	if err != nil || name == "" {
		return target{}, false
	}
	escRest = "/" + escRest
	path, err := url.PathUnescape(escRest)
	if err != nil {
		return target{}, false
	}
	return target{service: name, path: path, rawPath: escRest, prefix: "/services/" + escName}, true
}

// authorize checks a request's API key against the service's. It returns
// the header that carried the key, so that it is not passed on.
func (s *service) authorize(h http.Header) (strip string, ok bool) {
	if len(s.keys) == 0 {
		return "", true
	}
	if a := h.Get("Authorization"); len(a) > 7 && strings.EqualFold(a[:7], "Bearer ") {
		if s.keys[sha256.Sum256([]byte(strings.TrimSpace(a[7:])))] {
			return "Authorization", true
		}
	}
	if k := h.Get("X-Api-Key"); k != "" && s.keys[sha256.Sum256([]byte(k))] {
		return "X-Api-Key", true // canonical: it names a header map key
	}
	return "", false
}

// writeError answers with the JSON error body both inference protocols use.
func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
