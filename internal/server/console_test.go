package server_test

import (
	"bufio"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/gateway"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/store"
)

// The console's pages need no token (the token is typed into them); the
// API behind them keeps requiring it.
func TestConsolePagesOpenAPIClosed(t *testing.T) {
	a := newAPI(t)
	r := a.do(http.MethodGet, "/", "", nil)
	if r.code != http.StatusOK || !strings.Contains(r.header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", r.code, r.header.Get("Content-Type"))
	}
	for _, p := range []string{"/info", "/watch", "/cost/history", "/services/x/history", "/gateway/v2/models/x/infer"} {
		if r := a.do(http.MethodGet, api.Prefix+p, "", nil); r.code != http.StatusUnauthorized {
			t.Errorf("GET %s without a token: %s, want 401", p, r)
		}
	}
}

func TestInfo(t *testing.T) {
	a := newAPI(t, func(c *server.Config) { c.GatewayURL = "http://127.0.0.1:8000" })
	info := decode[api.Info](t, a.admin(http.MethodGet, "/info", nil, http.StatusOK))
	if info.GatewayURL != "http://127.0.0.1:8000" || info.Evict || info.Predict || !info.Time.Equal(t0) {
		t.Errorf("info = %+v", info)
	}
}

// sseEvent is one server-sent event.
type sseEvent struct{ name, data string }

// watch opens the watch stream and returns its events as they come.
func (a *apiServer) watch() <-chan sseEvent {
	a.t.Helper()
	req, _ := http.NewRequestWithContext(a.ctx, http.MethodGet, a.url+api.Prefix+"/watch", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		a.t.Fatalf("watch: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	ch := make(chan sseEvent, 100)
	go func() {
		defer resp.Body.Close()
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<24)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.name != "" {
					ch <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "event: "):
				ev.name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				ev.data += line[len("data: "):]
			}
		}
	}()
	return ch
}

// next returns the next event of that name, skipping others.
func next(t *testing.T, ch <-chan sseEvent, name string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("watch stream ended waiting for %s", name)
			}
			if ev.name == name {
				return ev.data
			}
		case <-timeout:
			t.Fatalf("no %s event in 10s", name)
		}
	}
}

// The watch stream sends every view at once, then only what changed;
// events only once each.
func TestWatch(t *testing.T) {
	a := newAPI(t)
	if err := a.st.AddEvent(a.ctx, "Created", "pool/old", "Applied", ""); err != nil {
		t.Fatal(err)
	}
	ch := a.watch()
	var first []api.Event
	if err := json.Unmarshal([]byte(next(t, ch, "events")), &first); err != nil || len(first) != 1 || first[0].Object != "pool/old" {
		t.Fatalf("first events = %+v, %v", first, err)
	}
	a.admin(http.MethodPost, "/apply", []byte(`apiVersion: spotml/v1
kind: Pool
metadata: {name: spot-a}
spec: {provider: local, priority: spot, instanceType: local-small, min: 0, max: 2}
`), http.StatusOK)
	var fl api.Fleet
	for fl.Pools == nil {
		if err := json.Unmarshal([]byte(next(t, ch, "fleet")), &fl); err != nil {
			t.Fatal(err)
		}
	}
	if len(fl.Pools) != 1 || fl.Pools[0].Spec.Metadata.Name != "spot-a" || !fl.Time.Equal(t0) {
		t.Errorf("fleet after apply = %+v", fl)
	}
	var evs []api.Event
	if err := json.Unmarshal([]byte(next(t, ch, "events")), &evs); err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.ID <= first[0].ID {
			t.Errorf("event %d sent again: %+v", e.ID, e)
		}
	}
	if len(evs) == 0 || !strings.HasPrefix(evs[0].Object, "pool/spot-a") {
		t.Errorf("events after apply = %+v", evs)
	}
}

// The stream's first burst has every view.
func TestWatchFirstBurst(t *testing.T) {
	a := newAPI(t)
	ch := a.watch()
	seen := map[string]bool{}
	for len(seen) < 4 {
		select {
		case ev := <-ch:
			seen[ev.name] = true
			if !json.Valid([]byte(ev.data)) {
				t.Errorf("%s: data is not JSON: %s", ev.name, ev.data)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("first burst had only %v", seen)
		}
	}
	for _, name := range []string{"fleet", "jobs", "services", "cost"} {
		if !seen[name] {
			t.Errorf("no %s in the first burst: %v", name, seen)
		}
	}
}

// The console's model tester reaches the gateway as a client would: same
// path, body and content type, the service key passed on, the admin token
// not.
func TestGatewayPassThrough(t *testing.T) {
	type seen struct {
		path, ctype, auth, body string
	}
	got := make(chan seen, 1)
	replica := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.URL.Path, r.Header.Get("Content-Type"), r.Header.Get("Authorization") + r.Header.Get("X-API-Key"), string(b)}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"outputs":[]}`)
	}))
	defer replica.Close()
	gw := gateway.New(gateway.Config{})
	gw.Update([]gateway.Route{{Service: "m", Keys: []string{"k1"}, Replicas: []gateway.Replica{{ID: "m-1", Addr: strings.TrimPrefix(replica.URL, "http://")}}}})
	a := newAPI(t, func(c *server.Config) { c.Gateway = gw })
	if info := decode[api.Info](t, a.admin(http.MethodGet, "/info", nil, http.StatusOK)); !info.Predict {
		t.Errorf("info.predict false with a gateway")
	}

	// Without the service's key the gateway refuses, as it would a client.
	r := a.admin(http.MethodPost, "/gateway/v2/models/m/infer", map[string]any{"inputs": []any{}}, http.StatusUnauthorized)
	if !strings.Contains(string(r.body), "API key") {
		t.Errorf("no key: %s", r)
	}
	req, _ := http.NewRequest(http.MethodPost, a.url+api.Prefix+"/gateway/v2/models/m/infer", strings.NewReader(`{"inputs":[1]}`))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("X-API-Key", "k1")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != `{"outputs":[]}` {
		t.Fatalf("through the gateway: %d %s", resp.StatusCode, body)
	}
	s := <-got
	// The gateway does not pass the key it checked on to the replica.
	if s.path != "/v2/models/m/infer" || s.ctype != "application/json" || s.auth != "" || s.body != `{"inputs":[1]}` {
		t.Errorf("replica saw %+v", s)
	}
}

func TestGatewayPassThroughWithoutGateway(t *testing.T) {
	a := newAPI(t)
	r := a.admin(http.MethodPost, "/gateway/v2/models/m/infer", map[string]any{}, http.StatusNotImplemented)
	if msg := r.errorText(t); !strings.Contains(msg, "--gateway-addr") {
		t.Errorf("error %q does not say how to get a gateway", msg)
	}
}

// A service's history is the control plane's samples over the window.
func TestServiceHistory(t *testing.T) {
	a := newAPI(t)
	a.admin(http.MethodPost, "/apply", []byte(poolYAML+`---
apiVersion: spotml/v1
kind: Service
metadata: {name: m}
spec:
  model: {uri: models/m.onnx}
  replicas: {min: 1, max: 1}
  placement: {tier: dev}
  resources: {cpu: 1, memory: 256Mi}
`), http.StatusOK)
	for i := range 3 {
		if err := a.st.AddServiceSamples(a.ctx, map[string]store.ServiceSample{"m": {Time: t0.Add(-time.Duration(50-10*i) * time.Minute), QPS: float64(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	h := decode[api.ServiceHistory](t, a.admin(http.MethodGet, "/services/m/history?window=45m", nil, http.StatusOK))
	if h.Service != "m" || len(h.Samples) != 2 || h.Samples[0].QPS != 1 || h.Samples[1].QPS != 2 {
		t.Errorf("history over 45m = %+v", h)
	}
	if r := a.admin(http.MethodGet, "/services/m/history?window=2d", nil, http.StatusBadRequest); !strings.Contains(r.errorText(t), "window") {
		t.Errorf("bad window: %s", r)
	}
	a.admin(http.MethodGet, "/services/nope/history", nil, http.StatusNotFound)
}

// Cost history is cumulative: its last point is what GET /cost says.
func TestCostHistory(t *testing.T) {
	a := newAPI(t)
	a.admin(http.MethodPost, "/apply", []byte(strings.Replace(poolYAML, "max: 2", "min: 1\n  max: 2", 1)), http.StatusOK)
	a.clock.Advance(time.Second)
	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	a.clock.Advance(time.Hour)
	h := decode[cost.Timeline](t, a.admin(http.MethodGet, "/cost/history?points=5", nil, http.StatusOK))
	sum := decode[cost.Summary](t, a.admin(http.MethodGet, "/cost", nil, http.StatusOK))
	if len(h.Times) != 5 || len(h.Total.Spent) != 5 || sum.Spent == 0 {
		t.Fatalf("history = %+v, cost = %+v", h, sum)
	}
	if got := h.Total.Spent[4]; math.Abs(got-sum.Spent) > 1e-9 {
		t.Errorf("last point %g, GET /cost spent %g", got, sum.Spent)
	}
	if h.Total.Spent[0] != 0 || h.Total.Spent[2] >= h.Total.Spent[4] {
		t.Errorf("spent over time %v is not cumulative from 0", h.Total.Spent)
	}
	if r := a.admin(http.MethodGet, "/cost/history?points=1", nil, http.StatusBadRequest); !strings.Contains(r.errorText(t), "points") {
		t.Errorf("bad points: %s", r)
	}
}

// Shutting the server down ends the watch streams, which would otherwise
// keep a graceful shutdown waiting.
func TestWatchEndsOnShutdown(t *testing.T) {
	a := newAPI(t)
	ch := a.watch()
	next(t, ch, "cost")
	a.handler.CloseStreams()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("the watch stream is still open 5s after CloseStreams")
		}
	}
}
