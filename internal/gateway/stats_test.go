package gateway_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/clock"
	"github.com/spotml/spotml/internal/gateway"
)

func TestQPS(t *testing.T) {
	rp := newReplica(t, "mnist-1")
	clk := clock.NewFake(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC))
	g, front := newFront(t, gateway.Config{Now: clk.Now})
	g.Update([]gateway.Route{route("mnist", rp.replica()), route("idle", rp.replica()), route("down")})
	c := front.Client()
	send := func(service string, n int) {
		for range n {
			call(t, c, "POST", front.URL+"/v1/models/"+service+":predict", []byte("{}"))
		}
	}
	check := func(step string, window time.Duration, want map[string]float64) {
		t.Helper()
		got := g.QPS(window)
		if len(got) != len(want) {
			t.Errorf("%s: QPS(%v) = %v, want %v", step, window, got, want)
			return
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: QPS(%v) = %v, want %v", step, window, got, want)
				return
			}
		}
	}

	send("mnist", 10)
	send("down", 4) // no replica: 503, but still demand
	check("same second", 10*time.Second, map[string]float64{"mnist": 0, "idle": 0, "down": 0})

	clk.Advance(time.Second)
	check("1 s later", time.Second, map[string]float64{"mnist": 10, "idle": 0, "down": 4})
	check("1 s later", 10*time.Second, map[string]float64{"mnist": 1, "idle": 0, "down": 0.4})

	send("mnist", 30)
	clk.Advance(time.Second)
	check("2 s later", time.Second, map[string]float64{"mnist": 30, "idle": 0, "down": 0})
	check("2 s later", 2*time.Second, map[string]float64{"mnist": 20, "idle": 0, "down": 2})

	clk.Advance(9 * time.Second) // the first second slides out of 10 s
	check("11 s later", 10*time.Second, map[string]float64{"mnist": 3, "idle": 0, "down": 0})
	clk.Advance(time.Hour)
	check("an hour later", 10*time.Minute, map[string]float64{"mnist": 0, "idle": 0, "down": 0})
}

func TestStats(t *testing.T) {
	a, b := newReplica(t, "mnist-1"), newReplica(t, "mnist-2")
	clk := clock.NewFake(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC))
	g, front := newFront(t, gateway.Config{Now: clk.Now})
	c := front.Client()
	url := front.URL + "/v2/models/mnist/infer"

	g.Update([]gateway.Route{route("mnist", a.replica())})
	for range 8 {
		call(t, c, "POST", url, []byte("{}"), "X-Test", "sleep", "X-Sleep", "20ms")
	}
	call(t, c, "POST", url, []byte("{}"), "X-Test", "status", "X-Status", "500")
	call(t, c, "POST", url, []byte("{}"), "X-Test", "status", "X-Status", "404")
	held := holdOne(t, c, url, a)
	// mnist-1 keeps its figures through the Update that adds mnist-2.
	g.Update([]gateway.Route{route("mnist", a.replica(), b.draining())})

	st := g.Stats()
	if len(st) != 1 {
		t.Fatalf("stats for %d services, want 1", len(st))
	}
	s := st[0]
	if s.Service != "mnist" || s.InFlight != 1 || s.Requests != 10 || s.Errors != 1 {
		t.Errorf("service stats %+v; want 1 in flight, 10 requests, 1 error", s)
	}
	// p50 of eight 20 ms requests and two quick ones: about 20 ms.
	if s.P50 < 15*time.Millisecond || s.P50 > 40*time.Millisecond || s.P99 < s.P50 {
		t.Errorf("p50 %v, p99 %v; want p50 about 20 ms", s.P50, s.P99)
	}
	if len(s.Replicas) != 2 {
		t.Fatalf("%d replicas, want 2", len(s.Replicas))
	}
	r1, r2 := s.Replicas[0], s.Replicas[1]
	if r1.ID != "mnist-1" || r1.Addr != a.addr() || r1.Node != "node-mnist-1" || r1.Priority != "spot" || r1.Version != 1 ||
		r1.InFlight != 1 || r1.Requests != 10 || r1.Errors != 1 || r1.P50 == 0 {
		t.Errorf("mnist-1 stats %+v", r1)
	}
	if r2.ID != "mnist-2" || !r2.Draining || r2.Requests != 0 {
		t.Errorf("mnist-2 stats %+v", r2)
	}

	a.releaseHeld()
	if r := <-held; r.code != http.StatusOK {
		t.Fatalf("held: %d", r.code)
	}
	clk.Advance(61 * time.Second) // the minute has passed
	if s := g.Stats()[0]; s.Requests != 0 || s.P99 != 0 || s.Replicas[0].Requests != 0 {
		t.Errorf("a minute later: %+v, want the window empty", s)
	}
}

// TestInFlight: the requests outstanding are integrated over time, not
// sampled: two requests held for two seconds average one over four
// seconds, though none is outstanding when the gateway reads.
func TestInFlight(t *testing.T) {
	rp := newReplica(t, "mnist-1")
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	clk := clock.NewFake(t0)
	g, front := newFront(t, gateway.Config{Now: clk.Now})
	g.Update([]gateway.Route{route("mnist", rp.replica()), route("idle", rp.replica())})
	c := front.Client()
	url := front.URL + "/v2/models/mnist/infer"

	clk.Advance(500 * time.Millisecond)
	a, b := holdOne(t, c, url, rp), holdOne(t, c, url, rp)
	clk.Advance(time.Second)
	if got := g.InFlight(time.Second)["mnist"]; got != (gateway.InFlight{Avg: 1, Max: 2}) {
		t.Errorf("at 1.5 s, over the first second: %+v, want avg 1 (2 for its second half), max 2", got)
	}
	clk.Advance(time.Second) // 2.5 s
	rp.releaseHeld()
	for _, ch := range []<-chan answer{a, b} {
		if ans := <-ch; ans.err != nil || ans.code != http.StatusOK {
			t.Fatalf("held request: %d %v", ans.code, ans.err)
		}
	}
	clk.Advance(1500 * time.Millisecond) // 4 s
	for _, tc := range []struct {
		window time.Duration
		want   gateway.InFlight
	}{
		{4 * time.Second, gateway.InFlight{Avg: 1, Max: 2}},   // 2 requests × 2 s / 4 s
		{2 * time.Second, gateway.InFlight{Avg: 0.5, Max: 2}}, // 2 × 0.5 s / 2 s
		{time.Second, gateway.InFlight{}},                     // nothing in the last second
	} {
		got := g.InFlight(tc.window)
		if got["mnist"] != tc.want || got["idle"] != (gateway.InFlight{}) || len(got) != 2 {
			t.Errorf("InFlight(%v) = %+v, want mnist %+v and idle zero", tc.window, got, tc.want)
		}
	}
	// A request held across a read counts up to the read, and goes on.
	rp2 := newReplica(t, "mnist-2")
	g.Update([]gateway.Route{route("mnist", rp2.replica())})
	held := holdOne(t, c, url, rp2)
	clk.Advance(3 * time.Second) // 7 s
	if got := g.InFlight(2 * time.Second)["mnist"]; got != (gateway.InFlight{Avg: 1, Max: 1}) {
		t.Errorf("held from 4 s, at 7 s over 2 s: %+v, want avg 1, max 1", got)
	}
	clk.Advance(time.Hour)
	if got := g.InFlight(10 * time.Minute)["mnist"]; got != (gateway.InFlight{Avg: 1, Max: 1}) {
		t.Errorf("held for an hour, over 10 minutes: %+v, want avg 1, max 1", got)
	}
	rp2.releaseHeld()
	<-held
}
