package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/client"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/postgres"
)

// runMainEnv, set to 1, makes this test binary run spotml's main.
const runMainEnv = "SPOTML_TEST_RUN_MAIN"

// haServer is one `spotml server` process of a test's control plane.
type haServer struct {
	id   string
	url  string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServer starts `spotml server` over dsn as a process of its own
// (this test binary as spotml) and waits for its API.
func startServer(t *testing.T, dsn, data, id, addr string, extra ...string) *haServer {
	t.Helper()
	args := append([]string{"server", "--store", dsn, "--data", data, "--addr", addr, "--gateway-addr", "",
		"--instance-id", id, "--lease-ttl", "1s", "--reconcile-interval", "100ms", "--node-timeout", "2s", "--log-level", "debug"}, extra...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	s := &haServer{id: id, cmd: cmd, log: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = s.log
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(s.done) }()
	t.Cleanup(func() { s.kill() })
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "API:"); ok {
			s.url = strings.TrimSpace(u)
			break
		}
	}
	go io.Copy(io.Discard, out)
	if s.url == "" {
		t.Fatalf("server %s did not come up:\n%s", id, s.log)
	}
	return s
}

func (s *haServer) kill() {
	s.cmd.Process.Signal(syscall.SIGCONT)
	s.cmd.Process.Kill()
	<-s.done
}

func (s *haServer) client(t *testing.T, data string) *client.Client {
	token, err := os.ReadFile(filepath.Join(data, "token"))
	if err != nil {
		t.Fatal(err)
	}
	return client.New(s.url, strings.TrimSpace(string(token)))
}

// controlPlane asks s who leads; the zero value when it cannot answer.
func controlPlane(ctx context.Context, cl *client.Client) api.ControlPlane {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var cp api.ControlPlane
	cl.Do(ctx, http.MethodGet, api.Prefix+"/controlplane", nil, &cp)
	return cp
}

// metric reads one counter from s's /metrics.
func metric(t *testing.T, s *haServer, name string) float64 {
	t.Helper()
	res, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s: no %s in /metrics", s.id, name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// silentNodes records a ready node whose agent was last heard an hour ago
// every 100ms until ctx ends, straight in the store: each is work for the
// leader's liveness check (an EndNode, a fenced write), so that the
// leader writes all the time.
func silentNodes(ctx context.Context, t *testing.T, dsn string) {
	st, err := postgres.Open(ctx, dsn, func() time.Time { return time.Now().Add(-time.Hour) })
	if err != nil {
		t.Error(err)
		return
	}
	defer st.Close()
	for i := 0; ctx.Err() == nil; i++ {
		name := fmt.Sprintf("silent-%d", i)
		n := store.Node{Name: name, Pool: "cpu", Priority: spec.PrioritySpot, InstanceType: "local-small",
			Capacity: spec.Resources{CPU: 1, Memory: 1 << 30}}
		if err := st.CreateNode(ctx, n); err == nil {
			st.Heartbeat(ctx, name, true)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestLeaderFencedAfterPause: the leader is stopped (SIGSTOP) until its
// lease has expired and a successor has taken over and written; resumed
// (SIGCONT), it commits no write (the successor keeps the lease at its
// term, and the old leader's committed writes do not grow), its attempts
// are refused, and it steps down at once.
func TestLeaderFencedAfterPause(t *testing.T) {
	dsn := cluster.DB(t)
	data := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	a := startServer(t, dsn, data, "a", "127.0.0.1:0")
	ca := a.client(t, data)
	waitFor(t, 10*time.Second, "a to lead", func() bool { return controlPlane(ctx, ca).Leader == "a" })
	b := startServer(t, dsn, data, "b", "127.0.0.1:0")
	cb := b.client(t, data)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { silentNodes(ctx, t, dsn) })
	defer cancel()

	waitFor(t, 10*time.Second, "a to end silent nodes", func() bool { return metric(t, a, "spotml_leader_writes_total") >= 3 })
	wrote := metric(t, a, "spotml_leader_writes_total")
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var cp api.ControlPlane
	waitFor(t, 15*time.Second, "b to take over", func() bool { cp = controlPlane(ctx, cb); return cp.Leader == "b" })
	if cp.Term < 2 {
		t.Fatalf("b leads at term %d, want > a's", cp.Term)
	}
	waitFor(t, 10*time.Second, "b to act", func() bool { return metric(t, b, "spotml_leader_writes_total") >= 3 })

	resumed := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "a to step down", func() bool {
		return strings.Contains(a.log.String(), `msg="stepped down" instance=a term=1`)
	})
	t.Logf("a stepped down %s after SIGCONT", time.Since(resumed).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // a's loops would have run many passes by now
	after := controlPlane(ctx, cb)
	if after.Leader != "b" || after.Term != cp.Term {
		t.Errorf("lease after a resumed: %s at term %d, want b at %d", after.Leader, after.Term, cp.Term)
	}
	// A commit of a's that was already on its way to the database when
	// it stopped (its COMMIT sent) may be counted after it resumed: it
	// landed before b's takeover, which waits for a's open writes.
	if now := metric(t, a, "spotml_leader_writes_total"); now > wrote+1 {
		t.Errorf("a committed %v leader writes after it was paused", now-wrote)
	}
	t.Logf("a's writes refused after resuming: %v", metric(t, a, "spotml_fenced_writes_total"))
	if strings.Contains(a.log.String(), `msg=leading instance=a term=`+strconv.FormatInt(cp.Term, 10)) {
		t.Errorf("a led at b's term")
	}
}
