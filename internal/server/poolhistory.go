package server

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/trace"
)

// maxHistoryTicks bounds a history's size (a week at 1s would be 600k).
const maxHistoryTicks = 200_000

// poolHistory answers GET /pools/{name}/history: the spot capacity the
// pool met over ?window= (default 48h, no earlier than the pool's
// creation) in ticks of ?gap= (default: the window in 10,000 ticks, at
// least 1s), as a Can't Be Late JSON trace (control.PoolHistory): what
// `spotml plan --pool` replays, and what a pool's market.trace may replay
// again.
func (s *Server) poolHistory(w http.ResponseWriter, r *http.Request) error {
	var window, gap time.Duration
	for _, d := range []struct {
		field string
		to    *time.Duration
	}{{"window", &window}, {"gap", &gap}} {
		v := r.URL.Query().Get(d.field)
		if v == "" {
			continue
		}
		x, err := time.ParseDuration(v)
		if err != nil || x <= 0 {
			return badRequest{fmt.Errorf("%s: %q is not a positive duration such as 48h or 10s", d.field, v)}
		}
		*d.to = x
	}
	b, err := s.historyTrace(r.Context(), r.PathValue("name"), window, gap)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
	return nil
}

// historyTrace is a spot pool's history as trace JSON (see poolHistory);
// zero window and gap take the defaults.
func (s *Server) historyTrace(ctx context.Context, name string, window, gap time.Duration) ([]byte, error) {
	pool, err := s.cfg.Store.GetPool(ctx, name)
	if err != nil {
		return nil, err
	}
	if pool.Spec.Spec.Priority != spec.PrioritySpot {
		return nil, badRequest{fmt.Errorf("pool %s is %s: its history is no spot market; name a spot pool", name, pool.Spec.Spec.Priority)}
	}
	if window == 0 {
		window = control.Lookback
	}
	to := s.cfg.Now()
	from := to.Add(-window)
	if pool.CreatedAt.After(from) {
		from = pool.CreatedAt
	}
	span := to.Sub(from)
	if gap == 0 {
		gap = max(time.Second, (span / 10_000).Round(time.Second))
	}
	if span <= 0 {
		span = gap
	}
	if ticks := span / gap; ticks > maxHistoryTicks {
		return nil, badRequest{fmt.Errorf("gap: %s makes %d ticks of %s; give a gap of at least %s", gap, ticks, span.Round(time.Second), span/maxHistoryTicks)}
	}
	nodes, err := s.cfg.Store.RecentNodes(ctx, from)
	if err != nil {
		return nil, err
	}
	evs, err := s.cfg.Store.ListEvents(ctx, store.EventFilter{Kind: control.EventLaunchFailed, Of: "pool/" + name, Limit: 100_000})
	if err != nil {
		return nil, err
	}
	var refused []time.Time
	for _, e := range evs {
		if e.Reason == control.ReasonNoCapacity {
			refused = append(refused, e.Time)
		}
	}
	return trace.EncodeJSON(gap, control.PoolHistory(pool.Spec, nodes, refused, from, from.Add(span), gap))
}
