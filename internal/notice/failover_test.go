package notice_test

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/notice"
)

// TestWatchersFailOver: a node given every control-plane instance's
// metadata URL hears its notice from a live one when the first is gone,
// in each format; Azure's acknowledgement goes to the server that
// published the event, and AWS's rebalance warning is read the same way.
func TestWatchersFailOver(t *testing.T) {
	for _, format := range []string{notice.FormatAzure, notice.FormatAWS, notice.FormatGCP} {
		t.Run(format, func(t *testing.T) {
			c := newClock()
			gone := httptest.NewServer(notice.NewServer(c.Now, nil))
			goneURL := notice.BaseURL(gone.URL, node)
			gone.Close() // the instance that launched the node
			srv, ts := serve(t, format, c)
			w, err := notice.NewWatchers(format, []string{goneURL, notice.BaseURL(ts.URL, node)}, ts.Client(), c.Now)
			if err != nil {
				t.Fatal(err)
			}
			if _, seen := poll(t, w); seen {
				t.Fatal("a notice before any was given")
			}
			deadline := c.Now().Add(30 * time.Second)
			srv.Set(node, deadline, "terminate")
			n, seen := poll(t, w)
			if !seen || !n.Deadline.Equal(deadline) {
				t.Fatalf("after the notice: %+v, %v; want the deadline %v", n, seen, deadline)
			}
			switch format {
			case notice.FormatAzure:
				ack, ok := w.(notice.Acknowledger)
				if !ok {
					t.Fatal("an Azure watcher that cannot acknowledge")
				}
				if err := ack.Acknowledge(t.Context(), n); err != nil {
					t.Fatal(err)
				}
				if got := srv.Acknowledged(node); len(got) != 1 || got[0].EventID != n.EventID {
					t.Fatalf("acknowledgements %+v, want one for %s", got, n.EventID)
				}
			case notice.FormatAWS:
				rw, ok := w.(notice.RiskWatcher)
				if !ok {
					t.Fatal("an AWS watcher that cannot read the rebalance recommendation")
				}
				srv.SetRebalance(node, c.Now())
				if _, seen, err := rw.PollRisk(t.Context()); err != nil || !seen {
					t.Fatalf("PollRisk: %v, %v; want the warning", seen, err)
				}
			default:
				if _, ok := w.(notice.Acknowledger); ok {
					t.Error("a GCP watcher that acknowledges")
				}
			}
		})
	}
	// The list follows the instances: one that comes up is read once the
	// others fail, with the notice it serves.
	c := newClock()
	_, ts1 := serve(t, notice.FormatAWS, c)
	w, err := notice.NewWatchers(notice.FormatAWS, []string{notice.BaseURL(ts1.URL, node)}, nil, c.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, seen := poll(t, w); seen {
		t.Fatal("a notice before any was given")
	}
	second, ts2 := serve(t, notice.FormatAWS, c)
	if err := w.SetBaseURLs([]string{notice.BaseURL(ts1.URL, node), notice.BaseURL(ts2.URL, node)}); err != nil {
		t.Fatal(err)
	}
	ts1.Close()
	second.Set(node, c.Now().Add(2*time.Minute), "stop")
	if n, seen := poll(t, w); !seen || n.Detail != "stop" {
		t.Fatalf("after the first instance went: %+v, %v; want the second's notice", n, seen)
	}
	if err := w.SetBaseURLs(nil); err == nil {
		t.Error("SetBaseURLs(nil): no error")
	}

	// Every URL gone: the poll fails, as one watcher's does.
	gone := httptest.NewServer(notice.NewServer(c.Now, nil))
	gone.Close()
	w, err = notice.NewWatchers(notice.FormatGCP, []string{notice.BaseURL(gone.URL, "a"), notice.BaseURL(gone.URL, "b")}, nil, c.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.Poll(t.Context()); err == nil {
		t.Error("Poll with every server gone: no error")
	}
}
