package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The hop to a replica is a plain HTTP/1.1 client on keep-alive
// connections that the request's own goroutine writes and reads: no
// per-connection reader and writer goroutines, no per-attempt context
// timer, the request's headers written straight from the client's
// request. http.Transport's channel hand-offs between those goroutines
// and its per-request copies were most of what the gateway added to a
// request (bench/RESULTS.md §6). Responses are parsed by net/http's own
// http.ReadResponse, so chunked bodies, trailers, HEAD and 1xx answers are
// handled as the standard library handles them.

// Connection pool limits and timeouts of the hop.
const (
	// maxIdlePerReplica is how many idle keep-alive connections a replica
	// keeps: enough for a burst of concurrent requests to reuse them.
	maxIdlePerReplica = 256
	// idleTimeout drops connections idle longer than this; replicas' own
	// servers may have closed them.
	idleTimeout = 90 * time.Second
	// dialTimeout bounds a connect: a dead node may not refuse, only stay
	// silent.
	dialTimeout = 5 * time.Second
	// hopBufSize: tensors are large, so fewer syscalls per request than
	// bufio's 4 KiB, at 64 KiB a connection.
	hopBufSize = 32 << 10
)

// hopConn is one keep-alive connection to a replica.
type hopConn struct {
	nc net.Conn
	// poison fails the connection's reads and writes at once; made once
	// per connection, so that hooking it to a request's context costs no
	// closure.
	poison   func()
	br       *bufio.Reader
	bw       *bufio.Writer
	idleFrom time.Time
	reused   bool
	body     fixedBody // the answer being read, when readFast framed it
}

// connPool holds a replica's idle connections, most recently used last.
type connPool struct {
	addr   string
	mu     sync.Mutex
	idle   []*hopConn
	closed bool // the replica left the routing table: keep nothing
}

// get returns an idle connection or dials a new one (always, when fresh).
func (p *connPool) get(ctx context.Context, deadline time.Time, fresh bool) (*hopConn, error) {
	now := time.Now()
	p.mu.Lock()
	// The oldest are first: drop those idle too long.
	stale := 0
	for stale < len(p.idle) && now.Sub(p.idle[stale].idleFrom) > idleTimeout {
		stale++
	}
	var old []*hopConn
	if stale > 0 {
		old = append(old, p.idle[:stale]...)
		p.idle = append(p.idle[:0], p.idle[stale:]...)
	}
	var c *hopConn
	if n := len(p.idle); n > 0 && !fresh {
		c = p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
	}
	p.mu.Unlock()
	for _, o := range old {
		o.nc.Close()
	}
	if c != nil {
		c.reused = true
		return c, nil
	}
	d := net.Dialer{Timeout: dialTimeout, Deadline: deadline, KeepAlive: 30 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, err
	}
	c = &hopConn{nc: nc, br: bufio.NewReaderSize(nc, hopBufSize), bw: bufio.NewWriterSize(nc, hopBufSize)}
	c.poison = func() { _ = nc.SetDeadline(aLongTimeAgo) }
	return c, nil
}

// alive reports whether an idle connection is still open: a replica that
// closed it has sent EOF, which a read finds at once; an open one has
// nothing to say and the read waits out a millisecond.
func (c *hopConn) alive() bool {
	if err := c.nc.SetReadDeadline(time.Now().Add(time.Millisecond)); err != nil {
		return false
	}
	_, err := c.br.Peek(1)
	var ne net.Error
	return c.br.Buffered() == 0 && errors.As(err, &ne) && ne.Timeout()
}

// put keeps a connection whose last answer was read to its end.
func (p *connPool) put(c *hopConn) {
	if err := c.nc.SetDeadline(time.Time{}); err != nil {
		c.nc.Close()
		return
	}
	c.idleFrom = time.Now()
	p.mu.Lock()
	if p.closed || len(p.idle) >= maxIdlePerReplica {
		p.mu.Unlock()
		c.nc.Close()
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// close drops the idle connections and every one given back later.
func (p *connPool) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, c := range idle {
		c.nc.Close()
	}
}

// hopRequest is what every attempt of a request sends: the client's
// request as the replica gets it. Headers are written from the client's
// own header map, filtered as they are written, so that nothing is copied.
type hopRequest struct {
	r      *http.Request
	method string
	// path is the replica's URL path, escaped; query without "?".
	path, query string
	// Headers of the client's request not passed on besides the fixed
	// ones (hopSkip): those named in Connection, and the checked API key.
	skip  []string
	strip string
	// X-Forwarded-* as the replica gets them; xff appends the client's
	// address to prior (the X-Forwarded-For the client sent).
	xffPrior []string
	xffIP    string
	fwdHost  string // "" when the client sent one (passed on)
	fwdProto string // "" when the client sent one (passed on)
	prefix   string
	trailers bool // the client accepts trailers ("Te: trailers")
	// head: the answer has no body whatever its headers say.
	head bool
}

// hopSkip are headers never copied from the client's request: hop-by-hop
// ones (RFC 9110 7.6.1), those the hop writes itself, and Expect (the
// gateway's server already answered it; the replica gets the whole body).
var hopSkip = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Host": true, "Content-Length": true, "Expect": true,
	"X-Forwarded-For": true, "X-Forwarded-Prefix": true,
}

// outgoing builds the request every attempt sends: the client's, with
// hop-by-hop headers removed, the checked API key dropped and the
// X-Forwarded-* headers set.
func (g *Gateway) outgoing(out *hopRequest, r *http.Request, tg target, strip string) {
	*out = hopRequest{r: r, method: r.Method, query: r.URL.RawQuery, strip: strip,
		trailers: acceptsTrailers(r.Header), prefix: tg.prefix, head: r.Method == http.MethodHead}
	u := url.URL{Path: tg.path, RawPath: tg.rawPath}
	out.path = u.EscapedPath()
	h := r.Header
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				out.skip = append(out.skip, textproto.CanonicalMIMEHeaderKey(sf))
			}
		}
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		out.xffIP = ip
		out.xffPrior = h["X-Forwarded-For"]
	} else if prior := h["X-Forwarded-For"]; len(prior) > 0 {
		out.xffPrior = prior // passed on as it came
	}
	// Someone in front of the gateway (a cloud load balancer) knows the
	// original host and scheme better than we do.
	if h.Get("X-Forwarded-Host") == "" {
		out.fwdHost = r.Host
	}
	if h.Get("X-Forwarded-Proto") == "" {
		out.fwdProto = "http"
		if r.TLS != nil {
			out.fwdProto = "https"
		}
	}
}

// skips reports whether the client's header k is not passed on.
func (o *hopRequest) skips(k string, vv []string) bool {
	switch {
	case hopSkip[k], k == o.strip:
		return true
	case k == "X-Forwarded-Host":
		return o.fwdHost != ""
	case k == "X-Forwarded-Proto":
		return o.fwdProto != ""
	case k == "User-Agent":
		return len(vv) == 0 || vv[0] == "" // the client sent none: not Go's
	}
	for _, s := range o.skip {
		if k == s {
			return true
		}
	}
	return false
}

// write sends the request head and body on c. Buffered bodies go out
// whole; a streamed one with its declared length or chunked.
func (o *hopRequest) write(c *hopConn, addr string, b *body) error {
	w := c.bw
	w.WriteString(o.method)
	w.WriteByte(' ')
	w.WriteString(o.path)
	if o.query != "" {
		w.WriteByte('?')
		w.WriteString(o.query)
	}
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(addr)
	w.WriteString("\r\n")
	for k, vv := range o.r.Header {
		if o.skips(k, vv) {
			continue
		}
		for _, v := range vv {
			writeHeader(w, k, v)
		}
	}
	if o.xffIP != "" || len(o.xffPrior) > 0 {
		w.WriteString("X-Forwarded-For: ")
		for i, p := range o.xffPrior {
			if i > 0 {
				w.WriteString(", ")
			}
			w.WriteString(p)
		}
		if o.xffIP != "" {
			if len(o.xffPrior) > 0 {
				w.WriteString(", ")
			}
			w.WriteString(o.xffIP)
		}
		w.WriteString("\r\n")
	}
	if o.fwdHost != "" {
		writeHeader(w, "X-Forwarded-Host", o.fwdHost)
	}
	if o.fwdProto != "" {
		writeHeader(w, "X-Forwarded-Proto", o.fwdProto)
	}
	if o.prefix != "" {
		writeHeader(w, "X-Forwarded-Prefix", o.prefix)
	}
	if o.trailers {
		w.WriteString("Te: trailers\r\n")
	}

	switch {
	case b.replayable:
		if len(b.buf) > 0 || bodyMethod(o.method) {
			w.WriteString("Content-Length: ")
			writeInt(w, int64(len(b.buf)))
			w.WriteString("\r\n")
		}
		w.WriteString("\r\n")
		w.Write(b.buf)
	case b.length >= 0:
		w.WriteString("Content-Length: ")
		writeInt(w, b.length)
		w.WriteString("\r\n\r\n")
		if _, err := io.CopyN(w, b.stream, b.length); err != nil {
			return err
		}
	default:
		w.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		cw := httputil.NewChunkedWriter(w)
		if _, err := io.Copy(cw, b.stream); err != nil {
			return err
		}
		if err := cw.Close(); err != nil {
			return err
		}
		w.WriteString("\r\n")
	}
	return w.Flush()
}

// writeInt writes a non-negative n in decimal, byte by byte so that its
// digits need no heap buffer.
func writeInt(w *bufio.Writer, n int64) {
	var d [20]byte
	i := len(d)
	for {
		i--
		d[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			break
		}
	}
	for _, c := range d[i:] {
		w.WriteByte(c)
	}
}

func writeHeader(w *bufio.Writer, k, v string) {
	w.WriteString(k)
	w.WriteString(": ")
	w.WriteString(v)
	w.WriteString("\r\n")
}

// bodyMethod: methods whose empty body is still declared
// ("Content-Length: 0"), as http.Transport does.
func bodyMethod(m string) bool {
	return m == http.MethodPost || m == http.MethodPut || m == http.MethodPatch
}

// read reads the replica's answer head; 1xx interim answers are skipped.
func (o *hopRequest) read(c *hopConn) (*http.Response, error) {
	if resp, ok, err := o.readFast(c); ok {
		return resp, err
	}
	for {
		resp, err := http.ReadResponse(c.br, o.r)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			if o.head {
				resp.Body = http.NoBody
			}
			return resp, nil
		}
	}
}

// staleConn reports whether an error on a reused connection means that
// the replica had closed it while idle, before it saw the request: the
// request may then be sent again on a new connection.
func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// aLongTimeAgo is a deadline in the past: it fails the reads and writes
// of a connection at once.
var aLongTimeAgo = time.Unix(1, 0)

// readFast parses the common answer without http.ReadResponse's per-header
// copies: HTTP/1.1, a final status, a Content-Length (or no body by
// status or method), plain "Name: value" lines, the whole head within the
// connection's buffer. ok is false for anything else (chunked,
// close-delimited, interim 1xx, folded lines, odd bytes) and then nothing
// was consumed: http.ReadResponse reads it as the standard library does.
// The header strings share one allocation.
func (o *hopRequest) readFast(c *hopConn) (resp *http.Response, ok bool, err error) {
	br := c.br
	var head []byte
	for {
		buf, _ := br.Peek(br.Buffered())
		if i := bytes.Index(buf, crlfcrlf); i >= 0 {
			head = buf[:i+4]
			break
		}
		if len(buf) == br.Size() {
			return nil, false, nil // a head this big is read the slow way
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			if len(buf) > 0 && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, true, err
		}
	}
	status, rest, found := bytes.Cut(head, crlf)
	if !found || len(status) < len("HTTP/1.1 200") || string(status[:9]) != "HTTP/1.1 " || (len(status) > 12 && status[12] != ' ') {
		return nil, false, nil
	}
	code := 0
	for _, d := range status[9:12] {
		if d < '0' || d > '9' {
			return nil, false, nil
		}
		code = code*10 + int(d-'0')
	}
	if code < 200 || code > 599 {
		return nil, false, nil
	}
	// Check every line before allocating anything.
	lines, length, closing := 0, int64(-1), false
	hdrs := bytes.TrimSuffix(rest[:len(rest)-2], crlf) // "" when there are none
	for l := range bytes.SplitSeq(hdrs, crlf) {
		if len(hdrs) == 0 {
			break
		}
		k, v, found := bytes.Cut(l, colon)
		if !found || !validName(k) || !validValue(v) {
			return nil, false, nil
		}
		v = trimOWS(v)
		switch {
		case equalFold(k, "Content-Length"):
			n, err := strconv.ParseUint(string(v), 10, 63)
			if err != nil || length >= 0 {
				return nil, false, nil
			}
			length = int64(n)
		case equalFold(k, "Transfer-Encoding"):
			return nil, false, nil
		case equalFold(k, "Connection"):
			closing = closing || hasToken(v, "close")
		}
		lines++
	}
	noBody := o.head || code == http.StatusNoContent || code == http.StatusNotModified
	if length < 0 && !noBody {
		return nil, false, nil // close-delimited
	}

	hs := string(head)
	vals := make([]string, lines)
	h := make(http.Header, lines)
	rs := hs[len(status)+2 : len(status)+2+len(hdrs)]
	for i := 0; rs != ""; i++ {
		var l string
		l, rs, _ = strings.Cut(rs, "\r\n")
		k, v, _ := strings.Cut(l, ":")
		k = textproto.CanonicalMIMEHeaderKey(k) // no copy when canonical already
		vals[i] = textproto.TrimString(v)
		if prior, dup := h[k]; dup {
			h[k] = append(prior, vals[i])
		} else {
			h[k] = vals[i : i+1 : i+1]
		}
	}
	if closing {
		h.Del("Connection") // as http.ReadResponse does
	}
	if _, err := br.Discard(len(head)); err != nil {
		return nil, true, err
	}
	resp = &http.Response{
		Status: hs[9:len(status)], StatusCode: code, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, ContentLength: length, Close: closing, Request: o.r,
	}
	switch {
	case noBody:
		resp.Body = http.NoBody
		if o.head {
			resp.ContentLength = length
		} else {
			resp.ContentLength = 0
		}
	case length == 0:
		resp.Body = http.NoBody
	default:
		c.body = fixedBody{br: br, left: length}
		resp.Body = &c.body
	}
	return resp, true, nil
}

var (
	crlf     = []byte("\r\n")
	crlfcrlf = []byte("\r\n\r\n")
	colon    = []byte(":")
)

// validName: a header name is a non-empty token (RFC 9110 5.1).
func validName(k []byte) bool {
	if len(k) == 0 {
		return false
	}
	for _, b := range k {
		if b >= 0x80 || !tokenChar[b] {
			return false
		}
	}
	return true
}

var tokenChar = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// validValue: no control bytes but tab (which also rules out a bare CR or
// LF).
func validValue(v []byte) bool {
	for _, b := range v {
		if (b < ' ' && b != '\t') || b == 0x7f {
			return false
		}
	}
	return true
}

func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		x, y := b[i]|0x20, s[i]|0x20
		if x != y {
			return false
		}
	}
	return true
}

// hasToken reports whether a comma-separated header value lists tok.
func hasToken(v []byte, tok string) bool {
	for t := range bytes.SplitSeq(v, []byte(",")) {
		if equalFold(trimOWS(t), tok) {
			return true
		}
	}
	return false
}

// fixedBody is an answer body of a known length, read from the
// connection's buffer; each connection has one, reused, since a connection
// carries one answer at a time.
type fixedBody struct {
	br   *bufio.Reader
	left int64
}

func (b *fixedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	switch {
	case b.left == 0:
		return n, io.EOF
	case err == io.EOF:
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

// Close leaves the rest unread: a connection whose answer was not read to
// its end is closed, not reused (attempt.closeAnswer).
func (b *fixedBody) Close() error { return nil }
