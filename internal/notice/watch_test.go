package notice_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/notice"
)

// TestDocumentedSamples runs each watcher against a handler that serves a
// sample document in the shape the cloud's documentation gives, in
// testdata/, so that the watchers are shown to read the clouds' documents
// and not only the Server's.
func TestDocumentedSamples(t *testing.T) {
	const awsToken = "AQAEAHqxsample-token=="
	for _, tc := range []struct {
		name, format, path, sample string
		// refuse answers a request without the cloud's required header.
		refuse func(w http.ResponseWriter, r *http.Request) bool
		header map[string]string // sent with the sample
		want   *notice.Notice    // nil: no notice
	}{
		{
			name: "azure preempt", format: notice.FormatAzure,
			path: "/metadata/scheduledevents", sample: "azure-scheduledevents.json",
			refuse: func(w http.ResponseWriter, r *http.Request) bool {
				if r.Header.Get("Metadata") != "true" || r.URL.Query().Get("api-version") == "" {
					http.Error(w, `{"error": "Bad request. Required metadata header not specified"}`, http.StatusBadRequest)
					return true
				}
				return false
			},
			header: map[string]string{"Content-Type": "application/json; charset=utf-8"},
			// The Freeze event comes first but leaves the VM in place.
			want: &notice.Notice{Deadline: time.Date(2016, 9, 19, 18, 29, 47, 0, time.UTC), Format: notice.FormatAzure, Detail: "Preempt F1D2C3B4-9876-4E5F-8A7B-0123456789AB", EventID: "F1D2C3B4-9876-4E5F-8A7B-0123456789AB"},
		},
		{
			name: "azure no events", format: notice.FormatAzure,
			path: "/metadata/scheduledevents", sample: "azure-scheduledevents-empty.json",
			refuse: func(w http.ResponseWriter, r *http.Request) bool { return r.Header.Get("Metadata") != "true" },
		},
		{
			name: "aws instance-action", format: notice.FormatAWS,
			path: "/latest/meta-data/spot/instance-action", sample: "aws-instance-action.json",
			refuse: func(w http.ResponseWriter, r *http.Request) bool {
				if r.Header.Get("X-aws-ec2-metadata-token") != awsToken {
					http.Error(w, "", http.StatusUnauthorized)
					return true
				}
				return false
			},
			header: map[string]string{"Content-Type": "text/plain"},
			want:   &notice.Notice{Deadline: time.Date(2017, 9, 18, 8, 22, 0, 0, time.UTC), Format: notice.FormatAWS, Detail: "terminate"},
		},
		{
			name: "gcp preempted", format: notice.FormatGCP,
			path: "/computeMetadata/v1/instance/preempted", sample: "gcp-preempted.txt",
			refuse: func(w http.ResponseWriter, r *http.Request) bool {
				if r.Header.Get("Metadata-Flavor") != "Google" {
					http.Error(w, "", http.StatusForbidden)
					return true
				}
				return false
			},
			header: map[string]string{"Metadata-Flavor": "Google", "Content-Type": "application/text"},
			want:   &notice.Notice{Deadline: newClock().Now().Add(30 * time.Second), Format: notice.FormatGCP, Detail: "preempted"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sample, err := os.ReadFile("testdata/" + tc.sample)
			if err != nil {
				t.Fatal(err)
			}
			mux := http.NewServeMux()
			mux.HandleFunc("PUT /latest/api/token", func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
					http.Error(w, "", http.StatusBadRequest)
					return
				}
				w.Write([]byte(awsToken))
			})
			mux.HandleFunc("GET "+tc.path, func(w http.ResponseWriter, r *http.Request) {
				if tc.refuse(w, r) {
					return
				}
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				w.Write(sample)
			})
			ts := httptest.NewServer(mux)
			defer ts.Close()

			w := newWatcher(t, tc.format, ts.URL, ts.Client(), newClock().Now)
			n, seen := poll(t, w)
			switch {
			case tc.want == nil && seen:
				t.Fatalf("saw %+v in a document without a notice", n)
			case tc.want != nil && !seen:
				t.Fatal("no notice seen")
			case tc.want != nil && (!n.Deadline.Equal(tc.want.Deadline) || n.Format != tc.want.Format || n.Detail != tc.want.Detail):
				t.Fatalf("got %+v, want %+v", n, *tc.want)
			}
		})
	}
}

// TestWatchersReportErrors checks that answers a watcher cannot use are
// errors, not silence.
func TestWatchersReportErrors(t *testing.T) {
	for _, tc := range []struct {
		name, format, body string
		status             int
		header             map[string]string
		wantErr            string
	}{
		{"azure refused", notice.FormatAzure, `{"error": "Bad request."}`, 400, nil, "400 Bad Request"},
		{"azure not JSON", notice.FormatAzure, `<html>`, 200, nil, "decoding scheduled events"},
		{"azure bad NotBefore", notice.FormatAzure, `{"DocumentIncarnation":2,"Events":[{"EventId":"x","EventType":"Preempt","NotBefore":"2016-09-19T18:29:47Z"}]}`, 200, nil, "not an RFC 1123 time"},
		{"aws bad time", notice.FormatAWS, `{"action":"terminate","time":"Mon, 18 Sep 2017 08:22:00 GMT"}`, 200, nil, "not RFC 3339"},
		{"aws server error", notice.FormatAWS, `oops`, 500, nil, "500 Internal Server Error"},
		{"gcp not a metadata server", notice.FormatGCP, `TRUE`, 200, nil, "not from a metadata server"},
		{"gcp odd value", notice.FormatGCP, `MAYBE`, 200, map[string]string{"Metadata-Flavor": "Google"}, `"MAYBE"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPut {
					w.Write([]byte("token"))
					return
				}
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tc.status)
				w.Write([]byte(tc.body))
			}))
			defer ts.Close()
			w := newWatcher(t, tc.format, ts.URL, ts.Client(), time.Now)
			if _, _, err := w.Poll(t.Context()); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Poll error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestNewWatcherUnknownFormat(t *testing.T) {
	_, err := notice.NewWatcher("oracle", "http://127.0.0.1", nil, nil)
	if !errors.Is(err, notice.ErrUnknownFormat) || !strings.Contains(err.Error(), `"oracle"`) {
		t.Fatalf("got %v, want ErrUnknownFormat naming \"oracle\"", err)
	}
}

// scripted is a Watcher that answers from a script, then "not seen".
type scripted struct {
	mu     sync.Mutex
	script []result
	polls  int
	onPoll func(polls int)
}

type result struct {
	n    notice.Notice
	seen bool
	err  error
}

func (s *scripted) Poll(ctx context.Context) (notice.Notice, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.polls++
	if s.onPoll != nil {
		s.onPoll(s.polls)
	}
	if len(s.script) == 0 {
		return notice.Notice{}, false, ctx.Err()
	}
	r := s.script[0]
	s.script = s.script[1:]
	return r.n, r.seen, r.err
}

func TestWatchCallsOnce(t *testing.T) {
	want := notice.Notice{Deadline: time.Date(2026, 3, 1, 12, 0, 30, 0, time.UTC), Format: notice.FormatAWS, Detail: "terminate"}
	w := &scripted{script: []result{
		{err: errors.New("connection refused")},
		{},
		{n: want, seen: true},
		{n: want, seen: true},
	}}
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	var got []notice.Notice
	if err := notice.Watch(t.Context(), w, time.Millisecond, logger, func(n notice.Notice) { got = append(got, n) }); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if len(got) != 1 || got[0] != want || w.polls != 3 {
		t.Fatalf("fn got %v after %d polls, want once %v after 3", got, w.polls, want)
	}
	if !strings.Contains(logs.String(), "polling eviction notice failed") || !strings.Contains(logs.String(), "connection refused") {
		t.Fatalf("poll error not logged: %s", logs.String())
	}
}

func TestWatchEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	w := &scripted{onPoll: func(polls int) {
		if polls == 3 {
			cancel()
		}
	}}
	err := notice.Watch(ctx, w, time.Millisecond, nil, func(notice.Notice) { t.Error("fn called without a notice") })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch: %v, want context.Canceled", err)
	}
}

func TestWatchRejectsBadInterval(t *testing.T) {
	if err := notice.Watch(t.Context(), &scripted{}, 0, nil, func(notice.Notice) {}); err == nil {
		t.Fatal("Watch with interval 0: no error")
	}
}

// TestWatchServer runs Watch against a Server until Set.
func TestWatchServer(t *testing.T) {
	for _, format := range []string{notice.FormatAzure, notice.FormatAWS, notice.FormatGCP} {
		t.Run(format, func(t *testing.T) {
			c := newClock()
			srv, ts := serve(t, format, c)
			w := newWatcher(t, format, notice.BaseURL(ts.URL, node), ts.Client(), c.Now)
			seen := make(chan notice.Notice, 2)
			done := make(chan error, 1)
			go func() {
				done <- notice.Watch(t.Context(), w, 5*time.Millisecond, nil, func(n notice.Notice) { seen <- n })
			}()
			srv.Set(node, c.Now().Add(30*time.Second), "terminate")
			if err := <-done; err != nil {
				t.Fatalf("Watch: %v", err)
			}
			if len(seen) != 1 {
				t.Fatalf("fn called %d times, want 1", len(seen))
			}
			if n := <-seen; !n.Deadline.Equal(c.Now().Add(30 * time.Second)) {
				t.Fatalf("deadline %v, want %v", n.Deadline, c.Now().Add(30*time.Second))
			}
		})
	}
}
