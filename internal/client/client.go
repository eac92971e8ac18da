// Package client calls the spotml REST API; the CLI and the agent use it.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spotml/spotml/internal/api"
)

// Client talks to a control plane with one token. A control plane of
// several instances (over one PostgreSQL) is given as several URLs: the
// client sends each call to the instance that last answered, and when it
// does not answer (refused, timed out, a 5xx of a dying instance), tries
// the next, and sticks to the first that answers.
type Client struct {
	servers *servers // shared by the copies WithToken makes
	token   string
	http    *http.Client // API calls
	// try bounds one call to one instance, so that a hung instance
	// (paused, cut off) costs that long before the next is tried.
	try time.Duration
	// stream moves files (Upload, Download): no total timeout, since a
	// large file on a slow link may take hours, but a transfer that moves
	// no byte for stall fails.
	stream *http.Client
	stall  time.Duration
}

// Option changes a Client made by New.
type Option func(*Client)

// TryTimeout bounds one call to one instance (default 30s); with several
// instances, the next is tried after it.
func TryTimeout(d time.Duration) Option { return func(c *Client) { c.try = d } }

// New returns a client for the server at base (e.g. http://127.0.0.1:8080),
// or for the instances at a comma-separated list of URLs.
func New(base, token string, opts ...Option) *Client {
	c := &Client{servers: &servers{urls: ParseServers(base)}, token: token,
		http:   &http.Client{},
		try:    30 * time.Second,
		stream: &http.Client{Transport: streamTransport()},
		stall:  30 * time.Second,
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// ParseServers splits a comma-separated list of server URLs, dropping
// blanks and trailing slashes.
func ParseServers(list string) []string {
	var out []string
	for _, u := range strings.Split(list, ",") {
		if u = strings.TrimRight(strings.TrimSpace(u), "/"); u != "" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// WithToken returns a client of the same servers (and the same choice
// among them) that calls with token.
func (c *Client) WithToken(token string) *Client {
	cc := *c
	cc.token = token
	return &cc
}

// Servers returns the servers the client knows, the one in use first.
func (c *Client) Servers() []string {
	urls, cur := c.servers.get()
	out := make([]string, 0, len(urls))
	for i := range urls {
		out = append(out, urls[(cur+i)%len(urls)])
	}
	return out
}

// SetServers replaces the servers the client knows (a control plane's
// instances come and go); the one in use stays in use if it is among
// them. An empty list changes nothing.
func (c *Client) SetServers(urls []string) {
	var clean []string
	for _, u := range urls {
		if u = strings.TrimRight(strings.TrimSpace(u), "/"); u != "" && !slices.Contains(clean, u) {
			clean = append(clean, u)
		}
	}
	if len(clean) == 0 {
		return
	}
	c.servers.mu.Lock()
	defer c.servers.mu.Unlock()
	cur := ""
	if len(c.servers.urls) > 0 {
		cur = c.servers.urls[c.servers.cur]
	}
	c.servers.urls, c.servers.cur = clean, max(0, slices.Index(clean, cur))
}

// servers is the list of a control plane's instances and the one in use.
type servers struct {
	mu   sync.Mutex
	urls []string
	cur  int
}

func (s *servers) get() ([]string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.urls) == 0 {
		return []string{""}, 0
	}
	return s.urls, s.cur
}

// use makes url the one in use, if it is still known.
func (s *servers) use(url string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.urls, url); i >= 0 {
		s.cur = i
	}
}

// skip moves past url if it is the one in use: it did not answer.
func (s *servers) skip(url string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.urls) > 0 && s.urls[s.cur] == url {
		s.cur = (s.cur + 1) % len(s.urls)
	}
}

// current returns the server in use.
func (c *Client) current() string {
	urls, cur := c.servers.get()
	return urls[cur]
}

// StatusError is a non-2xx answer.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("server answered %d %s", e.Code, http.StatusText(e.Code))
	}
	return e.Message
}

// Code returns the HTTP status of err, or 0 if it is not a StatusError.
func Code(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// Do sends in (JSON, or raw bytes if in is []byte) and decodes the answer
// into out (JSON, or raw bytes if out is *[]byte). With several servers,
// a call that gets no answer, or a 5xx, from one is sent to the next: the
// API's writes are by name or idempotent reports, so a call repeated on
// another instance does no harm.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	ctype := "application/json"
	switch v := in.(type) {
	case nil:
	case []byte:
		body = v
		ctype = "application/octet-stream"
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		body = b
	}
	urls, cur := c.servers.get()
	var err error
	for i := range urls {
		url := urls[(cur+i)%len(urls)]
		var b []byte
		b, err = c.do(ctx, url, method, path, in != nil, body, ctype)
		if err == nil {
			c.servers.use(url)
			return decodeAnswer(method, path, b, out)
		}
		if ctx.Err() != nil || !failover(err) {
			return err
		}
		c.servers.skip(url)
	}
	return err
}

// do makes one call to one server and returns the answer's body.
func (c *Client) do(ctx context.Context, base, method, path string, hasBody bool, body []byte, ctype string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.try)
	defer cancel()
	var rd io.Reader
	if hasBody {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return nil, err
	}
	if hasBody {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, unreachable(base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, unreachable(base, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, answerError(resp.StatusCode, b)
	}
	return b, nil
}

func decodeAnswer(method, path string, b []byte, out any) error {
	switch o := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*o = b
		return nil
	default:
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode %s %s: %w", method, path, err)
		}
		return nil
	}
}

// failover reports whether a call that failed with err should be tried on
// another instance: it got no answer, or a 5xx (an instance stopping, or
// one that lost its database) other than 501 (the same on every one).
func failover(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code >= 500 && se.Code != http.StatusNotImplemented
	}
	var ue *unreachableError
	return errors.As(err, &ue)
}

// answerError is the *StatusError of a non-2xx answer with body b: the
// API's error message, or the body as text.
func answerError(code int, b []byte) error {
	var e api.Error
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return &StatusError{Code: code, Message: e.Error}
	}
	return &StatusError{Code: code, Message: strings.TrimSpace(string(b))}
}

// unreachableError is a call that got no answer from base.
type unreachableError struct {
	base string
	err  error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("cannot reach spotml at %s (is it running? set --server or SPOTML_SERVER): %v", e.base, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// unreachable is the error of a request to base that got no answer.
func unreachable(base string, err error) error {
	return &unreachableError{base: base, err: err}
}
