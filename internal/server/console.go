package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// What the web console reads beyond the plain REST API: one live stream
// of the fleet, jobs, services, events and cost; the history behind its
// charts; and a way to call a service through the gateway from the page.

// Watch stream tuning.
const (
	watchEvery = time.Second // how often the stream looks for changes
	// With change notifications (PostgreSQL), streams re-read when one
	// arrives, waiting watchSettle for the rest of a burst, and at least
	// this often for what changes with time alone (cost, QPS ageing).
	watchSlowEvery  = 10 * time.Second
	watchSettle     = 50 * time.Millisecond
	watchPing       = 15 * time.Second // keep-alive comment when nothing changed
	watchEndedNodes = 15 * time.Minute // ended nodes stay in the fleet this long
	watchEvents     = 500              // events sent when a stream opens
)

func (s *Server) info(w http.ResponseWriter, r *http.Request) error {
	version := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		version = bi.Main.Version
	}
	var inst, leader string
	var term int64
	if s.cfg.Plane != nil {
		inst = s.cfg.Plane.Leadership().Instance
		if cp, err := s.cfg.Plane.ControlPlane(r.Context()); err == nil && cp.Lease.Valid {
			leader, term = cp.Lease.Holder, cp.Lease.Term
		}
	}
	writeJSON(w, http.StatusOK, api.Info{
		Instance:   inst,
		Leader:     leader,
		Term:       term,
		Version:    version,
		Time:       s.cfg.Now(),
		GatewayURL: s.cfg.GatewayURL,
		Evict:      s.cfg.Evictor != nil,
		Predict:    s.cfg.Gateway != nil,
		Role:       caller(r).kind,
		TokenName:  caller(r).name,
	})
	return nil
}

// watch streams server-sent events: each kind of view once at the start
// and again whenever it changes, events as they are recorded. The store is
// the one source of truth (a separate gateway or another control-plane
// instance writes to it too), so the stream follows the store, not this
// process's writers: on PostgreSQL it re-reads when the store notifies a
// change (triggers, in the transaction of the change, whoever made it);
// on SQLite it polls every watchEvery.
func (s *Server) watch(w http.ResponseWriter, r *http.Request) error {
	flusher, ok := w.(http.Flusher)
	if !ok {
		return fmt.Errorf("watch: this connection cannot stream")
	}
	// Check once before the headers go out, so that a broken store still
	// answers with a status code.
	views, err := s.views.get(r.Context(), s.changes.generation(), s.watchViews)
	if err != nil {
		return err
	}
	evs, err := s.cfg.Store.ListEvents(r.Context(), store.EventFilter{Limit: watchEvents})
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	st := newWatcher()
	st.send(w, views, evs)
	flusher.Flush()
	lastWrite := time.Now()
	changed, live := s.changes.wait(s)
	every := watchEvery
	if live {
		every = watchSlowEvery
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-s.streams.Done():
			return nil
		case <-tick.C:
		case <-changed:
			select {
			case <-r.Context().Done():
				return nil
			case <-time.After(watchSettle):
			}
		}
		// Armed before the read: a change committed while it runs
		// wakes the stream again.
		changed, _ = s.changes.wait(s)
		n, err := st.tick(r.Context(), s, w)
		if err != nil {
			if r.Context().Err() != nil {
				return nil
			}
			// Keep the stream: the next tick tries again, and the
			// client keeps what it has.
			s.cfg.Log.Warn("watch: read store", "err", err)
		}
		if n == 0 && time.Since(lastWrite) >= watchPing {
			n, _ = fmt.Fprint(w, ": ping\n\n")
		}
		if n > 0 {
			lastWrite = time.Now()
			flusher.Flush()
		}
	}
}

// watcher is one stream's memory of what it sent.
type watcher struct {
	sent      map[string][]byte // view name → key of what was sent
	lastEvent int64
}

func newWatcher() *watcher { return &watcher{sent: map[string][]byte{}} }

// tick reads the store and writes what changed since the last tick: the
// views whose key changed and the events recorded since. It returns the
// bytes written.
func (st *watcher) tick(ctx context.Context, s *Server, w io.Writer) (int, error) {
	views, err := s.views.get(ctx, s.changes.generation(), s.watchViews)
	if err != nil {
		return 0, err
	}
	evs, err := s.cfg.Store.ListEvents(ctx, store.EventFilter{AfterID: st.lastEvent})
	if err != nil {
		return 0, err
	}
	return st.send(w, views, evs), nil
}

func (st *watcher) send(w io.Writer, views []view, evs []store.Event) int {
	n := 0
	for _, v := range views {
		if bytes.Equal(st.sent[v.name], v.key) {
			continue
		}
		st.sent[v.name] = v.key
		n += writeSSE(w, v.name, v.data)
	}
	if len(evs) > 0 {
		st.lastEvent = evs[len(evs)-1].ID
		b, _ := json.Marshal(convert(evs, toEvent))
		n += writeSSE(w, "events", b)
	}
	return n
}

// viewCache shares the views among the open streams: each stream ticks
// on its own, but the store is read at most twice a watchEvery however
// many consoles are open (events, a cheap indexed read, stay per stream).
type viewCache struct {
	mu    sync.Mutex
	at    time.Time // wall clock of the last read
	gen   uint64    // the change generation the last read saw
	views []view
}

// get returns the views as read by the streams' last read, or reads them:
// shared reads serve streams that look within watchEvery/2 of each other,
// unless a change was notified since (gen moved).
func (c *viewCache) get(ctx context.Context, gen uint64, read func(context.Context) ([]view, error)) ([]view, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.views != nil && c.gen == gen && time.Since(c.at) < watchEvery/2 {
		return c.views, nil
	}
	v, err := read(ctx)
	if err != nil {
		return nil, err
	}
	c.views, c.at, c.gen = v, time.Now(), gen
	return v, nil
}

// changeFeed tells the watch streams that the store notified a change.
// The listener starts with the first stream and runs until the streams
// are closed (CloseStreams).
type changeFeed struct {
	once sync.Once
	live bool
	mu   sync.Mutex
	gen  uint64
	ch   chan struct{} // closed at the next change
}

// wait returns a channel closed at the next change notification, and
// whether the store notifies changes at all (if not, the channel is nil
// and streams poll).
func (f *changeFeed) wait(s *Server) (<-chan struct{}, bool) {
	f.once.Do(func() {
		f.ch = make(chan struct{})
		f.live = s.cfg.Store.Watch(s.streams, sqlstore.ChangesChannel, f.bump)
	})
	if !f.live {
		return nil, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ch, true
}

// generation counts the change notifications so far.
func (f *changeFeed) generation() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen
}

func (f *changeFeed) bump() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gen++
	close(f.ch)
	f.ch = make(chan struct{})
}

// view is one named part of the watch stream: data is what is sent, key
// what decides whether it changed (data without the fields that change on
// every tick).
type view struct {
	name      string
	data, key []byte
}

func (s *Server) watchViews(ctx context.Context) ([]view, error) {
	now := s.cfg.Now()
	pools, err := s.cfg.Store.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	nodes, err := s.cfg.Store.RecentNodes(ctx, now.Add(-watchEndedNodes))
	if err != nil {
		return nil, err
	}
	for i := range nodes {
		nodes[i].HeartbeatAt = time.Time{} // changes every few seconds and says nothing to a viewer
	}
	jobs, err := s.cfg.Store.ListJobs(ctx)
	if err != nil {
		return nil, err
	}
	svcs, err := s.cfg.Store.ListServices(ctx, control.QPSMaxAge)
	if err != nil {
		return nil, err
	}
	days, runs, err := costRecord(ctx, s.cfg.Store)
	if err != nil {
		return nil, err
	}
	fl := api.Fleet{Pools: convert(pools, toPool), Nodes: convert(nodes, toNode)}
	fleetKey, _ := json.Marshal(fl)
	fl.Time = now
	out := []view{{name: "fleet", key: fleetKey}}
	out[0].data, _ = json.Marshal(fl)
	// Cost changes whenever a node runs: compare it to three significant
	// digits so that a running fleet is not resent every second, yet a
	// small one (cents a day) still moves.
	sum := toCost(cost.SummarizeDays(days, runs, now))
	costKey := fmt.Appendf(nil, "%.3g %.3g %d", sum.Spent, sum.OnDemand, len(sum.Lines))
	for _, v := range []struct {
		name string
		v    any
		key  []byte
	}{{"jobs", convert(jobs, toJob), nil}, {"services", convert(svcs, toService), nil}, {"cost", sum, costKey}} {
		b, err := json.Marshal(v.v)
		if err != nil {
			return nil, err
		}
		key := v.key
		if key == nil {
			key = b
		}
		out = append(out, view{name: v.name, data: b, key: key})
	}
	batches, err := s.batchView(ctx)
	if err != nil {
		return nil, err
	}
	return append(out, batches), nil
}

func writeSSE(w io.Writer, event string, data []byte) int {
	// json.Marshal never writes a newline, so data is one line.
	n, _ := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data)
	return n
}

// serviceHistory is what the service's charts draw: one sample every
// control.SampleEvery over a window (default 1h, at most
// store.SampleRetention).
func (s *Server) serviceHistory(w http.ResponseWriter, r *http.Request) error {
	window := time.Hour
	if v := r.URL.Query().Get("window"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > store.SampleRetention {
			return badRequest{fmt.Errorf("window: %q is not a duration between 1s and %s (what is kept); write it like 1h or 15m", v, store.SampleRetention)}
		}
		window = d
	}
	name := r.PathValue("name")
	samples, err := s.cfg.Store.ServiceSamples(r.Context(), name, s.cfg.Now().Add(-window))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.ServiceHistory{Service: name, Samples: convert(samples, toSample)})
	return nil
}

// costHistory is cumulative spend against on-demand, per pool and in
// total, from the first node's start until now; pruned node runs count
// through their per-day totals.
func (s *Server) costHistory(w http.ResponseWriter, r *http.Request) error {
	points := 120
	if v := r.URL.Query().Get("points"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 || n > 2000 {
			return badRequest{fmt.Errorf("points: %q is not a count between 2 and 2000", v)}
		}
		points = n
	}
	days, runs, err := costRecord(r.Context(), s.cfg.Store)
	if err != nil {
		return err
	}
	now := s.cfg.Now()
	from := now
	for _, u := range runs {
		if u.Start.Before(from) {
			from = u.Start
		}
	}
	for _, d := range days {
		if d.First.Before(from) {
			from = d.First
		}
	}
	writeJSON(w, http.StatusOK, toCostHistory(cost.HistoryDays(days, runs, from, now, points)))
	return nil
}

// toGateway hands a request to this control plane's own gateway, as a
// client of the service would send it: same path below the prefix, same
// body and content type, the service's API key if the caller gives one.
// The admin token that let the request in is not passed on: it is not a
// service key.
func (s *Server) toGateway(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Gateway == nil {
		return fmt.Errorf("gateway: %w (start spotml with --gateway-addr, or call the gateway's own address)", errNotImplemented)
	}
	out := r.Clone(r.Context())
	out.URL.Path = "/" + r.PathValue("path")
	out.URL.RawPath = ""
	out.RequestURI = ""
	out.Header = http.Header{}
	for _, k := range []string{"Content-Type", "Accept", "X-API-Key"} {
		if v := r.Header.Get(k); v != "" {
			out.Header.Set(k, v)
		}
	}
	s.cfg.Gateway.ServeHTTP(w, out)
	return nil
}
