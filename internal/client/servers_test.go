package client_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/client"
)

// instance is one control-plane instance of a test: it answers with its
// name, or with status when status is set, and counts its calls.
type instance struct {
	name   string
	status atomic.Int32
	calls  atomic.Int32
	srv    *httptest.Server
}

func newInstance(t *testing.T, name string) *instance {
	in := &instance{name: name}
	in.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in.calls.Add(1)
		if c := in.status.Load(); c != 0 {
			w.WriteHeader(int(c))
			io.WriteString(w, `{"error":"`+in.name+` says no"}`)
			return
		}
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, in.name+":"+string(b))
	}))
	t.Cleanup(in.srv.Close)
	return in
}

// deadURL is a loopback address nothing listens on (connection refused).
func deadURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	ln.Close()
	return u
}

func call(t *testing.T, c *client.Client) (string, error) {
	t.Helper()
	var out []byte
	err := c.Do(t.Context(), http.MethodPost, "/x", []byte("ping"), &out)
	return string(out), err
}

// TestFailoverToNextServer: a refused connection, a 5xx of a dying
// instance and a hung instance each send the call (body and all) to the
// next server, and the client then sticks to the one that answered; a
// 4xx is an answer, not a reason to move.
func TestFailoverToNextServer(t *testing.T) {
	a, b := newInstance(t, "a"), newInstance(t, "b")

	t.Run("refused", func(t *testing.T) {
		c := client.New(deadURL(t)+","+a.srv.URL, "tok")
		got, err := call(t, c)
		if err != nil || got != "a:ping" {
			t.Fatalf("call = %q, %v; want a:ping", got, err)
		}
		if s := c.Servers(); s[0] != a.srv.URL {
			t.Errorf("servers after failover = %q, want %s first", s, a.srv.URL)
		}
	})

	t.Run("5xx then sticky", func(t *testing.T) {
		a.calls.Store(0)
		b.calls.Store(0)
		a.status.Store(http.StatusServiceUnavailable)
		defer a.status.Store(0)
		c := client.New(a.srv.URL+", "+b.srv.URL+"/", "tok")
		for i := range 3 {
			got, err := call(t, c)
			if err != nil || got != "b:ping" {
				t.Fatalf("call %d = %q, %v; want b:ping", i, got, err)
			}
		}
		if a.calls.Load() != 1 || b.calls.Load() != 3 {
			t.Errorf("calls a=%d b=%d, want 1 and 3: the client should stay with b once a failed", a.calls.Load(), b.calls.Load())
		}
		a.status.Store(0) // a recovers: the client stays where it is
		call(t, c)
		if a.calls.Load() != 1 {
			t.Errorf("the client went back to a while b answered")
		}
	})

	t.Run("4xx is an answer", func(t *testing.T) {
		a.calls.Store(0)
		b.calls.Store(0)
		a.status.Store(http.StatusConflict)
		defer a.status.Store(0)
		c := client.New(a.srv.URL+","+b.srv.URL, "tok")
		_, err := call(t, c)
		if client.Code(err) != http.StatusConflict || !strings.Contains(err.Error(), "a says no") {
			t.Fatalf("call = %v, want a's 409", err)
		}
		if b.calls.Load() != 0 {
			t.Errorf("a 409 was sent on to b")
		}
	})

	t.Run("hung", func(t *testing.T) {
		release := make(chan struct{})
		hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		defer hung.Close()
		defer close(release)
		c := client.New(hung.URL+","+b.srv.URL, "tok", client.TryTimeout(200*time.Millisecond))
		start := time.Now()
		got, err := call(t, c)
		if err != nil || got != "b:ping" {
			t.Fatalf("call = %q, %v; want b:ping", got, err)
		}
		t.Logf("moved past a hung instance in %s", time.Since(start).Round(time.Millisecond))
	})

	t.Run("all down", func(t *testing.T) {
		d1, d2 := deadURL(t), deadURL(t)
		c := client.New(d1+","+d2, "tok")
		_, err := call(t, c)
		if err == nil || !strings.Contains(err.Error(), "cannot reach spotml at") {
			t.Fatalf("call = %v, want cannot reach", err)
		}
	})

	t.Run("caller's context ends", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		c := client.New(a.srv.URL+","+b.srv.URL, "tok")
		a.calls.Store(0)
		b.calls.Store(0)
		if err := c.Do(ctx, http.MethodGet, "/x", nil, nil); err == nil {
			t.Fatal("a call with an ended context succeeded")
		}
		if b.calls.Load() != 0 {
			t.Errorf("a call whose context ended was tried on the next server")
		}
	})
}

// TestSetServers: the agent replaces the list with the instances the
// control plane names; the server in use stays in use while listed, and a
// token change keeps the list and the choice.
func TestSetServers(t *testing.T) {
	a, b, c := newInstance(t, "a"), newInstance(t, "b"), newInstance(t, "c")
	cl := client.New(deadURL(t)+","+b.srv.URL, "tok")
	if got, _ := call(t, cl); got != "b:ping" {
		t.Fatalf("call = %q", got)
	}
	cl.SetServers([]string{a.srv.URL, b.srv.URL + "/", c.srv.URL, a.srv.URL, ""})
	if got := cl.Servers(); !slices.Equal(got, []string{b.srv.URL, c.srv.URL, a.srv.URL}) {
		t.Errorf("servers = %q, want b (in use), c, a", got)
	}
	cl.SetServers(nil)
	if len(cl.Servers()) != 3 {
		t.Errorf("an empty list emptied the client")
	}
	other := cl.WithToken("other")
	b.srv.Close()
	if got, _ := call(t, other); got != "c:ping" {
		t.Fatalf("call after b closed = %q, want c", got)
	}
	if got := cl.Servers()[0]; got != c.srv.URL {
		t.Errorf("the copy's choice of c is not shared: %s in use", got)
	}
	if got, _ := call(t, cl); got != "c:ping" {
		t.Errorf("original client after the copy moved = %q", got)
	}
	if a.calls.Load() != 0 {
		t.Errorf("a was called while b and c answered")
	}
}

// TestDownloadFailover: a download goes to the next server when one does
// not answer; an upload (whose body cannot be sent twice) fails, and the
// next try goes to the next server.
func TestDownloadFailover(t *testing.T) {
	a := newInstance(t, "a")
	dead := deadURL(t)
	c := client.New(dead+","+a.srv.URL, "tok")
	d, err := c.Download(t.Context(), "/blob")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(d)
	d.Close()
	if string(b) != "a:" {
		t.Errorf("download = %q", b)
	}
	up := client.New(dead+","+a.srv.URL, "tok")
	if err := up.Upload(t.Context(), http.MethodPut, "/blob", strings.NewReader("data"), 4); err == nil {
		t.Fatal("upload to a dead server succeeded")
	}
	if err := up.Upload(t.Context(), http.MethodPut, "/blob", strings.NewReader("data"), 4); err != nil {
		t.Fatalf("second upload: %v", err)
	}
}
