package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/clock"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

const (
	adminToken = "admin-secret"
	joinToken  = "join-secret"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// recorder stands in for machines: it records the nodes it launches.
type recorder struct {
	mu       sync.Mutex
	launched []string
}

func (r *recorder) Launch(_ context.Context, req control.LaunchRequest) (control.Launched, error) {
	n := req.Node
	r.mu.Lock()
	defer r.mu.Unlock()
	r.launched = append(r.launched, n.Name)
	return control.Launched{}, nil
}

func (r *recorder) Stop(context.Context, store.Node) error { return nil }

// apiServer is a control plane's API over a real store, behind a real
// HTTP server.
type apiServer struct {
	t       *testing.T
	ctx     context.Context
	url     string
	st      *sqlstore.Store
	blobs   *blob.Store
	clock   *clock.Fake
	prov    *recorder
	plane   *control.Plane
	handler *server.Server
	creds   map[string]string // node credentials by node
}

// newAPI starts an API server; opts adjust its configuration.
func newAPI(t *testing.T, opts ...func(*server.Config)) *apiServer {
	dir := t.TempDir()
	clock := clock.NewFake(t0)
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "spotml.db"), clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	blobs, err := blob.NewStore("file://" + filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	prov := &recorder{}
	plane := control.New(st, map[string]control.Provider{spec.ProviderLocal: prov}, log, clock.Now, control.Options{
		BatchInputs: func(ctx context.Context, in spec.BatchInput, page func([]string) error) error {
			return server.BatchInputPages(ctx, blobs, in, page)
		}})
	cfg := server.Config{Store: st, Blobs: blobs, Plane: plane, Token: adminToken, JoinToken: joinToken,
		HeartbeatInterval: time.Second, Log: log, Now: clock.Now}
	for _, o := range opts {
		o(&cfg)
	}
	h := server.New(cfg)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &apiServer{t: t, ctx: t.Context(), url: srv.URL, st: st, blobs: blobs, clock: clock, prov: prov, plane: plane, handler: h,
		creds: map[string]string{}}
}

// reply is one HTTP answer.
type reply struct {
	code   int
	header http.Header
	body   []byte
}

func (r reply) String() string { return fmt.Sprintf("%d %s", r.code, r.body) }

// errorText decodes the JSON error body every non-2xx answer has.
func (r reply) errorText(t *testing.T) string {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error answer has Content-Type %q", ct)
	}
	var e api.Error
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error == "" {
		t.Fatalf("error answer is not a JSON error: %s", r.body)
	}
	return e.Error
}

// do sends body (a value to encode as JSON, or raw bytes) with the
// token, when one is given, as a bearer token.
func (a *apiServer) do(method, path, token string, body any) reply {
	a.t.Helper()
	var rd io.Reader
	ctype := ""
	switch b := body.(type) {
	case nil:
	case []byte:
		rd, ctype = bytes.NewReader(b), "application/yaml"
	default:
		j, err := json.Marshal(b)
		if err != nil {
			a.t.Fatal(err)
		}
		rd, ctype = bytes.NewReader(j), "application/json"
	}
	req, err := http.NewRequestWithContext(a.ctx, method, a.url+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	return reply{resp.StatusCode, resp.Header, b}
}

// admin sends a request with the admin token and wants code back.
func (a *apiServer) admin(method, path string, body any, code int) reply {
	a.t.Helper()
	r := a.do(method, api.Prefix+path, adminToken, body)
	if r.code != code {
		a.t.Fatalf("%s %s: %s, want %d", method, path, r, code)
	}
	return r
}

// agent sends a request of the agent protocol with the credential of
// the node the body names, issued as a provider does at launch.
func (a *apiServer) agent(path string, body any, code int) reply {
	a.t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		a.t.Fatal(err)
	}
	var named struct{ Node string }
	json.Unmarshal(b, &named)
	return a.agentAs(a.cred(named.Node), path, body, code)
}

// agentAs sends a request of the agent protocol with token.
func (a *apiServer) agentAs(token, path string, body any, code int) reply {
	a.t.Helper()
	r := a.do(http.MethodPost, api.Prefix+"/agent"+path, token, body)
	if r.code != code {
		a.t.Fatalf("POST agent%s: %s, want %d", path, r, code)
	}
	return r
}

// cred returns node's credential, issuing one the first time.
func (a *apiServer) cred(node string) string {
	a.t.Helper()
	if c, ok := a.creds[node]; ok {
		return c
	}
	c, err := a.st.IssueNodeCredential(a.ctx, node)
	if err != nil {
		a.t.Fatalf("credential for %s: %v", node, err)
	}
	a.creds[node] = c
	return c
}

// token makes a named API token through the API and returns its secret.
func (a *apiServer) token(name, role string) string {
	a.t.Helper()
	return decode[api.TokenCreated](a.t, a.admin("POST", "/tokens", api.TokenRequest{Name: name, Role: role}, http.StatusCreated)).Secret
}

func decode[T any](t *testing.T, r reply) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
	return v
}

func applyFiles(files ...string) api.ApplyRequest {
	var req api.ApplyRequest
	for i := 0; i < len(files); i += 2 {
		req.Files = append(req.Files, api.File{Name: files[i], Data: files[i+1]})
	}
	return req
}

// assertEmpty checks that nothing was stored.
func (a *apiServer) assertEmpty() {
	a.t.Helper()
	for _, path := range []string{"/pools", "/jobs", "/nodes"} {
		if r := a.admin(http.MethodGet, path, nil, http.StatusOK); strings.TrimSpace(string(r.body)) != "[]" {
			a.t.Errorf("GET %s after a refused apply: %s", path, r.body)
		}
	}
}

const poolYAML = `apiVersion: spotml/v1
kind: Pool
metadata:
  name: cpu
spec:
  provider: local
  priority: spot
  instanceType: local-small
  max: 2
  startTask:
    command: [setup]
`

// serviceYAML is a builtin-runtime service named m with one more spec
// line.
func serviceYAML(extra string) string {
	return "apiVersion: spotml/v1\nkind: Service\nmetadata: {name: m}\nspec:\n  model: {uri: models/m.onnx}\n  " + extra + "\n"
}

const jobYAML = `apiVersion: spotml/v1
kind: Job
metadata:
  name: train
spec:
  pool: cpu
  tasks:
    - name: fit
      command: [python, fit.py]
      maxRetries: 1
`

// routes are every API route with a path that matches it, and who may
// call it.
var routes = []struct {
	method, path string
	need         string // read (admin, viewer), admin, agent (node credential), join (node credential, join token)
}{
	{"POST", "/apply", "admin"},
	{"GET", "/pools", "read"},
	{"GET", "/pools/cpu", "read"},
	{"DELETE", "/pools/cpu", "admin"},
	{"GET", "/nodes", "read"},
	{"GET", "/nodes/n1", "read"},
	{"POST", "/nodes/n1/evict", "admin"},
	{"GET", "/jobs", "read"},
	{"GET", "/jobs/train", "read"},
	{"DELETE", "/jobs/train", "admin"},
	{"GET", "/jobs/train/tasks/fit/logs", "read"},
	{"DELETE", "/services/m", "admin"},
	{"GET", "/events", "read"},
	{"GET", "/cost", "read"},
	{"GET", "/info", "read"},
	{"GET", "/blobs", "read"},
	{"GET", "/blobs/outputs/model.bin", "read"},
	{"PUT", "/blobs/outputs/model.bin", "admin"},
	{"GET", "/tokens", "admin"},
	{"POST", "/tokens", "admin"},
	{"DELETE", "/tokens/nobody", "admin"},
	{"GET", "/backup", "admin"},
	{"GET", "/plan/traces", "read"},
	{"POST", "/plan", "read"},
	{"GET", "/no/such/route", "read"},
	{"PATCH", "/pools", "read"},
	{"POST", "/agent/register", "join"},
	{"POST", "/agent/heartbeat", "agent"},
	{"POST", "/agent/tasks/1/report", "agent"},
	{"POST", "/agent/notice", "agent"},
}

// TestAuth: every route refuses a missing or wrong token (401), and each
// kind of credential opens exactly its routes (403 elsewhere, with a
// message that names why).
func TestAuth(t *testing.T) {
	a := newAPI(t)
	a.admin("POST", "/apply", applyFiles("p.yaml", poolYAML+"---\n"+jobYAML), http.StatusOK)
	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	node := a.cred(a.prov.launched[0])
	viewer := a.token("reader", store.RoleViewer)
	body := []byte(strings.Replace(poolYAML, "name: cpu", "name: other", 1))
	for _, rt := range routes {
		name := rt.method + " " + rt.path
		for _, auth := range []string{"", "Bearer wrong", "Bearer " + adminToken + "x", "Basic " + adminToken, adminToken, "Bearer ",
			"Bearer " + store.NodeCredentialPrefix + "x", "Bearer " + store.APITokenPrefix + "x", "Bearer " + node + "x", "Bearer " + viewer[:len(viewer)-1]} {
			req, _ := http.NewRequestWithContext(a.ctx, rt.method, a.url+api.Prefix+rt.path, bytes.NewReader(body))
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			r := reply{resp.StatusCode, resp.Header, b}
			if r.code != http.StatusUnauthorized {
				t.Errorf("%s with Authorization %q: %s, want 401", name, auth, r)
				continue
			}
			if !strings.Contains(r.errorText(t), "token") || r.header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s: 401 without a hint or WWW-Authenticate: %s", name, r)
			}
		}
		for _, c := range []struct {
			who, token string
			may        []string
			says       string // in the 403's message
		}{
			{"a viewer token", viewer, []string{"read"}, ""},
			{"a node credential", node, []string{"agent", "join"}, "agent API only"},
			{"the join token", joinToken, []string{"join"}, "only registers"},
		} {
			r := a.do(rt.method, api.Prefix+rt.path, c.token, body)
			switch {
			case slices.Contains(c.may, rt.need) && (r.code == http.StatusUnauthorized || r.code == http.StatusForbidden):
				t.Errorf("%s with %s: %s", name, c.who, r)
			case !slices.Contains(c.may, rt.need) && r.code != http.StatusForbidden:
				t.Errorf("%s with %s: %s, want 403", name, c.who, r)
			case !slices.Contains(c.may, rt.need):
				says := c.says
				if says == "" && rt.need == "admin" {
					says = `token "reader" has role viewer, which is read-only`
				}
				if msg := r.errorText(t); !strings.Contains(msg, says) {
					t.Errorf("%s with %s: 403 %q, want it to say %q", name, c.who, msg, says)
				}
			}
		}
	}
	// Refused requests changed nothing.
	if r := a.admin("GET", "/blobs/outputs/model.bin", nil, http.StatusNotFound); !strings.Contains(r.errorText(t), "outputs/model.bin") {
		t.Errorf("missing blob: %s", r)
	}
	if r := a.admin("GET", "/pools", nil, http.StatusOK); strings.Contains(string(r.body), "other") {
		t.Errorf("a refused apply stored a pool: %s", r.body)
	}

	// The admin token opens every path but the agent API's.
	for _, rt := range routes {
		r := a.do(rt.method, api.Prefix+rt.path, adminToken, nil)
		switch {
		case rt.need == "read" || rt.need == "admin":
			if r.code == http.StatusUnauthorized || r.code == http.StatusForbidden {
				t.Errorf("%s %s with the admin token: %s", rt.method, rt.path, r)
			}
		case r.code != http.StatusForbidden || !strings.Contains(r.errorText(t), "node's credential"):
			t.Errorf("%s %s with the admin token: %s, want 403 naming the node's credential", rt.method, rt.path, r)
		}
	}

	r := a.do("GET", "/healthz", "", nil)
	if r.code != http.StatusOK || string(r.body) != "ok\n" {
		t.Errorf("/healthz without a token: %s", r)
	}
}

// TestAuthWithoutJoinToken checks that an unset token opens nothing.
func TestAuthWithoutJoinToken(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "spotml.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	blobs, _ := blob.NewStore("file://" + t.TempDir())
	srv := httptest.NewServer(server.New(server.Config{Store: st, Blobs: blobs, Token: adminToken,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now}))
	defer srv.Close()
	req, _ := http.NewRequestWithContext(t.Context(), "POST", srv.URL+api.Prefix+"/agent/heartbeat", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer ")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("empty bearer token with no join token set: %d, want 401", resp.StatusCode)
	}
}

func TestApply(t *testing.T) {
	a := newAPI(t)
	r := a.admin("POST", "/apply", applyFiles("train.yaml", poolYAML+"---\n"+jobYAML), http.StatusOK)
	want := []api.ApplyResult{{Kind: "Pool", Name: "cpu", Action: "created"}, {Kind: "Job", Name: "train", Action: "created"}}
	if got := decode[[]api.ApplyResult](t, r); !slices.Equal(got, want) {
		t.Errorf("apply: %+v, want %+v", got, want)
	}
	// Raw YAML works too; the same documents are unchanged.
	r = a.admin("POST", "/apply?source=train.yaml", []byte(poolYAML+"---\n"+jobYAML), http.StatusOK)
	for _, res := range decode[[]api.ApplyResult](t, r) {
		if res.Action != "unchanged" {
			t.Errorf("second apply: %+v", res)
		}
	}
	// A job in one file may use a pool from another file of the same apply.
	other := strings.ReplaceAll(poolYAML, "name: cpu", "name: gpu")
	r = a.admin("POST", "/apply", applyFiles("job.yaml", strings.ReplaceAll(strings.ReplaceAll(jobYAML, "pool: cpu", "pool: gpu"), "name: train", "name: eval"),
		"pool.yaml", other), http.StatusOK)
	if got := decode[[]api.ApplyResult](t, r); len(got) != 2 {
		t.Errorf("apply over two files: %+v", got)
	}
	// Nothing to apply is an empty list, not null.
	if r := a.admin("POST", "/apply", applyFiles(), http.StatusOK); strings.TrimSpace(string(r.body)) != "[]" {
		t.Errorf("empty apply: %s", r.body)
	}
	// A job is immutable.
	r = a.admin("POST", "/apply", applyFiles("train.yaml", strings.Replace(jobYAML, "fit.py", "fit2.py", 1)), http.StatusConflict)
	if msg := r.errorText(t); !strings.Contains(msg, `job "train" already exists`) {
		t.Errorf("conflict: %s", msg)
	}
	if j := decode[api.Job](t, a.admin("GET", "/jobs/train", nil, http.StatusOK)); j.Tasks[0].Spec.Command[1] != "fit.py" {
		t.Errorf("conflicting apply changed the job: %+v", j.Tasks[0].Spec)
	}
}

func TestApplyRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string
		want  []string // each a substring of the error
	}{{
		name:  "unknown field",
		files: []string{"pool.yaml", strings.Replace(poolYAML, "  max: 2\n", "  max: 2\n  colour: red\n", 1)},
		want:  []string{"pool.yaml: line 10: spec.colour: unknown field"},
	}, {
		name:  "wrong type",
		files: []string{"pool.yaml", strings.Replace(poolYAML, "max: 2", "max: lots", 1)},
		want:  []string{`pool.yaml: line 9: spec.max: want an integer, got "lots"`},
	}, {
		name:  "every error names its file",
		files: []string{"both.yaml", poolYAML + "---\n" + strings.Replace(jobYAML, "maxRetries: 1", "maxRetries: 1\n      memroy: 1Gi", 1) + "  count: x\n"},
		want:  []string{"both.yaml: line 23: spec.tasks[0].memroy: unknown field", "both.yaml: line 24: spec.count: want an integer"},
	}, {
		name:  "a good file with a bad one",
		files: []string{"good.yaml", poolYAML, "bad.yaml", "apiVersion: spotml/v1\nkind: Pol\n"},
		want:  []string{`bad.yaml: line 2: kind: "Pol" is not a kind`},
	}, {
		name:  "syntax",
		files: []string{"broken.yaml", "apiVersion: [spotml\n"},
		want:  []string{"broken.yaml: line"},
	}, {
		name:  "job names a missing pool",
		files: []string{"train.yaml", poolYAML + "---\n" + strings.Replace(jobYAML, "pool: cpu", "pool: nope", 1)},
		want:  []string{`job train: spec.pool: no pool named "nope"`},
	}, {
		name:  "task names a missing pool",
		files: []string{"train.yaml", poolYAML + "---\n" + strings.Replace(jobYAML, "maxRetries: 1", "maxRetries: 1\n      pool: nope", 1)},
		want:  []string{`job train: spec.tasks[0].pool: no pool named "nope"`},
	}, {
		name: "template job names a missing pool",
		files: []string{"render.yaml", poolYAML + "---\n" +
			"apiVersion: spotml/v1\nkind: Job\nmetadata: {name: render}\nspec: {pool: nope, count: 2, template: {command: [render]}}\n"},
		want: []string{`job render: spec.pool: no pool named "nope"`},
	}, {
		name:  "task larger than any node",
		files: []string{"train.yaml", poolYAML + "---\n" + strings.Replace(jobYAML, "maxRetries: 1", "maxRetries: 1\n      resources: {cpu: 64}", 1)},
		want:  []string{"job train: spec.tasks[0].resources: cpu 64", "cpu: cpu 2, memory 4Gi"},
	}, {
		name:  "no pool of the priority",
		files: []string{"train.yaml", poolYAML + "---\n" + strings.Replace(jobYAML, "pool: cpu", "priority: ondemand", 1)},
		want:  []string{"job train: spec.tasks[0]: no pool matches"},
	}, {
		name:  "service names a missing pool",
		files: []string{"svc.yaml", poolYAML + "---\n" + serviceYAML("placement: {pools: [nope]}")},
		want:  []string{`service m: spec.placement.pools[0]: no pool named "nope"`},
	}, {
		name:  "service replica larger than any node",
		files: []string{"svc.yaml", poolYAML + "---\n" + serviceYAML("resources: {cpu: 16}")},
		want:  []string{"service m: spec.resources: cpu 16", "more than one spot node offers"},
	}, {
		name:  "strict service without an on-demand pool",
		files: []string{"svc.yaml", poolYAML + "---\n" + serviceYAML("placement: {tier: strict}")},
		want:  []string{"service m: spec.placement: tier strict needs ondemand replicas but no ondemand pool"},
	}, {
		name:  "service with an unreadable key file",
		files: []string{"svc.yaml", poolYAML + "---\n" + serviceYAML("auth: {keysFile: /nonexistent/keys}")},
		want:  []string{"service m: spec.auth.keysFile", "absolute path"},
	}, {
		name:  "replayed market without its trace",
		files: []string{"pool.yaml", strings.Replace(poolYAML, "  max: 2\n", "  max: 2\n  local: {market: {trace: /nonexistent/trace.json}}\n", 1)},
		want:  []string{"pool.yaml: pool cpu: spec.local.market.trace: open /nonexistent/trace.json", "give a trace file the control plane can read"},
	}, {
		name:  "replayed market from a file that is no trace",
		files: []string{"pool.yaml", strings.Replace(poolYAML, "  max: 2\n", "  max: 2\n  local: {market: {trace: ../../go.mod}}\n", 1)},
		want:  []string{"pool cpu: spec.local.market.trace: ../../go.mod: not a trace this market reads"},
	}, {
		name:  "instance type without capacity",
		files: []string{"pool.yaml", strings.Replace(poolYAML, "local-small", "huge.metal", 1)},
		want:  []string{`pool cpu: spec.instanceType "huge.metal" is not in the price table`, "spec.capacity"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAPI(t)
			msg := a.admin("POST", "/apply", applyFiles(tc.files...), http.StatusBadRequest).errorText(t)
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error\n%s\ndoes not say\n%s", msg, w)
				}
			}
			a.assertEmpty()
		})
	}
	t.Run("not JSON", func(t *testing.T) {
		a := newAPI(t)
		req, _ := http.NewRequestWithContext(a.ctx, "POST", a.url+api.Prefix+"/apply", strings.NewReader("{files:"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("malformed JSON: %d, want 400", resp.StatusCode)
		}
	})
}

func TestNotFound(t *testing.T) {
	a := newAPI(t)
	a.admin("POST", "/apply", applyFiles("train.yaml", poolYAML+"---\n"+jobYAML), http.StatusOK)
	for _, tc := range []struct{ method, path, says string }{
		{"GET", "/pools/nope", `pool "nope"`},
		{"DELETE", "/pools/nope", `pool "nope"`},
		{"GET", "/jobs/nope", `job "nope"`},
		{"DELETE", "/jobs/nope", `job "nope"`},
		{"GET", "/nodes/nope", `node "nope"`},
		{"GET", "/jobs/nope/tasks/fit/logs", "task nope/fit"},
		{"GET", "/jobs/train/tasks/nope/logs", "task train/nope"},
		{"GET", "/blobs/nope.bin", "blob nope.bin"},
		{"GET", "/no/such/route", "/api/v1/no/such/route"},
	} {
		msg := a.admin(tc.method, tc.path, nil, http.StatusNotFound).errorText(t)
		if !strings.Contains(msg, tc.says) || !strings.Contains(msg, "not found") {
			t.Errorf("%s %s: %q does not say %q", tc.method, tc.path, msg, tc.says)
		}
	}
	// What exists can be deleted once.
	a.admin("DELETE", "/jobs/train", nil, http.StatusNoContent)
	a.admin("DELETE", "/jobs/train", nil, http.StatusNotFound)
	a.admin("DELETE", "/pools/cpu", nil, http.StatusNoContent)
	a.admin("GET", "/pools/cpu", nil, http.StatusNotFound)
}

// TestAgentProtocol walks one task through the agent protocol: register,
// heartbeat until ready, get the assignment, report, and the job is done.
func TestAgentProtocol(t *testing.T) {
	a := newAPI(t)
	a.admin("POST", "/apply", applyFiles("train.yaml", poolYAML+"---\n"+jobYAML), http.StatusOK)
	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	if len(a.prov.launched) != 1 {
		t.Fatalf("launched %q, want one node", a.prov.launched)
	}
	node := a.prov.launched[0]

	// A hand-started agent joins with the join token and gets its node's
	// own credential back, which it uses from then on.
	reg := decode[api.RegisterResponse](t, a.agentAs(joinToken, "/register", api.RegisterRequest{Node: node, PID: 4242}, http.StatusOK))
	if reg.BlobURL != a.blobs.DefaultURL() || reg.HeartbeatInterval != time.Second || reg.StartTask == nil || reg.StartTask.Command[0] != "setup" {
		t.Errorf("register: %+v", reg)
	}
	if !strings.HasPrefix(reg.Credential, store.NodeCredentialPrefix) {
		t.Fatalf("register with the join token gave no node credential: %+v", reg)
	}
	a.creds[node] = reg.Credential
	a.agentAs(joinToken, "/heartbeat", api.HeartbeatRequest{Node: node}, http.StatusForbidden)
	a.clock.Advance(time.Second)
	hb := decode[api.HeartbeatResponse](t, a.agent("/heartbeat", api.HeartbeatRequest{Node: node}, http.StatusOK))
	if hb.Tasks == nil || len(hb.Tasks) != 0 {
		t.Errorf("heartbeat while starting: %+v", hb)
	}
	a.clock.Advance(time.Second)
	a.agent("/heartbeat", api.HeartbeatRequest{Node: node, Ready: true}, http.StatusOK)
	if n, _ := a.st.GetNode(a.ctx, node); n.State != store.NodeReady {
		t.Fatalf("node after a ready heartbeat: %s", n.State)
	}

	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	a.clock.Advance(time.Second)
	hb = decode[api.HeartbeatResponse](t, a.agent("/heartbeat", api.HeartbeatRequest{Node: node, Ready: true}, http.StatusOK))
	if len(hb.Tasks) != 1 {
		t.Fatalf("heartbeat after scheduling: %+v", hb)
	}
	as := hb.Tasks[0]
	if as.Attempt != 1 || as.Job != "train" || as.Task != "fit" || as.JobUID == "" || !slices.Equal(as.Spec.Command, spec.Command{"python", "fit.py"}) {
		t.Errorf("assignment: %+v", as)
	}

	// Progress the task reported rides on heartbeats; a bad one changes
	// nothing, one for another attempt is ignored.
	running := func(attempt int, p *api.Progress) api.HeartbeatRequest {
		return api.HeartbeatRequest{Node: node, Ready: true, Running: []api.RunningTask{{TaskID: as.TaskID, Attempt: attempt, Progress: p}}}
	}
	msg := a.agent("/heartbeat", running(1, &api.Progress{Fraction: 1.5}), http.StatusBadRequest).errorText(t)
	if !strings.Contains(msg, "running[0].progress") {
		t.Errorf("bad progress: %s", msg)
	}
	a.agent("/heartbeat", running(2, &api.Progress{Fraction: 0.9, Message: "stale"}), http.StatusOK)
	a.agent("/heartbeat", running(1, &api.Progress{Fraction: 0.5, Message: "epoch 1/2"}), http.StatusOK)
	a.agent("/heartbeat", running(1, nil), http.StatusOK) // unchanged: not sent again
	if ft := decode[api.Job](t, a.admin("GET", "/jobs/train", nil, http.StatusOK)).Tasks[0]; ft.Progress == nil || *ft.Progress != 0.5 || ft.ProgressMessage != "epoch 1/2" {
		t.Errorf("task progress after heartbeats: %v %q", ft.Progress, ft.ProgressMessage)
	}

	report := func(id any, req api.ReportRequest, code int) reply {
		return a.agent(fmt.Sprintf("/tasks/%v/report", id), req, code)
	}
	report("x", api.ReportRequest{Node: node, Attempt: 1, Outcome: store.OutcomeSucceeded}, http.StatusBadRequest)
	report(as.TaskID, api.ReportRequest{Node: node, Attempt: 1, Outcome: "exploded"}, http.StatusBadRequest)
	a.agent(fmt.Sprintf("/tasks/%d/report", as.TaskID), map[string]any{"node": node, "attempt": 1, "outcome": "succeeded", "colour": "red"}, http.StatusBadRequest)
	stale := report(as.TaskID, api.ReportRequest{Node: node, Attempt: 2, Outcome: store.OutcomeSucceeded}, http.StatusOK)
	if got := decode[map[string]bool](t, stale); got["accepted"] {
		t.Errorf("report of another attempt: %s", stale.body)
	}
	a.clock.Advance(time.Hour)
	ok := report(as.TaskID, api.ReportRequest{Node: node, Attempt: 1, Outcome: store.OutcomeSucceeded}, http.StatusOK)
	if got := decode[map[string]bool](t, ok); !got["accepted"] {
		t.Errorf("report: %s", ok.body)
	}

	job := a.admin("GET", "/jobs/train", nil, http.StatusOK)
	if j := decode[api.Job](t, job); j.State != store.JobSucceeded {
		t.Errorf("job %s, want succeeded", j.State)
	}
	golden(t, "job.golden", mask(job.body, node))
	hb = decode[api.HeartbeatResponse](t, a.agent("/heartbeat", api.HeartbeatRequest{Node: node, Ready: true}, http.StatusOK))
	if len(hb.Tasks) != 0 {
		t.Errorf("heartbeat after the task ended: %+v", hb)
	}

	// An eviction notice the agent read drains the node.
	a.agent("/notice", api.NoticeRequest{Node: node, Deadline: a.clock.Now().Add(30 * time.Second), Format: "azure"}, http.StatusNoContent)
	if n := decode[api.Node](t, a.admin("GET", "/nodes/"+node, nil, http.StatusOK)); n.State != store.NodeDraining || n.NoticeDeadline.IsZero() {
		t.Errorf("node after a notice: %+v", n)
	}

	// An ended node's credential stops working: its agent is told to
	// stop, and it cannot join again with the join token either.
	if err := a.st.EndNode(a.ctx, node, store.NodePreempted, "SpotEviction"); err != nil {
		t.Fatal(err)
	}
	if msg := a.agent("/heartbeat", api.HeartbeatRequest{Node: node, Ready: true}, http.StatusUnauthorized).errorText(t); !strings.Contains(msg, "ended") {
		t.Errorf("heartbeat of an ended node: %s", msg)
	}
	a.agent("/register", api.RegisterRequest{Node: node}, http.StatusUnauthorized)
	a.agent("/notice", api.NoticeRequest{Node: node, Deadline: a.clock.Now()}, http.StatusUnauthorized)
	a.agent(fmt.Sprintf("/tasks/%d/report", as.TaskID), api.ReportRequest{Node: node, Attempt: 1, Outcome: store.OutcomeSucceeded}, http.StatusUnauthorized)
	a.agentAs(joinToken, "/register", api.RegisterRequest{Node: node}, http.StatusConflict)
	a.agentAs(joinToken, "/register", api.RegisterRequest{Node: "nope"}, http.StatusNotFound)

	if live := a.admin("GET", "/nodes", nil, http.StatusOK); strings.TrimSpace(string(live.body)) != "[]" {
		t.Errorf("live nodes: %s", live.body)
	}
	if all := decode[[]api.Node](t, a.admin("GET", "/nodes?all=true", nil, http.StatusOK)); len(all) != 1 || all[0].State != store.NodePreempted {
		t.Errorf("all nodes: %+v", all)
	}

	// The node ran from t0 to its eviction.
	cost := a.admin("GET", "/cost", nil, http.StatusOK)
	golden(t, "cost.golden", cost.body)
	var shape map[string]any
	if err := json.Unmarshal(cost.body, &shape); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"lines", "nodeSeconds", "spent", "onDemand", "saving", "savingPercent"} {
		if _, ok := shape[k]; !ok {
			t.Errorf("cost has no %s: %s", k, cost.body)
		}
	}

	events := decode[[]api.Event](t, a.admin("GET", "/events?object=node/&kind=Joined", nil, http.StatusOK))
	if len(events) != 1 || events[0].Object != "node/"+node || events[0].Message != "pid 4242" {
		t.Errorf("Joined events: %+v", events)
	}
	all := decode[[]api.Event](t, a.admin("GET", "/events", nil, http.StatusOK))
	last := decode[[]api.Event](t, a.admin("GET", "/events?limit=2", nil, http.StatusOK))
	if len(last) != 2 || last[1] != all[len(all)-1] {
		t.Errorf("events?limit=2: %+v", last)
	}
	after := decode[[]api.Event](t, a.admin("GET", fmt.Sprintf("/events?after=%d", all[len(all)-2].ID), nil, http.StatusOK))
	if len(after) != 1 || after[0] != all[len(all)-1] {
		t.Errorf("events?after: %+v", after)
	}
	a.admin("GET", "/events?after=x", nil, http.StatusBadRequest)
	a.admin("GET", "/events?limit=-1", nil, http.StatusBadRequest)
}

func TestLogs(t *testing.T) {
	a := newAPI(t)
	a.admin("POST", "/apply", applyFiles("train.yaml", poolYAML+"---\n"+jobYAML), http.StatusOK)
	j := decode[api.Job](t, a.admin("GET", "/jobs/train", nil, http.StatusOK))
	// No attempt has written a log yet.
	if r := a.admin("GET", "/jobs/train/tasks/fit/logs", nil, http.StatusOK); len(r.body) != 0 {
		t.Errorf("logs before any attempt: %q", r.body)
	}
	loc := api.LogLocation("train", j.UID, "fit", 1, "stdout")
	if err := a.blobs.Write(a.ctx, loc, strings.NewReader("epoch 1\n")); err != nil {
		t.Fatal(err)
	}
	if r := a.admin("GET", "/jobs/train/tasks/fit/logs", nil, http.StatusOK); string(r.body) != "epoch 1\n" {
		t.Errorf("logs: %q", r.body)
	}
	a.admin("GET", "/jobs/train/tasks/fit/logs?stream=stdin", nil, http.StatusBadRequest)
	a.admin("GET", "/jobs/train/tasks/fit/logs?attempt=2", nil, http.StatusBadRequest)
}

var (
	uidRE = regexp.MustCompile(`"(uid|jobUid)": "[0-9a-f]+"`)
)

// mask replaces what differs run to run (random ids and node names) in
// API JSON; times come from the fake clock and stay.
func mask(b []byte, node string) []byte {
	b = uidRE.ReplaceAll(b, []byte(`"$1": "UID"`))
	return bytes.ReplaceAll(b, []byte(node), []byte("NODE"))
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -update rewrites it):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// A service is created, left alone by the same spec, updated in place by a
// new replica count and given a new version by a new model.
func TestApplyService(t *testing.T) {
	a := newAPI(t)
	svc := serviceYAML("replicas: {min: 2, max: 4}")
	r := a.admin("POST", "/apply", applyFiles("svc.yaml", poolYAML+"---\n"+svc), http.StatusOK)
	if got := decode[[]api.ApplyResult](t, r); len(got) != 2 || got[1] != (api.ApplyResult{Kind: "Service", Name: "m", Action: "created"}) {
		t.Fatalf("apply: %+v", got)
	}
	get := func() api.Service {
		return decode[api.Service](t, a.admin("GET", "/services/m", nil, http.StatusOK))
	}
	s := get()
	if s.Generation != 1 || s.Model != "models/m.onnx" || s.Desired != 2 || s.Ready["spot"] != 0 || s.Ready["ondemand"] != 0 {
		t.Errorf("service: %+v", s)
	}
	if got := decode[[]api.ApplyResult](t, a.admin("POST", "/apply", applyFiles("svc.yaml", svc), http.StatusOK)); got[0].Action != "unchanged" {
		t.Errorf("same spec: %+v", got)
	}
	a.admin("POST", "/apply", applyFiles("svc.yaml", serviceYAML("replicas: {min: 2, max: 6}")), http.StatusOK)
	if s := get(); s.Generation != 1 {
		t.Errorf("a new max is not a new version: generation %d", s.Generation)
	}
	a.admin("POST", "/apply", applyFiles("svc.yaml", strings.Replace(serviceYAML("replicas: {min: 2, max: 6}"), "m.onnx", "m2.onnx", 1)), http.StatusOK)
	if s := get(); s.Generation != 2 || s.Model != "models/m2.onnx" {
		t.Errorf("a new model is version 2: %+v", s)
	}
	if ss := decode[[]api.Service](t, a.admin("GET", "/services", nil, http.StatusOK)); len(ss) != 1 {
		t.Errorf("list: %+v", ss)
	}
	resp, err := http.Get(a.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `spotml_service_desired_replicas{service="m"} 2`) {
		t.Errorf("/metrics has no desired replicas of m:\n%s", metrics)
	}
	a.admin("DELETE", "/services/m", nil, http.StatusNoContent)
	a.admin("GET", "/services/m", nil, http.StatusNotFound)
}

// TestNilLogger: a server given no logger answers a failing request with
// a 500 rather than panicking while it logs the failure.
func TestNilLogger(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "spotml.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(server.New(server.Config{Store: st, Token: adminToken, Now: time.Now}))
	defer srv.Close()
	st.Close() // every store call now fails
	req, _ := http.NewRequestWithContext(t.Context(), "GET", srv.URL+api.Prefix+"/pools", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /pools: %v (the handler panicked?)", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("GET /pools on a closed store: %s, want 500", resp.Status)
	}
}

// TestNodeJSON: a node's public JSON is the API's, not the store's row:
// its provider's ID (a local node's work directory, a pod name) stays
// inside the control plane, the platform machine it runs on shows.
func TestNodeJSON(t *testing.T) {
	a := newAPI(t)
	const secretDir = "/var/lib/spotml/nodes/secret-dir"
	n := store.Node{Name: "gpu-1", Pool: "gpu", Priority: spec.PrioritySpot, Zone: "z1", InstanceType: "local-small",
		Capacity: spec.Resources{CPU: 2, Memory: 1 << 30}, PricePerHour: 0.1, OnDemandPrice: 0.4,
		ProviderID: secretDir, Host: "k8s-worker-7"}
	if err := a.st.CreateNode(a.ctx, n); err != nil {
		t.Fatal(err)
	}
	one := a.admin("GET", "/nodes/gpu-1", nil, http.StatusOK)
	list := a.admin("GET", "/nodes", nil, http.StatusOK)
	for _, body := range [][]byte{one.body, list.body} {
		if bytes.Contains(body, []byte(secretDir)) || bytes.Contains(body, []byte("providerID")) {
			t.Errorf("the provider's ID is public: %s", body)
		}
	}
	golden(t, "node.golden", one.body)
	if got := decode[[]api.Node](t, list); len(got) != 1 || got[0].Host != "k8s-worker-7" || got[0].State != api.NodeProvisioning {
		t.Errorf("nodes = %+v", got)
	}
}

// TestStatesMatchStore: the API names states and outcomes with the
// store's own words; a rename on one side alone would change the public
// schema without anyone meaning to.
func TestStatesMatchStore(t *testing.T) {
	for _, p := range [][2]string{
		{api.NodeProvisioning, store.NodeProvisioning}, {api.NodeReady, store.NodeReady}, {api.NodeDraining, store.NodeDraining},
		{api.NodePreempted, store.NodePreempted}, {api.NodeDeallocated, store.NodeDeallocated}, {api.NodeLost, store.NodeLost},
		{api.NodeTerminated, store.NodeTerminated},
		{api.JobRunning, store.JobRunning}, {api.JobSucceeded, store.JobSucceeded}, {api.JobFailed, store.JobFailed},
		{api.TaskPending, store.TaskPending}, {api.TaskRunning, store.TaskRunning}, {api.TaskSucceeded, store.TaskSucceeded},
		{api.TaskFailed, store.TaskFailed},
		{api.ReplicaPending, store.ReplicaPending}, {api.ReplicaStarting, store.ReplicaStarting}, {api.ReplicaReady, store.ReplicaReady},
		{api.ReplicaStopping, store.ReplicaStopping}, {api.ReplicaStopped, store.ReplicaStopped}, {api.ReplicaFailed, store.ReplicaFailed},
		{api.OutcomeSucceeded, store.OutcomeSucceeded}, {api.OutcomeFailed, store.OutcomeFailed}, {api.OutcomePreempted, store.OutcomePreempted},
		{api.RoleAdmin, store.RoleAdmin}, {api.RoleViewer, store.RoleViewer},
	} {
		if p[0] != p[1] {
			t.Errorf("api says %q where the store says %q", p[0], p[1])
		}
	}
}
