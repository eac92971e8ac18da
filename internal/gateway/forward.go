package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"time"
)

// forward sends a request to a replica of s and copies the answer back,
// retrying on another replica when the first one vanished under it.
//
// A request is retried when its replica gave a connection error (refused,
// reset, EOF before any response byte) or answered 502/503 while draining
// or gone from the table, at most MaxRetries times, each time on a replica
// not tried yet, and only when its whole body was buffered. Nothing is
// retried once a byte of the answer has reached the client, nor after a
// per-attempt timeout (the replica may still be working on it, and a retry
// would double the load that made it slow).
func (g *Gateway) forward(w http.ResponseWriter, r *http.Request, s *service, tg target, strip string) {
	start := time.Now()
	if s.state.inflight.Add(1) > s.maxInFlight {
		s.state.inflight.Add(-1)
		g.refuse(w, s, fmt.Sprintf("service %q has %d requests in flight, its maxInFlight; retry later", s.name, s.maxInFlight))
		return
	}
	s.state.conc.change(g.now(), 1)
	var (
		status int      // what the client got; 499 when it went away first
		broken bool     // the answer broke off after its header was sent
		last   *backend // the replica that answered or failed last
		body   body
	)
	defer func() {
		g.buffered.Add(-body.reserved)
		body.free()
		g.finish(s, last, status, broken, time.Since(start))
		s.state.conc.change(g.now(), -1)
		s.state.inflight.Add(-1) // last: once it is 0, the figures are in
	}()

	if err := g.readBody(w, r, s.maxBody, &body); err != nil {
		if errors.Is(err, errBuffersFull) {
			status = http.StatusTooManyRequests
			w.Header().Set("Retry-After", retryAfterBusy)
			writeError(w, status, fmt.Sprintf("the gateway holds %d bytes of request bodies, its limit (the max-buffered-bytes flag); retry later", g.maxBuffered))
			return
		}
		status = g.bodyError(w, err)
		return
	}
	var out hopRequest
	g.outgoing(&out, r, tg, strip)
	// relay copies an answer; if it breaks off, the client's connection
	// is aborted, after the deferred accounting has what it needs.
	relay := func(a *attempt) {
		var abort bool
		if status, abort = g.reply(w, a); abort {
			broken = status != 499
			panic(http.ErrAbortHandler)
		}
	}

	tried := make([]*backend, 0, 4)
	var att attempt // each attempt in turn; one ends before the next starts
	e := s.pick(g.now().UnixNano(), tried, g.intn)
	if e == nil {
		s.state.noReplica.Add(1)
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", retryAfter)
		writeError(w, status, fmt.Sprintf("service %q has no ready replica; retry later", s.name))
		return
	}
	for {
		tried = append(tried, e.b)
		last = e.b
		a := &att
		g.send(r.Context(), a, &out, e, &body)

		switch a.fail {
		case failNone:
			relay(a)
			return
		case failClient:
			a.end(reasonNone)
			status = 499 // nginx's "client closed request": nobody to answer
			if err := body.err(); err != nil && r.Context().Err() == nil {
				status = g.bodyError(w, err)
			}
			return
		case failTimeout:
			a.end(reasonTimeout)
			status = http.StatusGatewayTimeout
			writeError(w, status, fmt.Sprintf("replica %s of %q did not answer within %v", e.ID, s.name, g.timeout))
			return
		}

		// The replica is going or gone (failConn, failGone). Another one
		// may take the request if the body can be sent again and retries
		// are left.
		if a.fail == failConn {
			g.eject(e.b, a.err)
		}
		var next *entry
		why := ""
		switch {
		case !body.replayable:
			why = fmt.Sprintf("not retried: a request body over %d bytes is streamed, not buffered", g.maxRetryBody)
		case len(tried) > g.maxRetries:
			why = fmt.Sprintf("gave up after %d attempts", len(tried))
		default:
			next = s.pick(g.now().UnixNano(), tried, g.intn)
		}
		switch {
		case next != nil:
			a.discard()
			s.state.retries.Add(1)
			g.log.Debug("gateway: retrying on another replica", "service", s.name, "failed", e.ID, "next", next.ID, "err", a.err)
			e = next
			continue
		case a.resp != nil:
			relay(a) // the replica's own 502/503 says more than ours would
		case why != "":
			a.end(reasonConnect)
			status = http.StatusBadGateway
			writeError(w, status, fmt.Sprintf("replica %s of %q failed: %v; %s", e.ID, s.name, a.err, why))
		default:
			// Every replica has failed this request: the service is down
			// for now, not just one replica.
			a.end(reasonConnect)
			status = http.StatusServiceUnavailable
			w.Header().Set("Retry-After", retryAfter)
			writeError(w, status, fmt.Sprintf("service %q has no ready replica: %s failed (%v) and no other replica is ready; retry later", s.name, e.ID, a.err))
		}
		return
	}
}

// failure is how an attempt ended when it produced no answer to copy.
type failure int

const (
	failNone    failure = iota
	failConn            // connection error, no response byte: retryable
	failGone            // 502/503 from a vanished replica: retryable
	failTimeout         // the per-attempt timeout
	failClient          // the client went away or its body broke
)

// attempt is one try of a request on one replica.
type attempt struct {
	g        *Gateway
	e        *entry
	client   context.Context // the client's request
	start    time.Time
	deadline time.Time // Config.Timeout after start
	conn     *hopConn  // held until the answer is read or dropped
	stop     func() bool
	resp     *http.Response
	err      error
	fail     failure
}

// send makes one attempt, up to the response headers.
func (g *Gateway) send(ctx context.Context, a *attempt, out *hopRequest, e *entry, body *body) {
	*a = attempt{g: g, e: e, client: ctx, start: time.Now()}
	a.deadline = a.start.Add(g.timeout)
	e.b.inflight.Add(1)

	a.resp, a.err = a.roundTrip(out, body)
	switch {
	case a.err == nil:
		e.b.answered()
		if (a.resp.StatusCode == http.StatusBadGateway || a.resp.StatusCode == http.StatusServiceUnavailable) && g.vanished(e.b) {
			a.fail = failGone
		}
	case ctx.Err() != nil:
		a.fail = failClient
	case !time.Now().Before(a.deadline):
		a.fail = failTimeout
	case body.err() != nil:
		// Reading the client's body failed, not the replica.
		a.fail = failClient
	default:
		a.fail = failConn
	}
}

// roundTrip writes the request on a connection to the replica and reads
// the answer's head. The connection's deadline is the attempt's; a client
// that goes away moves it to the past, which ends the attempt at once.
func (a *attempt) roundTrip(out *hopRequest, body *body) (*http.Response, error) {
	pool := &a.e.b.conns
	fresh := false // after a stale connection: a new one, not another idle one
	for {
		c, err := pool.get(a.client, a.deadline, fresh)
		if err != nil {
			return nil, err
		}
		if c.reused && !body.replayable && !c.alive() {
			// A streamed body cannot be sent again: make sure first
			// that the replica has not closed the connection meanwhile.
			c.nc.Close()
			continue
		}
		a.conn = c
		if err := c.nc.SetDeadline(a.deadline); err != nil {
			a.release(false)
			return nil, err
		}
		a.stop = context.AfterFunc(a.client, c.poison)
		werr := out.write(c, pool.addr, body)
		if werr != nil && body.err() != nil {
			a.release(false)
			return nil, werr
		}
		// Even after a failed write the replica may have answered (early,
		// e.g. 413, before reading the whole body): that answer counts.
		resp, err := out.read(c)
		if err == nil {
			if werr != nil {
				resp.Close = true
			}
			return resp, nil
		}
		if werr != nil {
			err = werr
		}
		a.release(false)
		// A kept-alive connection the replica closed while it was idle
		// fails before any answer byte: send again on a new one, as
		// http.Transport does. The replica never saw the request.
		if c.reused && body.replayable && a.client.Err() == nil && time.Now().Before(a.deadline) && staleConn(err) {
			fresh = true // once: a replica that drops every request is not sent it again and again
			continue
		}
		return nil, err
	}
}

// release gives the attempt's connection back for the next request
// (reuse: the answer was read to its end) or closes it.
func (a *attempt) release(reuse bool) {
	c := a.conn
	if c == nil {
		return
	}
	a.conn = nil
	if a.stop != nil && !a.stop() {
		reuse = false // the client left: its deadline is in the past
	}
	a.stop = nil
	if reuse {
		a.e.b.conns.put(c)
	} else {
		c.nc.Close()
	}
}

// closeAnswer closes an answer's body; reuse: it was read to its end and
// the connection may carry the next request.
func (a *attempt) closeAnswer(reuse bool) {
	reuse = reuse && !a.resp.Close
	if !reuse {
		// Closed first, so that closing the body does not read on.
		a.release(false)
	}
	a.resp.Body.Close()
	a.release(reuse)
}

// end settles an attempt's accounting: outstanding count, latency, errors.
func (a *attempt) end(r reason) {
	a.release(false)
	b := a.e.b
	b.inflight.Add(-1)
	if r != reasonNone {
		b.errs[r].Add(1)
	}
	b.lat.add(a.g.now().Unix(), time.Since(a.start), r != reasonNone)
}

// discard drops an attempt that is going to be retried.
func (a *attempt) discard() {
	r := reasonConnect
	if a.resp != nil {
		r = reasonGone
		// Draining a small error body lets the connection be reused.
		_, err := io.CopyN(io.Discard, a.resp.Body, 4<<10)
		a.closeAnswer(err == io.EOF)
	}
	a.end(r)
}

// reply copies a replica's answer to the client and returns its status
// (499 when the client went away during the copy). Once the header is
// written nothing can be retried; if the answer then breaks off, the
// caller aborts the client's connection (abort) so that the client cannot
// take a truncated answer for a whole one.
func (g *Gateway) reply(w http.ResponseWriter, a *attempt) (status int, abort bool) {
	resp := a.resp
	removeHopHeaders(resp.Header)
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	w.WriteHeader(resp.StatusCode)

	// Streams (unknown length, server-sent events) are flushed as they
	// come, so that a token stream from a custom server is not held back.
	flush := resp.ContentLength == -1 || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	readErr, writeErr := copyBody(w, resp.Body, flush)
	a.closeAnswer(readErr == nil && writeErr == nil)
	for k, vv := range resp.Trailer {
		h[http.TrailerPrefix+k] = vv
	}

	r, status, abort := reasonNone, resp.StatusCode, false
	switch {
	case writeErr != nil, readErr != nil && a.client.Err() != nil:
		// The client went away; the replica did nothing wrong.
		status, abort = 499, true
	case readErr != nil:
		abort, r = true, reasonBroken
		if !time.Now().Before(a.deadline) {
			r = reasonTimeout
		}
		g.log.Warn("gateway: answer broke off", "service", a.e.b.service, "replica", a.e.ID, "err", readErr)
	case a.fail == failGone:
		r = reasonGone
	case status >= 500:
		r = reasonStatus
	}
	a.end(r)
	return status, abort
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyBody copies an answer body, telling the replica's errors from the
// client's.
func copyBody(w http.ResponseWriter, src io.Reader, flush bool) (readErr, writeErr error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var rc *http.ResponseController
	if flush {
		rc = http.NewResponseController(w)
	}
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil, werr
			}
			if flush {
				if werr := rc.Flush(); werr != nil {
					return nil, werr
				}
			}
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return err, nil
		}
	}
}

// body is a request body, buffered whole when it is small enough to be
// sent again, streamed otherwise.
type body struct {
	buf        []byte
	replayable bool
	stream     *clientBody // when not replayable
	length     int64       // when not replayable: -1 if unknown
	reserved   int64       // bytes of buf counted in Gateway.buffered
	pooled     *[]byte     // buf's storage when it came from bodyPools
}

// errBuffersFull: buffering a body would take the gateway past
// MaxBufferedBytes.
var errBuffersFull = errors.New("request buffers full")

// firstChunk is the most buffer a request gets before its bytes arrive: a
// client that declares 16 MiB and sends 2 bytes holds this much, not 16 MiB.
// Most inference requests fit in it, and get one buffer of their exact size.
const firstChunk = 64 << 10

// readBody reads a request body into b, up to limit bytes (larger ones
// are a *http.MaxBytesError). Bodies up to MaxRetryBody are buffered, the
// buffer growing as bytes arrive and counted in g.buffered (b.reserved,
// which the caller gives back); larger ones are streamed. A body of unknown
// length that turns out larger is streamed: the buffered start, then the
// rest as it arrives.
func (g *Gateway) readBody(w http.ResponseWriter, r *http.Request, limit int64, b *body) error {
	if r.Body == nil || r.Body == http.NoBody {
		b.replayable = true
		return nil
	}
	size := r.ContentLength
	if size > limit {
		return &http.MaxBytesError{Limit: limit}
	}
	src := r.Body
	if size < 0 {
		// The server stops a declared length itself; an unknown one is
		// cut at the limit.
		src = http.MaxBytesReader(w, r.Body, limit)
	}
	keep := min(g.maxRetryBody, limit)
	if g.maxRetryBody < 0 || size > keep {
		*b = body{stream: &clientBody{r: src, c: r.Body}, length: size}
		return nil
	}
	// Grow to at most size (known) or keep+1 (unknown: one byte more
	// tells a body over keep, to be streamed).
	most := size
	if size < 0 {
		most = keep + 1
	}
	buf, err := g.grow(nil, min(most, firstChunk), b)
	if err != nil {
		return err
	}
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) == size {
				break // all the declared bytes are in
			}
			if int64(len(buf)) > keep {
				*b = body{stream: &clientBody{r: io.MultiReader(bytes.NewReader(buf), src), c: r.Body}, length: -1, reserved: b.reserved, pooled: b.pooled}
				return nil
			}
			if buf, err = g.grow(buf, min(most, 2*int64(cap(buf))), b); err != nil {
				return err
			}
		}
		n, err := src.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	b.buf, b.replayable = buf, true
	return nil
}

// grow returns buf with capacity to, reserving the extra bytes in
// g.buffered (and b.reserved), or errBuffersFull when that would pass
// MaxBufferedBytes.
func (g *Gateway) grow(buf []byte, to int64, b *body) ([]byte, error) {
	if buf == nil && to <= firstChunk {
		// A first buffer comes from a pool, counted at its class size.
		i := bodyClass(to)
		size := int64(minPooled) << i
		if g.buffered.Add(size) > g.maxBuffered {
			g.buffered.Add(-size)
			return nil, errBuffersFull
		}
		b.reserved += size
		p, _ := bodyPools[i].Get().(*[]byte)
		if p == nil {
			s := make([]byte, size)
			p = &s
		}
		b.pooled = p
		return (*p)[:0:to], nil
	}
	more := to - int64(cap(buf))
	if g.buffered.Add(more) > g.maxBuffered {
		g.buffered.Add(-more)
		return nil, errBuffersFull
	}
	b.reserved += more
	nb := make([]byte, len(buf), to)
	copy(nb, buf)
	return nb, nil
}

// Request bodies up to firstChunk (most inference requests) are buffered
// in pooled buffers of minPooled << i bytes, so that a request costs no
// fresh buffer for the garbage collector.
const minPooled = 4 << 10

var bodyPools [5]sync.Pool // 4, 8, 16, 32 and 64 KiB

// bodyClass is the pool whose buffers hold n bytes (n <= firstChunk).
func bodyClass(n int64) int {
	i := 0
	for int64(minPooled)<<i < n {
		i++
	}
	return i
}

// free gives a pooled buffer back once the request is done with it.
func (b *body) free() {
	if b.pooled != nil {
		bodyPools[bodyClass(int64(cap(*b.pooled)))].Put(b.pooled)
		b.pooled, b.buf = nil, nil
	}
}

// bodyError answers a request whose body could not be read and returns the
// status it got: 413 past the limit, 408 when the server's read timeout
// cut a slow client off, 400 otherwise.
func (g *Gateway) bodyError(w http.ResponseWriter, err error) int {
	var tooBig *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the request body is larger than %d bytes, the service's maxRequestBytes: send less per request, or raise spec.limits.maxRequestBytes", tooBig.Limit))
		return http.StatusRequestEntityTooLarge
	case errors.As(err, &ne) && ne.Timeout():
		writeError(w, http.StatusRequestTimeout, fmt.Sprintf("the request body did not arrive in time: %v", err))
		return http.StatusRequestTimeout
	}
	writeError(w, http.StatusBadRequest, fmt.Sprintf("reading the request body: %v", err))
	return http.StatusBadRequest
}

// refuse answers 429 to a request the service has no room for. It counts
// in QPS (the demand is real) and among the gateway's own answers.
func (g *Gateway) refuse(w http.ResponseWriter, s *service, msg string) {
	s.state.rate.add(g.now().Unix())
	s.state.answered(http.StatusTooManyRequests)
	w.Header().Set("Retry-After", retryAfterBusy)
	writeError(w, http.StatusTooManyRequests, msg)
}

// err is the error reading a streamed body gave, if any.
func (b *body) err() error {
	if b.stream == nil {
		return nil
	}
	return b.stream.error()
}

// clientBody remembers why reading the client's body failed, so that the
// replica is not blamed (or ejected) for it. The transport reads it on its
// own goroutine.
type clientBody struct {
	r   io.Reader
	c   io.Closer
	mu  sync.Mutex
	bad error
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.mu.Lock()
		b.bad = err
		b.mu.Unlock()
	}
	return n, err
}

func (b *clientBody) Close() error { return b.c.Close() }

func (b *clientBody) error() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bad
}

// hopHeaders apply to one connection, not to the request (RFC 9110 7.6.1).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

// acceptsTrailers reports whether a request accepts trailers ("Te:
// trailers"), the one Te value worth passing on (gRPC-style servers).
func acceptsTrailers(h http.Header) bool {
	for _, v := range h["Te"] {
		for sf := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(sf), "trailers") {
				return true
			}
		}
	}
	return false
}
