package notice

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// AWS IMDSv2: PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds
// answers a session token; every read sends it back in
// X-aws-ec2-metadata-token. /latest/meta-data/spot/instance-action answers 404
// until an interruption is scheduled, then the document below.

const (
	awsTokenHeader    = "X-aws-ec2-metadata-token"
	awsTokenTTLHeader = "X-aws-ec2-metadata-token-ttl-seconds"
	awsMaxTokenTTL    = 21600 // six hours, the longest IMDSv2 grants
	awsTimeLayout     = "2006-01-02T15:04:05Z"
)

// awsRebalance is the events/recommendations/rebalance document.
type awsRebalance struct {
	NoticeTime string `json:"noticeTime"`
}

// awsInstanceAction is the spot/instance-action document.
type awsInstanceAction struct {
	Action string `json:"action"`
	Time   string `json:"time"`
}

func (s *Server) awsToken(w http.ResponseWriter, r *http.Request) {
	ttl, err := strconv.Atoi(r.Header.Get(awsTokenTTLHeader))
	if err != nil || ttl < 1 || ttl > awsMaxTokenTTL {
		http.Error(w, "400 - Bad Request", http.StatusBadRequest)
		return
	}
	token := rand.Text()
	s.mu.Lock()
	n := s.nodes[r.PathValue("node")]
	if n == nil || n.format != FormatAWS {
		s.mu.Unlock()
		unknownNode(w)
		return
	}
	now := s.now()
	for t, expiry := range n.tokens {
		if !now.Before(expiry) {
			delete(n.tokens, t)
		}
	}
	n.tokens[token] = now.Add(time.Duration(ttl) * time.Second)
	s.mu.Unlock()

	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set(awsTokenTTLHeader, strconv.Itoa(ttl))
	w.Write([]byte(token))
}

func (s *Server) awsInstanceAction(w http.ResponseWriter, r *http.Request) {
	p, ok := s.awsAuthorized(w, r)
	if !ok {
		return
	}
	doc, _ := json.Marshal(awsInstanceAction{Action: p.action, Time: p.notBefore.UTC().Format(awsTimeLayout)})
	w.Header().Set("Content-Type", "text/plain")
	w.Write(doc)
}

// awsTerminationTime serves the older spot/termination-time item, the bare
// time, beside instance-action.
func (s *Server) awsTerminationTime(w http.ResponseWriter, r *http.Request) {
	p, ok := s.awsAuthorized(w, r)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Write([]byte(p.notBefore.UTC().Format(awsTimeLayout)))
}

// awsRebalance is the events/recommendations/rebalance item: 404 until
// AWS recommends a rebalance, then {"noticeTime": "…"}.
func (s *Server) awsRebalance(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.awsToken401(w, r); !ok {
		return
	}
	s.mu.Lock()
	at := s.nodes[r.PathValue("node")].rebalance
	s.mu.Unlock()
	if at.IsZero() {
		unknownNode(w)
		return
	}
	doc, _ := json.Marshal(awsRebalance{NoticeTime: at.Format(awsTimeLayout)})
	w.Header().Set("Content-Type", "text/plain")
	w.Write(doc)
}

// awsToken401 checks a request's IMDSv2 token: a node of another format
// answers 404, a request without a live token 401.
func (s *Server) awsToken401(w http.ResponseWriter, r *http.Request) (*node, bool) {
	token := r.Header.Get(awsTokenHeader)
	s.mu.Lock()
	n := s.nodes[r.PathValue("node")]
	if n == nil || n.format != FormatAWS {
		s.mu.Unlock()
		unknownNode(w)
		return nil, false
	}
	expiry, issued := n.tokens[token]
	live := token != "" && issued && s.now().Before(expiry)
	s.mu.Unlock()
	if !live {
		http.Error(w, "401 - Unauthorized", http.StatusUnauthorized)
		return nil, false
	}
	return n, true
}

// awsAuthorized checks a spot item request's token and returns the node's
// notice. Without a live token it answers 401, and 404 when there is no
// notice.
func (s *Server) awsAuthorized(w http.ResponseWriter, r *http.Request) (published, bool) {
	token := r.Header.Get(awsTokenHeader)
	s.mu.Lock()
	n := s.nodes[r.PathValue("node")]
	if n == nil || n.format != FormatAWS {
		s.mu.Unlock()
		unknownNode(w)
		return published{}, false
	}
	expiry, issued := n.tokens[token]
	live := token != "" && issued && s.now().Before(expiry)
	var p published
	if n.notice != nil {
		p = *n.notice
	}
	noticed := n.notice != nil
	s.mu.Unlock()

	switch {
	case !live:
		http.Error(w, "401 - Unauthorized", http.StatusUnauthorized)
		return published{}, false
	case !noticed:
		unknownNode(w)
		return published{}, false
	}
	return p, true
}

// awsWatcher reads spot/instance-action with an IMDSv2 token.
type awsWatcher struct {
	base   string
	client *http.Client
	now    func() time.Time

	mu          sync.Mutex
	token       string
	tokenExpiry time.Time
}

var _ Watcher = (*awsWatcher)(nil)

// awsTokenMargin is how long before its expiry a token is replaced, so that
// one does not run out between being checked and being used.
const awsTokenMargin = time.Minute

// Poll reads instance-action. A 401 means the token has run out or the
// metadata service forgot it (the instance restarted): the watcher gets a new
// one and asks once more.
func (aw *awsWatcher) Poll(ctx context.Context) (Notice, bool, error) {
	url := aw.base + "/latest/meta-data/spot/instance-action"
	for attempt := 0; ; attempt++ {
		token, err := aw.sessionToken(ctx)
		if err != nil {
			return Notice{}, false, err
		}
		resp, body, err := fetch(ctx, aw.client, http.MethodGet, url, http.Header{awsTokenHeader: {token}})
		if err != nil {
			return Notice{}, false, err
		}
		switch resp.StatusCode {
		case http.StatusOK:
			return parseAWSInstanceAction(url, body)
		case http.StatusNotFound:
			return Notice{}, false, nil
		case http.StatusUnauthorized:
			aw.forget(token)
			if attempt == 0 {
				continue
			}
		}
		return Notice{}, false, statusError(http.MethodGet, url, resp, body)
	}
}

var _ RiskWatcher = (*awsWatcher)(nil)

// PollRisk reads events/recommendations/rebalance: 404 while EC2 has not
// recommended a rebalance.
func (aw *awsWatcher) PollRisk(ctx context.Context) (Risk, bool, error) {
	url := aw.base + "/latest/meta-data/events/recommendations/rebalance"
	for attempt := 0; ; attempt++ {
		token, err := aw.sessionToken(ctx)
		if err != nil {
			return Risk{}, false, err
		}
		resp, body, err := fetch(ctx, aw.client, http.MethodGet, url, http.Header{awsTokenHeader: {token}})
		if err != nil {
			return Risk{}, false, err
		}
		switch resp.StatusCode {
		case http.StatusOK:
			var doc awsRebalance
			if err := json.Unmarshal(body, &doc); err != nil {
				return Risk{}, false, fmt.Errorf("GET %s: decoding the rebalance recommendation: %w", url, err)
			}
			at, err := time.Parse(time.RFC3339, doc.NoticeTime)
			if err != nil {
				return Risk{}, false, fmt.Errorf("GET %s: noticeTime %q is not RFC 3339: %w", url, doc.NoticeTime, err)
			}
			return Risk{Since: at.UTC(), Format: FormatAWS, Detail: "rebalance recommendation"}, true, nil
		case http.StatusNotFound:
			return Risk{}, false, nil
		case http.StatusUnauthorized:
			aw.forget(token)
			if attempt == 0 {
				continue
			}
		}
		return Risk{}, false, statusError(http.MethodGet, url, resp, body)
	}
}

func parseAWSInstanceAction(url string, body []byte) (Notice, bool, error) {
	var doc awsInstanceAction
	if err := json.Unmarshal(body, &doc); err != nil {
		return Notice{}, false, fmt.Errorf("GET %s: decoding instance-action: %w", url, err)
	}
	if doc.Action == "" {
		return Notice{}, false, fmt.Errorf("GET %s: instance-action has no action: %q", url, body)
	}
	deadline, err := time.Parse(time.RFC3339, doc.Time)
	if err != nil {
		return Notice{}, false, fmt.Errorf("GET %s: instance-action time %q is not RFC 3339: %w", url, doc.Time, err)
	}
	return Notice{Deadline: deadline.UTC(), Format: FormatAWS, Detail: doc.Action}, true, nil
}

// sessionToken returns the cached token, or a new one once it is near its
// expiry.
func (aw *awsWatcher) sessionToken(ctx context.Context) (string, error) {
	aw.mu.Lock()
	defer aw.mu.Unlock()
	if aw.token != "" && aw.now().Before(aw.tokenExpiry.Add(-awsTokenMargin)) {
		return aw.token, nil
	}
	url := aw.base + "/latest/api/token"
	issued := aw.now()
	resp, body, err := fetch(ctx, aw.client, http.MethodPut, url, http.Header{awsTokenTTLHeader: {strconv.Itoa(awsMaxTokenTTL)}})
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", statusError(http.MethodPut, url, resp, body)
	}
	token := strings.TrimSpace(string(body))
	if token == "" {
		return "", fmt.Errorf("PUT %s: empty token", url)
	}
	aw.token, aw.tokenExpiry = token, issued.Add(awsMaxTokenTTL*time.Second)
	return token, nil
}

// forget drops token if it is still the cached one.
func (aw *awsWatcher) forget(token string) {
	aw.mu.Lock()
	defer aw.mu.Unlock()
	if aw.token == token {
		aw.token = ""
	}
}
