package local

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/clock"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/notice"
	"github.com/spotml/spotml/internal/proc"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// fakeAgentEnv makes the test binary, started by Launch as the agent, stand
// in for `spotml agent`: it records its arguments and waits to be killed.
const fakeAgentEnv = "SPOTML_LOCAL_TEST_FAKE_AGENT"

func TestMain(m *testing.M) {
	if os.Getenv(fakeAgentEnv) == "1" {
		os.WriteFile("agent.args", []byte(strings.Join(os.Args[1:], "\n")), 0o644)
		time.Sleep(time.Hour)
		return
	}
	os.Setenv(fakeAgentEnv, "1")
	os.Exit(m.Run())
}

// harness is a local market over a real SQLite store, its metadata served
// on loopback, on a fake clock.
type harness struct {
	t   *testing.T
	ctx context.Context
	st  *sqlstore.Store
	clk *clock.Fake
	l   *Local
	ts  *httptest.Server
	// plane is the sink and view the market reports to, as in spotml up;
	// its reconcile loop does not run.
	plane *control.Plane
}

func newHarness(t *testing.T, pools ...spec.Pool) *harness {
	t.Helper()
	return newSeededHarness(t, rand.New(rand.NewPCG(1, 2)), pools...)
}

func newSeededHarness(t *testing.T, r *rand.Rand, pools ...spec.Pool) *harness {
	t.Helper()
	ctx := t.Context()
	clk := clock.NewFake(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "spotml.db"), clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Apply(ctx, pools, nil); err != nil {
		t.Fatal(err)
	}
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	l := New(Config{Binary: bin, ServerURL: "http://127.0.0.1:1", DataDir: dir, Rand: r},
		slog.New(slog.DiscardHandler), clk.Now)
	ts := httptest.NewServer(l.Metadata())
	t.Cleanup(ts.Close)
	h := &harness{t: t, ctx: ctx, st: st, clk: clk, l: l, ts: ts}
	h.attach()
	return h
}

// attach hands the market its sink and view, as Run does.
func (h *harness) attach() {
	h.plane = control.New(h.st, map[string]control.Provider{Name: h.l}, slog.New(slog.DiscardHandler), h.clk.Now, control.Options{})
	h.l.sink, h.l.view = h.plane, h.plane
}

func pool(name, priority, format string) spec.Pool {
	return spec.Pool{
		APIVersion: "spotml/v1", Kind: "Pool", Metadata: spec.Metadata{Name: name},
		Spec: spec.PoolSpec{
			Provider: Name, Priority: priority, InstanceType: "local-2", Max: 10,
			Local: &spec.LocalPool{Notice: spec.Duration{Duration: 30 * time.Second}, NoticeFormat: format},
		},
	}
}

// launch records a node as the control plane does, launches it and
// returns it as stored, with the agent process killed at the end of the
// test.
func (h *harness) launch(p spec.Pool, name string) store.Node {
	h.t.Helper()
	n := store.Node{Name: name, Pool: p.Metadata.Name, Priority: p.Spec.Priority, Zone: "z1", InstanceType: p.Spec.InstanceType}
	if err := h.st.CreateNode(h.ctx, n); err != nil {
		h.t.Fatal(err)
	}
	h.relaunch(p, name)
	if _, err := h.st.Heartbeat(h.ctx, name, true); err != nil {
		h.t.Fatal(err)
	}
	return h.node(name)
}

// agentPID is the PID of a node's agent, as Launch recorded it.
func agentPID(t *testing.T, n store.Node) int {
	t.Helper()
	ids, err := proc.ReadFile(filepath.Join(n.ProviderID, agentPIDFile))
	if err != nil || len(ids) != 1 {
		t.Fatalf("agent of %s: %v %v", n.Name, ids, err)
	}
	return ids[0].PID
}

func (h *harness) node(name string) store.Node {
	h.t.Helper()
	n, err := h.st.GetNode(h.ctx, name)
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

// tick advances the clock by dt and runs one market tick.
func (h *harness) tick(dt time.Duration) {
	h.t.Helper()
	h.clk.Advance(dt)
	if err := h.l.tick(h.ctx, h.plane, h.plane, dt); err != nil {
		h.t.Fatalf("tick: %v", err)
	}
}

// get sends a request to the metadata server.
func (h *harness) get(method, path string, header map[string]string, body string) (int, string, http.Header) {
	h.t.Helper()
	req, err := http.NewRequestWithContext(h.ctx, method, h.ts.URL+path, strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := h.ts.Client().Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// waitGone waits (briefly) for pid to be gone or a zombie.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for range 200 {
		if !running(pid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d still runs", pid)
}

// running reports whether pid is a live (not zombie) process.
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestLaunchAndStop(t *testing.T) {
	p := pool("spot-a", spec.PrioritySpot, notice.FormatAWS)
	h := newHarness(t, p)
	n := h.launch(p, "spot-a-1")

	if agentPID(t, n) <= 0 || !running(agentPID(t, n)) {
		t.Fatalf("agent pid %d not running", agentPID(t, n))
	}
	if pgid, _ := syscall.Getpgid(agentPID(t, n)); pgid != agentPID(t, n) {
		t.Errorf("agent's process group %d, want its own (%d)", pgid, agentPID(t, n))
	}
	var args []byte
	for range 200 {
		if args, _ = os.ReadFile(filepath.Join(n.ProviderID, "agent.args")); len(args) > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{"agent", "--node\nspot-a-1", "--workdir\n" + n.ProviderID, "--metadata-format\naws",
		"--metadata-path\n/imds/nodes/spot-a-1"} {
		if !strings.Contains(string(args), want) {
			t.Errorf("agent arguments %q lack %q", args, want)
		}
	}
	// The node's metadata is served from launch: IMDSv2 hands out a token.
	if status, _, _ := h.get("PUT", "/nodes/spot-a-1/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"}, ""); status != 200 {
		t.Fatalf("token after launch: %d", status)
	}

	if err := h.l.Stop(h.ctx, n); err != nil {
		t.Fatal(err)
	}
	waitGone(t, agentPID(t, n))
	if status, _, _ := h.get("PUT", "/nodes/spot-a-1/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"}, ""); status != 404 {
		t.Errorf("token after stop: %d, want 404 (the VM is gone)", status)
	}
}

func TestLaunchCapacityShortage(t *testing.T) {
	spot := pool("spot-a", spec.PrioritySpot, "")
	spot.Spec.Local.CapacityShortage = 1
	onDemand := pool("od", spec.PriorityOnDemand, "")
	onDemand.Spec.Local.CapacityShortage = 1 // only the spot market runs short
	h := newHarness(t, spot, onDemand)

	_, err := h.l.Launch(h.ctx, control.LaunchRequest{Pool: spot, Node: store.Node{Name: "spot-a-1", Pool: "spot-a", Zone: "z1"}})
	if !errors.Is(err, control.ErrNoCapacity) {
		t.Fatalf("spot launch with capacityShortage 1: %v, want ErrNoCapacity", err)
	}
	if !strings.Contains(err.Error(), "local-2") || !strings.Contains(err.Error(), `"z1"`) {
		t.Errorf("error %q should name the instance type and zone", err)
	}
	if _, err := os.Stat(filepath.Join(h.l.cfg.DataDir, "nodes", "spot-a-1", "agent.log")); err == nil {
		t.Errorf("a refused launch started an agent")
	}
	h.launch(onDemand, "od-1")
}

func TestEvictionDraw(t *testing.T) {
	certain := pool("spot-a", spec.PrioritySpot, "")
	certain.Spec.Local.EvictionRate = 3600 // per node-hour: a 1 s tick draws with probability 1
	never := pool("spot-b", spec.PrioritySpot, "")
	onDemand := pool("od", spec.PriorityOnDemand, "")
	onDemand.Spec.Local.EvictionRate = 3600 // on-demand nodes are never drawn
	h := newHarness(t, certain, never, onDemand)
	a, b, od := h.launch(certain, "spot-a-1"), h.launch(never, "spot-b-1"), h.launch(onDemand, "od-1")

	h.tick(time.Second)
	if got := h.node(a.Name).NoticeDeadline; !got.Equal(h.clk.Now().Add(30 * time.Second)) {
		t.Fatalf("spot-a-1 notice deadline %v, want now + 30s", got)
	}
	for _, n := range []store.Node{b, od} {
		if got := h.node(n.Name).NoticeDeadline; !got.IsZero() {
			t.Errorf("%s drawn for eviction (deadline %v)", n.Name, got)
		}
	}
	// The notice runs out: the node is taken back and its agent killed.
	h.tick(29 * time.Second)
	if got := h.node(a.Name).State; got != store.NodeReady {
		t.Fatalf("before the deadline: %s", got)
	}
	h.tick(time.Second)
	if got := h.node(a.Name).State; got != store.NodePreempted {
		t.Fatalf("at the deadline: %s, want preempted", got)
	}
	waitGone(t, agentPID(t, a))
	if !running(agentPID(t, b)) || !running(agentPID(t, od)) {
		t.Errorf("other nodes' agents were killed")
	}
}

// TestEvictionDrawSeeded: a spot node is drawn with probability
// evictionRate × tick, and a seeded market draws the same nodes every run.
func TestEvictionDrawSeeded(t *testing.T) {
	p := pool("spot-a", spec.PrioritySpot, "")
	p.Spec.Local.EvictionRate = 1800 // per node-hour: a 1 s tick draws with probability 1/2
	drawn := func(seed uint64) []string {
		h := newSeededHarness(t, rand.New(rand.NewPCG(seed, 0)), p)
		for i := range 40 {
			// Nodes as the store holds them; the draw needs no process.
			name := "spot-a-" + strconv.Itoa(i)
			if err := h.st.CreateNode(h.ctx, store.Node{Name: name, Pool: "spot-a", Priority: spec.PrioritySpot}); err != nil {
				t.Fatal(err)
			}
			if _, err := h.st.Heartbeat(h.ctx, name, true); err != nil {
				t.Fatal(err)
			}
		}
		h.tick(time.Second)
		nodes, err := h.st.ListNodes(h.ctx)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, n := range nodes {
			if !n.NoticeDeadline.IsZero() {
				names = append(names, n.Name)
			}
		}
		return names
	}
	first, again, other := drawn(7), drawn(7), drawn(8)
	if len(first) < 10 || len(first) > 30 {
		t.Errorf("%d of 40 nodes drawn at probability 1/2", len(first))
	}
	if strings.Join(first, " ") != strings.Join(again, " ") {
		t.Errorf("the same seed drew %v, then %v", first, again)
	}
	if strings.Join(first, " ") == strings.Join(other, " ") {
		t.Errorf("seeds 7 and 8 drew the same nodes %v", first)
	}
}

const azurePath = "/metadata/scheduledevents?api-version=2020-07-01"

type azureDoc struct {
	DocumentIncarnation int
	Events              []struct {
		EventId, EventType, EventStatus, NotBefore string
	}
}

func (h *harness) azure(node string) azureDoc {
	h.t.Helper()
	status, body, _ := h.get("GET", "/nodes/"+node+azurePath, map[string]string{"Metadata": "true"}, "")
	if status != 200 {
		h.t.Fatalf("scheduled events: %d %s", status, body)
	}
	var doc azureDoc
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		h.t.Fatal(err)
	}
	return doc
}

// TestAzureNoticeStaysPut: one eviction is one event under one EventId,
// and DocumentIncarnation moves only when the document does.
func TestAzureNoticeStaysPut(t *testing.T) {
	p := pool("spot-a", spec.PrioritySpot, notice.FormatAzure)
	h := newHarness(t, p)
	n := h.launch(p, "spot-a-1")

	first := h.azure(n.Name)
	h.tick(250 * time.Millisecond)
	h.tick(250 * time.Millisecond)
	if got := h.azure(n.Name); got.DocumentIncarnation != first.DocumentIncarnation || len(got.Events) != 0 {
		t.Fatalf("nothing changed, yet the document went from %+v to %+v", first, got)
	}

	if err := h.l.Evict(h.ctx, n.Name, 0); err != nil {
		t.Fatal(err)
	}
	noticed := h.azure(n.Name)
	if len(noticed.Events) != 1 || noticed.Events[0].EventType != "Preempt" || noticed.DocumentIncarnation <= first.DocumentIncarnation {
		t.Fatalf("after the eviction: %+v", noticed)
	}
	for range 4 {
		h.tick(250 * time.Millisecond)
		got := h.azure(n.Name)
		if len(got.Events) != 1 || got.Events[0].EventId != noticed.Events[0].EventId {
			t.Fatalf("one eviction, yet its EventId went from %s to %+v", noticed.Events[0].EventId, got.Events)
		}
		if got.DocumentIncarnation != noticed.DocumentIncarnation {
			t.Fatalf("DocumentIncarnation went from %d to %d with no change", noticed.DocumentIncarnation, got.DocumentIncarnation)
		}
	}

	// The node approves the event, as Microsoft documents: recorded, and
	// the eviction keeps its time.
	ack := `{"StartRequests":[{"EventId":"` + noticed.Events[0].EventId + `"}]}`
	if status, body, _ := h.get("POST", "/nodes/"+n.Name+azurePath, map[string]string{"Metadata": "true"}, ack); status != 200 {
		t.Fatalf("acknowledge: %d %q", status, body)
	}
	if acks := h.l.Metadata().Acknowledged(n.Name); len(acks) != 1 || acks[0].EventID != noticed.Events[0].EventId {
		t.Fatalf("acknowledgements recorded: %v", acks)
	}
	h.tick(250 * time.Millisecond)
	if got := h.azure(n.Name); got.DocumentIncarnation != noticed.DocumentIncarnation || got.Events[0].NotBefore != noticed.Events[0].NotBefore {
		t.Fatalf("after the acknowledgement: %+v, was %+v", got, noticed)
	}

	// The control plane restarts: a new market over the same store serves
	// the stored notice again, as the same event.
	h.l = New(h.l.cfg, slog.New(slog.DiscardHandler), h.clk.Now)
	h.attach()
	h.ts.Config.Handler = h.l.Metadata()
	h.tick(250 * time.Millisecond)
	if got := h.azure(n.Name); len(got.Events) != 1 || got.Events[0].EventId != noticed.Events[0].EventId {
		t.Fatalf("after a restart of the control plane the eviction's EventId went from %s to %+v", noticed.Events[0].EventId, got.Events)
	}
}

// TestAWSTokenLivesItsTTL: an IMDSv2 token taken before market ticks works
// after them, until its TTL runs out.
func TestAWSTokenLivesItsTTL(t *testing.T) {
	p := pool("spot-a", spec.PrioritySpot, notice.FormatAWS)
	h := newHarness(t, p)
	n := h.launch(p, "spot-a-1")
	_, token, _ := h.get("PUT", "/nodes/"+n.Name+"/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"}, "")
	auth := map[string]string{"X-aws-ec2-metadata-token": token}
	action := "/nodes/" + n.Name + "/latest/meta-data/spot/instance-action"

	if err := h.l.Evict(h.ctx, n.Name, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	h.tick(250 * time.Millisecond)
	h.tick(30 * time.Second)
	status, body, _ := h.get("GET", action, auth, "")
	if status != 200 || !strings.Contains(body, `"action":"terminate"`) {
		t.Fatalf("instance-action with a 30 s old token: %d %q, want 200 terminate", status, body)
	}
	h.tick(30 * time.Second) // 60.25 s: the token has run out
	if status, body, _ := h.get("GET", action, auth, ""); status != 401 {
		t.Fatalf("instance-action with an expired token: %d %q, want 401", status, body)
	}
}

// TestGCPWaiterWakesOnlyOnChange: a wait_for_change request on TRUE does not
// answer while market ticks come and go, and answers when the node goes.
func TestGCPWaiterWakesOnlyOnChange(t *testing.T) {
	p := pool("spot-a", spec.PrioritySpot, notice.FormatGCP)
	h := newHarness(t, p)
	n := h.launch(p, "spot-a-1")
	path := "/nodes/" + n.Name + "/computeMetadata/v1/instance/preempted"
	flavor := map[string]string{"Metadata-Flavor": "Google"}

	if err := h.l.Evict(h.ctx, n.Name, 0); err != nil {
		t.Fatal(err)
	}
	status, body, header := h.get("GET", path, flavor, "")
	if status != 200 || body != "TRUE" {
		t.Fatalf("preempted after the eviction: %d %q", status, body)
	}
	type answer struct {
		status int
		body   string
	}
	done := make(chan answer, 1)
	go func() {
		s, b, _ := h.get("GET", path+"?wait_for_change=true&timeout_sec=30&last_etag="+header.Get("ETag"), flavor, "")
		done <- answer{s, b}
	}()
	// Ticks over 300 ms of real time, so that some come after the waiter
	// is waiting whatever the scheduling.
	for range 12 {
		h.tick(250 * time.Millisecond)
		select {
		case a := <-done:
			t.Fatalf("the waiter answered %d %q with nothing changed", a.status, a.body)
		case <-time.After(25 * time.Millisecond):
		}
	}
	h.tick(30 * time.Second) // the notice runs out; the VM is gone
	select {
	case a := <-done:
		if a.status != 404 {
			t.Fatalf("the waiter answered %d %q when the VM went, want 404", a.status, a.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter did not answer when the VM went")
	}
}

// TestDeallocateAndRestart: a deallocating pool's eviction says "stop", the
// node ends deallocated with its disk, and a restart serves fresh metadata.
func TestDeallocateAndRestart(t *testing.T) {
	p := pool("spot-a", spec.PrioritySpot, notice.FormatAWS)
	p.Spec.EvictionPolicy = spec.EvictionDeallocate
	h := newHarness(t, p)
	n := h.launch(p, "spot-a-1")
	if err := os.WriteFile(filepath.Join(n.ProviderID, "disk"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	ttl := map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
	_, token, _ := h.get("PUT", "/nodes/"+n.Name+"/latest/api/token", ttl, "")
	if err := h.l.Evict(h.ctx, n.Name, 0); err != nil {
		t.Fatal(err)
	}
	action := "/nodes/" + n.Name + "/latest/meta-data/spot/instance-action"
	if status, body, _ := h.get("GET", action, map[string]string{"X-aws-ec2-metadata-token": token}, ""); status != 200 || !strings.Contains(body, `"action":"stop"`) {
		t.Fatalf("instance-action: %d %q, want stop", status, body)
	}
	h.tick(30 * time.Second)
	if got := h.node(n.Name); got.State != store.NodeDeallocated {
		t.Fatalf("after the notice: %s, want deallocated", got.State)
	}
	waitGone(t, agentPID(t, n))

	// The control plane restarts it: same name, same disk, a new VM whose
	// metadata has no notice and knows no old token.
	if err := h.st.RestartNode(h.ctx, n.Name); err != nil {
		t.Fatal(err)
	}
	again := h.relaunch(p, n.Name)
	if again.ProviderID != n.ProviderID {
		t.Errorf("restarted in %s, want %s", again.ProviderID, n.ProviderID)
	}
	if b, _ := os.ReadFile(filepath.Join(again.ProviderID, "disk")); string(b) != "kept" {
		t.Errorf("disk after restart: %q", b)
	}
	if status, _, _ := h.get("GET", action, map[string]string{"X-aws-ec2-metadata-token": token}, ""); status != 401 {
		t.Errorf("the old VM's token on the restarted one: %d, want 401", status)
	}
	_, fresh, _ := h.get("PUT", "/nodes/"+n.Name+"/latest/api/token", ttl, "")
	if status, _, _ := h.get("GET", action, map[string]string{"X-aws-ec2-metadata-token": fresh}, ""); status != 404 {
		t.Errorf("instance-action on the restarted VM: %d, want 404 (no notice)", status)
	}
}

// relaunch launches a node the store already holds (as launch does, or a
// restart) and records its process, killed at the end of the test.
func (h *harness) relaunch(p spec.Pool, name string) store.Node {
	h.t.Helper()
	n := h.node(name)
	cred, err := h.st.IssueNodeCredential(h.ctx, name)
	if err != nil {
		h.t.Fatal(err)
	}
	at, err := h.l.Launch(h.ctx, control.LaunchRequest{Pool: p, Node: n, Credential: cred, Restart: n.Incarnation > 1})
	if err != nil {
		h.t.Fatalf("Launch %s: %v", name, err)
	}
	ids, err := proc.ReadFile(filepath.Join(at.ProviderID, agentPIDFile))
	if err != nil || len(ids) != 1 {
		h.t.Fatalf("agent of %s not recorded: %v %v", name, ids, err)
	}
	h.t.Cleanup(func() { syscall.Kill(-ids[0].PID, syscall.SIGKILL) })
	if err := h.st.SetNodeLaunched(h.ctx, name, at.ProviderID); err != nil {
		h.t.Fatal(err)
	}
	return h.node(name)
}

// TestStoredPIDReused: a PID recorded for a node's agent or its tasks that
// now belongs to an unrelated process is not killed; the node's own task
// groups are.
func TestStoredPIDReused(t *testing.T) {
	p := pool("spot-a", spec.PrioritySpot, "")
	h := newHarness(t, p)
	n := h.launch(p, "spot-a-1")

	sleep := func() (*exec.Cmd, proc.ID) {
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		id, err := proc.Identify(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		return cmd, id
	}
	_, task := sleep()
	_, stranger := sleep()

	// The task's group as the agent records it, and the stranger's number
	// as an older process that held it would have been recorded: with
	// another start time, or (an agent before start times) with none.
	groups := []proc.ID{task, {PID: stranger.PID, Start: stranger.Start - 1}, {PID: stranger.PID}}
	if err := proc.WriteFile(filepath.Join(n.ProviderID, tasksPIDFile), groups); err != nil {
		t.Fatal(err)
	}
	if err := h.l.Stop(h.ctx, n); err != nil {
		t.Fatal(err)
	}
	waitGone(t, agentPID(t, n))
	waitGone(t, task.PID)
	time.Sleep(50 * time.Millisecond)
	if !running(stranger.PID) {
		t.Fatalf("an unrelated process (pid %d) listed in tasks.pids was killed", stranger.PID)
	}

	// And as the node's own agent PID, as a control plane that restarted
	// after the agent died would find it.
	if err := proc.WriteFile(filepath.Join(n.ProviderID, agentPIDFile), []proc.ID{{PID: stranger.PID, Start: stranger.Start - 1}}); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(n.ProviderID, tasksPIDFile))
	if err := h.l.Stop(h.ctx, n); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if !running(stranger.PID) {
		t.Fatalf("an unrelated process (pid %d) stored as the agent's was killed", stranger.PID)
	}
}

// TestForeignWorkDirLeftAlone: a store restored from another data
// directory names nodes whose work directories, and processes, belong to
// the spotml that made the backup. Stopping such a node kills nothing,
// and restarting a deallocated one starts it in this data directory.
func TestForeignWorkDirLeftAlone(t *testing.T) {
	p := pool("spot-a", spec.PrioritySpot, "azure")
	h := newHarness(t, p)
	other := filepath.Join(t.TempDir(), "nodes", "spot-a-1") // the other data directory's
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	id, err := proc.Identify(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.WriteFile(filepath.Join(other, agentPIDFile), []proc.ID{id}); err != nil {
		t.Fatal(err)
	}
	n := store.Node{Name: "spot-a-1", Pool: "spot-a", Priority: spec.PrioritySpot, Zone: "z1", InstanceType: "local-2", ProviderID: other}
	if err := h.st.CreateNode(h.ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := h.l.Stop(h.ctx, h.node("spot-a-1")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if !running(id.PID) {
		t.Fatal("the other data directory's agent was killed")
	}
	got, err := h.l.Launch(h.ctx, control.LaunchRequest{Pool: p, Node: h.node("spot-a-1"), Restart: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.l.Stop(context.Background(), store.Node{Name: "spot-a-1", ProviderID: got.ProviderID}) })
	if want := filepath.Join(h.l.cfg.DataDir, "nodes", "spot-a-1"); got.ProviderID != want {
		t.Errorf("restarted in %s, want %s", got.ProviderID, want)
	}
}

// TestStopBeforeProviderIDStored: spotml up stopping mid-launch can leave
// a node whose agent runs but whose provider ID was never stored;
// stopping that node still kills its agent (it was seen left running).
func TestStopBeforeProviderIDStored(t *testing.T) {
	p := pool("spot-a", spec.PrioritySpot, notice.FormatAzure)
	h := newHarness(t, p)
	n := h.launch(p, "spot-a-1")
	pid := agentPID(t, n)
	n.ProviderID = ""
	if err := h.l.Stop(h.ctx, n); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
}
