package inference

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"time"
)

// Split serves HTTP/1.1 and gRPC on one listener, so that a replica has one
// address for both protocols: it reads the first bytes of each connection
// and hands those that open with HTTP/2's client preface (gRPC over
// cleartext HTTP/2, "prior knowledge", as gRPC clients and the gateway
// connect) to grpcLn, everything else to httpLn.
//
// The gRPC side is a native grpc.Server on its own listener rather than
// grpc.Server.ServeHTTP behind net/http's HTTP/2: gRPC's own transport is the
// faster of the two (bench_test.go, BenchmarkGRPC), and sniffing costs one
// small read per connection, not per request.
//
// A connection that sends fewer than the preface's 24 bytes within
// sniffTimeout (a client that sends nothing) is closed. Close the two
// listeners (the servers' Shutdown/GracefulStop do) and then ln.
type Split struct {
	ln           net.Listener
	sniffTimeout time.Duration
	http, grpc   *subListener
}

// preface is the HTTP/2 client connection preface (RFC 9113, section 3.4).
var preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// NewSplit starts accepting from ln; Run does the work.
func NewSplit(ln net.Listener, sniffTimeout time.Duration) *Split {
	return &Split{ln: ln, sniffTimeout: sniffTimeout, http: newSubListener(ln.Addr()), grpc: newSubListener(ln.Addr())}
}

// HTTP is the listener of HTTP/1.x connections.
func (s *Split) HTTP() net.Listener { return s.http }

// GRPC is the listener of HTTP/2 (gRPC) connections.
func (s *Split) GRPC() net.Listener { return s.grpc }

// Run accepts connections until ln is closed, and returns nil then.
func (s *Split) Run() error {
	var sniffing sync.WaitGroup
	defer sniffing.Wait()
	defer s.http.fail(net.ErrClosed)
	defer s.grpc.fail(net.ErrClosed)
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond) // as net/http does for EMFILE and the like
				continue
			}
			return err
		}
		sniffing.Go(func() { s.route(c) })
	}
}

// route reads as much of the preface as it takes to tell the protocols
// apart and hands the connection, those bytes replayed, to its server.
func (s *Split) route(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(s.sniffTimeout))
	buf := make([]byte, 0, len(preface))
	for len(buf) < len(preface) && bytes.HasPrefix(preface, buf) {
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			c.Close()
			return
		}
	}
	c.SetReadDeadline(time.Time{})
	to := s.http
	if bytes.Equal(buf, preface) {
		to = s.grpc
	}
	to.deliver(&sniffedConn{Conn: c, head: buf})
}

// sniffedConn replays the bytes read to route it before the rest.
type sniffedConn struct {
	net.Conn
	head []byte
}

func (c *sniffedConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// subListener is a net.Listener fed connections by a Split.
type subListener struct {
	addr  net.Addr
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
	err   error // why done closed
}

func newSubListener(addr net.Addr) *subListener {
	return &subListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *subListener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *subListener) fail(err error) {
	l.once.Do(func() { l.err = err; close(l.done) })
}

func (l *subListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

func (l *subListener) Close() error   { l.fail(net.ErrClosed); return nil }
func (l *subListener) Addr() net.Addr { return l.addr }
