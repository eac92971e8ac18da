package main

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/pflag"

	"github.com/spotml/spotml/internal/spec"
)

// readHeaderTimeout is how long every spotml server waits for a request's
// header: no client needs more, and a slow one only holds a connection.
const readHeaderTimeout = 10 * time.Second

// timeouts bound how long an HTTP server waits on a slow or idle client,
// so that such a client costs a connection for a while, never for ever.
type timeouts struct {
	read, write, idle time.Duration
}

// Defaults. The gateway and spotml serve bound whole requests: a request
// body must arrive within read, and the answer be written within write of
// the header (the gateway's attempt timeout is 60s, so write leaves room
// for a slow body and a slow replica). The API bounds stalls instead: its
// watch streams and log follows last as long as their client wants, and
// blob transfers are as large as the user's files.
var (
	gatewayTimeouts = timeouts{read: 30 * time.Second, write: 2 * time.Minute, idle: 2 * time.Minute}
	serveTimeouts   = timeouts{read: 30 * time.Second, write: 2 * time.Minute, idle: 2 * time.Minute}
	apiTimeouts     = timeouts{read: 30 * time.Second, write: 30 * time.Second, idle: 2 * time.Minute}
)

// bind adds --PREFIXread-timeout, --PREFIXwrite-timeout and
// --PREFIXidle-timeout. whole says whether read and write bound a whole
// request (gateway, serve) or a stall (API).
func (t *timeouts) bind(fs *pflag.FlagSet, prefix, server string, whole bool) {
	read, write := "longest the "+server+" waits for a request body to arrive whole (408 past it)",
		"longest the "+server+" takes to answer, from the end of the request header"
	if !whole {
		read = "longest a request body to the " + server + " may stall with no byte arriving (a slow but steady upload is never cut)"
		write = "longest one write of an answer by the " + server + " may block on a client that does not read (streams may last for ever)"
	}
	fs.DurationVar(&t.read, prefix+"read-timeout", t.read, read)
	fs.DurationVar(&t.write, prefix+"write-timeout", t.write, write)
	fs.DurationVar(&t.idle, prefix+"idle-timeout", t.idle, "longest the "+server+" keeps an idle keep-alive connection open")
}

func (t timeouts) check(prefix string) error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"read", t.read}, {"write", t.write}, {"idle", t.idle}} {
		if d.v <= 0 {
			return fmt.Errorf("--%s%s-timeout %s: must be more than 0; a server without it lets an idle or slow client hold a connection for ever", prefix, d.name, d.v)
		}
	}
	return nil
}

// newServer is the HTTP server of the gateway and of spotml serve: every
// request bounded as a whole.
func newServer(h http.Handler, t timeouts) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       t.read,
		WriteTimeout:      t.write,
		IdleTimeout:       t.idle,
	}
}

// newAPIServer is the HTTP server of the API, the console and the agents.
// Its deadlines move with progress (see stallTimeouts), as a whole-request
// write timeout would cut every watch stream and a whole-request read
// timeout every large upload on a slow link.
func newAPIServer(h http.Handler, t timeouts) *http.Server {
	return &http.Server{
		Handler:           stallTimeouts(h, t.read, t.write),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       t.idle,
	}
}

// stallTimeouts gives each read of a request body read to complete and
// each write of the answer write: a client that stops sending or stops
// reading loses its connection after that long, one that keeps going
// keeps it.
func stallTimeouts(h http.Handler, read, write time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &stallReader{ReadCloser: r.Body, rc: rc, d: read}
		}
		sw := &stallWriter{ResponseWriter: w, rc: rc, d: write}
		h.ServeHTTP(sw, r)
		// The server writes what is still buffered after the handler
		// returns: that write gets its time too.
		_ = rc.SetWriteDeadline(time.Now().Add(write))
	})
}

type stallReader struct {
	io.ReadCloser
	rc *http.ResponseController
	d  time.Duration
}

func (s *stallReader) Read(p []byte) (int, error) {
	_ = s.rc.SetReadDeadline(time.Now().Add(s.d))
	n, err := s.ReadCloser.Read(p)
	if err == io.EOF {
		// Nothing more to read: a stream that runs on after its (empty)
		// body must not be cut by a deadline meant for the body.
		_ = s.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

type stallWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
	d  time.Duration
}

func (s *stallWriter) Write(p []byte) (int, error) {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.d))
	return s.ResponseWriter.Write(p)
}

// Flush keeps the server-sent event streams working: they assert
// http.Flusher.
func (s *stallWriter) Flush() { _ = s.FlushError() }

func (s *stallWriter) FlushError() error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.d))
	return s.rc.Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (s *stallWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// bytesFlag is a size flag: 256Mi, 1G or a number of bytes.
type bytesFlag struct{ v *int64 }

func (b bytesFlag) String() string {
	if b.v == nil {
		return ""
	}
	return spec.Bytes(*b.v).String()
}

func (b bytesFlag) Set(s string) error {
	v, err := spec.ParseBytes(s)
	if err != nil {
		return err
	}
	if v <= 0 {
		return fmt.Errorf("must be more than 0, got %s", s)
	}
	*b.v = int64(v)
	return nil
}

func (bytesFlag) Type() string { return "size" }
