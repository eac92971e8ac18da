package gateway_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/spotml/spotml/internal/gateway"
)

func TestRouting(t *testing.T) {
	mnist, fashion, custom := newReplica(t, "mnist-1"), newReplica(t, "fashion-1"), newReplica(t, "llm-1")
	g, front := newFront(t, gateway.Config{})
	g.Update([]gateway.Route{
		route("mnist", mnist.replica()),
		route("fashion", fashion.replica()),
		route("llm", custom.replica()),
	})
	c := front.Client()

	for _, tc := range []struct {
		method, path string
		replica      string
		wantPath     string // what the replica sees; empty: the same path
		wantRawPath  string
		wantQuery    string
	}{
		// TensorFlow Serving REST
		{method: "POST", path: "/v1/models/mnist:predict", replica: "mnist-1"},
		{method: "POST", path: "/v1/models/mnist:classify", replica: "mnist-1"},
		{method: "POST", path: "/v1/models/fashion:regress", replica: "fashion-1"},
		{method: "POST", path: "/v1/models/mnist/versions/3:predict", replica: "mnist-1"},
		{method: "GET", path: "/v1/models/mnist", replica: "mnist-1"},
		{method: "GET", path: "/v1/models/mnist/versions/2", replica: "mnist-1"},
		{method: "GET", path: "/v1/models/fashion/metadata", replica: "fashion-1"},
		{method: "GET", path: "/v1/models/fashion/versions/1/metadata", replica: "fashion-1"},
		// KServe v2 / Open Inference Protocol
		{method: "POST", path: "/v2/models/mnist/infer", replica: "mnist-1"},
		{method: "POST", path: "/v2/models/fashion/versions/7/infer", replica: "fashion-1"},
		{method: "GET", path: "/v2/models/mnist", replica: "mnist-1"},
		{method: "GET", path: "/v2/models/mnist/ready", replica: "mnist-1"},
		// pass-through to a custom server
		{method: "POST", path: "/services/llm/generate", replica: "llm-1", wantPath: "/generate"},
		{method: "GET", path: "/services/llm/v1/chat/completions?stream=true", replica: "llm-1", wantPath: "/v1/chat/completions", wantQuery: "stream=true"},
		{method: "GET", path: "/services/llm", replica: "llm-1", wantPath: "/"},
		{method: "GET", path: "/services/llm/", replica: "llm-1", wantPath: "/"},
		{method: "GET", path: "/services/llm/files/a%2Fb", replica: "llm-1", wantPath: "/files/a/b", wantRawPath: "/files/a%2Fb"},
		{method: "GET", path: "/v1/models/mnist:predict?x=1", replica: "mnist-1", wantPath: "/v1/models/mnist:predict", wantQuery: "x=1"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			var body []byte
			if tc.method == "POST" {
				body = []byte(`{"instances":[[1,2,3]]}`)
			}
			a := call(t, c, tc.method, front.URL+tc.path, body)
			if a.err != nil || a.code != http.StatusOK {
				t.Fatalf("got %d %s %v", a.code, a.body, a.err)
			}
			want := tc.wantPath
			if want == "" {
				want = tc.path
			}
			if a.echo.Replica != tc.replica || a.echo.Path != want || a.echo.RawPath != tc.wantRawPath || a.echo.Query != tc.wantQuery || a.echo.Method != tc.method {
				t.Errorf("replica saw %+v; want replica %s, path %q, raw %q, query %q", a.echo, tc.replica, want, tc.wantRawPath, tc.wantQuery)
			}
			if a.echo.Body != len(body) {
				t.Errorf("replica got %d body bytes, want %d", a.echo.Body, len(body))
			}
		})
	}
}

func TestForwardedHeaders(t *testing.T) {
	rp := newReplica(t, "llm-1")
	g, front := newFront(t, gateway.Config{})
	g.Update([]gateway.Route{route("llm", rp.replica())})

	a := call(t, front.Client(), "POST", front.URL+"/services/llm/generate", []byte("{}"),
		"Connection", "X-Per-Hop",
		"X-Per-Hop", "drop me",
		"Keep-Alive", "timeout=5",
		"X-Forwarded-For", "10.0.0.1",
		"X-Model-Option", "keep me")
	if a.code != http.StatusOK {
		t.Fatalf("got %d %s", a.code, a.body)
	}
	h := a.echo.Header
	for _, k := range []string{"X-Per-Hop", "Keep-Alive"} {
		if h.Get(k) != "" {
			t.Errorf("hop-by-hop header %s reached the replica: %q", k, h.Get(k))
		}
	}
	if got := h.Get("X-Model-Option"); got != "keep me" {
		t.Errorf("X-Model-Option = %q, want it passed on", got)
	}
	if got := h.Get("X-Forwarded-For"); got != "10.0.0.1, 127.0.0.1" {
		t.Errorf("X-Forwarded-For = %q, want the client's address appended", got)
	}
	if got := h.Get("X-Forwarded-Prefix"); got != "/services/llm" {
		t.Errorf("X-Forwarded-Prefix = %q", got)
	}
	if got := h.Get("X-Forwarded-Host"); got != strings.TrimPrefix(front.URL, "http://") {
		t.Errorf("X-Forwarded-Host = %q", got)
	}
	if _, ok := h["X-Idempotency-Key"]; ok {
		t.Error("the transport's retry marker went on the wire")
	}
}

func TestAPIKeys(t *testing.T) {
	rp, open := newReplica(t, "mnist-1"), newReplica(t, "open-1")
	g, front := newFront(t, gateway.Config{})
	g.Update([]gateway.Route{
		{Service: "mnist", Keys: []string{"k-one", "k-two"}, Replicas: []gateway.Replica{rp.replica()}},
		route("open", open.replica()),
	})
	c := front.Client()
	url := front.URL + "/v1/models/mnist:predict"

	for _, tc := range []struct {
		name    string
		headers []string
		want    int
	}{
		{"none", nil, http.StatusUnauthorized},
		{"wrong bearer", []string{"Authorization", "Bearer nope"}, http.StatusUnauthorized},
		{"wrong x-api-key", []string{"X-API-Key", "nope"}, http.StatusUnauthorized},
		{"basic auth is not a key", []string{"Authorization", "Basic k-one"}, http.StatusUnauthorized},
		{"bearer", []string{"Authorization", "Bearer k-one"}, http.StatusOK},
		{"bearer lower-case scheme", []string{"Authorization", "bearer k-two"}, http.StatusOK},
		{"x-api-key", []string{"X-API-Key", "k-two"}, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := call(t, c, "POST", url, []byte("{}"), tc.headers...)
			if a.code != tc.want {
				t.Fatalf("got %d %s, want %d", a.code, a.body, tc.want)
			}
			if tc.want == http.StatusUnauthorized {
				var e struct{ Error string }
				if err := json.Unmarshal(a.body, &e); err != nil || !strings.Contains(e.Error, "API key") {
					t.Errorf("401 body %s does not say what is missing", a.body)
				}
				return
			}
			if a.echo.Header.Get("Authorization") != "" || a.echo.Header.Get("X-API-Key") != "" {
				t.Errorf("the API key reached the replica: %v", a.echo.Header)
			}
		})
	}

	if a := call(t, c, "POST", front.URL+"/v2/models/open/infer", []byte("{}")); a.code != http.StatusOK {
		t.Errorf("open service: got %d %s", a.code, a.body)
	}
	if rp.hits.Load() != 3 {
		t.Errorf("replica got %d requests, want only the 3 with a right key", rp.hits.Load())
	}
}

func TestUnknownServiceAndPath(t *testing.T) {
	_, front := newFront(t, gateway.Config{})
	c := front.Client()
	for _, tc := range []struct{ path, mention string }{
		{"/v1/models/resnet:predict", `"resnet"`},
		{"/v2/models/resnet/infer", `"resnet"`},
		{"/services/resnet/x", `"resnet"`},
		{"/v1/models/", "no route"},
		{"/elsewhere", "no route"},
	} {
		a := call(t, c, "POST", front.URL+tc.path, []byte("{}"))
		var e struct{ Error string }
		if a.code != http.StatusNotFound || json.Unmarshal(a.body, &e) != nil || !strings.Contains(e.Error, tc.mention) {
			t.Errorf("%s: got %d %s; want 404 with a JSON error mentioning %s", tc.path, a.code, a.body, tc.mention)
		}
	}
}

func TestNoReplica(t *testing.T) {
	g, front := newFront(t, gateway.Config{})
	g.Update([]gateway.Route{route("mnist")})
	a := call(t, front.Client(), "POST", front.URL+"/v1/models/mnist:predict", []byte("{}"))
	var e struct{ Error string }
	if a.code != http.StatusServiceUnavailable || a.header.Get("Retry-After") == "" ||
		json.Unmarshal(a.body, &e) != nil || !strings.Contains(e.Error, "no ready replica") {
		t.Fatalf("got %d Retry-After=%q %s; want 503 with Retry-After saying there is no ready replica", a.code, a.header.Get("Retry-After"), a.body)
	}
	m := scrape(t, front)
	if !strings.Contains(m, `spotml_gateway_no_replica_total{service="mnist"} 1`) {
		t.Errorf("no-replica rejection not counted:\n%s", m)
	}
}

func TestHealth(t *testing.T) {
	rp := newReplica(t, "mnist-1")
	g, front := newFront(t, gateway.Config{})
	c := front.Client()
	get := func(path string) int { return call(t, c, "GET", front.URL+path, nil).code }

	if got := get("/healthz"); got != http.StatusOK {
		t.Errorf("/healthz = %d", got)
	}
	if got := get("/v2/health/live"); got != http.StatusOK {
		t.Errorf("live = %d", got)
	}
	for _, tc := range []struct {
		name   string
		routes []gateway.Route
		want   int
	}{
		{"no services", nil, http.StatusServiceUnavailable},
		{"no replicas", []gateway.Route{route("mnist")}, http.StatusServiceUnavailable},
		{"only draining", []gateway.Route{route("mnist", rp.draining())}, http.StatusServiceUnavailable},
		{"one ready", []gateway.Route{route("empty"), route("mnist", rp.replica())}, http.StatusOK},
	} {
		g.Update(tc.routes)
		if got := get("/v2/health/ready"); got != tc.want {
			t.Errorf("%s: ready = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestMetrics(t *testing.T) {
	ok, dead := newReplica(t, "mnist-1"), newReplica(t, "mnist-2")
	g, front := newFront(t, gateway.Config{})
	c := front.Client()
	url := front.URL + "/v1/models/mnist:predict"
	keyed := func(reps ...gateway.Replica) []gateway.Route {
		return []gateway.Route{{Service: "mnist", Keys: []string{"k"}, Replicas: reps}}
	}
	g.Update(keyed(ok.replica()))
	call(t, c, "POST", url, []byte("{}"), "X-API-Key", "k")
	call(t, c, "POST", url, []byte("{}")) // 401

	// With one request outstanding on mnist-1, the next goes to the idle
	// mnist-2, which is dead: it is retried on mnist-1.
	held := holdOne(t, c, url, ok, "X-API-Key", "k")
	g.Update(keyed(ok.replica(), dead.replica()))
	dead.kill()
	if a := call(t, c, "POST", url, []byte("{}"), "X-API-Key", "k"); a.code != http.StatusOK {
		t.Fatalf("retried request: got %d %s", a.code, a.body)
	}

	m := scrape(t, front)
	for _, want := range []string{
		`spotml_gateway_requests_total{code="200",replica="mnist-1",service="mnist"} 2`,
		`spotml_gateway_requests_total{code="401",replica="",service="mnist"} 1`,
		`spotml_gateway_replica_errors_total{reason="connect",replica="mnist-2",service="mnist"} 1`,
		`spotml_gateway_retries_total{service="mnist"} 1`,
		`spotml_gateway_in_flight_requests{replica="mnist-1",service="mnist"} 1`,
		`spotml_gateway_in_flight_requests{replica="mnist-2",service="mnist"} 0`,
		`spotml_gateway_request_duration_seconds_count{service="mnist"} 2`,
		`spotml_gateway_no_replica_total{service="mnist"} 0`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Log(m)
	}
	ok.releaseHeld()
	<-held
}

// scrape reads the gateway's /metrics.
func scrape(t *testing.T, front *httptest.Server) string {
	t.Helper()
	a := call(t, front.Client(), "GET", front.URL+"/metrics", nil)
	if a.code != http.StatusOK {
		t.Fatalf("/metrics: %d %v", a.code, a.err)
	}
	return string(a.body)
}

// metric returns the value of one series of /metrics ("" when absent).
func metric(t *testing.T, front *httptest.Server, series string) string {
	t.Helper()
	for line := range strings.Lines(scrape(t, front)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			return v
		}
	}
	return ""
}
