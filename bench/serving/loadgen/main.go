// Command loadgen sends requests at a fixed rate, open loop, and prints
// what happened as JSON: how many succeeded and failed (and why), latency
// percentiles and a histogram, and a per-second timeline.
//
// Open loop means that request i is sent at start + i/rate whether or not
// earlier ones have been answered, as independent users would send them: a
// server that stalls does not slow the load down and so cannot hide its
// stall (no coordinated omission). Latency is measured from the time the
// request was due, so a generator that fell behind shows it as latency too.
//
//	go run ./bench/serving/loadgen -url http://127.0.0.1:8000/v2/models/fmnist/infer \
//	    -body examples/fashion-mnist/sample-request.json -rate 20 -duration 3m
//
// A request succeeds when it is answered 200 within -timeout (and its body
// contains -expect, when set); anything else is a failure, counted by kind.
// The latency figures are of the successful requests.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

// Report is what loadgen prints. Times are in milliseconds; Elapsed and
// the timeline are from the first due time.
type Report struct {
	URL         string         `json:"url"`
	Rate        float64        `json:"rate"`
	Duration    string         `json:"duration"`
	Start       time.Time      `json:"start"`
	Sent        int            `json:"sent"`
	OK          int            `json:"ok"`
	Failed      int            `json:"failed"`
	SuccessRate float64        `json:"successRate"`
	Errors      map[string]int `json:"errors"` // failure kind → count
	LatencyMs   Percentiles    `json:"latencyMs"`
	Histogram   []Bucket       `json:"histogram"`
	Timeline    []Second       `json:"timeline"`
	Failures    []Failure      `json:"firstFailures"` // the first 50
	MaxLagMs    float64        `json:"maxLagMs"`      // latest a request left after its due time
	Stopped     string         `json:"stopped,omitempty"`
}

// Percentiles of the successful requests' latencies.
type Percentiles struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// Bucket counts the successful requests with latency ≤ LeMs (and above the
// previous bucket's bound); the last bucket has LeMs 0 and means "above".
type Bucket struct {
	LeMs  float64 `json:"leMs"`
	Count int     `json:"count"`
}

// Second is one second of the run, by due time.
type Second struct {
	T      int `json:"t"`
	OK     int `json:"ok"`
	Failed int `json:"failed"`
}

// Failure is one failed request: when it was due and what went wrong.
type Failure struct {
	AtMs  float64 `json:"atMs"`
	Error string  `json:"error"`
}

// bounds are the histogram's upper bounds in milliseconds.
var bounds = []float64{0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000}

type config struct {
	url, body, method, contentType, expect string
	rate                                   float64
	duration, timeout                      time.Duration
	maxInFlight, warmup                    int
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg config
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.url, "url", "", "URL to send to (required)")
	fs.StringVar(&cfg.body, "body", "", "file whose content is every request's body (POST); none: GET")
	fs.StringVar(&cfg.method, "method", "", "HTTP method (default POST with -body, else GET)")
	fs.StringVar(&cfg.contentType, "content-type", "application/json", "Content-Type of the body")
	fs.StringVar(&cfg.expect, "expect", "", "a 200 answer counts only if its body contains this")
	fs.Float64Var(&cfg.rate, "rate", 20, "requests per second")
	fs.DurationVar(&cfg.duration, "duration", time.Minute, "how long to send")
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "a request not answered in this time fails")
	fs.IntVar(&cfg.maxInFlight, "max-in-flight", 10000, "requests due while this many are outstanding fail at once (\"overloaded\") instead of piling up")
	fs.IntVar(&cfg.warmup, "warmup", 0, "requests sent one after the other before the run, not counted (a failed one is an error)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch {
	case cfg.url == "":
		return errors.New("-url is required")
	case cfg.rate <= 0:
		return errors.New("-rate must be positive")
	case cfg.duration <= 0:
		return errors.New("-duration must be positive")
	}
	var body []byte
	if cfg.body != "" {
		b, err := os.ReadFile(cfg.body)
		if err != nil {
			return fmt.Errorf("-body: %w", err)
		}
		body = b
	}
	if cfg.method == "" {
		cfg.method = http.MethodGet
		if body != nil {
			cfg.method = http.MethodPost
		}
	}
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: cfg.timeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: cfg.timeout}
	send := func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, cfg.method, cfg.url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		if body != nil {
			req.Header.Set("Content-Type", cfg.contentType)
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return fmt.Errorf("reading the answer: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			return statusError{resp.StatusCode, strings.TrimSpace(string(b))}
		}
		if cfg.expect != "" && !bytes.Contains(b, []byte(cfg.expect)) {
			return fmt.Errorf("answer without %q", cfg.expect)
		}
		return nil
	}
	for i := range cfg.warmup {
		if err := send(ctx); err != nil {
			return fmt.Errorf("warm-up request %d: %w", i+1, err)
		}
	}

	rep := generate(ctx, cfg, send)
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// statusError is a non-200 answer.
type statusError struct {
	code int
	body string
}

func (e statusError) Error() string {
	if len(e.body) > 200 {
		e.body = e.body[:200] + "…"
	}
	return fmt.Sprintf("status %d: %s", e.code, e.body)
}

// outcome is one request's result.
type outcome struct {
	due     time.Duration // from the start
	latency time.Duration // from due to answer
	err     error
}

// generate sends the requests on schedule until cfg.duration is over (or
// ctx ends), waits for the outstanding ones, and sums up.
func generate(ctx context.Context, cfg config, send func(context.Context) error) Report {
	interval := time.Duration(float64(time.Second) / cfg.rate)
	n := int(cfg.duration / interval)
	outcomes := make([]outcome, 0, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, cfg.maxInFlight)
	// Requests in flight are not cut off when ctx ends: they finish within
	// -timeout, and the report counts them.
	reqCtx := context.WithoutCancel(ctx)
	start := time.Now()
	var maxLag time.Duration
	stopped := ""
loop:
	for i := range n {
		due := time.Duration(i) * interval
		if d := time.Until(start.Add(due)); d > 0 {
			select {
			case <-ctx.Done():
				stopped = fmt.Sprintf("interrupted after %d of %d requests", i, n)
				break loop
			case <-time.After(d):
			}
		}
		maxLag = max(maxLag, time.Since(start.Add(due)))
		select {
		case sem <- struct{}{}:
		default:
			mu.Lock()
			outcomes = append(outcomes, outcome{due: due, err: errors.New("overloaded: -max-in-flight requests outstanding")})
			mu.Unlock()
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			err := send(reqCtx)
			lat := time.Since(start.Add(due))
			mu.Lock()
			outcomes = append(outcomes, outcome{due: due, latency: lat, err: err})
			mu.Unlock()
		})
	}
	wg.Wait()
	rep := summarize(outcomes, cfg.duration)
	rep.URL, rep.Rate, rep.Duration, rep.Start = cfg.url, cfg.rate, cfg.duration.String(), start
	rep.MaxLagMs = ms(maxLag)
	rep.Stopped = stopped
	return rep
}

func summarize(outcomes []outcome, duration time.Duration) Report {
	slices.SortFunc(outcomes, func(a, b outcome) int { return int(a.due - b.due) })
	rep := Report{Sent: len(outcomes), Errors: map[string]int{}, Failures: []Failure{}}
	rep.Timeline = make([]Second, int((duration+time.Second-1)/time.Second))
	for i := range rep.Timeline {
		rep.Timeline[i].T = i
	}
	var lats []time.Duration
	var sum time.Duration
	for _, o := range outcomes {
		sec := min(int(o.due/time.Second), len(rep.Timeline)-1)
		if o.err == nil {
			rep.OK++
			rep.Timeline[sec].OK++
			lats = append(lats, o.latency)
			sum += o.latency
			continue
		}
		rep.Failed++
		rep.Timeline[sec].Failed++
		rep.Errors[kind(o.err)]++
		if len(rep.Failures) < 50 {
			rep.Failures = append(rep.Failures, Failure{AtMs: ms(o.due), Error: o.err.Error()})
		}
	}
	if rep.Sent > 0 {
		rep.SuccessRate = float64(rep.OK) / float64(rep.Sent)
	}
	slices.Sort(lats)
	if len(lats) > 0 {
		rep.LatencyMs = Percentiles{
			P50: ms(quantile(lats, 0.50)), P90: ms(quantile(lats, 0.90)), P99: ms(quantile(lats, 0.99)),
			P999: ms(quantile(lats, 0.999)), Max: ms(lats[len(lats)-1]), Mean: ms(sum / time.Duration(len(lats))),
		}
	}
	rep.Histogram = make([]Bucket, len(bounds)+1)
	for i, b := range bounds {
		rep.Histogram[i].LeMs = b
	}
	for _, l := range lats {
		i, _ := slices.BinarySearch(bounds, ms(l))
		rep.Histogram[i].Count++
	}
	return rep
}

// quantile is the nearest-rank quantile of sorted latencies.
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// kind names a failure's cause without its details, so that failures can
// be counted by kind.
func kind(err error) string {
	var se statusError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("status %d", se.code)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.HasPrefix(err.Error(), "overloaded"):
		return "overloaded"
	}
	return "other"
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
