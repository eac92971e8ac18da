// Package cloudtest is what the cloud providers' end-to-end tests share:
// a real control plane (SQLite store, its HTTP server, its reconcile
// loop) for one provider, "VMs" that run their rendered bootstrap as
// process groups on this machine, and scenarios that drive a provider's
// fake cloud through them. It is imported by tests only.
package cloudtest

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// SpotmlBinary is a linux spotml for the VMs to download: $SPOTML_BIN,
// or one built now.
func SpotmlBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("SPOTML_BIN"); b != "" {
		return b
	}
	out := filepath.Join(t.TempDir(), "spotml")
	if b, err := exec.Command("go", "build", "-o", out, "github.com/spotml/spotml/cmd/spotml").CombinedOutput(); err != nil {
		t.Fatalf("build spotml: %v\n%s", err, b)
	}
	return out
}

// NeedTools skips the test when a tool the bootstrap scripts use is
// missing.
func NeedTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Logf("%s", b); return len(b), nil }

// Log is a logger into the test's log.
func Log(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// Machines runs each booted VM's bootstrap script as a process group,
// with SPOTML_ROOT (its "disk") under Dir/NAME and the extra environment
// the cloud's test gives.
type Machines struct {
	t   *testing.T
	Dir string
	mu  sync.Mutex
	cmd map[string]*exec.Cmd
}

// NewMachines returns machines under a temporary directory; they are
// killed when the test ends.
func NewMachines(t *testing.T) *Machines {
	m := &Machines{t: t, Dir: t.TempDir(), cmd: map[string]*exec.Cmd{}}
	t.Cleanup(m.stopAll)
	return m
}

// Boot runs script (a VM's cloud-init start script or startup script)
// for the VM name. A VM that already runs is left alone.
func (m *Machines) Boot(name, script string, env ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd[name] != nil {
		return
	}
	root := filepath.Join(m.Dir, name)
	os.MkdirAll(root, 0o755)
	path := filepath.Join(root, "boot.sh")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		m.t.Errorf("VM %s: %v", name, err)
		return
	}
	log, _ := os.OpenFile(filepath.Join(root, "boot.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	cmd := exec.Command("sh", path)
	cmd.Env = append(append(os.Environ(), "SPOTML_ROOT="+root), env...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		m.t.Errorf("VM %s: %v", name, err)
		return
	}
	m.cmd[name] = cmd
	go cmd.Wait()
}

// Running says whether the VM name was booted and not ended.
func (m *Machines) Running(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd[name] != nil
}

// End kills the VM's processes (it was deleted, stopped or evicted).
func (m *Machines) End(name string) {
	m.mu.Lock()
	cmd := m.cmd[name]
	delete(m.cmd, name)
	m.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

func (m *Machines) stopAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, cmd := range m.cmd {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		delete(m.cmd, name)
	}
}

// LogBoots writes every VM's boot log into the test's log.
func (m *Machines) LogBoots() {
	entries, _ := os.ReadDir(m.Dir)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(m.Dir, e.Name(), "boot.log"))
		m.t.Logf("VM %s boot log:\n%s", e.Name(), b)
	}
}

// Plane is a running control plane for one provider.
type Plane struct {
	t     *testing.T
	Store *sqlstore.Store
	Plane *control.Plane
	Blobs *blob.Store
	URL   string // the control plane's HTTP server, as the VMs reach it
	Dir   string
	Ctx   context.Context
	Log   *slog.Logger
	ln    net.Listener
}

// Listen reserves the control plane's address first, because the
// provider is made with it (the VMs' --cloud-agent-server-url).
func Listen(t *testing.T) *Plane {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "spotml.db"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	blobs, err := blob.NewStore("file://" + filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	return &Plane{t: t, Store: st, Blobs: blobs, URL: "http://" + ln.Addr().String(), Dir: dir, ln: ln, Log: Log(t)}
}

// Start runs the control plane with the provider under name, its
// reconcile loop and its server, until the test ends.
func (p *Plane) Start(name string, prov control.Provider) {
	cp := control.New(p.Store, map[string]control.Provider{name: prov}, p.Log, time.Now,
		control.Options{Interval: 200 * time.Millisecond, Retention: -1})
	p.Plane = cp
	srv := &http.Server{Handler: server.New(server.Config{Store: p.Store, Blobs: p.Blobs, Plane: cp, Evictor: cp, JoinToken: "join", Token: "admin",
		HeartbeatInterval: 200 * time.Millisecond, Log: p.Log, Now: time.Now})}
	go srv.Serve(p.ln)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); cp.Run(ctx) }()
	p.Ctx = ctx
	// Cleanups run last in, first out: the loop stops before the
	// server, the store and the machines go.
	p.t.Cleanup(func() { srv.Close() })
	p.t.Cleanup(func() { cancel(); <-done })
}

// Wait polls ok until it holds, failing the test after timeout with the
// nodes and whatever dump logs.
func (p *Plane) Wait(what string, timeout time.Duration, ok func() bool, dump ...func()) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			nodes, _ := p.Store.ListNodes(p.Ctx)
			for _, n := range nodes {
				p.t.Logf("node %s (pool %s, %s): %s %q", n.Name, n.Pool, n.Priority, n.State, n.Reason)
			}
			for _, d := range dump {
				d()
			}
			p.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// LiveNodes are the pool's nodes that are not ended.
func (p *Plane) LiveNodes(pool string) []store.Node {
	nodes, err := p.Store.ListNodes(p.Ctx)
	if err != nil {
		p.t.Fatal(err)
	}
	var out []store.Node
	for _, n := range nodes {
		if n.Pool == pool && store.Live(n.State) {
			out = append(out, n)
		}
	}
	return out
}

// ApplyRefused posts yaml to the control plane's apply endpoint, as
// `spotml apply` does, and checks that it is refused (400) with an error
// naming each of fields, and that nothing was stored: no pool, no node.
func (p *Plane) ApplyRefused(yaml string, fields ...string) {
	p.t.Helper()
	req, err := http.NewRequest(http.MethodPost, p.URL+api.Prefix+"/apply?source=pool.yaml", strings.NewReader(yaml))
	if err != nil {
		p.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer admin")
	req.Header.Set("Content-Type", "application/yaml")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		p.t.Errorf("apply answered %s: %s; want 400", resp.Status, body)
	}
	var doc struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		p.t.Errorf("apply's answer %q: %v", body, err)
	}
	for _, f := range fields {
		if !strings.Contains(doc.Error, f) {
			p.t.Errorf("apply's error does not say %s:\n%s", f, doc.Error)
		}
	}
	pools, err := p.Store.ListPools(p.Ctx)
	if err != nil {
		p.t.Fatal(err)
	}
	nodes, err := p.Store.ListNodes(p.Ctx)
	if err != nil {
		p.t.Fatal(err)
	}
	if len(pools) != 0 || len(nodes) != 0 {
		p.t.Errorf("a refused apply stored %d pools and %d nodes", len(pools), len(nodes))
	}
}
