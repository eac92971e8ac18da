package client

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// streamTransport is http.DefaultTransport's dialing and handshake limits
// plus a limit on the wait for response headers, so that an unreachable or
// hung server still fails quickly while the body may take as long as it
// takes.
func streamTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.ResponseHeaderTimeout = 30 * time.Second
	return t
}

// Upload sends body to path with method (PUT for a blob) as it reads it,
// never holding more than a buffer of it. size is the body's length, or -1
// if unknown (it is then sent chunked). The upload fails if no byte moves
// for the client's stall timeout; there is no limit on its total time.
// The body cannot be sent twice: with several servers, an upload that got
// no answer fails, and the client moves on to the next server for the
// caller's next try.
func (c *Client) Upload(ctx context.Context, method, path string, body io.Reader, size int64) error {
	base := c.current()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w := newWatchdog(c.stall, cancel)
	defer w.stop()
	req, err := http.NewRequestWithContext(ctx, method, base+path, &watchedReader{body, w})
	if err != nil {
		return err
	}
	if size >= 0 {
		req.ContentLength = size
		if size == 0 {
			req.Body = http.NoBody
		}
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.stream.Do(req)
	if err != nil {
		c.servers.skip(base)
		return transferError(ctx, base, err)
	}
	defer resp.Body.Close()
	w.stop()
	err = statusError(resp)
	if failover(err) {
		c.servers.skip(base)
	}
	return err
}

// Download starts a GET of path and returns its body as it arrives. The
// caller closes it. Reading fails if no byte arrives for the client's
// stall timeout; there is no limit on the total time. With several
// servers, the first that answers is read from.
func (c *Client) Download(ctx context.Context, path string) (*Download, error) {
	urls, cur := c.servers.get()
	var err error
	for i := range urls {
		base := urls[(cur+i)%len(urls)]
		var d *Download
		d, err = c.download(ctx, base, path)
		if err == nil {
			c.servers.use(base)
			return d, nil
		}
		if ctx.Err() != nil || !failover(err) {
			return nil, err
		}
		c.servers.skip(base)
	}
	return nil, err
}

func (c *Client) download(ctx context.Context, base, path string) (*Download, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := newWatchdog(c.stall, cancel)
	fail := func(err error) (*Download, error) {
		w.stop()
		cancel(nil)
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return fail(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.stream.Do(req)
	if err != nil {
		return fail(transferError(ctx, base, err))
	}
	if err := statusError(resp); err != nil {
		resp.Body.Close()
		return fail(err)
	}
	w.kick()
	return &Download{Size: resp.ContentLength, Header: resp.Header, base: base, ctx: ctx, body: resp.Body, w: w, cancel: cancel}, nil
}

// Download is a response body being read.
type Download struct {
	Size   int64       // the body's length; -1 if the server did not say
	Header http.Header // the response's header

	base   string
	ctx    context.Context
	body   io.ReadCloser
	w      *watchdog
	cancel context.CancelCauseFunc
}

func (d *Download) Read(p []byte) (int, error) {
	n, err := d.body.Read(p)
	if n > 0 {
		d.w.kick()
	}
	if err != nil && err != io.EOF {
		err = transferError(d.ctx, d.base, err)
	}
	return n, err
}

func (d *Download) Close() error {
	d.w.stop()
	err := d.body.Close()
	d.cancel(nil)
	return err
}

// errStalled is the cause of a transfer's context when it moved no byte
// for the stall timeout.
type errStalled time.Duration

func (e errStalled) Error() string {
	return fmt.Sprintf("no data moved for %s (the network or the server stalled); try again", time.Duration(e))
}

func transferError(ctx context.Context, base string, err error) error {
	if cause := context.Cause(ctx); cause != nil {
		if _, ok := cause.(errStalled); ok {
			return fmt.Errorf("transfer to or from %s: %w", base, cause)
		}
	}
	if _, ok := err.(*StatusError); ok {
		return err
	}
	return unreachable(base, err)
}

// statusError turns a non-2xx answer into a *StatusError.
func statusError(resp *http.Response) error {
	if resp.StatusCode/100 == 2 {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return answerError(resp.StatusCode, b)
}

// watchdog cancels a transfer when kick has not been called for d.
type watchdog struct {
	d     time.Duration
	mu    sync.Mutex
	timer *time.Timer
}

func newWatchdog(d time.Duration, cancel context.CancelCauseFunc) *watchdog {
	return &watchdog{d: d, timer: time.AfterFunc(d, func() { cancel(errStalled(d)) })}
}

func (w *watchdog) kick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Reset(w.d)
	}
}

func (w *watchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
}

// watchedReader kicks its watchdog whenever it yields bytes.
type watchedReader struct {
	r io.Reader
	w *watchdog
}

func (r *watchedReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.w.kick()
	}
	return n, err
}
