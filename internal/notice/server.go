// Package notice simulates the instance-metadata endpoints through which clouds
// announce spot evictions, and reads them.
//
// A Server publishes, for many simulated nodes at once, the documents a VM
// would read from its metadata address: Azure Scheduled Events, the AWS IMDSv2
// spot instance-action and the GCP preempted flag, each in the cloud's
// documented shape. A Watcher polls one node's endpoint in one format; pointed
// at a real metadata address instead of a Server it reads the real thing.
package notice

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Formats in which notices are published and read.
const (
	FormatAzure = "azure"
	FormatAWS   = "aws"
	FormatGCP   = "gcp"
)

// ErrUnknownFormat is returned for a format other than FormatAzure,
// FormatAWS and FormatGCP.
var ErrUnknownFormat = errors.New("unknown notice format")

// Server serves the metadata endpoints of many simulated nodes; each node's
// documents live under /nodes/{node}/ followed by the cloud's documented path,
// e.g. /nodes/spot-a-7f3k/metadata/scheduledevents.
//
// A path of a format other than the node's registered one answers 404, as it
// would on a VM of the other cloud.
//
// A node's documents change only when its state does: an announced eviction
// keeps one EventId, DocumentIncarnation and GCP ETags move only with the
// document, and IMDSv2 tokens live their TTL, so that a client that
// remembers any of them (as the clouds document) is not misled.
type Server struct {
	now func() time.Time
	log *slog.Logger
	mux *http.ServeMux

	mu    sync.Mutex
	nodes map[string]*node
}

// node is the metadata state of one simulated VM.
type node struct {
	format string
	notice *published // nil while no eviction is announced
	// rebalance is when AWS recommended rebalancing the node (its
	// events/recommendations/rebalance noticeTime); zero while none.
	rebalance time.Time

	// incarnation is Azure's DocumentIncarnation: it counts changes to the
	// event list so that a reader can tell a new document from an old one.
	incarnation int

	// tokens are the AWS IMDSv2 session tokens handed out, with their expiry.
	tokens map[string]time.Time

	// acks are the Azure StartRequests received, oldest first.
	acks []Ack

	// changed is closed, and replaced, on every change, to wake GCP
	// wait_for_change requests.
	changed chan struct{}
}

// published is an announced eviction.
type published struct {
	notBefore time.Time
	action    string // AWS instance-action: "terminate" or "stop"
	eventID   string // Azure EventId
}

// Ack is an Azure acknowledgement: a StartRequest for one event.
type Ack struct {
	EventID string
	At      time.Time
}

// NewServer returns a Server with no nodes. now is the clock that AWS token
// expiry is measured by; log (nil: discard) records acknowledgements.
func NewServer(now func() time.Time, log *slog.Logger) *Server {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{now: now, log: log, mux: http.NewServeMux(), nodes: map[string]*node{}}
	s.mux.HandleFunc("GET /nodes/{node}/metadata/scheduledevents", s.azureEvents)
	s.mux.HandleFunc("POST /nodes/{node}/metadata/scheduledevents", s.azureAcknowledge)
	s.mux.HandleFunc("PUT /nodes/{node}/latest/api/token", s.awsToken)
	s.mux.HandleFunc("GET /nodes/{node}/latest/meta-data/spot/instance-action", s.awsInstanceAction)
	s.mux.HandleFunc("GET /nodes/{node}/latest/meta-data/spot/termination-time", s.awsTerminationTime)
	s.mux.HandleFunc("GET /nodes/{node}/latest/meta-data/events/recommendations/rebalance", s.awsRebalance)
	s.mux.HandleFunc("GET /nodes/{node}/computeMetadata/v1/instance/preempted", s.gcpPreempted)
	return s
}

// ServeHTTP serves the metadata documents of the registered nodes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// Register starts serving node's metadata in format ("azure", "aws" or
// "gcp"), with no notice: a VM booting. Registering a node again starts it
// afresh, as a restarted VM would: its tokens and acknowledgements are
// forgotten. A node of an unknown format answers 404 everywhere.
func (s *Server) Register(name, format string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.nodes[name]; old != nil {
		close(old.changed)
	}
	s.register(name, format)
}

// Ensure registers node, as Register does, unless it is already
// registered; then it changes nothing. A control plane that restarted
// serves its running nodes again this way.
func (s *Server) Ensure(name, format string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nodes[name] == nil {
		s.register(name, format)
	}
}

// register adds a fresh node. The caller holds s.mu.
func (s *Server) register(name, format string) {
	s.nodes[name] = &node{
		format:      format,
		incarnation: 1,
		tokens:      map[string]time.Time{},
		changed:     make(chan struct{}),
	}
}

// Set publishes an eviction notice for node: the VM goes away at notBefore.
// action is the AWS instance-action, "terminate" or "stop" (for a pool that
// deallocates); empty means "terminate". Azure publishes a Preempt event and
// GCP sets preempted to TRUE whatever the action. Setting the same notice
// again changes nothing; Set on an unregistered node does nothing. The
// documents carry whole seconds, so notBefore is truncated to the second.
func (s *Server) Set(name string, notBefore time.Time, action string) {
	if action == "" {
		action = "terminate"
	}
	notBefore = notBefore.UTC().Truncate(time.Second)
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[name]
	if n == nil {
		return
	}
	id := eventID(name, notBefore)
	if p := n.notice; p != nil {
		if p.notBefore.Equal(notBefore) && p.action == action {
			return
		}
		id = p.eventID
	}
	n.notice = &published{notBefore: notBefore, action: action, eventID: id}
	n.bump()
}

// SetRebalance publishes an AWS rebalance recommendation for node, made at
// noticeTime (truncated to the second): the early warning that its Spot
// instance is at elevated risk of interruption, before any notice. The
// first recommendation stays; it is AWS-only, so nodes of other formats
// and unregistered nodes are left alone.
func (s *Server) SetRebalance(name string, noticeTime time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[name]
	if n == nil || n.format != FormatAWS || !n.rebalance.IsZero() {
		return
	}
	n.rebalance = noticeTime.UTC().Truncate(time.Second)
	n.bump()
}

// Clear withdraws node's notice, as when the node is deleted or restarted.
func (s *Server) Clear(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[name]
	if n == nil || n.notice == nil {
		return
	}
	n.notice = nil
	n.bump()
}

// Acknowledged returns the Azure acknowledgements node received since it
// was registered, oldest first.
func (s *Server) Acknowledged(name string) []Ack {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.nodes[name]; n != nil {
		return append([]Ack(nil), n.acks...)
	}
	return nil
}

// Remove stops serving node; its paths answer 404 from then on.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.nodes[name]; n != nil {
		close(n.changed)
		delete(s.nodes, name)
	}
}

// Names returns the nodes served, in no order.
func (s *Server) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.nodes))
	for name := range s.nodes {
		names = append(names, name)
	}
	return names
}

// BaseURL is the address under which a Server at serverURL serves node: the
// address a Watcher for that node is given.
func BaseURL(serverURL, node string) string {
	return strings.TrimSuffix(serverURL, "/") + "/nodes/" + url.PathEscape(node)
}

// bump records a change. The caller holds s.mu.
func (n *node) bump() {
	n.incarnation++
	close(n.changed)
	n.changed = make(chan struct{})
}

// view is a copy of a node's state taken under the lock.
type view struct {
	notice      *published
	incarnation int
	changed     <-chan struct{}
}

// lookup returns the state of the node a request names, if it is registered
// in format.
func (s *Server) lookup(r *http.Request, format string) (view, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[r.PathValue("node")]
	if n == nil || n.format != format {
		return view{}, false
	}
	v := view{incarnation: n.incarnation, changed: n.changed}
	if n.notice != nil {
		p := *n.notice
		v.notice = &p
	}
	return v, true
}

// eventID returns the EventId of node's eviction at notBefore: a GUID in
// the upper-case version 4 form Azure writes EventIds in, but derived from
// both rather than drawn at random, so that a control plane that restarts
// and publishes the stored notice again publishes the same event under the
// same EventId.
func eventID(node string, notBefore time.Time) string {
	h := sha256.Sum256([]byte(node + "\x00" + notBefore.UTC().Format(time.RFC3339Nano)))
	b := h[:16]
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%X-%X-%X-%X-%X", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// unknownNode answers a request for a node that is not registered in the
// format the path belongs to.
func unknownNode(w http.ResponseWriter) {
	http.Error(w, "404 - Not Found", http.StatusNotFound)
}
