package gateway

import (
	"bufio"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// readFast must read what it takes exactly as http.ReadResponse does, and
// leave everything else to it untouched.
func TestReadFastAgreesWithReadResponse(t *testing.T) {
	for _, tc := range []struct {
		name, raw string
		method    string
		fast      bool
	}{
		{"plain", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello", "POST", true},
		{"no headers but length", "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "GET", true},
		{"no reason", "HTTP/1.1 503\r\nContent-Length: 2\r\n\r\nno", "GET", true},
		{"lower-case and repeated names, spaces", "HTTP/1.1 200 OK\r\ncontent-length:3\r\nX-A:  1 \r\nx-a: 2\r\nSet-Cookie: a=b\r\n\r\nabc", "GET", true},
		{"connection close", "HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\nx", "GET", true},
		{"head", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", "HEAD", true},
		{"204", "HTTP/1.1 204 No Content\r\n\r\n", "DELETE", true},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: t\r\n\r\n", "GET", false},
		{"close-delimited", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", "GET", false},
		{"interim 100", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "POST", false},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "GET", false},
		{"folded", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", "GET", false},
		{"two lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", "GET", false},
		{"bad length", "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", "GET", false},
		{"space in name", "HTTP/1.1 200 OK\r\nX A: 1\r\nContent-Length: 2\r\n\r\nok", "GET", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, "http://replica/x", nil)
			o := &hopRequest{r: req, method: tc.method, head: tc.method == "HEAD"}
			c := &hopConn{br: bufio.NewReaderSize(strings.NewReader(tc.raw), hopBufSize)}
			got, ok, err := o.readFast(c)
			if ok != tc.fast {
				t.Fatalf("fast path taken = %v, want %v (err %v)", ok, tc.fast, err)
			}
			if !ok {
				got, err = o.read(c) // what the gateway does then
			}
			if err != nil {
				if _, werr := http.ReadResponse(bufio.NewReader(strings.NewReader(tc.raw)), req); werr == nil {
					t.Fatalf("%v; http.ReadResponse read it", err)
				}
				return // both refuse it
			}
			want, err := http.ReadResponse(bufio.NewReader(strings.NewReader(tc.raw)), req)
			for err == nil && want.StatusCode < 200 {
				want, err = http.ReadResponse(bufio.NewReader(strings.NewReader(tc.raw[strings.Index(tc.raw, "\r\n\r\n")+4:])), req)
			}
			if err != nil {
				t.Fatal(err)
			}
			gotBody, gerr := io.ReadAll(got.Body)
			wantBody, werr := io.ReadAll(want.Body)
			if got.StatusCode != want.StatusCode || got.Status != want.Status || got.ContentLength != want.ContentLength ||
				got.Close != want.Close || !reflect.DeepEqual(got.Header, want.Header) || string(gotBody) != string(wantBody) ||
				(gerr == nil) != (werr == nil) || !reflect.DeepEqual(got.Trailer, want.Trailer) {
				t.Errorf("got  %d %q len %d close %v %v body %q %v trailer %v\nwant %d %q len %d close %v %v body %q %v trailer %v",
					got.StatusCode, got.Status, got.ContentLength, got.Close, got.Header, gotBody, gerr, got.Trailer,
					want.StatusCode, want.Status, want.ContentLength, want.Close, want.Header, wantBody, werr, want.Trailer)
			}
		})
	}
}

// A body cut short is an error, not a short answer; an answer head that
// never ends is the connection's error.
func TestReadFastCutShort(t *testing.T) {
	req, _ := http.NewRequest("GET", "http://replica/x", nil)
	o := &hopRequest{r: req, method: "GET"}
	c := &hopConn{br: bufio.NewReaderSize(strings.NewReader("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), hopBufSize)}
	resp, ok, err := o.readFast(c)
	if !ok || err != nil {
		t.Fatalf("ok %v err %v", ok, err)
	}
	if _, err := io.ReadAll(resp.Body); err != io.ErrUnexpectedEOF {
		t.Errorf("short body: err %v, want %v", err, io.ErrUnexpectedEOF)
	}
	c = &hopConn{br: bufio.NewReaderSize(strings.NewReader("HTTP/1.1 200 OK\r\nContent-Le"), hopBufSize)}
	if _, ok, err := o.readFast(c); !ok || err != io.ErrUnexpectedEOF {
		t.Errorf("short head: ok %v err %v, want %v", ok, err, io.ErrUnexpectedEOF)
	}
	c = &hopConn{br: bufio.NewReaderSize(strings.NewReader(""), hopBufSize)}
	if _, ok, err := o.readFast(c); !ok || err != io.EOF {
		t.Errorf("nothing: ok %v err %v, want %v", ok, err, io.EOF)
	}
}
