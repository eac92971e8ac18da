package notice

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Azure Scheduled Events: GET /metadata/scheduledevents?api-version=... with
// the header "Metadata: true" answers the document below; POST to the same
// path acknowledges events.

// azureDocument is the Scheduled Events document.
type azureDocument struct {
	DocumentIncarnation int          `json:"DocumentIncarnation"`
	Events              []azureEvent `json:"Events"`
}

// azureEvent is one scheduled event.
type azureEvent struct {
	EventID           string   `json:"EventId"`
	EventStatus       string   `json:"EventStatus"`
	EventType         string   `json:"EventType"`
	ResourceType      string   `json:"ResourceType"`
	Resources         []string `json:"Resources"`
	NotBefore         string   `json:"NotBefore"` // RFC 1123 in GMT; empty once started
	Description       string   `json:"Description"`
	EventSource       string   `json:"EventSource"`
	DurationInSeconds int      `json:"DurationInSeconds"`
}

// azureAPIVersion is the api-version the watcher asks for.
const azureAPIVersion = "2020-07-01"

// azureAPIVersions are the api-versions Scheduled Events answers to.
var azureAPIVersions = []string{"2017-03-01", "2017-08-01", "2017-11-01", "2019-01-01", "2019-04-01", "2019-08-01", "2020-07-01"}

func (s *Server) azureEvents(w http.ResponseWriter, r *http.Request) {
	if !azureRequestValid(w, r) {
		return
	}
	v, ok := s.lookup(r, FormatAzure)
	if !ok {
		unknownNode(w)
		return
	}
	doc := azureDocument{DocumentIncarnation: v.incarnation, Events: []azureEvent{}}
	if p := v.notice; p != nil {
		doc.Events = append(doc.Events, azureEvent{
			EventID:           p.eventID,
			EventStatus:       "Scheduled",
			EventType:         "Preempt",
			ResourceType:      "VirtualMachine",
			Resources:         []string{r.PathValue("node")},
			NotBefore:         p.notBefore.UTC().Format(http.TimeFormat),
			Description:       "The Spot virtual machine is being evicted.",
			EventSource:       "Platform",
			DurationInSeconds: -1,
		})
	}
	azureWriteJSON(w, http.StatusOK, doc)
}

// azureAcknowledge accepts {"StartRequests":[{"EventId":"..."}]}, as a VM
// approves an event once it is ready for it, and records it (Acknowledged).
// Every EventId must be one the node's document lists; otherwise it answers
// 400 and records nothing. Microsoft documents that an approved event "may
// not start immediately": here the eviction keeps its NotBefore, so the
// document does not change.
func (s *Server) azureAcknowledge(w http.ResponseWriter, r *http.Request) {
	if !azureRequestValid(w, r) {
		return
	}
	var ack struct {
		StartRequests []struct {
			EventID string `json:"EventId"`
		} `json:"StartRequests"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(&ack); err != nil {
		azureWriteJSON(w, http.StatusBadRequest, map[string]string{"error": "Bad request. The request body is not a valid StartRequests document: " + err.Error()})
		return
	}
	if len(ack.StartRequests) == 0 {
		azureWriteJSON(w, http.StatusBadRequest, map[string]string{"error": `Bad request. StartRequests is empty: send {"StartRequests":[{"EventId":"<an EventId of the document>"}]}`})
		return
	}
	name := r.PathValue("node")
	s.mu.Lock()
	n := s.nodes[name]
	if n == nil || n.format != FormatAzure {
		s.mu.Unlock()
		unknownNode(w)
		return
	}
	for _, req := range ack.StartRequests {
		if n.notice == nil || !strings.EqualFold(req.EventID, n.notice.eventID) {
			s.mu.Unlock()
			azureWriteJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("Bad request. StartRequests: EventId %q is not an event of this VM's scheduled events document", req.EventID)})
			return
		}
	}
	id := n.notice.eventID
	var fresh bool
	if !slices.ContainsFunc(n.acks, func(a Ack) bool { return a.EventID == id }) {
		n.acks = append(n.acks, Ack{EventID: id, At: s.now()})
		fresh = true
	}
	s.mu.Unlock()
	if fresh {
		s.log.Info("azure scheduled event acknowledged", "node", name, "eventId", id)
	}
	w.WriteHeader(http.StatusOK)
}

// azureRequestValid answers 400, as the real metadata service does, to a
// request without "Metadata: true" or with no known api-version.
func azureRequestValid(w http.ResponseWriter, r *http.Request) bool {
	if !strings.EqualFold(r.Header.Get("Metadata"), "true") {
		azureWriteJSON(w, http.StatusBadRequest, map[string]string{"error": "Bad request. Required metadata header not specified"})
		return false
	}
	version := r.URL.Query().Get("api-version")
	if version == "" {
		azureWriteJSON(w, http.StatusBadRequest, map[string]any{
			"error":           "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
			"newest-versions": []string{azureAPIVersion},
		})
		return false
	}
	if !slices.Contains(azureAPIVersions, version) {
		azureWriteJSON(w, http.StatusBadRequest, map[string]any{
			"error":           "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds",
			"newest-versions": []string{azureAPIVersion},
		})
		return false
	}
	return true
}

func azureWriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) // the client has gone if this fails
}

// azureWatcher reads Scheduled Events.
type azureWatcher struct {
	base   string
	client *http.Client
	now    func() time.Time
}

var (
	_ Watcher      = (*azureWatcher)(nil)
	_ Acknowledger = (*azureWatcher)(nil)
)

// Poll reports the earliest Preempt or Terminate event in the document.
// Events of other types (Reboot, Redeploy, Freeze) leave the VM in place.
//
// A document on a VM in an availability set or scale-set placement group
// also lists events of its neighbours; the watcher does not know its own
// resource name, so it counts those too.
func (aw *azureWatcher) Poll(ctx context.Context) (Notice, bool, error) {
	url := aw.base + "/metadata/scheduledevents?api-version=" + azureAPIVersion
	resp, body, err := fetch(ctx, aw.client, http.MethodGet, url, http.Header{"Metadata": {"true"}})
	if err != nil {
		return Notice{}, false, err
	}
	if resp.StatusCode != http.StatusOK {
		return Notice{}, false, statusError(http.MethodGet, url, resp, body)
	}
	var doc azureDocument
	if err := json.Unmarshal(body, &doc); err != nil {
		return Notice{}, false, fmt.Errorf("GET %s: decoding scheduled events: %w", url, err)
	}
	var (
		found Notice
		seen  bool
	)
	for _, ev := range doc.Events {
		if ev.EventType != "Preempt" && ev.EventType != "Terminate" {
			continue
		}
		if ev.EventStatus == "Completed" || ev.EventStatus == "Canceled" {
			continue
		}
		deadline, err := azureNotBefore(ev.NotBefore, aw.now)
		if err != nil {
			return Notice{}, false, fmt.Errorf("GET %s: event %s: %w", url, ev.EventID, err)
		}
		if !seen || deadline.Before(found.Deadline) {
			found = Notice{Deadline: deadline, Format: FormatAzure, Detail: ev.EventType + " " + ev.EventID, EventID: ev.EventID}
			seen = true
		}
	}
	return found, seen, nil
}

// Acknowledge approves n's event: POST {"StartRequests":[{"EventId":...}]}.
func (aw *azureWatcher) Acknowledge(ctx context.Context, n Notice) error {
	if n.EventID == "" {
		return fmt.Errorf("notice: %q has no Azure EventId to acknowledge", n.Detail)
	}
	body, err := json.Marshal(map[string]any{"StartRequests": []map[string]string{{"EventId": n.EventID}}})
	if err != nil {
		return err
	}
	url := aw.base + "/metadata/scheduledevents?api-version=" + azureAPIVersion
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Metadata", "true")
	req.Header.Set("Content-Type", "application/json")
	resp, err := aw.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if resp.StatusCode != http.StatusOK {
		return statusError(http.MethodPost, url, resp, answer)
	}
	return nil
}

// azureNotBefore parses an event's NotBefore. It is blank once the event has
// started, which means now.
func azureNotBefore(s string, now func() time.Time) (time.Time, error) {
	if s == "" {
		return now(), nil
	}
	for _, layout := range []string{http.TimeFormat, time.RFC1123, time.RFC1123Z} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("NotBefore %q is not an RFC 1123 time like %q", s, http.TimeFormat)
}
