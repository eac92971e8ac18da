// Package broker carries a BatchInference's work over a message broker
// through gocloud.dev/pubsub: NATS, RabbitMQ, Azure Service Bus, Amazon
// SQS and Google Cloud Pub/Sub, with the same spec.
//
// The broker carries work, not truth: spotml's store keeps the ledger of
// items (pending, in flight, done, failed), because a broker cannot say how
// many messages it holds or were settled (SQS gives an estimate, core NATS
// nothing), cannot tell a redelivered item from a new one, and some (core
// NATS) drop a message nobody is subscribed for. The control plane sends
// the ledger's pending items as messages; a worker claims a message's items
// in the ledger before it scores them, so a message delivered twice is
// scored once, and an item whose message was lost is sent again.
//
// This package imports no database: workers use it.
package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"gocloud.dev/pubsub"
	"gocloud.dev/pubsub/natspubsub"

	// The brokers a queue.uri may name, registered with pubsub's default
	// URL mux (NATS is opened here, see open).
	_ "gocloud.dev/pubsub/awssnssqs"
	_ "gocloud.dev/pubsub/azuresb"
	_ "gocloud.dev/pubsub/gcppubsub"
	_ "gocloud.dev/pubsub/rabbitpubsub"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/spec"
)

// EnvNATS names the NATS server a nats:// queue connects to, as gocloud's
// natspubsub reads it: a nats:// URL names a subject, not a server.
const EnvNATS = "NATS_SERVER_URL"

// probeKey marks the message apply sends to see that the broker answers;
// workers drop it.
const probeKey = "spotml-probe"

// Schemes are the queue.uri schemes a BatchInference can use.
var Schemes = []string{"nats", "rabbit", "azuresb", "awssqs", "gcppubsub"}

// Encode renders a message's body.
func Encode(m api.BatchMessage) ([]byte, error) { return json.Marshal(m) }

// Decode reads a message; ok is false for apply's probe, which carries no
// work.
func Decode(m *pubsub.Message) (msg api.BatchMessage, ok bool, err error) {
	if m.Metadata[probeKey] != "" {
		return msg, false, nil
	}
	if err := json.Unmarshal(m.Body, &msg); err != nil {
		return msg, false, fmt.Errorf("message %s is not a BatchInference's: %w", m.LoggableID, err)
	}
	return msg, true, nil
}

// Topic is an open topic with what it holds open.
type Topic struct {
	*pubsub.Topic
	conn *nats.Conn
}

// Close flushes what was sent and closes the topic.
func (t *Topic) Close(ctx context.Context) error {
	err := t.Shutdown(ctx)
	if t.conn != nil {
		t.conn.Close()
	}
	return err
}

// Subscription is an open subscription with what it holds open.
type Subscription struct {
	*pubsub.Subscription
	conn *nats.Conn
}

// Close stops receiving; messages received and not acknowledged come back
// (on brokers that redeliver).
func (s *Subscription) Close(ctx context.Context) error {
	err := s.Shutdown(ctx)
	if s.conn != nil {
		s.conn.Close()
	}
	return err
}

// OpenTopic opens the topic the control plane sends a batch's work to.
func OpenTopic(ctx context.Context, uri string) (*Topic, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, err
	}
	if u.Scheme != natspubsub.Scheme {
		t, err := pubsub.OpenTopic(ctx, uri)
		return &Topic{Topic: t}, err
	}
	// NATS is dialled here, not by natspubsub's default opener, which
	// dials once per process and keeps the first failure for good: a
	// broker that was down at one apply would stay "down" until a restart.
	nc, err := dialNATS()
	if err != nil {
		return nil, err
	}
	o := natspubsub.URLOpener{Connection: nc, UseV2: true}
	t, err := o.OpenTopicURL(ctx, u)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &Topic{Topic: t, conn: nc}, nil
}

// OpenSubscription opens the subscription workers receive a batch's work
// from.
func OpenSubscription(ctx context.Context, uri string) (*Subscription, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, err
	}
	if u.Scheme != natspubsub.Scheme {
		s, err := pubsub.OpenSubscription(ctx, uri)
		return &Subscription{Subscription: s}, err
	}
	nc, err := dialNATS()
	if err != nil {
		return nil, err
	}
	o := natspubsub.URLOpener{Connection: nc, UseV2: true}
	s, err := o.OpenSubscriptionURL(ctx, u)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &Subscription{Subscription: s, conn: nc}, nil
}

func dialNATS() (*nats.Conn, error) {
	server := os.Getenv(EnvNATS)
	if server == "" {
		return nil, fmt.Errorf("%s is not set: a nats:// queue names a subject; set %s (e.g. nats://127.0.0.1:4222) where the control plane and the agents run", EnvNATS, EnvNATS)
	}
	nc, err := nats.Connect(server, nats.Timeout(5*time.Second), nats.Name("spotml"))
	if err != nil {
		return nil, fmt.Errorf("NATS server %s (%s) does not answer: %w", server, EnvNATS, err)
	}
	return nc, nil
}

// SubscriptionURL is where a batch's workers receive from: the spec's
// queue.subscription, or else queue.uri itself; for NATS with a queue
// group named after the batch, so that each message goes to one worker.
func SubscriptionURL(batch string, q spec.BatchQueue) string {
	if q.Subscription != "" {
		return q.Subscription
	}
	u, err := url.Parse(q.URI)
	if err != nil || u.Scheme != natspubsub.Scheme || u.Query().Has("queue") {
		return q.URI
	}
	v := u.Query()
	v.Set("queue", "spotml."+batch)
	u.RawQuery = v.Encode()
	return u.String()
}

// Probe sends apply's probe to the topic uri, to see that the broker
// answers before a BatchInference is stored. Workers drop the probe.
func Probe(ctx context.Context, uri string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	t, err := OpenTopic(ctx, uri)
	if err != nil {
		return err
	}
	err = t.Send(ctx, &pubsub.Message{Body: []byte("{}"), Metadata: map[string]string{probeKey: "1"}})
	if cerr := t.Close(ctx); err == nil {
		err = cerr
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s does not answer within 10s", uri)
	}
	return err
}

// Publisher sends batches' work, keeping one topic open per URI.
type Publisher struct {
	mu     sync.Mutex
	topics map[string]*Topic
}

// NewPublisher returns a Publisher with no topic open.
func NewPublisher() *Publisher { return &Publisher{topics: map[string]*Topic{}} }

// Publish sends msgs to the topic uri, waiting for the broker to take
// each. A topic that failed is opened again on the next call.
func (p *Publisher) Publish(ctx context.Context, uri string, msgs []api.BatchMessage) error {
	p.mu.Lock()
	t, ok := p.topics[uri]
	p.mu.Unlock()
	if !ok {
		var err error
		if t, err = OpenTopic(ctx, uri); err != nil {
			return err
		}
		p.mu.Lock()
		p.topics[uri] = t
		p.mu.Unlock()
	}
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, m := range msgs {
		body, err := Encode(m)
		if err != nil {
			return err
		}
		// Send blocks until the broker took the message; sends in parallel
		// are batched by gocloud.
		wg.Go(func() {
			if err := t.Send(ctx, &pubsub.Message{Body: body}); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		p.mu.Lock()
		if p.topics[uri] == t {
			delete(p.topics, uri)
		}
		p.mu.Unlock()
		t.Close(ctx)
		return err
	}
	return nil
}

// Close closes every topic.
func (p *Publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for uri, t := range p.topics {
		errs = append(errs, t.Close(ctx))
		delete(p.topics, uri)
	}
	return errors.Join(errs...)
}

// IsBroker reports whether a queue.uri names a broker, not the store.
func IsBroker(uri string) bool {
	return uri != "" && uri != spec.QueueStore && strings.Contains(uri, "://")
}
