package notice_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/notice"
)

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const node = "spot-a-7f3k"

// serve starts a Server with one node of format on loopback.
func serve(t *testing.T, format string, c *clock) (*notice.Server, *httptest.Server) {
	t.Helper()
	srv := notice.NewServer(c.Now, nil)
	srv.Register(node, format)
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return srv, ts
}

func newWatcher(t *testing.T, format, baseURL string, client *http.Client, now func() time.Time) notice.Watcher {
	t.Helper()
	w, err := notice.NewWatcher(format, baseURL, client, now)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func poll(t *testing.T, w notice.Watcher) (notice.Notice, bool) {
	t.Helper()
	n, seen, err := w.Poll(t.Context())
	if err != nil {
		t.Fatalf("Poll: %v", err)
	}
	return n, seen
}

// TestEndToEnd publishes, reads and withdraws a notice in every format
// through a Server and a Watcher.
func TestEndToEnd(t *testing.T) {
	for _, tc := range []struct {
		format, action string
		notice         time.Duration // from Set to the eviction
		wantDetail     *regexp.Regexp
		deadlineOnSeen bool // deadline is when first seen + 30 s (GCP)
	}{
		{format: notice.FormatAzure, action: "terminate", notice: 30 * time.Second, wantDetail: regexp.MustCompile(`^Preempt [0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$`)},
		{format: notice.FormatAzure, action: "stop", notice: 30 * time.Second, wantDetail: regexp.MustCompile(`^Preempt `)},
		{format: notice.FormatAWS, action: "terminate", notice: 2 * time.Minute, wantDetail: regexp.MustCompile(`^terminate$`)},
		{format: notice.FormatAWS, action: "stop", notice: 2 * time.Minute, wantDetail: regexp.MustCompile(`^stop$`)},
		{format: notice.FormatAWS, action: "", notice: 2 * time.Minute, wantDetail: regexp.MustCompile(`^terminate$`)},
		{format: notice.FormatGCP, action: "terminate", notice: 30 * time.Second, wantDetail: regexp.MustCompile(`^preempted$`), deadlineOnSeen: true},
	} {
		t.Run(tc.format+"/"+tc.action, func(t *testing.T) {
			c := newClock()
			srv, ts := serve(t, tc.format, c)
			w := newWatcher(t, tc.format, notice.BaseURL(ts.URL, node), ts.Client(), c.Now)

			if n, seen := poll(t, w); seen {
				t.Fatalf("before Set: saw %+v", n)
			}

			notBefore := c.Now().Add(tc.notice)
			srv.Set(node, notBefore, tc.action)
			c.Advance(5 * time.Second)
			want := notBefore
			if tc.deadlineOnSeen {
				want = c.Now().Add(30 * time.Second)
			}
			n, seen := poll(t, w)
			if !seen {
				t.Fatal("after Set: no notice seen")
			}
			if !n.Deadline.Equal(want) || n.Format != tc.format || !tc.wantDetail.MatchString(n.Detail) {
				t.Fatalf("after Set: got %+v, want deadline %v, format %s, detail matching %s", n, want, tc.format, tc.wantDetail)
			}

			c.Advance(3 * time.Second)
			if again, _ := poll(t, w); !again.Deadline.Equal(want) {
				t.Fatalf("second poll: deadline moved from %v to %v", want, again.Deadline)
			}

			// Azure's watcher acknowledges the event by its EventId; the
			// others' clouds take no acknowledgement.
			ack, ok := w.(notice.Acknowledger)
			if ok != (tc.format == notice.FormatAzure) {
				t.Fatalf("%s watcher is an Acknowledger: %v", tc.format, ok)
			}
			if ok {
				if n.EventID == "" || !strings.HasSuffix(n.Detail, n.EventID) {
					t.Fatalf("notice %+v lacks its EventId", n)
				}
				if err := ack.Acknowledge(t.Context(), n); err != nil {
					t.Fatalf("Acknowledge: %v", err)
				}
				if got := srv.Acknowledged(node); len(got) != 1 || got[0].EventID != n.EventID || !got[0].At.Equal(c.Now()) {
					t.Fatalf("Acknowledged = %v, want %s at %v", got, n.EventID, c.Now())
				}
				stale := n
				stale.EventID = "00000000-0000-4000-8000-000000000000"
				if err := ack.Acknowledge(t.Context(), stale); err == nil || !strings.Contains(err.Error(), "400") {
					t.Fatalf("Acknowledge of an unknown event: %v, want the 400", err)
				}
			}

			srv.Clear(node)
			if n, seen := poll(t, w); seen {
				t.Fatalf("after Clear: saw %+v", n)
			}
		})
	}
}

// get sends one request to ts and returns the status, body and headers.
func get(t *testing.T, ts *httptest.Server, method, path string, header map[string]string, body string) (int, string, http.Header) {
	t.Helper()
	status, b, h, err := send(t.Context(), ts, method, path, header, body)
	if err != nil {
		t.Fatal(err)
	}
	return status, b, h
}

// send is get for goroutines other than the test's.
func send(ctx context.Context, ts *httptest.Server, method, path string, header map[string]string, body string) (int, string, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, ts.URL+path, strings.NewReader(body))
	if err != nil {
		return 0, "", nil, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, err
}

// TestRequestsRefused checks the answers to requests the real services
// refuse, and to paths of other clouds and other nodes.
func TestRequestsRefused(t *testing.T) {
	const (
		azurePath = "/nodes/" + node + "/metadata/scheduledevents"
		awsAction = "/nodes/" + node + "/latest/meta-data/spot/instance-action"
		awsToken  = "/nodes/" + node + "/latest/api/token"
		gcpPath   = "/nodes/" + node + "/computeMetadata/v1/instance/preempted"
	)
	for _, tc := range []struct {
		name, format, method, path string
		header                     map[string]string
		body                       string
		wantStatus                 int
		wantBody                   string
	}{
		{"azure without Metadata header", notice.FormatAzure, "GET", azurePath + "?api-version=2020-07-01", nil, "", 400, `"error":"Bad request. Required metadata header not specified"`},
		{"azure Metadata false", notice.FormatAzure, "GET", azurePath + "?api-version=2020-07-01", map[string]string{"Metadata": "false"}, "", 400, "Required metadata header not specified"},
		{"azure without api-version", notice.FormatAzure, "GET", azurePath, map[string]string{"Metadata": "true"}, "", 400, "api-version was not specified"},
		{"azure unknown api-version", notice.FormatAzure, "GET", azurePath + "?api-version=1999-01-01", map[string]string{"Metadata": "true"}, "", 400, "api-version is invalid"},
		{"azure acknowledge without header", notice.FormatAzure, "POST", azurePath + "?api-version=2020-07-01", nil, `{"StartRequests":[]}`, 400, "Required metadata header"},
		{"azure acknowledge malformed", notice.FormatAzure, "POST", azurePath + "?api-version=2020-07-01", map[string]string{"Metadata": "true"}, `{"StartRequests":`, 400, "error"},
		{"azure acknowledge", notice.FormatAzure, "POST", azurePath + "?api-version=2020-07-01", map[string]string{"Metadata": "true"}, `{"StartRequests":[{"EventId":"F1D2C3B4-9876-4E5F-8A7B-0123456789AB"}]}`, 400, `EventId \"F1D2C3B4-9876-4E5F-8A7B-0123456789AB\" is not an event`},
		{"azure acknowledge nothing", notice.FormatAzure, "POST", azurePath + "?api-version=2020-07-01", map[string]string{"Metadata": "true"}, `{"StartRequests":[]}`, 400, "StartRequests is empty"},
		{"azure path of aws node", notice.FormatAWS, "GET", azurePath + "?api-version=2020-07-01", map[string]string{"Metadata": "true"}, "", 404, ""},
		{"aws without token", notice.FormatAWS, "GET", awsAction, nil, "", 401, ""},
		{"aws with unknown token", notice.FormatAWS, "GET", awsAction, map[string]string{"X-aws-ec2-metadata-token": "forged"}, "", 401, ""},
		{"aws token without ttl", notice.FormatAWS, "PUT", awsToken, nil, "", 400, ""},
		{"aws token ttl 0", notice.FormatAWS, "PUT", awsToken, map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "0"}, "", 400, ""},
		{"aws token ttl over 6h", notice.FormatAWS, "PUT", awsToken, map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "21601"}, "", 400, ""},
		{"aws token by GET", notice.FormatAWS, "GET", awsToken, map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"}, "", 405, ""},
		{"gcp without Metadata-Flavor", notice.FormatGCP, "GET", gcpPath, nil, "", 403, "Missing Metadata-Flavor:Google header"},
		{"gcp bad timeout_sec", notice.FormatGCP, "GET", gcpPath + "?wait_for_change=true&timeout_sec=soon", map[string]string{"Metadata-Flavor": "Google"}, "", 400, ""},
		{"gcp path of azure node", notice.FormatAzure, "GET", gcpPath, map[string]string{"Metadata-Flavor": "Google"}, "", 404, ""},
		{"unknown node", notice.FormatGCP, "GET", "/nodes/other/computeMetadata/v1/instance/preempted", map[string]string{"Metadata-Flavor": "Google"}, "", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, ts := serve(t, tc.format, newClock())
			status, body, _ := get(t, ts, tc.method, tc.path, tc.header, tc.body)
			if status != tc.wantStatus || !strings.Contains(body, tc.wantBody) {
				t.Fatalf("%s %s: got %d %q, want %d with %q", tc.method, tc.path, status, body, tc.wantStatus, tc.wantBody)
			}
		})
	}
}

// TestAzureDocument checks every documented field of the Scheduled Events
// document the Server writes, and how DocumentIncarnation moves.
func TestAzureDocument(t *testing.T) {
	c := newClock()
	srv, ts := serve(t, notice.FormatAzure, c)
	read := func() (string, map[string]any) {
		t.Helper()
		status, body, header := get(t, ts, "GET", "/nodes/"+node+"/metadata/scheduledevents?api-version=2020-07-01", map[string]string{"Metadata": "true"}, "")
		if status != 200 || !strings.HasPrefix(header.Get("Content-Type"), "application/json") {
			t.Fatalf("got %d %s %q", status, header.Get("Content-Type"), body)
		}
		var doc map[string]any
		if err := json.Unmarshal([]byte(body), &doc); err != nil {
			t.Fatal(err)
		}
		return body, doc
	}

	body, doc := read()
	if doc["DocumentIncarnation"] != 1.0 || !strings.Contains(body, `"Events":[]`) {
		t.Fatalf("empty document: %s", body)
	}

	notBefore := time.Date(2026, 3, 1, 12, 0, 30, 0, time.UTC)
	srv.Set(node, notBefore, "terminate")
	_, doc = read()
	if doc["DocumentIncarnation"] != 2.0 {
		t.Fatalf("incarnation after Set: %v, want 2", doc["DocumentIncarnation"])
	}
	events := doc["Events"].([]any)
	if len(events) != 1 {
		t.Fatalf("events: %v", events)
	}
	ev := events[0].(map[string]any)
	id, _ := ev["EventId"].(string)
	if !regexp.MustCompile(`^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$`).MatchString(id) {
		t.Errorf("EventId %q is not a GUID", id)
	}
	for key, want := range map[string]any{
		"EventStatus":       "Scheduled",
		"EventType":         "Preempt",
		"ResourceType":      "VirtualMachine",
		"NotBefore":         "Sun, 01 Mar 2026 12:00:30 GMT",
		"EventSource":       "Platform",
		"DurationInSeconds": -1.0,
	} {
		if ev[key] != want {
			t.Errorf("%s = %#v, want %#v", key, ev[key], want)
		}
	}
	if res, _ := ev["Resources"].([]any); len(res) != 1 || res[0] != node {
		t.Errorf("Resources = %v, want [%s]", ev["Resources"], node)
	}
	if _, ok := ev["Description"].(string); !ok {
		t.Errorf("Description missing: %v", ev)
	}
	if len(ev) != 9 {
		t.Errorf("event has %d fields, want the 9 documented: %v", len(ev), ev)
	}

	srv.Set(node, notBefore, "terminate")
	if _, doc = read(); doc["DocumentIncarnation"] != 2.0 {
		t.Errorf("incarnation after the same Set: %v, want 2", doc["DocumentIncarnation"])
	}
	srv.Set(node, notBefore.Add(10*time.Second), "terminate")
	_, doc = read()
	if doc["DocumentIncarnation"] != 3.0 {
		t.Errorf("incarnation after moving NotBefore: %v, want 3", doc["DocumentIncarnation"])
	}
	if got := doc["Events"].([]any)[0].(map[string]any)["EventId"]; got != id {
		t.Errorf("EventId changed from %s to %s when NotBefore moved", id, got)
	}
	srv.Clear(node)
	body, doc = read()
	if doc["DocumentIncarnation"] != 4.0 || !strings.Contains(body, `"Events":[]`) {
		t.Errorf("after Clear: %s", body)
	}
}

// TestAWSDocument checks the instance-action and termination-time items.
func TestAWSDocument(t *testing.T) {
	c := newClock()
	srv, ts := serve(t, notice.FormatAWS, c)
	status, token, header := get(t, ts, "PUT", "/nodes/"+node+"/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "300"}, "")
	if status != 200 || token == "" || header.Get("X-aws-ec2-metadata-token-ttl-seconds") != "300" {
		t.Fatalf("token: %d %q %v", status, token, header)
	}
	auth := map[string]string{"X-aws-ec2-metadata-token": token}
	for _, item := range []string{"instance-action", "termination-time"} {
		if status, body, _ := get(t, ts, "GET", "/nodes/"+node+"/latest/meta-data/spot/"+item, auth, ""); status != 404 {
			t.Errorf("%s without notice: %d %q, want 404", item, status, body)
		}
	}
	srv.Set(node, time.Date(2017, 9, 18, 8, 22, 0, 0, time.UTC), "stop")
	if status, body, _ := get(t, ts, "GET", "/nodes/"+node+"/latest/meta-data/spot/instance-action", auth, ""); status != 200 || body != `{"action":"stop","time":"2017-09-18T08:22:00Z"}` {
		t.Errorf("instance-action: %d %q", status, body)
	}
	if status, body, _ := get(t, ts, "GET", "/nodes/"+node+"/latest/meta-data/spot/termination-time", auth, ""); status != 200 || body != "2017-09-18T08:22:00Z" {
		t.Errorf("termination-time: %d %q", status, body)
	}
}

// TestAWSTokenExpiry checks that the Server measures token lifetimes by its
// clock, and that the watcher replaces its token before expiry and on 401.
func TestAWSTokenExpiry(t *testing.T) {
	srvClock, watcherClock := newClock(), newClock()
	srv := notice.NewServer(srvClock.Now, nil)
	srv.Register(node, notice.FormatAWS)
	var puts, unauthorized atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			puts.Add(1)
		}
		rec := &statusRecorder{ResponseWriter: w}
		srv.ServeHTTP(rec, r)
		if rec.status == http.StatusUnauthorized {
			unauthorized.Add(1)
		}
	}))
	defer ts.Close()

	// The server's side: a 60 s token works for 60 s.
	_, token, _ := get(t, ts, "PUT", "/nodes/"+node+"/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"}, "")
	action := "/nodes/" + node + "/latest/meta-data/spot/instance-action"
	auth := map[string]string{"X-aws-ec2-metadata-token": token}
	srvClock.Advance(59 * time.Second)
	if status, _, _ := get(t, ts, "GET", action, auth, ""); status != 404 {
		t.Fatalf("token at 59 s: %d, want 404", status)
	}
	srvClock.Advance(time.Second)
	if status, _, _ := get(t, ts, "GET", action, auth, ""); status != 401 {
		t.Fatalf("token at 60 s: %d, want 401", status)
	}

	// The watcher's side.
	puts.Store(0)
	unauthorized.Store(0)
	w := newWatcher(t, notice.FormatAWS, notice.BaseURL(ts.URL, node), ts.Client(), watcherClock.Now)
	srv.Set(node, srvClock.Now().Add(2*time.Minute), "terminate")
	check := func(step string, wantPuts, wantUnauthorized int32) {
		t.Helper()
		if _, seen := poll(t, w); !seen {
			t.Fatalf("%s: no notice", step)
		}
		if puts.Load() != wantPuts || unauthorized.Load() != wantUnauthorized {
			t.Fatalf("%s: %d token requests and %d 401s, want %d and %d", step, puts.Load(), unauthorized.Load(), wantPuts, wantUnauthorized)
		}
	}
	check("first poll", 1, 0)
	check("second poll", 1, 0) // the token is cached

	// The server's clock runs past the token's 6 h while the watcher's
	// does not: the watcher learns it from the 401 and gets a new one.
	srvClock.Advance(6*time.Hour + time.Second)
	check("after server-side expiry", 2, 1)

	// Both clocks run 6 h: the watcher replaces the token before using it.
	srvClock.Advance(6 * time.Hour)
	watcherClock.Advance(6 * time.Hour)
	check("after client-side expiry", 3, 1)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

// TestGCPWaitForChange checks the long poll: it answers when Set changes the
// value, when its timeout passes, and when the node goes away.
func TestGCPWaitForChange(t *testing.T) {
	const path = "/nodes/" + node + "/computeMetadata/v1/instance/preempted"
	flavor := map[string]string{"Metadata-Flavor": "Google"}

	t.Run("Set", func(t *testing.T) {
		srv, ts := serve(t, notice.FormatGCP, newClock())
		status, body, header := get(t, ts, "GET", path, flavor, "")
		etag := header.Get("ETag")
		if status != 200 || body != "FALSE" || etag == "" || header.Get("Metadata-Flavor") != "Google" {
			t.Fatalf("plain read: %d %q %v", status, body, header)
		}
		type answer struct {
			status int
			body   string
			etag   string
			err    error
		}
		done := make(chan answer)
		start := time.Now()
		go func() {
			// last_etag makes the wait independent of whether Set comes
			// before or after the server reads the request. A TRUE answer
			// can only come after Set; a timeout would answer FALSE.
			status, body, header, err := send(t.Context(), ts, "GET", path+"?wait_for_change=true&last_etag="+etag, flavor, "")
			done <- answer{status, body, header.Get("ETag"), err}
		}()
		srv.Set(node, time.Now().Add(30*time.Second), "terminate")
		a := <-done
		if a.err != nil || a.status != 200 || a.body != "TRUE" || a.etag == etag {
			t.Fatalf("long poll: %+v, want 200 TRUE with an ETag other than %s", a, etag)
		}
		if elapsed := time.Since(start); elapsed > 10*time.Second {
			t.Fatalf("long poll took %v to see Set", elapsed)
		}
		// A stale last_etag answers at once.
		if status, body, _ := get(t, ts, "GET", path+"?wait_for_change=true&last_etag="+etag, flavor, ""); status != 200 || body != "TRUE" {
			t.Fatalf("stale last_etag: %d %q", status, body)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		_, ts := serve(t, notice.FormatGCP, newClock())
		start := time.Now()
		status, body, _ := get(t, ts, "GET", path+"?wait_for_change=true&timeout_sec=1", flavor, "")
		if status != 200 || body != "FALSE" || time.Since(start) < time.Second {
			t.Fatalf("got %d %q after %v, want 200 FALSE after 1 s", status, body, time.Since(start))
		}
	})

	t.Run("Remove", func(t *testing.T) {
		srv, ts := serve(t, notice.FormatGCP, newClock())
		_, _, header := get(t, ts, "GET", path, flavor, "")
		done := make(chan int)
		go func() {
			status, _, _, _ := send(t.Context(), ts, "GET", path+"?wait_for_change=true&last_etag="+header.Get("ETag"), flavor, "")
			done <- status
		}()
		srv.Remove(node)
		if status := <-done; status != 404 {
			t.Fatalf("long poll on removed node: %d, want 404", status)
		}
	})

	t.Run("client gives up", func(t *testing.T) {
		_, ts := serve(t, notice.FormatGCP, newClock())
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+path+"?wait_for_change=true", nil)
		req.Header.Set("Metadata-Flavor", "Google")
		if resp, err := ts.Client().Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("long poll answered %s before the change", resp.Status)
		}
		// ts.Close, at cleanup, waits for the handler: it must have ended.
	})
}

func TestBaseURL(t *testing.T) {
	for _, serverURL := range []string{"http://127.0.0.1:8080", "http://127.0.0.1:8080/"} {
		if got := notice.BaseURL(serverURL, node); got != "http://127.0.0.1:8080/nodes/"+node {
			t.Errorf("BaseURL(%q) = %q", serverURL, got)
		}
	}
}

// BenchmarkAzurePoll measures one watcher poll of a Server over loopback.
func BenchmarkAzurePoll(b *testing.B) {
	srv := notice.NewServer(time.Now, nil)
	srv.Register(node, notice.FormatAzure)
	srv.Set(node, time.Now().Add(30*time.Second), "")
	ts := httptest.NewServer(srv)
	defer ts.Close()
	w, err := notice.NewWatcher(notice.FormatAzure, notice.BaseURL(ts.URL, node), ts.Client(), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, seen, err := w.Poll(b.Context()); err != nil || !seen {
			b.Fatal(seen, err)
		}
	}
}

// TestAzureAcknowledge: the documented StartRequests POST is accepted for
// the document's event and recorded; anything else is refused and changes
// nothing.
func TestAzureAcknowledge(t *testing.T) {
	c := newClock()
	srv, ts := serve(t, notice.FormatAzure, c)
	const path = "/nodes/" + node + "/metadata/scheduledevents?api-version=2020-07-01"
	hdr := map[string]string{"Metadata": "true"}
	document := func() (id string, incarnation float64) {
		t.Helper()
		_, body, _ := get(t, ts, "GET", path, hdr, "")
		var doc struct {
			DocumentIncarnation float64
			Events              []struct{ EventId string }
		}
		if err := json.Unmarshal([]byte(body), &doc); err != nil || len(doc.Events) != 1 {
			t.Fatalf("document %s: %v", body, err)
		}
		return doc.Events[0].EventId, doc.DocumentIncarnation
	}
	srv.Set(node, c.Now().Add(30*time.Second), "terminate")
	id, incarnation := document()
	c.Advance(5 * time.Second)

	for _, body := range []string{
		`{"StartRequests":[{"EventId":"` + id + `"},{"EventId":"00000000-0000-4000-8000-000000000000"}]}`,
		`{"StartRequests":[{"EventId":""}]}`,
		`{"StartRequests":[{}]}`,
	} {
		if status, answer, _ := get(t, ts, "POST", path, hdr, body); status != 400 || !strings.Contains(answer, "is not an event of this VM") {
			t.Errorf("POST %s: %d %q, want 400 naming the EventId", body, status, answer)
		}
	}
	if acks := srv.Acknowledged(node); len(acks) != 0 {
		t.Fatalf("refused acknowledgements were recorded: %v", acks)
	}

	ack := `{"StartRequests":[{"EventId":"` + id + `"}]}`
	if status, answer, _ := get(t, ts, "POST", path, hdr, ack); status != 200 || answer != "" {
		t.Fatalf("acknowledge: %d %q, want 200", status, answer)
	}
	get(t, ts, "POST", path, hdr, strings.ToLower(ack)) // again, as a GUID in lower case
	want := []notice.Ack{{EventID: id, At: c.Now()}}
	if got := srv.Acknowledged(node); len(got) != 1 || got[0] != want[0] {
		t.Fatalf("Acknowledged = %v, want %v", got, want)
	}
	// The eviction keeps its NotBefore: the document is as it was.
	if gotID, gotInc := document(); gotID != id || gotInc != incarnation {
		t.Errorf("after the acknowledgement: %s incarnation %v, want %s %v", gotID, gotInc, id, incarnation)
	}
	// A restarted VM has no acknowledgements.
	srv.Register(node, notice.FormatAzure)
	if got := srv.Acknowledged(node); len(got) != 0 {
		t.Errorf("Acknowledged after Register = %v, want none", got)
	}
}

// TestEnsureKeepsState: Ensure registers a node the server does not know
// and leaves a known one as it is: its notice, incarnation and tokens.
func TestEnsureKeepsState(t *testing.T) {
	c := newClock()
	srv, ts := serve(t, notice.FormatAWS, c)
	_, token, _ := get(t, ts, "PUT", "/nodes/"+node+"/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"}, "")
	srv.Set(node, c.Now().Add(2*time.Minute), "terminate")
	srv.Ensure(node, notice.FormatAWS)
	action := "/nodes/" + node + "/latest/meta-data/spot/instance-action"
	if status, body, _ := get(t, ts, "GET", action, map[string]string{"X-aws-ec2-metadata-token": token}, ""); status != 200 {
		t.Fatalf("after Ensure: %d %q, want the notice with the same token", status, body)
	}
	srv.Ensure("other", notice.FormatGCP)
	if status, body, _ := get(t, ts, "GET", "/nodes/other/computeMetadata/v1/instance/preempted", map[string]string{"Metadata-Flavor": "Google"}, ""); status != 200 || body != "FALSE" {
		t.Fatalf("a node Ensure registered: %d %q", status, body)
	}
}

// TestEventIDSurvivesRestart: a new Server (a restarted control plane)
// publishing the same eviction publishes the same EventId.
func TestEventIDSurvivesRestart(t *testing.T) {
	notBefore := time.Date(2026, 3, 1, 12, 0, 30, 0, time.UTC)
	id := func(node string, notBefore time.Time) string {
		srv, ts := serve(t, notice.FormatAzure, newClock())
		srv.Register(node, notice.FormatAzure)
		srv.Set(node, notBefore, "terminate")
		_, body, _ := get(t, ts, "GET", "/nodes/"+node+"/metadata/scheduledevents?api-version=2020-07-01", map[string]string{"Metadata": "true"}, "")
		var doc struct{ Events []struct{ EventId string } }
		json.Unmarshal([]byte(body), &doc)
		if len(doc.Events) != 1 {
			t.Fatalf("document %s", body)
		}
		return doc.Events[0].EventId
	}
	first := id(node, notBefore)
	if again := id(node, notBefore); again != first {
		t.Errorf("the same eviction after a restart: EventId %s, was %s", again, first)
	}
	if other := id(node, notBefore.Add(time.Minute)); other == first {
		t.Errorf("another eviction of the node got the same EventId %s", first)
	}
	if other := id("spot-b-1", notBefore); other == first {
		t.Errorf("another node's eviction got the same EventId %s", first)
	}
}

// TestGCPWatcherWaitsForChange: after its first read the GCP watcher holds
// its request open with wait_for_change, so a preemption set while it waits
// is heard at once rather than at the next poll; with no change it answers
// within the agent's client timeout.
func TestGCPWatcherWaitsForChange(t *testing.T) {
	srv, ts := serve(t, notice.FormatGCP, newClock())
	w := newWatcher(t, notice.FormatGCP, ts.URL+"/nodes/"+node, &http.Client{Timeout: 5 * time.Second}, time.Now)
	if _, seen, err := w.Poll(t.Context()); seen || err != nil {
		t.Fatalf("first read: seen %v, %v; want no notice", seen, err)
	}
	type result struct {
		seen    bool
		err     error
		elapsed time.Duration
	}
	done := make(chan result)
	start := time.Now()
	go func() {
		_, seen, err := w.Poll(t.Context())
		done <- result{seen, err, time.Since(start)}
	}()
	time.Sleep(500 * time.Millisecond) // the request is waiting by now
	srv.Set(node, time.Now().Add(30*time.Second), "terminate")
	r := <-done
	if !r.seen || r.err != nil {
		t.Fatalf("held read: seen %v, %v; want the preemption", r.seen, r.err)
	}
	// A plain poll would have answered FALSE at once, before the Set.
	if r.elapsed < 400*time.Millisecond {
		t.Errorf("the read answered after %s, before the preemption was set: it did not wait for a change", r.elapsed)
	}
}
