package gateway_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/gateway"
)

// replica is a model server on loopback for the gateway to send to. What
// it does with a request is chosen by the request's X-Test header:
//
//	hold   wait until release (or the request is cancelled)
//	drop   close the connection without answering (node died mid-request)
//	break  send a header and part of the body, then cut the connection
//	sleep  sleep for X-Sleep (a Go duration), then answer
//	status answer with X-Status
//	stream send one server-sent event, wait until release, send another
//
// Otherwise it answers 200 with an echo of what it got.
type replica struct {
	id   string
	srv  *httptest.Server
	hits atomic.Int64
	// held gets a value for each held request when it arrives.
	held        chan struct{}
	release     chan struct{}
	releaseOnce sync.Once
	closeOnce   sync.Once
	// before, when set, runs first on every request (under test control).
	before func(w http.ResponseWriter, r *http.Request) bool
}

// echo is a replica's answer.
type echo struct {
	Replica string      `json:"replica"`
	Method  string      `json:"method"`
	Path    string      `json:"path"`
	RawPath string      `json:"rawPath"`
	Query   string      `json:"query"`
	Body    int         `json:"body"`
	Header  http.Header `json:"header"`
}

func newReplica(t testing.TB, id string) *replica {
	t.Helper()
	rp := &replica{id: id, held: make(chan struct{}, 1000), release: make(chan struct{})}
	rp.srv = httptest.NewServer(http.HandlerFunc(rp.serve))
	t.Cleanup(rp.close)
	return rp
}

func (rp *replica) serve(w http.ResponseWriter, r *http.Request) {
	rp.hits.Add(1)
	if rp.before != nil && !rp.before(w, r) {
		return
	}
	n, _ := io.Copy(io.Discard, r.Body)
	switch r.Header.Get("X-Test") {
	case "hold":
		rp.held <- struct{}{}
		select {
		case <-rp.release:
		case <-r.Context().Done():
			return
		}
	case "drop":
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	case "break":
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("partial answer"))
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	case "sleep":
		d, _ := time.ParseDuration(r.Header.Get("X-Sleep"))
		time.Sleep(d)
	case "status":
		code, _ := strconv.Atoi(r.Header.Get("X-Status"))
		w.WriteHeader(code)
		return
	case "stream":
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("data: first\n\n"))
		_ = http.NewResponseController(w).Flush()
		rp.held <- struct{}{}
		select {
		case <-rp.release:
			_, _ = w.Write([]byte("data: last\n\n"))
		case <-r.Context().Done():
		}
		return
	}
	b, _ := json.Marshal(echo{Replica: rp.id, Method: r.Method, Path: r.URL.Path, RawPath: r.URL.RawPath,
		Query: r.URL.RawQuery, Body: int(n), Header: r.Header})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	_, _ = w.Write(b)
}

func (rp *replica) addr() string { return rp.srv.Listener.Addr().String() }

func (rp *replica) replica() gateway.Replica {
	return gateway.Replica{ID: rp.id, Addr: rp.addr(), Version: 1, Node: "node-" + rp.id, Priority: "spot"}
}

func (rp *replica) draining() gateway.Replica {
	r := rp.replica()
	r.Draining = true
	return r
}

// releaseHeld lets every held request (and any later one) answer.
func (rp *replica) releaseHeld() { rp.releaseOnce.Do(func() { close(rp.release) }) }

// kill is an eviction without notice: the listener goes (connections are
// refused) and open connections are cut.
func (rp *replica) kill() {
	rp.srv.Listener.Close()
	rp.srv.CloseClientConnections()
}

func (rp *replica) close() {
	rp.closeOnce.Do(func() {
		rp.releaseHeld()
		rp.srv.CloseClientConnections()
		rp.srv.Close()
	})
}

func route(service string, reps ...gateway.Replica) gateway.Route {
	return gateway.Route{Service: service, Replicas: reps}
}

// newFront puts a gateway behind a loopback server.
func newFront(t testing.TB, cfg gateway.Config) (*gateway.Gateway, *httptest.Server) {
	t.Helper()
	g := gateway.New(cfg)
	front := httptest.NewServer(g)
	t.Cleanup(front.Close)
	return g, front
}

// answer is what a client got.
type answer struct {
	code   int
	header http.Header
	body   []byte
	echo   echo
	err    error
}

// call sends one request through the gateway. headers alternate name,
// value.
func call(t testing.TB, c *http.Client, method, url string, body []byte, headers ...string) answer {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	return do(c, req)
}

func do(c *http.Client, req *http.Request) answer {
	res, err := c.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer res.Body.Close()
	a := answer{code: res.StatusCode, header: res.Header}
	a.body, a.err = io.ReadAll(res.Body)
	if res.Header.Get("Content-Type") == "application/json" {
		_ = json.Unmarshal(a.body, &a.echo)
	}
	return a
}

// holdOne sends a request that rp holds until released, and returns once
// rp has it; the answer arrives on the channel. headers alternate name,
// value.
func holdOne(t testing.TB, c *http.Client, url string, rp *replica, headers ...string) <-chan answer {
	t.Helper()
	ch := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader([]byte(`{"instances":[1]}`)))
		req.Header.Set("X-Test", "hold")
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Add(headers[i], headers[i+1])
		}
		ch <- do(c, req)
	}()
	select {
	case <-rp.held:
	case a := <-ch:
		t.Fatalf("held request answered early: %d %s %v", a.code, a.body, a.err)
	case <-time.After(10 * time.Second):
		t.Fatal("held request did not reach the replica")
	}
	return ch
}
