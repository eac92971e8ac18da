package gateway_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/gateway"
)

// firstChoice routes service to spare and holds a request there, then adds
// first: with one request outstanding on spare, the next request goes to
// first. The returned func lets the held request finish.
func firstChoice(t *testing.T, g *gateway.Gateway, front string, c *http.Client, first, spare *replica, cfg ...func(*gateway.Route)) func() {
	t.Helper()
	url := front + "/v1/models/mnist:predict"
	rt := route("mnist", spare.replica())
	for _, f := range cfg {
		f(&rt)
	}
	g.Update([]gateway.Route{rt})
	held := holdOne(t, c, url, spare)
	rt.Replicas = append(rt.Replicas, first.replica())
	g.Update([]gateway.Route{rt})
	return func() {
		spare.releaseHeld()
		if a := <-held; a.code != http.StatusOK {
			t.Errorf("held request: %d %v", a.code, a.err)
		}
	}
}

func TestRetryOnAnotherReplica(t *testing.T) {
	for _, tc := range []struct {
		name string
		// fail makes the first replica fail; header is sent with the request.
		fail   func(*replica)
		header []string
	}{
		{name: "connection refused", fail: (*replica).kill},
		{name: "connection dropped before the answer", fail: func(*replica) {}, header: []string{"X-Test", "drop"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, spare := newReplica(t, "first"), newReplica(t, "spare")
			g, front := newFront(t, gateway.Config{})
			c := front.Client()
			done := firstChoice(t, g, front.URL, c, first, spare)
			defer done()
			tc.fail(first)

			// The spare answers "drop" normally only if the header is
			// not acted on there: it is, so drop goes to the first only.
			spare.before = func(w http.ResponseWriter, r *http.Request) bool {
				r.Header.Del("X-Test")
				return true
			}
			a := call(t, c, "POST", front.URL+"/v1/models/mnist:predict", []byte(`{"instances":[1]}`), tc.header...)
			if a.code != http.StatusOK || a.echo.Replica != "spare" || a.echo.Body != len(`{"instances":[1]}`) {
				t.Fatalf("got %d from %q (body %d) %s %v; want 200 from the spare with the whole body", a.code, a.echo.Replica, a.echo.Body, a.body, a.err)
			}
			if got := retries(t, front); got != "1" {
				t.Errorf("retries = %q, want 1", got)
			}
		})
	}
}

// A replica that answers 502/503 because it is going away (draining or
// removed by the time it answers) has the request retried; a 503 from a
// replica that stays is the service's own answer and is passed on.
func TestRetryOn503FromVanishingReplica(t *testing.T) {
	first, spare := newReplica(t, "first"), newReplica(t, "spare")
	g, front := newFront(t, gateway.Config{})
	c := front.Client()
	done := firstChoice(t, g, front.URL, c, first, spare)
	defer done()
	url := front.URL + "/v1/models/mnist:predict"

	// Overloaded but staying: its 503 goes to the client.
	first.before = func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		return false
	}
	if a := call(t, c, "POST", url, []byte("{}")); a.code != http.StatusServiceUnavailable || a.header.Get("Retry-After") != "1" {
		t.Errorf("503 from a replica that stays: got %d, want it passed on", a.code)
	}

	// The eviction notice arrives while it works on the request; it
	// answers 503 as its server shuts down.
	first.before = func(w http.ResponseWriter, r *http.Request) bool {
		g.Update([]gateway.Route{route("mnist", spare.replica(), first.draining())})
		w.WriteHeader(http.StatusServiceUnavailable)
		return false
	}
	if a := call(t, c, "POST", url, []byte("{}")); a.code != http.StatusOK || a.echo.Replica != "spare" {
		t.Errorf("503 from a draining replica: got %d from %q, want 200 from the spare", a.code, a.echo.Replica)
	}
}

// Once the answer's first bytes reached the client, a failure cannot be
// retried: the client sees a broken answer, and no other replica gets the
// request.
func TestNoRetryAfterAnswerStarted(t *testing.T) {
	first, spare := newReplica(t, "first"), newReplica(t, "spare")
	g, front := newFront(t, gateway.Config{})
	c := front.Client()
	done := firstChoice(t, g, front.URL, c, first, spare)
	defer done()

	before := spare.hits.Load()
	a := call(t, c, "POST", front.URL+"/v1/models/mnist:predict", []byte("{}"), "X-Test", "break")
	if a.err == nil {
		t.Errorf("client got a whole answer (%d %q) from a replica that broke off", a.code, a.body)
	}
	if a.code != http.StatusOK || !bytes.HasPrefix([]byte("partial answer"), a.body) {
		t.Errorf("got %d %q, want the replica's header and the bytes it sent", a.code, a.body)
	}
	if first.hits.Load() != 1 || spare.hits.Load() != before {
		t.Errorf("first got %d, spare %d more requests; want 1 and 0", first.hits.Load(), spare.hits.Load()-before)
	}
	if got := metric(t, front, `spotml_gateway_replica_errors_total{reason="broken",replica="first",service="mnist"}`); got != "1" {
		t.Errorf("broken answers = %q, want 1", got)
	}
}

// A body over MaxRetryBody is streamed, not buffered, so it cannot be
// sent again: a request whose replica refuses fails instead of retrying.
func TestOversizedBodyNotRetried(t *testing.T) {
	const limit = 1024
	for _, tc := range []struct {
		name    string
		size    int
		chunked bool // unknown length: buffered until it passes the limit
		want    int
	}{
		{"small body is retried", limit, false, http.StatusOK},
		{"small chunked body is retried", limit, true, http.StatusOK},
		{"large body", limit + 1, false, http.StatusBadGateway},
		{"large chunked body", 4 * limit, true, http.StatusBadGateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, spare := newReplica(t, "first"), newReplica(t, "spare")
			g, front := newFront(t, gateway.Config{MaxRetryBody: limit})
			c := front.Client()
			done := firstChoice(t, g, front.URL, c, first, spare)
			defer done()
			first.kill()

			before := spare.hits.Load()
			req, _ := http.NewRequest("POST", front.URL+"/v1/models/mnist:predict", bytes.NewReader(make([]byte, tc.size)))
			if tc.chunked {
				req.Body = io.NopCloser(req.Body) // hides the length
				req.ContentLength = -1
			}
			a := do(c, req)
			if a.code != tc.want {
				t.Fatalf("got %d %s, want %d", a.code, a.body, tc.want)
			}
			retried := spare.hits.Load() - before
			if tc.want == http.StatusOK && (retried != 1 || a.echo.Body != tc.size) {
				t.Errorf("spare got %d requests, body %d; want the retry with all %d bytes", retried, a.echo.Body, tc.size)
			}
			if tc.want != http.StatusOK {
				if retried != 0 {
					t.Errorf("an oversized request was retried")
				}
				if !strings.Contains(string(a.body), "not retried") {
					t.Errorf("502 body %s does not say why there was no retry", a.body)
				}
			}
		})
	}
}

// A body over the limit still reaches a healthy replica whole.
func TestLargeBodyStreamed(t *testing.T) {
	rp := newReplica(t, "mnist-1")
	g, front := newFront(t, gateway.Config{MaxRetryBody: 1024})
	g.Update([]gateway.Route{route("mnist", rp.replica())})
	for _, size := range []int{1 << 20, 5<<20 + 7} {
		req, _ := http.NewRequest("POST", front.URL+"/v2/models/mnist/infer", io.NopCloser(bytes.NewReader(make([]byte, size))))
		if a := do(front.Client(), req); a.code != http.StatusOK || a.echo.Body != size {
			t.Errorf("%d bytes: got %d, replica got %d bytes", size, a.code, a.echo.Body)
		}
	}
}

func TestRetriesRunOut(t *testing.T) {
	t.Run("MaxRetries", func(t *testing.T) {
		reps := []gateway.Replica{}
		for i := range 5 {
			rp := newReplica(t, fmt.Sprint("dead-", i))
			rp.kill()
			reps = append(reps, rp.replica())
		}
		g, front := newFront(t, gateway.Config{MaxRetries: 2})
		g.Update([]gateway.Route{route("mnist", reps...)})
		a := call(t, front.Client(), "POST", front.URL+"/v1/models/mnist:predict", []byte("{}"))
		if a.code != http.StatusBadGateway || !strings.Contains(string(a.body), "gave up after 3 attempts") {
			t.Errorf("got %d %s, want 502 after 3 attempts", a.code, a.body)
		}
	})
	t.Run("no other replica", func(t *testing.T) {
		dead := newReplica(t, "dead")
		dead.kill()
		g, front := newFront(t, gateway.Config{})
		g.Update([]gateway.Route{route("mnist", dead.replica())})
		a := call(t, front.Client(), "POST", front.URL+"/v1/models/mnist:predict", []byte("{}"))
		if a.code != http.StatusServiceUnavailable || a.header.Get("Retry-After") == "" || !strings.Contains(string(a.body), "no other replica is ready") {
			t.Errorf("got %d %s, want 503 with Retry-After", a.code, a.body)
		}
	})
}

// A replica too slow for the per-attempt timeout gets 504, and the request
// is not sent elsewhere: the replica may still be working on it.
func TestAttemptTimeout(t *testing.T) {
	slow, spare := newReplica(t, "slow"), newReplica(t, "spare")
	g, front := newFront(t, gateway.Config{Timeout: 100 * time.Millisecond})
	// The draining spare is second choice: it gets the request only if
	// the gateway retries.
	g.Update([]gateway.Route{route("mnist", slow.replica(), spare.draining())})
	a := call(t, front.Client(), "POST", front.URL+"/v1/models/mnist:predict", []byte("{}"), "X-Test", "sleep", "X-Sleep", "300ms")
	if a.code != http.StatusGatewayTimeout {
		t.Errorf("got %d %s, want 504", a.code, a.body)
	}
	if slow.hits.Load() != 1 || spare.hits.Load() != 0 {
		t.Errorf("slow got %d, spare %d requests; want 1 and 0 (no retry)", slow.hits.Load(), spare.hits.Load())
	}
}

// The client going away ends the attempt at once.
func TestClientCancel(t *testing.T) {
	rp := newReplica(t, "mnist-1")
	g, front := newFront(t, gateway.Config{})
	g.Update([]gateway.Route{route("mnist", rp.replica())})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", front.URL+"/v1/models/mnist:predict", bytes.NewReader([]byte("{}")))
	req.Header.Set("X-Test", "hold")
	errc := make(chan error, 1)
	go func() { _, err := front.Client().Do(req); errc <- err }()
	<-rp.held
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("cancelled request succeeded")
	}
	waitIdle(t, g) // the attempt does not outlive its client
}

// A streamed answer reaches the client as it comes; a client that leaves
// in the middle is not the replica's error.
func TestStreamingAnswer(t *testing.T) {
	for _, leave := range []bool{false, true} {
		t.Run(fmt.Sprint("client leaves=", leave), func(t *testing.T) {
			rp := newReplica(t, "llm-1")
			g, front := newFront(t, gateway.Config{})
			g.Update([]gateway.Route{route("llm", rp.replica())})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", front.URL+"/services/llm/generate", strings.NewReader("{}"))
			req.Header.Set("X-Test", "stream")
			res, err := front.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			first := make([]byte, len("data: first\n\n"))
			if _, err := io.ReadFull(res.Body, first); err != nil || string(first) != "data: first\n\n" {
				t.Fatalf("first event: %q %v", first, err)
			}
			<-rp.held // the replica has not finished: the event was flushed
			if leave {
				cancel()
				waitIdle(t, g)
				m := scrape(t, front)
				if strings.Contains(m, "spotml_gateway_replica_errors_total") {
					t.Errorf("a client leaving counted as a replica error:\n%s", m)
				}
				if !strings.Contains(m, `spotml_gateway_requests_total{code="499",replica="llm-1",service="llm"} 1`) {
					t.Errorf("a client leaving not counted as 499:\n%s", m)
				}
				return
			}
			rp.releaseHeld()
			rest, err := io.ReadAll(res.Body)
			if err != nil || string(rest) != "data: last\n\n" {
				t.Errorf("rest of the stream: %q %v", rest, err)
			}
		})
	}
}

// waitIdle waits until no request is outstanding at any replica.
func waitIdle(t *testing.T, g *gateway.Gateway) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		busy := false
		for _, s := range g.Stats() {
			busy = busy || s.InFlight != 0
		}
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("requests still outstanding")
		}
		time.Sleep(time.Millisecond)
	}
}

// Replicas come and go under a steady stream of requests — new ones are
// added, old ones drained or killed without notice — and every request
// still gets its 200.
func TestChurnLosesNoRequest(t *testing.T) {
	g, front := newFront(t, gateway.Config{})
	c := front.Client()
	url := front.URL + "/v1/models/mnist:predict"

	var (
		live  []*replica // serving
		drain []*replica // told to drain
		next  int
	)
	publish := func() {
		var reps []gateway.Replica
		for _, rp := range live {
			reps = append(reps, rp.replica())
		}
		for _, rp := range drain {
			reps = append(reps, rp.draining())
		}
		g.Update([]gateway.Route{route("mnist", reps...)})
	}
	add := func() {
		next++
		live = append(live, newReplica(t, fmt.Sprint("mnist-", next)))
	}
	for range 3 {
		add()
	}
	publish()

	// Churn is paced by completed requests, not by the clock, so that
	// every round overlaps traffic however slow the machine is.
	ctx, stop := context.WithCancel(context.Background())
	var sent, failed, slowest atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				body := fmt.Appendf(nil, `{"instances":[%d,%d]}`, w, i)
				t0 := time.Now()
				a := call(t, c, "POST", url, body, "X-Test", "sleep", "X-Sleep", "2ms")
				for d := int64(time.Since(t0)); ; {
					if m := slowest.Load(); d <= m || slowest.CompareAndSwap(m, d) {
						break
					}
				}
				sent.Add(1)
				if a.code != http.StatusOK || a.echo.Body != len(body) {
					failed.Add(1)
					t.Errorf("request lost: %d %s %v", a.code, a.body, a.err)
				}
			}
		})
	}
	progress := func(n int64) {
		want, deadline := sent.Load()+n, time.Now().Add(30*time.Second)
		for sent.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("stuck: %d requests done", sent.Load())
			}
			time.Sleep(time.Millisecond)
		}
	}

	const rounds = 16
	for round := range rounds {
		progress(25)
		old := live[0]
		live = live[1:]
		add()
		if round%2 == 0 {
			// Eviction without notice: gone before the table knows.
			old.kill()
			publish()
		} else {
			// With notice: drain, let in-flight requests finish, stop.
			drain = append(drain, old)
			publish()
			progress(8)
			drain = drain[1:]
			publish()
			old.close()
		}
	}
	progress(25)
	stop()
	wg.Wait()
	t.Logf("%d requests, %d failed, %s retried, %d replicas started, slowest %v",
		sent.Load(), failed.Load(), retries(t, front), next, time.Duration(slowest.Load()))
}

// A kept-alive connection that the replica closed while it sat idle is not
// the replica's failure: the request goes again on a new connection to the
// same replica, with no retry, error or ejection counted. Without a body to
// send again (streamed) the same holds when the replica closed it before.
func TestStaleKeepAliveConnection(t *testing.T) {
	rp := newReplica(t, "only")
	g, front := newFront(t, gateway.Config{MaxRetryBody: 16})
	g.Update([]gateway.Route{route("mnist", rp.replica())})
	c := front.Client()
	url := front.URL + "/v1/models/mnist:predict"
	for i, body := range [][]byte{[]byte(`{}`), []byte(`{}`), []byte(`{"instances":[1]}`)} {
		if i > 0 {
			rp.srv.CloseClientConnections() // the gateway's idle ones too
		}
		a := call(t, c, "POST", url, body)
		if a.code != http.StatusOK || a.echo.Replica != "only" || a.echo.Body != len(body) {
			t.Fatalf("request %d after the replica closed its connections: %d %s %v", i, a.code, a.body, a.err)
		}
	}
	m := scrape(t, front)
	if strings.Contains(m, "spotml_gateway_replica_errors_total") || retries(t, front) != "0" {
		t.Errorf("a closed idle connection counted against the replica:\n%s", m)
	}
	if st := g.Stats(); st[0].Replicas[0].Ejected != 0 {
		t.Errorf("replica ejected for %v", st[0].Replicas[0].Ejected)
	}
}

// A replica that drops a request on a kept-alive connection gets it once
// more on a new connection (the first may have been closed while idle),
// not once per idle connection; then the request goes to another replica.
func TestDroppedRequestNotRepeated(t *testing.T) {
	first, spare := newReplica(t, "first"), newReplica(t, "spare")
	g, front := newFront(t, gateway.Config{})
	c := front.Client()
	url := front.URL + "/v1/models/mnist:predict"
	g.Update([]gateway.Route{route("mnist", first.replica())})
	// Several idle connections to the first replica.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { call(t, c, "POST", url, []byte(`{}`)) })
	}
	wg.Wait()
	g.Update([]gateway.Route{route("mnist", first.replica(), spare.replica())})
	before := first.hits.Load()
	spare.before = func(w http.ResponseWriter, r *http.Request) bool {
		r.Header.Del("X-Test")
		return true
	}
	for range 20 { // until P2C has picked the first replica
		a := call(t, c, "POST", url, []byte(`{}`), "X-Test", "drop")
		if a.code != http.StatusOK || a.echo.Replica != "spare" {
			t.Fatalf("got %d from %q %s", a.code, a.echo.Replica, a.body)
		}
		if first.hits.Load() > before {
			break
		}
	}
	if n := first.hits.Load() - before; n != 2 {
		t.Errorf("the dropping replica got the request %d times, want 2 (a kept-alive connection, then a new one)", n)
	}
}
