package notice

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Notice is what a watcher saw.
type Notice struct {
	// Deadline is when the VM goes away.
	Deadline time.Time
	// Format is the format the notice was read in.
	Format string
	// Detail is the cloud's own word for what happens: the AWS action
	// ("terminate", "stop"), the Azure EventType and EventId ("Preempt
	// 4CAEA225-..."), or "preempted" for GCP.
	Detail string
	// EventID is the Azure EventId, by which the event is acknowledged;
	// empty in the other formats.
	EventID string
}

// Watcher polls one node's metadata endpoint in one format.
type Watcher interface {
	// Poll reads the endpoint once and reports whether an eviction is
	// announced.
	Poll(ctx context.Context) (Notice, bool, error)
}

// Risk is an early warning a watcher saw: the VM is at elevated risk of
// being taken, with no notice yet (AWS's rebalance recommendation).
type Risk struct {
	Since  time.Time // when the cloud made the recommendation
	Format string
	Detail string
}

// RiskWatcher is a Watcher whose cloud also warns early.
type RiskWatcher interface {
	// PollRisk reads the warning once and reports whether one is given.
	PollRisk(ctx context.Context) (Risk, bool, error)
}

// WatchRisk polls every interval until ctx ends or a warning is seen, then
// calls fn once and returns nil, as Watch does for notices.
func WatchRisk(ctx context.Context, w RiskWatcher, interval time.Duration, logger *slog.Logger, fn func(Risk)) error {
	return Watch(ctx, riskPoller{w}, interval, logger, func(n Notice) {
		fn(Risk{Since: n.Deadline, Format: n.Format, Detail: n.Detail})
	})
}

// riskPoller passes a warning through Watch's loop as a Notice.
type riskPoller struct{ w RiskWatcher }

func (p riskPoller) Poll(ctx context.Context) (Notice, bool, error) {
	r, ok, err := p.w.PollRisk(ctx)
	return Notice{Deadline: r.Since, Format: r.Format, Detail: r.Detail}, ok, err
}

// Acknowledger is a Watcher whose cloud takes word that the VM is ready for
// an announced eviction: Azure, where Microsoft documents approving an event
// (a POST of StartRequests) once the VM has done what it must before it.
type Acknowledger interface {
	Acknowledge(ctx context.Context, n Notice) error
}

// NewWatcher returns a Watcher that reads format's documents under baseURL:
// BaseURL(serverURL, node) for a Server, or the metadata address itself
// (http://169.254.169.254) on a real VM. A nil client means one that bypasses
// proxies, as the clouds require, and gives up on a request after 10 s. now is
// the clock GCP deadlines and AWS token lifetimes are measured by.
func NewWatcher(format, baseURL string, client *http.Client, now func() time.Time) (Watcher, error) {
	if client == nil {
		client = defaultClient()
	}
	if now == nil {
		now = time.Now
	}
	base := strings.TrimSuffix(baseURL, "/")
	switch format {
	case FormatAzure:
		return &azureWatcher{base: base, client: client, now: now}, nil
	case FormatAWS:
		return &awsWatcher{base: base, client: client, now: now}, nil
	case FormatGCP:
		return &gcpWatcher{base: base, client: client, now: now}, nil
	}
	return nil, fmt.Errorf("%w %q: want %q, %q or %q", ErrUnknownFormat, format, FormatAzure, FormatAWS, FormatGCP)
}

// Watch polls every interval until ctx ends or a notice is seen, then calls fn
// once and returns. It polls at once, without waiting an interval first. Poll
// errors are logged and retried at the next interval. It returns nil after
// calling fn, or ctx's error if ctx ended first.
func Watch(ctx context.Context, w Watcher, interval time.Duration, logger *slog.Logger, fn func(Notice)) error {
	if interval <= 0 {
		return fmt.Errorf("notice: watch interval must be positive, got %v", interval)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		n, seen, err := w.Poll(ctx)
		if err == nil && seen {
			fn(n)
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			logger.Warn("polling eviction notice failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// defaultClient is an HTTP client fit for a metadata address: it never goes
// through a proxy and does not wait forever.
func defaultClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	return &http.Client{Transport: t, Timeout: 10 * time.Second}
}

// maxBody bounds what a watcher reads of a metadata document.
const maxBody = 1 << 20

// fetch sends a request and reads the whole (bounded) answer.
func fetch(ctx context.Context, client *http.Client, method, url string, header http.Header) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: reading answer: %w", method, url, err)
	}
	return resp, body, nil
}

// statusError describes an answer with an unexpected status.
func statusError(method, url string, resp *http.Response, body []byte) error {
	text := strings.TrimSpace(string(body))
	if len(text) > 200 {
		text = text[:200] + "..."
	}
	return fmt.Errorf("%s %s: %s: %q", method, url, resp.Status, text)
}
