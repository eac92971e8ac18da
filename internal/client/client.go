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
	"strings"
	"time"

	"github.com/spotml/spotml/internal/api"
)

// Client talks to one control plane with one token.
type Client struct {
	base  string
	token string
	http  *http.Client // API calls: each has a total timeout
	// stream moves files (Upload, Download): no total timeout, since a
	// large file on a slow link may take hours, but a transfer that moves
	// no byte for stall fails.
	stream *http.Client
	stall  time.Duration
}

// New returns a client for the server at base (e.g. http://127.0.0.1:8080).
func New(base, token string) *Client {
	return &Client{base: strings.TrimRight(base, "/"), token: token,
		http:   &http.Client{Timeout: 30 * time.Second},
		stream: &http.Client{Transport: streamTransport()},
		stall:  30 * time.Second,
	}
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
// into out (JSON, or raw bytes if out is *[]byte).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	ctype := "application/json"
	switch v := in.(type) {
	case nil:
	case []byte:
		body = bytes.NewReader(v)
		ctype = "application/octet-stream"
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return answerError(resp.StatusCode, b)
	}
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

// answerError is the *StatusError of a non-2xx answer with body b: the
// API's error message, or the body as text.
func answerError(code int, b []byte) error {
	var e api.Error
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return &StatusError{Code: code, Message: e.Error}
	}
	return &StatusError{Code: code, Message: strings.TrimSpace(string(b))}
}

// unreachable is the error of a request that got no answer.
func (c *Client) unreachable(err error) error {
	return fmt.Errorf("cannot reach spotml at %s (is it running? set --server or SPOTML_SERVER): %w", c.base, err)
}
