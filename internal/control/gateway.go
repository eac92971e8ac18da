package control

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spotml/spotml/internal/autoscale"
	"github.com/spotml/spotml/internal/gateway"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// Router is the gateway as the feed sees it.
type Router interface {
	Update(routes []gateway.Route)
	QPS(window time.Duration) map[string]float64
	InFlight(window time.Duration) map[string]gateway.InFlight
	Stats() []gateway.ServiceStats
}

var _ Router = (*gateway.Gateway)(nil)

// FeedOptions tunes FeedGateway. Zero values get defaults.
type FeedOptions struct {
	ID        string        // names the gateway in the store's gateway stats; default "gateway"
	Interval  time.Duration // route refresh; default 200ms
	QPSWindow time.Duration // averaging window of the QPS reported; default 10s
	QPSEvery  time.Duration // how often QPS and latencies are reported; default 1s
	// The windows that requests in flight are averaged over; default the
	// autoscaler's (autoscale.StableWindow, autoscale.PanicWindow).
	StableWindow, PanicWindow time.Duration
}

// FeedGateway keeps a gateway's routes in step with the store (ready
// replicas; those on noticed nodes or being stopped marked draining) and
// reports what it measures (QPS for the autoscaler, latencies and errors
// for the console) until ctx ends. It works the same inside `spotml up`
// and in a separate `spotml gateway` process over the same store.
func FeedGateway(ctx context.Context, st *sqlstore.Store, gw Router, log *slog.Logger, now func() time.Time, opt FeedOptions) error {
	if opt.ID == "" {
		opt.ID = "gateway"
	}
	if opt.Interval == 0 {
		opt.Interval = 200 * time.Millisecond
	}
	if opt.QPSWindow == 0 {
		opt.QPSWindow = 10 * time.Second
	}
	if opt.QPSEvery == 0 {
		opt.QPSEvery = time.Second
	}
	if opt.StableWindow == 0 {
		opt.StableWindow = autoscale.StableWindow
	}
	if opt.PanicWindow == 0 {
		opt.PanicWindow = autoscale.PanicWindow
	}
	keys := keyFiles{}
	// On PostgreSQL a route change wakes the feed when it commits; the
	// ticker stays, for QPS reports and as a backstop.
	wake := make(chan struct{}, 1)
	st.WatchRoutes(ctx, func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	t := time.NewTicker(opt.Interval)
	defer t.Stop()
	var lastQPS time.Time
	failing := false
	for {
		routes, err := Routes(ctx, st, keys.read)
		if err == nil {
			gw.Update(routes)
			if now().Sub(lastQPS) >= opt.QPSEvery {
				lastQPS = now()
				err = st.PutGatewayStats(ctx, opt.ID, gatewayStats(gw, opt))
			}
		}
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			failing = true
			log.Error("gateway cannot read its routes; keeping the last ones", "err", err)
		case err == nil && failing:
			failing = false
			log.Info("gateway routes readable again")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-wake:
		}
	}
}

// gatewayStats joins, per service, the gateway's QPS over its window,
// requests in flight over the stable and panic windows, and its last
// minute's latencies and counts.
func gatewayStats(gw Router, opt FeedOptions) map[string]store.GatewayStat {
	qps := gw.QPS(opt.QPSWindow)
	out := make(map[string]store.GatewayStat, len(qps))
	for svc, q := range qps {
		out[svc] = store.GatewayStat{QPS: q}
	}
	panicked := gw.InFlight(opt.PanicWindow)
	for svc, f := range gw.InFlight(opt.StableWindow) {
		st := out[svc]
		st.InFlight, st.InFlightMax, st.InFlightPanic = f.Avg, f.Max, panicked[svc].Avg
		out[svc] = st
	}
	for _, ss := range gw.Stats() {
		st := out[ss.Service]
		st.P50, st.P99 = ss.P50.Seconds(), ss.P99.Seconds()
		st.Requests, st.Errors = ss.Requests, ss.Errors
		out[ss.Service] = st
	}
	return out
}

// Routes builds the gateway's routing table from the store. readKeys reads
// an API key file (named by a service's spec.auth.keysFile).
func Routes(ctx context.Context, st *sqlstore.Store, readKeys func(string) ([]string, error)) ([]gateway.Route, error) {
	svcs, err := st.ListServices(ctx, QPSMaxAge)
	if err != nil {
		return nil, err
	}
	routes := make([]gateway.Route, 0, len(svcs))
	for _, svc := range svcs {
		var sp spec.Service
		if err := json.Unmarshal(svc.Spec, &sp); err != nil {
			return nil, fmt.Errorf("service %s: stored spec: %w", svc.Name, err)
		}
		rt := gateway.Route{Service: svc.Name, Keys: sp.Spec.Auth.Keys,
			MaxRequestBytes: int64(sp.Spec.Limits.MaxRequestBytes), MaxInFlight: sp.Spec.Limits.MaxInFlight}
		if f := sp.Spec.Auth.KeysFile; f != "" {
			ks, err := readKeys(f)
			if err != nil {
				// Fail closed: a service with keys it cannot read takes no
				// request rather than every request.
				ks = []string{"\x00unreadable key file " + f}
			}
			rt.Keys = append(rt.Keys, ks...)
		}
		for _, r := range svc.Replicas {
			if r.Addr == "" || (r.State != store.ReplicaReady && r.State != store.ReplicaStopping) {
				continue
			}
			rt.Replicas = append(rt.Replicas, gateway.Replica{ID: r.Name, Addr: r.Addr, Version: r.Version, Node: r.Node,
				Priority: r.Priority, Draining: r.Noticed || r.State == store.ReplicaStopping})
		}
		routes = append(routes, rt)
	}
	return routes, nil
}

// ReadKeyFile reads an API key file: one key per line, blank lines and
// lines starting with # ignored.
func ReadKeyFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			keys = append(keys, l)
		}
	}
	return keys, nil
}

// keyFiles caches API key files by path, re-read when they change.
type keyFiles map[string]keyFile

type keyFile struct {
	mod  time.Time
	size int64
	keys []string
}

func (k keyFiles) read(path string) ([]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if c, ok := k[path]; ok && c.mod.Equal(fi.ModTime()) && c.size == fi.Size() {
		return c.keys, nil
	}
	keys, err := ReadKeyFile(path)
	if err != nil {
		return nil, err
	}
	k[path] = keyFile{mod: fi.ModTime(), size: fi.Size(), keys: keys}
	return keys, nil
}
