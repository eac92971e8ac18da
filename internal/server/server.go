// Package server is the control plane's REST API: the JSON endpoints the
// CLI uses, the agent protocol, and the mapping of domain errors to HTTP
// status codes (the only place that mapping happens).
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/console"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlstore"
	"github.com/spotml/spotml/internal/trace"
)

// Evictor evicts a node with a notice (the local provider's market).
type Evictor interface {
	Evict(ctx context.Context, node string, notice time.Duration) error
}

// Config wires the server.
type Config struct {
	Store             *sqlstore.Store
	Blobs             *blob.Store
	Plane             *control.Plane // kicked after changes; may be nil
	Evictor           Evictor        // may be nil: evict answers 501
	Metadata          http.Handler   // simulated instance metadata, mounted at MetadataPrefix; may be nil
	Gateway           http.Handler   // this process's inference gateway, for the console's model tester; may be nil
	GatewayURL        string         // where clients reach the gateway, shown by the console
	MetadataPrefix    string
	Token             string // the bootstrap admin token (DATA_DIR/token): every path but the agent API
	JoinToken         string // registers an agent, which gets its node's own credential back
	HeartbeatInterval time.Duration
	// Backup makes GET /backup's snapshots, in temporary files under
	// BackupDir (empty: the system's temporary directory). nil: the
	// store has no online backup here and the endpoint answers 501.
	Backup    Backuper
	BackupDir string
	// TracesDir holds the spot traces POST /plan may replay; empty or
	// missing: none.
	TracesDir string
	Log       *slog.Logger // nil: discard
	Now       func() time.Time
}

// Server is the control plane's HTTP handler.
type Server struct {
	cfg     Config
	mux     *http.ServeMux
	reports *reportBatcher
	// streams ends the console's watch streams (CloseStreams), which
	// would otherwise keep a graceful shutdown waiting forever.
	streams     context.Context
	stopStreams context.CancelFunc
	views       viewCache
	changes     changeFeed
}

// New returns the handler. A nil cfg.Log discards what it would log.
func New(cfg Config) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), reports: &reportBatcher{commit: cfg.Store.ReportBatch}}
	s.streams, s.stopStreams = context.WithCancel(context.Background())
	s.routes()
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// CloseStreams ends every open watch stream and any opened later; give it
// to http.Server.RegisterOnShutdown.
func (s *Server) CloseStreams() { s.stopStreams() }

func (s *Server) routes() {
	// Who may call what: read is every GET (admin and viewer tokens),
	// write changes state (admin only), agent is a node's own calls (its
	// credential, or the join token to register).
	read := func(pattern string, h func(http.ResponseWriter, *http.Request) error) {
		s.mux.Handle(pattern, s.auth(needRead, h))
	}
	write := func(pattern string, h func(http.ResponseWriter, *http.Request) error) {
		s.mux.Handle(pattern, s.auth(needAdmin, h))
	}
	agent := func(pattern string, h func(http.ResponseWriter, *http.Request) error) {
		s.mux.Handle(pattern, s.auth(needNode, h))
	}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(s.cfg.Store, s.cfg.Log, s.cfg.Now), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "spotml_leader_writes_total",
			Help: "Write transactions of this instance's reconcilers committed while it led (fenced by its lease term)."},
			func() float64 { return float64(s.cfg.Store.Stats().LeaderWrites) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "spotml_fenced_writes_total",
			Help: "Reconciler write transactions refused because this instance no longer held the leader lease at its term."},
			func() float64 { return float64(s.cfg.Store.Stats().FencedWrites) }))
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if s.cfg.Metadata != nil {
		s.mux.Handle(s.cfg.MetadataPrefix+"/", http.StripPrefix(s.cfg.MetadataPrefix, s.cfg.Metadata))
	}
	p := api.Prefix
	write("POST "+p+"/apply", s.apply)
	read("GET "+p+"/pools", s.listPools)
	read("GET "+p+"/pools/{name}", s.getPool)
	read("GET "+p+"/pools/{name}/history", s.poolHistory)
	write("DELETE "+p+"/pools/{name}", s.deletePool)
	read("GET "+p+"/nodes", s.listNodes)
	read("GET "+p+"/nodes/{name}", s.getNode)
	write("POST "+p+"/nodes/{name}/evict", s.evict)
	read("GET "+p+"/jobs", s.listJobs)
	read("GET "+p+"/jobs/{name}", s.getJob)
	write("DELETE "+p+"/jobs/{name}", s.deleteJob)
	read("GET "+p+"/jobs/{name}/tasks/{task}/logs", s.logs)
	read("GET "+p+"/services", s.listServices)
	read("GET "+p+"/services/{name}", s.getService)
	write("DELETE "+p+"/services/{name}", s.deleteService)
	read("GET "+p+"/replicas", s.listReplicas)
	read("GET "+p+"/events", s.events)
	read("GET "+p+"/cost", s.cost)
	read("GET "+p+"/services/{name}/history", s.serviceHistory)
	read("GET "+p+"/info", s.info)
	read("GET "+p+"/controlplane", s.controlPlane)
	read("GET "+p+"/watch", s.watch)
	read("GET "+p+"/cost/history", s.costHistory)
	// Inference through the gateway changes no state (the gateway's own
	// port takes no API token at all): a viewer may try a model.
	read("GET "+p+"/gateway/{path...}", s.toGateway)
	read("POST "+p+"/gateway/{path...}", s.toGateway)
	read("GET "+p+"/blobs", s.listBlobs)
	read("GET "+p+"/blobs/{path...}", s.getBlob)
	write("PUT "+p+"/blobs/{path...}", s.putBlob)
	// Tokens are an admin's business, listing them too.
	write("GET "+p+"/tokens", s.listTokens)
	write("POST "+p+"/tokens", s.createToken)
	write("DELETE "+p+"/tokens/{name}", s.revokeToken)
	// A backup holds every spec and secret hash: an admin's, though it
	// changes nothing.
	write("GET "+p+"/backup", s.backup)
	s.batchRoutes(read, write, agent)
	// A plan launches nothing and writes nothing: a viewer may ask.
	read("GET "+p+"/plan/traces", s.planTraces)
	read("POST "+p+"/plan", s.plan)
	s.mux.Handle("POST "+p+"/agent/register", s.auth(needJoin, s.register))
	agent("POST "+p+"/agent/heartbeat", s.heartbeat)
	agent("POST "+p+"/agent/tasks/{id}/report", s.report)
	agent("POST "+p+"/agent/notice", s.notice)
	agent("POST "+p+"/agent/at-risk", s.atRisk)
	// The web console: everything outside the API.
	// (No method in the pattern: one would conflict with the API's
	// catch-all below. The console answers other methods with 405.)
	s.mux.Handle("/", console.Handler())
	// Anything else under the API prefix still needs a token, then 404s.
	read(p+"/", func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("%s %s: %w", r.Method, r.URL.Path, store.ErrNotFound)
	})
}

// badRequest marks an error as the client's fault.
type badRequest struct{ err error }

func (b badRequest) Error() string { return b.err.Error() }
func (b badRequest) Unwrap() error { return b.err }

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	var br badRequest
	var se *spec.Error
	switch {
	case errors.As(err, &br), errors.As(err, &se):
		code = http.StatusBadRequest
	case errors.Is(err, store.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, store.ErrConflict):
		code = http.StatusConflict
	case errors.As(err, new(forbidden)):
		code = http.StatusForbidden
	case errors.Is(err, errNotImplemented):
		code = http.StatusNotImplemented
	}
	if code == http.StatusInternalServerError {
		s.cfg.Log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, code, api.Error{Error: err.Error()})
}

var errNotImplemented = errors.New("not available in this control plane")

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// writeCompactJSON is writeJSON without the indentation, for what only
// agents read at fleet rate (heartbeats, reports): indenting was ~a
// quarter of a heartbeat's encoding and made its answer about twice as
// long on the wire.
func writeCompactJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest{fmt.Errorf("request body: %w", err)}
	}
	return nil
}

func (s *Server) kick() {
	if s.cfg.Plane != nil {
		s.cfg.Plane.Kick()
	}
}

// apply takes multi-document YAML, checks every document (syntax, fields,
// and references between them) and stores all of them or none.
func (s *Server) apply(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 8<<20))
	if err != nil {
		return badRequest{fmt.Errorf("request body: %w", err)}
	}
	files := []api.File{{Name: r.URL.Query().Get("source"), Data: string(body)}}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		var req api.ApplyRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return badRequest{fmt.Errorf("request body: %w", err)}
		}
		files = req.Files
	}
	var pools []spec.Pool
	var jobs []spec.Job
	var svcs []spec.Service
	var batches []spec.BatchInference
	var errs []error
	for _, f := range files {
		docs, err := spec.Parse([]byte(f.Data))
		if err != nil {
			errs = append(errs, prefixSource(f.Name, err))
			continue
		}
		for _, d := range docs {
			switch {
			case d.Pool != nil:
				// A replayed market's trace is read where the market
				// runs: here. Refused now, not at the first tick.
				if m := d.Pool.Spec.Market().Market; m != nil {
					if _, err := trace.Load(m.Trace); err != nil {
						errs = append(errs, prefixSource(f.Name, fmt.Errorf("pool %s: spec.local.market.trace: %v; give a trace file the control plane can read (a path on its machine, relative to where it runs; see traces/README.md)", d.Pool.Metadata.Name, err)))
						continue
					}
				}
				pools = append(pools, *d.Pool)
			case d.Job != nil:
				jobs = append(jobs, *d.Job)
			case d.Service != nil:
				svcs = append(svcs, *d.Service)
			case d.BatchInference != nil:
				batches = append(batches, *d.BatchInference)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return badRequest{err}
	}
	if err := s.checkRefs(r.Context(), pools, jobs, svcs); err != nil {
		return badRequest{err}
	}
	batchInputs, err := s.checkBatches(r.Context(), pools, batches)
	if err != nil {
		return err
	}
	docs := make([]store.ServiceDoc, len(svcs))
	for i, v := range svcs {
		d, err := control.ServiceDoc(v)
		if err != nil {
			return err
		}
		docs[i] = d
	}
	res, err := s.cfg.Store.Apply(r.Context(), pools, jobs, docs...)
	if err != nil {
		return err
	}
	if res, err = s.applyBatches(r.Context(), res, batches, batchInputs); err != nil {
		return err
	}
	s.kick()
	writeJSON(w, http.StatusOK, convert(res, toApplyResult))
	return nil
}

// prefixSource names the file on every line of a spec error (one line per
// problem), not only on the first.
func prefixSource(source string, err error) error {
	var se *spec.Error
	switch {
	case source == "":
		return err
	case errors.As(err, &se):
		se.File = source
		return se
	}
	return fmt.Errorf("%s: %w", source, err)
}

// checkRefs checks what one document cannot check alone: instance types
// exist in the price table, jobs name pools that exist (stored or in the
// same apply), and every task fits on a node of the pools it may use.
func (s *Server) checkRefs(ctx context.Context, pools []spec.Pool, jobs []spec.Job, svcs []spec.Service) error {
	stored, err := s.cfg.Store.ListPools(ctx)
	if err != nil {
		return err
	}
	all := map[string]spec.Pool{}
	for _, p := range stored {
		all[p.Spec.Metadata.Name] = p.Spec
	}
	var errs []error
	for _, p := range pools {
		if _, err := control.NodeCapacity(p); err != nil {
			errs = append(errs, err)
		}
		all[p.Metadata.Name] = p
	}
	for _, j := range jobs {
		for i, t := range j.ExpandTasks() {
			field := fmt.Sprintf("job %s: spec.tasks[%d]", j.Metadata.Name, i)
			poolField := field + ".pool"
			if j.Spec.Template != nil {
				field = fmt.Sprintf("job %s: spec.template", j.Metadata.Name)
				poolField = field + ".pool"
				if j.Spec.Template.Pool == "" {
					poolField = fmt.Sprintf("job %s: spec.pool", j.Metadata.Name)
				}
			} else if j.Spec.Tasks[i].Pool == "" {
				poolField = fmt.Sprintf("job %s: spec.pool", j.Metadata.Name) // the task inherits the job's pool
			}
			if t.Pool != "" {
				if _, ok := all[t.Pool]; !ok {
					errs = append(errs, fmt.Errorf("%s: no pool named %q; apply the pool first or in the same file (spotml get pools lists them)", poolField, t.Pool))
					break
				}
			}
			fits := false
			var offered []string
			for name, p := range all {
				if (t.Pool != "" && name != t.Pool) || (t.Priority != "" && p.Spec.Priority != t.Priority) {
					continue
				}
				c, err := control.NodeCapacity(p)
				if err != nil {
					continue
				}
				offered = append(offered, fmt.Sprintf("%s: cpu %g, memory %s, gpu %d", name, c.CPU, c.Memory, c.GPU))
				if t.Resources.CPU <= c.CPU && t.Resources.Memory <= c.Memory && t.Resources.GPU <= c.GPU {
					fits = true
				}
			}
			if !fits {
				if len(offered) == 0 {
					errs = append(errs, fmt.Errorf("%s: no pool matches (pool %q, priority %q); apply a pool first", field, t.Pool, t.Priority))
				} else {
					errs = append(errs, fmt.Errorf("%s.resources: cpu %g, memory %s, gpu %d is more than one node offers (%s); lower the request or use a larger instanceType",
						field, t.Resources.CPU, t.Resources.Memory, t.Resources.GPU, strings.Join(offered, "; ")))
				}
				break
			}
			if j.Spec.Template != nil {
				break // every copy is the same
			}
		}
	}
	for _, v := range svcs {
		errs = append(errs, checkService(v, all))
	}
	return errors.Join(errs...)
}

// checkService checks a service against the pools: those it names exist,
// and a replica fits on a node of a pool it may use, spot and on-demand as
// its placement needs.
func checkService(v spec.Service, all map[string]spec.Pool) error {
	name := v.Metadata.Name
	pl := v.Spec.ResolvedPlacement()
	for i, p := range pl.Pools {
		if _, ok := all[p]; !ok {
			return fmt.Errorf("service %s: spec.placement.pools[%d]: no pool named %q; apply the pool first or in the same file (spotml get pools lists them)", name, i, p)
		}
	}
	allowed := func(pool string) bool { return len(pl.Pools) == 0 || slices.Contains(pl.Pools, pool) }
	lo, hi := v.Spec.ReplicaRange()
	od, spot := pl.Mix(hi)
	if od0, _ := pl.Mix(lo); od0 > od {
		od = od0
	}
	need := map[string]bool{spec.PrioritySpot: spot > 0, spec.PriorityOnDemand: od > 0 || pl.FallbackToOnDemand}
	req := v.Spec.Resources
	for _, prio := range []string{spec.PrioritySpot, spec.PriorityOnDemand} {
		if !need[prio] {
			continue
		}
		var offered []string
		fits := false
		for pn, p := range all {
			if p.Spec.Priority != prio || !allowed(pn) {
				continue
			}
			c, err := control.NodeCapacity(p)
			if err != nil {
				continue
			}
			offered = append(offered, fmt.Sprintf("%s: cpu %g, memory %s, gpu %d", pn, c.CPU, c.Memory, c.GPU))
			if req.CPU <= c.CPU && req.Memory <= c.Memory && req.GPU <= c.GPU {
				fits = true
			}
		}
		switch {
		case len(offered) == 0 && prio == spec.PriorityOnDemand && od == 0:
			// Only fallback wanted on-demand: without such a pool there
			// are simply no stand-ins.
		case len(offered) == 0:
			return fmt.Errorf("service %s: spec.placement: tier %s needs %s replicas but no %s pool is available to it; apply one (priority: %s) or change the placement",
				name, pl.Tier, prio, prio, prio)
		case !fits:
			return fmt.Errorf("service %s: spec.resources: cpu %g, memory %s, gpu %d is more than one %s node offers (%s); lower the request or use a larger instanceType",
				name, req.CPU, req.Memory, req.GPU, prio, strings.Join(offered, "; "))
		}
	}
	if f := v.Spec.Auth.KeysFile; f != "" {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("service %s: spec.auth.keysFile: %v; the file is read on the control plane's machine: give its absolute path there", name, err)
		}
	}
	return nil
}

func (s *Server) listPools(w http.ResponseWriter, r *http.Request) error {
	ps, err := s.cfg.Store.ListPools(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, convert(ps, toPool))
	return nil
}

func (s *Server) getPool(w http.ResponseWriter, r *http.Request) error {
	p, err := s.cfg.Store.GetPool(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toPool(p))
	return nil
}

func (s *Server) deletePool(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Store.DeletePool(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	s.kick()
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) error {
	ns, err := s.cfg.Store.ListNodes(r.Context())
	if err != nil {
		return err
	}
	if r.URL.Query().Get("all") != "true" {
		live := ns[:0]
		for _, n := range ns {
			if store.Live(n.State) {
				live = append(live, n)
			}
		}
		ns = live
	}
	writeJSON(w, http.StatusOK, convert(ns, toNode))
	return nil
}

func (s *Server) getNode(w http.ResponseWriter, r *http.Request) error {
	n, err := s.cfg.Store.GetNode(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toNode(n))
	return nil
}

func (s *Server) evict(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Evictor == nil {
		return fmt.Errorf("evict: %w (it needs the local provider: run spotml up)", errNotImplemented)
	}
	var req api.EvictRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return err
		}
	}
	var d time.Duration
	if req.Notice != "" {
		var err error
		d, err = time.ParseDuration(req.Notice)
		if err != nil || d <= 0 {
			return badRequest{fmt.Errorf("notice: %q is not a positive duration; write it like 30s or 2m", req.Notice)}
		}
	}
	if err := s.cfg.Evictor.Evict(r.Context(), r.PathValue("name"), d); err != nil {
		return err
	}
	n, err := s.cfg.Store.GetNode(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	s.kick()
	writeJSON(w, http.StatusAccepted, toNode(n))
	return nil
}

func (s *Server) listJobs(w http.ResponseWriter, r *http.Request) error {
	js, err := s.cfg.Store.ListJobs(r.Context())
	if err != nil {
		return err
	}
	out := convert(js, toJob)
	if err := s.explainJobs(r.Context(), js, out, false); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) error {
	j, err := s.cfg.Store.GetJob(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	out := []api.Job{toJob(j)}
	if err := s.explainJobs(r.Context(), []store.Job{j}, out, true); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out[0])
	return nil
}

func (s *Server) deleteJob(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Store.DeleteJob(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	s.kick()
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// logs streams a task's stdout or stderr: every attempt in order, each
// behind a header line, or one attempt with ?attempt=N.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) error {
	t, err := s.cfg.Store.GetTask(r.Context(), r.PathValue("name"), r.PathValue("task"))
	if err != nil {
		return err
	}
	stream := r.URL.Query().Get("stream")
	if stream == "" {
		stream = "stdout"
	}
	if stream != "stdout" && stream != "stderr" {
		return badRequest{fmt.Errorf("stream: %q is not stdout or stderr", stream)}
	}
	first, last := 1, t.Attempt
	if a := r.URL.Query().Get("attempt"); a != "" {
		n, err := strconv.Atoi(a)
		if err != nil || n < 1 || n > t.Attempt {
			return badRequest{fmt.Errorf("attempt: %q is not an attempt of this task (1..%d)", a, t.Attempt)}
		}
		first, last = n, n
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for a := first; a <= last; a++ {
		b, err := s.cfg.Blobs.ReadAll(r.Context(), api.LogLocation(t.Job, t.JobUID, t.Name, a, stream))
		if blob.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		if first != last {
			fmt.Fprintf(w, "----- attempt %d -----\n", a)
		}
		w.Write(b)
	}
	return nil
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := store.EventFilter{Kind: q.Get("kind"), Object: q.Get("object"), Of: q.Get("of")}
	if kind, name, ok := strings.Cut(f.Of, "/"); f.Of != "" && (!ok || kind == "" || name == "") {
		return badRequest{fmt.Errorf("of: %q is not KIND/NAME, e.g. job/train or service/mnist", f.Of)}
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return badRequest{fmt.Errorf("after: %q is not an event id", v)}
		}
		f.AfterID = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return badRequest{fmt.Errorf("limit: %q is not a count", v)}
		}
		f.Limit = n
	}
	es, err := s.cfg.Store.ListEvents(r.Context(), f)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, convert(es, toEvent))
	return nil
}

func (s *Server) cost(w http.ResponseWriter, r *http.Request) error {
	days, runs, err := costRecord(r.Context(), s.cfg.Store)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toCost(cost.SummarizeDays(days, runs, s.cfg.Now())))
	return nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
