package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/store"
)

// unjudged starts the detail of a probe that could not be judged: an
// inference probe whose service had no ready replica to read the body.
const unjudged = "not judged: "

// probeResult is one piece of bad input and how spotml took it.
type probeResult struct {
	name   string
	ok     bool
	detail string
}

// probe is one kind of bad input.
type probe struct {
	name string
	run  func(ctx context.Context, s *soak, r *rand.Rand) (bool, string)
}

// probes are the kinds of bad input, each sent at least once per soak
// (in a seeded order, one every 3–5 s).
var probes = []probe{
	{"spec: unknown field", specProbe(`apiVersion: spotml/v1
kind: Pool
metadata: {name: soak-bad-field}
spec: {provider: local, priority: spot, instanceType: local-small, max: 1, evictionRat: 6}
`, "evictionRat")},
	{"spec: invalid value", specProbe(`apiVersion: spotml/v1
kind: Job
metadata: {name: soak-bad-count}
spec: {priority: spot, count: -3, template: {command: "true"}}
`, "count")},
	{"spec: broken YAML", specProbe("apiVersion: spotml/v1\nkind: Job\nmetadata: {name: [soak-broken\n", "line")},
	{"spec: unknown pool", specProbe(`apiVersion: spotml/v1
kind: Job
metadata: {name: soak-bad-pool}
spec: {pool: no-such-pool, count: 1, template: {command: "true"}}
`, "no-such-pool")},
	{"spec: alias bomb", specProbe(aliasBomb(), "alias")},
	{"spec: 9 MiB document", specProbe(hugeDocument(9<<20), "large", "limit", "exceeds")},
	{"infer: malformed JSON", inferProbe("/v2/models/strict/infer", `{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28`, 400, "json", "JSON", "unexpected EOF")},
	{"infer: wrong shape", inferProbe("/v2/models/strict/infer", v2Body([]int{1, 1, 28, 27}, "FP32", 756), 400, "shape")},
	{"infer: wrong datatype", inferProbe("/v2/models/strict/infer", v2Body([]int{1, 1, 28, 28}, "BYTES", 784), 400, "BYTES", "datatype")},
	{"infer: unknown model", inferProbe("/v2/models/no-such-model/infer", v2Body([]int{1, 1, 28, 28}, "FP32", 784), 404, "no-such-model")},
	{"infer: v1 instances not a list", inferProbe("/v1/models/prod:predict", `{"instances": "x"}`, 400, "instances")},
	{"infer: 17 MiB body", inferProbe("/v2/models/prod/infer", `{"inputs": [{"name": "input", "data": [`+strings.Repeat("0.5,", 17<<20/4)+`0]}]}`, 413, "large", "limit", "MiB", "bytes")},
	{"slowloris: headers to the gateway", slowloris(false, false)},
	{"slowloris: body to spotml up's gateway", slowloris(true, true)},
	{"agent: another node's credential", otherNodesCredential},
}

// badInput sends the probes in a seeded order, one every 3–5 s (closer
// in a short soak), all of them once before any again.
func (s *soak) badInput(ctx context.Context) {
	r := s.rng(streamProbe)
	// One every 3–5 s, or closer in a short soak so that every kind is
	// sent at least once.
	gap := min(4*time.Second, time.Duration(float64(s.cfg.Duration)/(1.6*float64(len(probes)))))
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		order := r.Perm(len(probes))
		for _, i := range order {
			if !sleep(ctx, between(r, gap*3/4, gap*5/4)) {
				return
			}
			p := probes[i]
			pr := rand.New(rand.NewPCG(s.cfg.Seed, uint64(1000+i)))
			do := func() {
				// A probe sent is seen through even when the chaos ends
				// meanwhile.
				ok, detail := p.run(context.WithoutCancel(ctx), s, pr)
				s.mu.Lock()
				s.probes = append(s.probes, probeResult{p.name, ok, detail})
				s.faults["bad inputs"]++
				s.mu.Unlock()
				st := "as it should"
				if !ok {
					st = "WRONG"
				}
				s.say("bad input %q: %s: %s", p.name, st, firstLine(detail))
			}
			// Sent on schedule, without waiting for the answers to earlier
			// ones (an alias bomb may take the control plane seconds).
			wg.Go(do)
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// answer is an HTTP answer to a probe.
type answer struct {
	code int
	body string
	took time.Duration
}

func post(ctx context.Context, url, token, ctype, body string) (answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", ctype)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	t0 := time.Now()
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return answer{resp.StatusCode, strings.TrimSpace(string(b)), time.Since(t0)}, nil
}

// judge says whether an answer is a 4xx (want, if not 0) whose message
// names one of names.
func judge(a answer, want int, names ...string) (bool, string) {
	msg := a.body
	var e api.Error
	if json.Unmarshal([]byte(a.body), &e) == nil && e.Error != "" {
		msg = e.Error
	}
	detail := fmt.Sprintf("%d in %s: %.300s", a.code, a.took.Round(time.Millisecond), strings.Join(strings.Fields(msg), " "))
	if a.code < 400 || a.code > 499 || (want != 0 && a.code != want) {
		w := "a 4xx"
		if want != 0 {
			w = fmt.Sprint(want)
		}
		return false, detail + " (want " + w + ")"
	}
	for _, n := range names {
		if strings.Contains(strings.ToLower(msg), strings.ToLower(n)) {
			return true, detail
		}
	}
	return false, detail + fmt.Sprintf(" (the message names none of %q)", names)
}

// unchanged runs send with the applies held off and says whether the
// stored pools, jobs and services are the same after it as before.
func (s *soak) unchanged(ctx context.Context, send func() (bool, string)) (bool, string) {
	s.specMu.Lock()
	defer s.specMu.Unlock()
	s.cpMu.RLock()
	defer s.cpMu.RUnlock()
	before, err := s.stateSnapshot(ctx)
	if err != nil {
		return false, "cannot read the state before: " + err.Error()
	}
	ok, detail := send()
	after, err := s.stateSnapshot(ctx)
	if err != nil {
		return false, detail + "; cannot read the state after: " + err.Error()
	}
	if before != after {
		// Judged whatever the answer was: a change fails the probe even
		// when the answer itself could not be judged.
		return false, strings.TrimPrefix(detail, unjudged) + "; the stored state CHANGED:\n" + diffLines(before, after)
	}
	return ok, detail
}

func diffLines(a, b string) string {
	in := map[string]bool{}
	for l := range strings.SplitSeq(a, "\n") {
		in[l] = true
	}
	var out []string
	for l := range strings.SplitSeq(b, "\n") {
		if !in[l] {
			out = append(out, "+ "+firstN(l, 160))
		}
	}
	return strings.Join(out, "\n")
}

func firstN(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// specProbe applies a bad spec: it must get a 4xx naming one of names and
// store nothing.
func specProbe(yaml string, names ...string) func(context.Context, *soak, *rand.Rand) (bool, string) {
	return func(ctx context.Context, s *soak, _ *rand.Rand) (bool, string) {
		return s.unchanged(ctx, func() (bool, string) {
			a, err := post(ctx, s.apiURL+api.Prefix+"/apply?source=bad.yaml", s.token, "application/yaml", yaml)
			if err != nil {
				return false, err.Error()
			}
			return judge(a, 0, names...)
		})
	}
}

// inferProbe sends a bad inference request through the separate gateway.
func inferProbe(path, body string, code int, names ...string) func(context.Context, *soak, *rand.Rand) (bool, string) {
	return func(ctx context.Context, s *soak, _ *rand.Rand) (bool, string) {
		return s.unchanged(ctx, func() (bool, string) {
			// A service with no ready replica for a moment (the chaos)
			// answers 503 before it reads the body: ask again.
			deadline := time.Now().Add(30 * time.Second)
			for {
				a, err := post(ctx, "http://"+s.gwAddr+path, "", "application/json", body)
				if err != nil {
					return false, err.Error()
				}
				if a.code != http.StatusServiceUnavailable {
					return judge(a, code, names...)
				}
				if time.Now().After(deadline) {
					return false, unjudged + fmt.Sprintf("the service had no ready replica for 30 s (%d: %.200s)", a.code, a.body)
				}
				time.Sleep(500 * time.Millisecond)
			}
		})
	}
}

func v2Body(shape []int, datatype string, n int) string {
	data := make([]float32, n)
	b, _ := json.Marshal(map[string]any{"inputs": []any{map[string]any{"name": "input", "datatype": datatype, "shape": shape, "data": data}}})
	return string(b)
}

// aliasBomb is a valid job (it would run `true`) whose env merges, seven
// levels deep, eight aliases of the level below: a few hundred bytes that
// expand to 8^7 ≈ 2 M mappings.
func aliasBomb() string {
	var b strings.Builder
	b.WriteString("apiVersion: spotml/v1\nkind: Job\nmetadata:\n  name: soak-alias-bomb\n  labels: &l0 {a: b, c: d}\nspec:\n  priority: spot\n  count: 1\n  template:\n    command: \"true\"\n    maxRetries: 0\n    env:\n      <<: [")
	for lvl := 1; lvl <= 7; lvl++ {
		if lvl > 1 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "&l%d {<<: [", lvl)
		for i := range 8 {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*l%d", lvl-1)
		}
		b.WriteString("]}")
	}
	b.WriteString("]\n")
	return b.String()
}

// hugeDocument is a pool spec padded with comments to size bytes.
func hugeDocument(size int) string {
	head := "apiVersion: spotml/v1\nkind: Pool\nmetadata: {name: soak-huge}\nspec: {provider: local, priority: spot, instanceType: local-small, max: 1}\n"
	line := "# " + strings.Repeat("x", 97) + "\n"
	return head + strings.Repeat(line, (size-len(head))/len(line)+1)
}

// slowloris opens 8 connections to a gateway and trickles a byte a second
// into each: into the headers (to the separate gateway), or, with body,
// into a body whose declared length is 16 MiB (to spotml up's gateway,
// which shares the control plane's process). The gateway must end each
// connection (close it, or answer 4xx) within 30 s, or, where the process
// reports its heap, hold them at the cost of a connection and not of
// memory: the heap may not grow by 32 MiB (the declared bodies are 128).
func slowloris(body, upsGateway bool) func(context.Context, *soak, *rand.Rand) (bool, string) {
	return func(ctx context.Context, s *soak, _ *rand.Rand) (bool, string) {
		addr, pid, metrics := s.gwAddr, s.gw.pid(), ""
		if upsGateway {
			// The control plane is not killed under these connections
			// (that would close them for the gateway), and no spec is
			// applied meanwhile (an alias bomb or a 9 MiB document would
			// show in the heap, which the API's /metrics reports for the
			// whole process).
			s.specMu.Lock()
			defer s.specMu.Unlock()
			s.cpMu.RLock()
			defer s.cpMu.RUnlock()
			addr, pid, metrics = s.upGW, s.up.pid(), strings.TrimPrefix(s.apiURL, "http://")
		}
		const conns, limit = 8, 30 * time.Second
		rss0, _ := memory(pid)
		peak := rss0
		heap0 := heapInuse(metrics)
		heapPeak := heap0
		type result struct {
			closed time.Duration // 0: still open at the limit
			status string
		}
		results := make([]result, conns)
		var wg sync.WaitGroup
		t0 := time.Now()
		for i := range conns {
			wg.Go(func() {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					results[i] = result{closed: time.Since(t0), status: "dial: " + err.Error()}
					return
				}
				defer c.Close()
				head := "POST /v2/models/strict/infer HTTP/1.1\r\nHost: soak\r\n"
				if body {
					head += "Content-Type: application/json\r\nContent-Length: 16777216\r\n\r\n{\""
				}
				c.SetWriteDeadline(time.Now().Add(limit))
				if _, err := io.WriteString(c, head); err != nil {
					results[i] = result{closed: time.Since(t0), status: "write: " + err.Error()}
					return
				}
				done := make(chan string, 1)
				go func() {
					buf := make([]byte, 512)
					c.SetReadDeadline(time.Now().Add(limit))
					n, err := c.Read(buf)
					if n > 0 {
						done <- firstLine(string(buf[:n]))
						return
					}
					done <- fmt.Sprint(err)
				}()
				tick := time.NewTicker(time.Second)
				defer tick.Stop()
				for {
					select {
					case st := <-done:
						if strings.Contains(st, "i/o timeout") {
							results[i] = result{} // still open at the limit
						} else {
							results[i] = result{closed: time.Since(t0), status: st}
						}
						return
					case <-tick.C:
						b := "X"
						if body {
							b = "a"
						}
						c.Write([]byte(b)) // an error shows as the read ending
					}
				}
			})
		}
		stop := make(chan struct{})
		var mwg sync.WaitGroup
		mwg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(500 * time.Millisecond):
				}
				if r, _ := memory(pid); r > peak {
					peak = r
				}
				if h := heapInuse(metrics); h > heapPeak {
					heapPeak = h
				}
			}
		})
		wg.Wait()
		close(stop)
		mwg.Wait()
		open, bad := 0, 0
		var statuses []string
		for _, r := range results {
			switch {
			case r.closed == 0:
				open++
			case strings.HasPrefix(r.status, "HTTP/1.1 "):
				if code := r.status[9:]; !strings.HasPrefix(code, "4") {
					bad++
				}
				statuses = append(statuses, fmt.Sprintf("%s after %s", r.status, r.closed.Round(time.Second)))
			case strings.HasPrefix(r.status, "dial: "):
				// Nothing listened: the gateway is down, which is no
				// defence against a slow client.
				bad++
				statuses = append(statuses, r.status)
			default:
				statuses = append(statuses, fmt.Sprintf("closed (%s) after %s", r.status, r.closed.Round(time.Second)))
			}
		}
		grew := heapPeak - heap0
		detail := fmt.Sprintf("%d connections to %s: %d still open after %s; Go heap in use %d MiB → peak %d MiB (+%d MiB), process RSS %d → %d MiB",
			conns, addr, open, limit, heap0>>20, heapPeak>>20, grew>>20, rss0>>20, peak>>20)
		if len(statuses) > 0 {
			detail += "\n" + strings.Join(dedup(statuses), "\n")
		}
		// Each connection must be ended (closed, or answered 4xx) in
		// time, or cost a connection and not memory: the heap may not
		// grow by what the bodies declared (8 × 16 MiB).
		closed := open == 0 && bad == 0
		bounded := heap0 > 0 && grew < 32<<20
		return (closed || bounded) && bad == 0, detail
	}
}

// heapInuse reads go_memstats_heap_inuse_bytes from the /metrics of the
// server at addr (the API's; a gateway's own /metrics has no Go figures);
// 0 when it cannot.
func heapInuse(addr string) int64 {
	if addr == "" {
		return 0
	}
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
			var f float64
			fmt.Sscanf(v, "%g", &f)
			return int64(f)
		}
	}
	return 0
}

func dedup(ss []string) []string {
	seen := map[string]int{}
	var out []string
	for _, s := range ss {
		if seen[s] == 0 {
			out = append(out, s)
		}
		seen[s]++
	}
	for i, s := range out {
		if n := seen[s]; n > 1 {
			out[i] = fmt.Sprintf("%s (×%d)", s, n)
		}
	}
	return out
}

// otherNodesCredential takes the credential one agent holds (from its
// environment, its command line or its work directory, as a task on that
// node could) and calls the agent API as another node with it: a
// registration and a heartbeat. Both must be refused (401 or 403).
func otherNodesCredential(ctx context.Context, s *soak, r *rand.Rand) (bool, string) {
	agents := s.agents()
	var names []string
	for n := range agents {
		names = append(names, n)
	}
	if len(names) < 2 {
		return false, fmt.Sprintf("needs two agents, found %d", len(names))
	}
	slices.Sort(names)
	a := names[r.IntN(len(names))]
	cred, from := credentialOf(agents[a], s.data)
	if cred == "" {
		return false, "no credential found for the agent of " + a
	}
	s.cpMu.RLock()
	defer s.cpMu.RUnlock()
	if from == filepath.Join(s.data, "join-token") {
		// Where nodes have credentials of their own, the agent keeps
		// its in memory; the join token (the provider's bootstrap
		// secret) gets one for a at registration, as a's agent did.
		reg, _ := json.Marshal(api.RegisterRequest{Node: a, PID: os.Getpid()})
		if ans, err := post(ctx, s.apiURL+api.Prefix+"/agent/register", cred, "application/json", string(reg)); err == nil && ans.code == http.StatusOK {
			var r struct {
				Credential string `json:"credential"`
			}
			if json.Unmarshal([]byte(ans.body), &r) == nil && r.Credential != "" {
				cred, from = r.Credential, "issued for "+a+" at registration with the join token"
			}
		}
	}
	ns, err := s.nodes(ctx)
	if err != nil {
		return false, err.Error()
	}
	var victim *store.Node
	for i, n := range ns {
		if n.Name != a && n.State == store.NodeReady && (victim == nil || n.Replicas < victim.Replicas) {
			victim = &ns[i]
		}
	}
	if victim == nil {
		return false, "no other ready node to pose as"
	}
	reg, _ := json.Marshal(api.RegisterRequest{Node: victim.Name, PID: os.Getpid()})
	hb, _ := json.Marshal(api.HeartbeatRequest{Node: victim.Name, Ready: true})
	ok := true
	detail := fmt.Sprintf("%s's credential (%s) used as %s:", a, from, victim.Name)
	for _, c := range []struct{ path, body string }{{"/agent/register", string(reg)}, {"/agent/heartbeat", string(hb)}} {
		ans, err := post(ctx, s.apiURL+api.Prefix+c.path, cred, "application/json", c.body)
		if err != nil {
			return false, detail + " " + err.Error()
		}
		refused := ans.code == http.StatusForbidden || ans.code == http.StatusUnauthorized
		ok = ok && refused
		detail += fmt.Sprintf(" %s → %d", c.path, ans.code)
		if !refused {
			detail += fmt.Sprintf(" (accepted: %.120s)", strings.Join(strings.Fields(ans.body), " "))
		}
	}
	return ok, detail
}

// credentialOf finds what an agent authenticates with: an environment
// variable named like a token or credential, a command-line flag of that
// kind (or --credential-file), a file of that kind in its work directory,
// else the join token every agent shares today (DATA/join-token).
func credentialOf(p proc, data string) (value, from string) {
	env := environ(p.pid)
	for _, k := range slices.Sorted(maps.Keys(env)) {
		if strings.HasPrefix(k, "SPOTML_") && (strings.Contains(k, "TOKEN") || strings.Contains(k, "CREDENTIAL")) && env[k] != "" {
			return env[k], "its environment's " + k
		}
	}
	for _, f := range []string{"--token", "--credential", "--node-token"} {
		if v := p.flag(f); v != "" {
			return v, "its " + f + " flag"
		}
	}
	if f := p.flag("--credential-file"); f != "" {
		if b, err := os.ReadFile(f); err == nil && len(bytes.TrimSpace(b)) > 0 {
			return string(bytes.TrimSpace(b)), f
		}
	}
	if wd := p.flag("--workdir"); wd != "" {
		for _, pat := range []string{"*token*", "*credential*"} {
			fs, _ := filepath.Glob(filepath.Join(wd, pat))
			for _, f := range fs {
				if b, err := os.ReadFile(f); err == nil && len(bytes.TrimSpace(b)) > 0 {
					return string(bytes.TrimSpace(b)), f
				}
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(data, "join-token"))
	if err != nil {
		return "", ""
	}
	return strings.TrimSpace(string(b)), filepath.Join(data, "join-token")
}

// checkProbes reports the bad input: every kind, each time answered as it
// should be.
func (s *soak) checkProbes(rep *Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	byName := map[string][]probeResult{}
	for _, p := range s.probes {
		byName[p.name] = append(byName[p.name], p)
	}
	for _, p := range probes {
		rs := byName[p.name]
		if len(rs) == 0 {
			rep.add("bad input: "+p.name, false, "never sent: the soak was too short to send every kind (one every 3–5 s)")
			continue
		}
		ok, bad, skipped := true, 0, 0
		var first *probeResult
		for i, r := range rs {
			switch {
			case strings.HasPrefix(r.detail, unjudged):
				skipped++
			case !r.ok:
				if ok {
					first = &rs[i]
				}
				ok = false
				bad++
			case first == nil:
				first = &rs[i]
			}
		}
		if first == nil {
			rep.add("bad input: "+p.name, false, "%d sent, none could be judged; %s", len(rs), rs[0].detail)
			continue
		}
		more := ""
		if skipped > 0 {
			more = fmt.Sprintf(" (%d not judged: no ready replica)", skipped)
		}
		rep.add("bad input: "+p.name, ok, "%d sent, %d answered wrongly%s; %s", len(rs), bad, more, first.detail)
	}
}
