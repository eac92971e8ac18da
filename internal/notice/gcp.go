package notice

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/http"
	neturl "net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// GCP: GET /computeMetadata/v1/instance/preempted with "Metadata-Flavor:
// Google" answers TRUE or FALSE. TRUE appears when the preemption notice
// begins, about 30 s before the VM stops; the document carries no time.
// ?wait_for_change=true holds the request until the value changes.

const (
	gcpFlavorHeader = "Metadata-Flavor"
	gcpFlavor       = "Google"

	// gcpNotice is how long a preempted VM has left once preempted reads
	// TRUE.
	gcpNotice = 30 * time.Second

	// gcpDefaultWait bounds a wait_for_change request without timeout_sec,
	// so that no request outlives the server's shutdown by long.
	gcpDefaultWait = 60 * time.Second

	// gcpMaxWaitSec caps timeout_sec.
	gcpMaxWaitSec = 3600
)

func (s *Server) gcpPreempted(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(gcpFlavorHeader, gcpFlavor)
	if r.Header.Get(gcpFlavorHeader) != gcpFlavor {
		http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
		return
	}
	q := r.URL.Query()
	wait := q.Get("wait_for_change") == "true"
	timeout := gcpDefaultWait
	if v := q.Get("timeout_sec"); v != "" {
		sec, err := strconv.Atoi(v)
		if err != nil || sec < 1 {
			http.Error(w, "timeout_sec must be a positive whole number of seconds", http.StatusBadRequest)
			return
		}
		timeout = time.Duration(min(sec, gcpMaxWaitSec)) * time.Second
	}

	v, ok := s.lookup(r, FormatGCP)
	if !ok {
		unknownNode(w)
		return
	}
	if wait {
		// Wait for a value whose ETag differs from last_etag, or, without
		// one, from the value at the time of asking.
		last := q.Get("last_etag")
		if last == "" {
			last = gcpETag(v)
		}
		timer := time.NewTimer(timeout)
		defer timer.Stop()
	waiting:
		for gcpETag(v) == last {
			select {
			case <-r.Context().Done():
				return
			case <-timer.C:
				break waiting // answer the value as it is
			case <-v.changed:
				if v, ok = s.lookup(r, FormatGCP); !ok {
					unknownNode(w)
					return
				}
			}
		}
	}
	w.Header().Set("ETag", gcpETag(v))
	w.Header().Set("Content-Type", "application/text")
	w.Write([]byte(gcpValue(v)))
}

func gcpValue(v view) string {
	if v.notice != nil {
		return "TRUE"
	}
	return "FALSE"
}

// gcpETag is the ETag of the value: like the metadata server's, a hash of the
// content, so that it repeats when the value does.
func gcpETag(v view) string {
	h := fnv.New64a()
	h.Write([]byte(gcpValue(v)))
	return fmt.Sprintf("%016x", h.Sum64())
}

// gcpWatcher reads instance/preempted.
type gcpWatcher struct {
	base   string
	client *http.Client
	now    func() time.Time

	mu        sync.Mutex
	firstSeen time.Time // when TRUE was first read; zero while FALSE
	etag      string    // of the last answer: the next read waits for a change from it
}

// gcpWaitSec is how long a read holds for a change (wait_for_change),
// under the agent's 5 s client timeout: a preemption is heard the moment
// the metadata server has it, not at the next poll.
const gcpWaitSec = "4"

var _ Watcher = (*gcpWatcher)(nil)

// Poll reads preempted once. The document carries no time, so the deadline
// is 30 s after the watcher first read TRUE, and stays so while TRUE lasts.
func (gw *gcpWatcher) Poll(ctx context.Context) (Notice, bool, error) {
	url := gw.base + "/computeMetadata/v1/instance/preempted"
	gw.mu.Lock()
	etag := gw.etag
	gw.mu.Unlock()
	if etag != "" {
		// Google's way to watch a value: the request is held until it
		// differs from the last one read, or timeout_sec passes.
		url += "?wait_for_change=true&timeout_sec=" + gcpWaitSec + "&last_etag=" + neturl.QueryEscape(etag)
	}
	resp, body, err := fetch(ctx, gw.client, http.MethodGet, url, http.Header{gcpFlavorHeader: {gcpFlavor}})
	if err != nil {
		return Notice{}, false, err
	}
	if resp.StatusCode != http.StatusOK {
		return Notice{}, false, statusError(http.MethodGet, url, resp, body)
	}
	if resp.Header.Get(gcpFlavorHeader) != gcpFlavor {
		return Notice{}, false, fmt.Errorf("GET %s: answer lacks %s: %s, so it is not from a metadata server", url, gcpFlavorHeader, gcpFlavor)
	}
	gw.mu.Lock()
	defer gw.mu.Unlock()
	gw.etag = resp.Header.Get("ETag")
	switch value := strings.TrimSpace(string(body)); value {
	case "TRUE":
		if gw.firstSeen.IsZero() {
			gw.firstSeen = gw.now()
		}
		return Notice{Deadline: gw.firstSeen.Add(gcpNotice), Format: FormatGCP, Detail: "preempted"}, true, nil
	case "FALSE":
		gw.firstSeen = time.Time{}
		return Notice{}, false, nil
	default:
		return Notice{}, false, fmt.Errorf("GET %s: preempted is %q, want TRUE or FALSE", url, value)
	}
}
