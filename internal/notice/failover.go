package notice

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Failover is a Watcher of one node that reads the first of several
// metadata endpoints that answers: the simulated metadata that every
// control-plane instance sharing a store serves from the notices the store
// holds. It keeps to the endpoint that last answered and moves on when
// that one fails, so that a node still hears its notice after the
// instance that launched it is gone; SetBaseURLs follows the instances as
// they come and go.
type Failover interface {
	Watcher
	SetBaseURLs(baseURLs []string) error
}

// NewWatchers returns a Failover of format over baseURLs. It is an
// Acknowledger for Azure and a RiskWatcher for AWS, as NewWatcher's are.
func NewWatchers(format string, baseURLs []string, client *http.Client, now func() time.Time) (Failover, error) {
	f := &failover{format: format, client: client, now: now, byURL: map[string]Watcher{}}
	if err := f.SetBaseURLs(baseURLs); err != nil {
		return nil, err
	}
	switch format {
	case FormatAzure:
		return failoverAck{f}, nil
	case FormatAWS:
		return failoverRisk{f}, nil
	}
	return f, nil
}

// failover polls one of several watchers of the same node.
type failover struct {
	format string
	client *http.Client
	now    func() time.Time

	mu    sync.Mutex
	urls  []string
	byURL map[string]Watcher // each keeps its own state (AWS tokens, GCP etags)
	cur   string             // the URL that answered last
	seen  string             // the URL that published the notice
}

// SetBaseURLs replaces the endpoints, keeping the state of those that
// stay.
func (f *failover) SetBaseURLs(baseURLs []string) error {
	if len(baseURLs) == 0 {
		return errors.New("notice: no metadata URL")
	}
	byURL := map[string]Watcher{}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, u := range baseURLs {
		w := f.byURL[u]
		if w == nil {
			var err error
			if w, err = NewWatcher(f.format, u, f.client, f.now); err != nil {
				return err
			}
		}
		byURL[u] = w
	}
	f.urls, f.byURL = slices.Clone(baseURLs), byURL
	return nil
}

// try calls poll on the endpoint that answered last and, while they fail,
// on the others in turn; it returns the first answer, or the last error.
func (f *failover) try(ctx context.Context, poll func(Watcher) (bool, error)) error {
	f.mu.Lock()
	urls := slices.Clone(f.urls)
	ws := f.byURL
	if i := slices.Index(urls, f.cur); i > 0 {
		urls = append(urls[i:], urls[:i]...)
	}
	f.mu.Unlock()
	var err error
	for _, u := range urls {
		var seen bool
		if seen, err = poll(ws[u]); err == nil {
			f.mu.Lock()
			f.cur = u
			if seen {
				f.seen = u
			}
			f.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
	}
	return err
}

func (f *failover) Poll(ctx context.Context) (n Notice, seen bool, err error) {
	err = f.try(ctx, func(w Watcher) (bool, error) {
		var e error
		n, seen, e = w.Poll(ctx)
		return seen, e
	})
	return n, seen, err
}

// failoverAck acknowledges an Azure event where it was read: the event
// IDs agree between instances, but the acknowledgement is that server's.
type failoverAck struct{ *failover }

func (f failoverAck) Acknowledge(ctx context.Context, n Notice) error {
	f.mu.Lock()
	w := f.byURL[f.seen]
	f.mu.Unlock()
	if w == nil {
		return errors.New("notice: the endpoint that published the event is gone")
	}
	return w.(Acknowledger).Acknowledge(ctx, n)
}

type failoverRisk struct{ *failover }

func (f failoverRisk) PollRisk(ctx context.Context) (r Risk, seen bool, err error) {
	err = f.try(ctx, func(w Watcher) (bool, error) {
		var e error
		r, seen, e = w.(RiskWatcher).PollRisk(ctx)
		return false, e // a warning is not the notice Acknowledge acts on
	})
	return r, seen, err
}
