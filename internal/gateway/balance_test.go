package gateway_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/clock"
	"github.com/spotml/spotml/internal/gateway"
)

// With every request held, least-outstanding P2C fills replicas evenly.
func TestP2CSpreadsHeldLoad(t *testing.T) {
	reps := make([]*replica, 4)
	routes := make([]gateway.Replica, 4)
	for i := range reps {
		reps[i] = newReplica(t, fmt.Sprintf("mnist-%d", i))
		routes[i] = reps[i].replica()
	}
	g, front := newFront(t, gateway.Config{Rand: rand.NewPCG(1, 2)})
	g.Update([]gateway.Route{route("mnist", routes...)})
	c := front.Client()

	const n = 40
	answers := make([]<-chan answer, 0, n)
	for range n {
		ch := make(chan answer, 1)
		go func() {
			ch <- call(t, c, "POST", front.URL+"/v1/models/mnist:predict", []byte("{}"), "X-Test", "hold")
		}()
		answers = append(answers, ch)
		waitHeld(t, reps) // the next pick sees this one outstanding
	}
	for _, rp := range reps {
		// P2C keeps the most loaded replica within a couple of requests
		// of the mean (10); a random pick would not.
		if h := rp.hits.Load(); h < 8 || h > 12 {
			t.Errorf("%s holds %d of %d requests, want 8..12", rp.id, h, n)
		}
	}
	for _, rp := range reps {
		rp.releaseHeld()
	}
	for _, ch := range answers {
		if a := <-ch; a.code != http.StatusOK {
			t.Errorf("held request: %d %v", a.code, a.err)
		}
	}
}

// waitHeld waits for one more request held on any of reps.
func waitHeld(t *testing.T, reps []*replica) {
	t.Helper()
	cases := time.After(10 * time.Second)
	for {
		for _, rp := range reps {
			select {
			case <-rp.held:
				return
			default:
			}
		}
		select {
		case <-cases:
			t.Fatal("request not held by any replica")
		case <-time.After(time.Millisecond):
		}
	}
}

// Idle replicas tie on load; the random choice still spreads requests.
func TestP2CSpreadsSequentialLoad(t *testing.T) {
	a, b, c := newReplica(t, "a"), newReplica(t, "b"), newReplica(t, "c")
	g, front := newFront(t, gateway.Config{Rand: rand.NewPCG(3, 4)})
	g.Update([]gateway.Route{route("mnist", a.replica(), b.replica(), c.replica())})
	for range 300 {
		if r := call(t, front.Client(), "POST", front.URL+"/v2/models/mnist/infer", []byte("{}")); r.code != http.StatusOK {
			t.Fatalf("got %d %v", r.code, r.err)
		}
	}
	for _, rp := range []*replica{a, b, c} {
		if h := rp.hits.Load(); h < 70 {
			t.Errorf("%s got %d of 300 requests, want about 100", rp.id, h)
		}
	}
}

func TestP2CPrefersLessLoaded(t *testing.T) {
	busy, idle := newReplica(t, "busy"), newReplica(t, "idle")
	g, front := newFront(t, gateway.Config{Rand: rand.NewPCG(5, 6)})
	c := front.Client()
	url := front.URL + "/v1/models/mnist:predict"

	g.Update([]gateway.Route{route("mnist", busy.replica())})
	held := []<-chan answer{holdOne(t, c, url, busy), holdOne(t, c, url, busy)}
	g.Update([]gateway.Route{route("mnist", busy.replica(), idle.replica())})

	// Two replicas: both are always the two choices, so the idle one wins
	// every time while the other has requests outstanding.
	for range 20 {
		if a := call(t, c, "POST", url, []byte("{}")); a.echo.Replica != "idle" {
			t.Fatalf("request went to %q (%d), want the idle replica", a.echo.Replica, a.code)
		}
	}
	busy.releaseHeld()
	for _, ch := range held {
		if a := <-ch; a.code != http.StatusOK || a.echo.Replica != "busy" {
			t.Errorf("held request: %d from %q", a.code, a.echo.Replica)
		}
	}
}

func TestDrainingGetsNoNewRequests(t *testing.T) {
	old, fresh := newReplica(t, "mnist-1"), newReplica(t, "mnist-2")
	g, front := newFront(t, gateway.Config{})
	c := front.Client()
	url := front.URL + "/v2/models/mnist/infer"

	g.Update([]gateway.Route{route("mnist", old.replica())})
	held := holdOne(t, c, url, old)
	// The eviction notice arrives: mnist-1 drains, mnist-2 takes over.
	g.Update([]gateway.Route{route("mnist", old.draining(), fresh.replica())})

	for range 30 {
		if a := call(t, c, "POST", url, []byte("{}")); a.code != http.StatusOK || a.echo.Replica != "mnist-2" {
			t.Fatalf("new request went to %q (%d), want mnist-2", a.echo.Replica, a.code)
		}
	}
	st := g.Stats()[0].Replicas
	if st[0].ID != "mnist-1" || !st[0].Draining || st[0].InFlight != 1 {
		t.Errorf("stats of the draining replica: %+v; want draining with 1 in flight", st[0])
	}
	if old.hits.Load() != 1 {
		t.Errorf("draining replica got %d requests, want only the one it had", old.hits.Load())
	}
	// The request it already had still finishes there.
	old.releaseHeld()
	if a := <-held; a.code != http.StatusOK || a.echo.Replica != "mnist-1" {
		t.Errorf("in-flight request on the draining replica: %d from %q %v", a.code, a.echo.Replica, a.err)
	}
}

// When every replica drains, they still answer: better late than 503.
func TestAllDrainingStillServes(t *testing.T) {
	a, b := newReplica(t, "mnist-1"), newReplica(t, "mnist-2")
	g, front := newFront(t, gateway.Config{})
	g.Update([]gateway.Route{route("mnist", a.draining(), b.draining())})
	if r := call(t, front.Client(), "POST", front.URL+"/v1/models/mnist:predict", []byte("{}")); r.code != http.StatusOK {
		t.Fatalf("got %d %s, want an answer from a draining replica", r.code, r.body)
	}
}

// A replica that refused a connection is avoided for EjectFor, then tried
// again; each repeat doubles the ejection.
func TestEjection(t *testing.T) {
	dead, live := newReplica(t, "dead"), newReplica(t, "live")
	clk := clock.NewFake(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC))
	g, front := newFront(t, gateway.Config{Now: clk.Now, EjectFor: 5 * time.Second, EjectMax: 15 * time.Second})
	c := front.Client()
	url := front.URL + "/v1/models/mnist:predict"
	dead.kill()

	// Make the dead replica the first choice: the live one is busy.
	g.Update([]gateway.Route{route("mnist", live.replica())})
	held := holdOne(t, c, url, live)
	g.Update([]gateway.Route{route("mnist", live.replica(), dead.replica())})

	ejected := func() time.Duration {
		for _, r := range g.Stats()[0].Replicas {
			if r.ID == "dead" {
				return r.Ejected
			}
		}
		t.Fatal("no stats for the dead replica")
		return 0
	}
	for i, want := range []time.Duration{5 * time.Second, 10 * time.Second, 15 * time.Second, 15 * time.Second} {
		if a := call(t, c, "POST", url, []byte("{}")); a.code != http.StatusOK || a.echo.Replica != "live" {
			t.Fatalf("round %d: got %d from %q, want the retry's 200 from live", i, a.code, a.echo.Replica)
		}
		if got := ejected(); got != want {
			t.Errorf("round %d: ejected for %v, want %v", i, got, want)
		}
		// The control plane's next Update does not forgive it.
		g.Update([]gateway.Route{route("mnist", live.replica(), dead.replica())})
		if got := ejected(); got != want {
			t.Errorf("round %d: after Update, ejected for %v, want %v", i, got, want)
		}
		// While ejected, the idle dead replica is not chosen even though
		// the live one is busier.
		before := retries(t, front)
		call(t, c, "POST", url, []byte("{}"))
		if after := retries(t, front); after != before {
			t.Errorf("round %d: an ejected replica was tried", i)
		}
		clk.Advance(want)
	}
	live.releaseHeld()
	<-held
}

func retries(t *testing.T, front *httptest.Server) string {
	t.Helper()
	return metric(t, front, `spotml_gateway_retries_total{service="mnist"}`)
}
