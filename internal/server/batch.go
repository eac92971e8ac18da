package server

import (
	"context"
	"sync"

	"github.com/spotml/spotml/internal/store"
)

// reportBatcher commits agents' reports in groups: while one transaction
// is being written, the reports that arrive wait and then go together in
// the next one. One disk sync then serves many agents, which is what
// bounds completions per second (see bench/RESULTS.md). No goroutine of
// its own: the first waiting request does the work (leader/follower).
type reportBatcher struct {
	commit func(context.Context, []store.Report) ([]bool, error)

	mu      sync.Mutex
	pending []*queuedReport
	busy    bool
}

type queuedReport struct {
	r    store.Report
	ok   bool
	err  error
	done chan struct{}
}

func (b *reportBatcher) report(ctx context.Context, r store.Report) (bool, error) {
	q := &queuedReport{r: r, done: make(chan struct{})}
	b.mu.Lock()
	b.pending = append(b.pending, q)
	if b.busy {
		b.mu.Unlock()
		select {
		case <-q.done:
			return q.ok, q.err
		case <-ctx.Done():
			return false, ctx.Err() // it is still committed: reports are fenced, a retry is harmless
		}
	}
	b.busy = true
	for len(b.pending) > 0 {
		batch := b.pending
		b.pending = nil
		b.mu.Unlock()
		rs := make([]store.Report, len(batch))
		for i, q := range batch {
			rs[i] = q.r
		}
		oks, err := b.commit(context.WithoutCancel(ctx), rs)
		for i, q := range batch {
			if err == nil {
				q.ok = oks[i]
			}
			q.err = err
			close(q.done)
		}
		b.mu.Lock()
	}
	b.busy = false
	b.mu.Unlock()
	return q.ok, q.err
}
