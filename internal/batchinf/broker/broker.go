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
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	raw "cloud.google.com/go/pubsub/apiv1"
	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/nats-io/nats.go"
	amqp "github.com/rabbitmq/amqp091-go"
	"gocloud.dev/pubsub"
	"gocloud.dev/pubsub/gcppubsub"
	"gocloud.dev/pubsub/natspubsub"
	"gocloud.dev/pubsub/rabbitpubsub"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	// The brokers a queue.uri may name, registered with pubsub's default
	// URL mux (NATS and RabbitMQ, and Pub/Sub's emulator, are opened
	// here, see OpenTopic).
	"gocloud.dev/pubsub/awssnssqs"
	_ "gocloud.dev/pubsub/azuresb"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/spec"
)

// EnvNATS names the NATS server a nats:// queue connects to, as gocloud's
// natspubsub reads it: a nats:// URL names a subject, not a server.
const EnvNATS = "NATS_SERVER_URL"

// EnvRabbit names the RabbitMQ server (amqp://USER:PASSWORD@HOST:PORT/VHOST)
// a rabbit:// queue connects to, as gocloud's rabbitpubsub reads it: a
// rabbit:// URL names an exchange or a queue, not a server.
const EnvRabbit = "RABBIT_SERVER_URL"

// EnvPubSubEmulator names a Pub/Sub emulator (HOST:PORT, plain gRPC, no
// credentials) that gcppubsub:// queues reach instead of Google's Pub/Sub,
// as Google's own clients read it. Unset, gcppubsub:// reaches Google's
// Pub/Sub with the Application Default Credentials.
const EnvPubSubEmulator = "PUBSUB_EMULATOR_HOST"

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
	conn func() // closes the connection spotml dialled for it, if any
}

// Close flushes what was sent and closes the topic.
func (t *Topic) Close(ctx context.Context) error {
	err := t.Shutdown(ctx)
	if t.conn != nil {
		t.conn()
	}
	return err
}

// Subscription is an open subscription with what it holds open.
type Subscription struct {
	*pubsub.Subscription
	conn func()
}

// Close stops receiving; messages received and not acknowledged come back
// (on brokers that redeliver: RabbitMQ hands them to another consumer
// once the connection that held them is closed).
func (s *Subscription) Close(ctx context.Context) error {
	err := s.Shutdown(ctx)
	if s.conn != nil {
		s.conn()
	}
	return err
}

// OpenTopic opens the topic the control plane sends a batch's work to.
//
// NATS and RabbitMQ are dialled here, one connection per topic, not by
// gocloud's default openers, which share one connection per process: a
// NATS broker that was down at one apply would stay "down" until a
// restart, and a RabbitMQ subscription's unacknowledged messages would
// only come back when that shared connection ends. So is a Pub/Sub
// emulator (PUBSUB_EMULATOR_HOST): gocloud's default opener reads that
// variable once per process, at its first open, and keeps that address
// for good.
func OpenTopic(ctx context.Context, uri string) (*Topic, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, err
	}
	d, ok, err := dial(u.Scheme)
	if err != nil {
		return nil, err
	}
	if !ok {
		t, err := pubsub.OpenTopic(ctx, uri)
		return &Topic{Topic: t}, err
	}
	t, err := d.topics.OpenTopicURL(ctx, u)
	if err != nil {
		d.close()
		return nil, err
	}
	return &Topic{Topic: t, conn: d.close}, nil
}

// OpenSubscription opens the subscription uri (see SubscriptionURL).
func OpenSubscription(ctx context.Context, uri string) (*Subscription, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, err
	}
	d, ok, err := dial(u.Scheme)
	if err != nil {
		return nil, err
	}
	if !ok {
		s, err := pubsub.OpenSubscription(ctx, uri)
		return &Subscription{Subscription: s}, err
	}
	s, err := d.subs.OpenSubscriptionURL(ctx, u)
	if err == nil && d.subscribed != nil {
		err = d.subscribed()
	}
	if err != nil {
		d.close()
		return nil, err
	}
	return &Subscription{Subscription: s, conn: d.close}, nil
}

// dialed is a connection spotml dialled for one topic or subscription,
// with gocloud's openers over it.
type dialed struct {
	topics pubsub.TopicURLOpener
	subs   pubsub.SubscriptionURLOpener
	// subscribed, if set, is called once a subscription is open.
	subscribed func() error
	close      func()
}

// dial connects to the broker of scheme for one topic or subscription
// (see OpenTopic); ok is false for the schemes gocloud's default openers
// serve.
func dial(scheme string) (d dialed, ok bool, err error) {
	switch scheme {
	case natspubsub.Scheme:
		nc, err := dialNATS()
		if err != nil {
			return d, true, err
		}
		o := &natspubsub.URLOpener{Connection: nc, UseV2: true}
		// Core NATS delivers only to subscribers the server knows: a
		// subscription is open once the server has it (a round trip
		// after the SUB), so that what is published from then on
		// reaches it. (FlushWithContext wants a deadline; a worker's
		// context has none.)
		return dialed{topics: o, subs: o, close: nc.Close, subscribed: func() error { return nc.FlushTimeout(10 * time.Second) }}, true, nil
	case rabbitpubsub.Scheme:
		conn, err := dialRabbit()
		if err != nil {
			return d, true, err
		}
		o := &rabbitpubsub.URLOpener{Connection: conn}
		return dialed{topics: o, subs: o, close: func() { conn.Close() }}, true, nil
	case gcppubsub.Scheme:
		host := os.Getenv(EnvPubSubEmulator)
		if host == "" {
			// Google's Pub/Sub, through gocloud's default opener and
			// the Application Default Credentials.
			return d, false, nil
		}
		conn, err := dialPubSubEmulator(host)
		if err != nil {
			return d, true, err
		}
		o := &gcppubsub.URLOpener{Conn: conn}
		return dialed{topics: o, subs: o, close: func() { conn.Close() }}, true, nil
	}
	return d, false, nil
}

// dialPubSubEmulator makes the connection to a Pub/Sub emulator as
// gocloud's default opener does (plain gRPC), without connecting yet: the
// first call does, and a call to one that does not answer fails when its
// context ends.
func dialPubSubEmulator(host string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("%s=%q is not a Pub/Sub emulator address (HOST:PORT): %w", EnvPubSubEmulator, host, err)
	}
	return conn, nil
}

// Subscribe opens the subscription a batch's worker receives from, after
// setting up the broker's side of the queue (Declare): a broker that lost
// it since apply (a new RabbitMQ at the same address) gets it back when a
// worker starts, and the control plane sends again what it had sent.
//
// A RabbitMQ consumer takes at most two batches' worth of messages ahead
// (prefetch_count, unless the subscription sets it): the default, no
// limit, hands every message on the queue to the first worker.
func Subscribe(ctx context.Context, batch string, sp spec.BatchSpec) (*Subscription, error) {
	if err := Declare(ctx, sp.Queue); err != nil {
		return nil, err
	}
	uri := SubscriptionURL(batch, sp.Queue)
	if u, err := url.Parse(uri); err == nil && u.Scheme == rabbitpubsub.Scheme && !u.Query().Has("prefetch_count") {
		perBatch := (max(sp.Runtime.BatchSize, 1) + max(sp.Queue.GroupSize, 1) - 1) / max(sp.Queue.GroupSize, 1)
		v := u.Query()
		v.Set("prefetch_count", strconv.Itoa(2*perBatch))
		u.RawQuery = v.Encode()
		uri = u.String()
	}
	return OpenSubscription(ctx, uri)
}

// Declare sets up the broker's side of a queue where spotml does it, so
// that what the control plane sends to queue.uri reaches the workers on
// queue.subscription. For RabbitMQ it makes sure the exchange queue.uri
// names exists (declared durable, fanout, where absent), that the queue
// queue.subscription names exists (declared durable where absent), and
// that the queue is bound to the exchange (with the empty routing key
// gocloud publishes with). What exists already is used as it is, whatever
// its kind or arguments; binding again is a no-op. Other brokers' topics
// and subscriptions are the user's to create (their cloud's tools do it).
func Declare(ctx context.Context, q spec.BatchQueue) error {
	u, err := url.Parse(q.URI)
	if err != nil || u.Scheme != rabbitpubsub.Scheme {
		return nil
	}
	if q.Subscription == "" {
		return Refused{fmt.Errorf("spec.queue.subscription is required with rabbit://: the queue workers receive from, e.g. rabbit://%s-q", rabbitName(u))}
	}
	su, err := url.Parse(q.Subscription)
	if err != nil || su.Scheme != rabbitpubsub.Scheme {
		return Refused{fmt.Errorf("spec.queue.subscription %q is not a rabbit:// URL like spec.queue.uri", q.Subscription)}
	}
	exchange, queue := rabbitName(u), rabbitName(su)
	conn, err := dialRabbit()
	if err != nil {
		return err
	}
	defer conn.Close()
	done := make(chan error, 1)
	go func() {
		if err := declareRabbit(conn, exchange, queue); err != nil {
			// RabbitMQ answered: the error names what it refused.
			done <- Refused{err}
			return
		}
		done <- nil
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// Closing the connection ends the calls waiting on it.
		conn.Close()
		<-done
		return fmt.Errorf("RabbitMQ did not declare exchange %q and queue %q: %w", exchange, queue, ctx.Err())
	}
}

// Refused is an error from a broker that answered but refused what the
// spec asks (or from a spec the broker cannot be asked with); its text
// names the field. Any other error from Probe is a broker that did not
// answer.
type Refused struct{ error }

func (r Refused) Unwrap() error { return r.error }

func declareRabbit(conn *amqp.Connection, exchange, queue string) error {
	// A passive declaration that fails closes its channel: each check
	// gets a channel of its own.
	ensure := func(what string, passive, declare func(*amqp.Channel) error) error {
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		err = passive(ch)
		if err == nil {
			return ch.Close()
		}
		var aerr *amqp.Error
		if !errors.As(err, &aerr) || aerr.Code != amqp.NotFound {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ch, err = conn.Channel(); err != nil {
			return err
		}
		defer ch.Close()
		if err := declare(ch); err != nil {
			return fmt.Errorf("%s: cannot declare it: %w", what, err)
		}
		return nil
	}
	err := ensure(fmt.Sprintf("spec.queue.uri: RabbitMQ exchange %q", exchange),
		func(ch *amqp.Channel) error {
			return ch.ExchangeDeclarePassive(exchange, amqp.ExchangeFanout, true, false, false, false, nil)
		},
		func(ch *amqp.Channel) error {
			return ch.ExchangeDeclare(exchange, amqp.ExchangeFanout, true, false, false, false, nil)
		})
	if err != nil {
		return err
	}
	err = ensure(fmt.Sprintf("spec.queue.subscription: RabbitMQ queue %q", queue),
		func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
			return err
		},
		func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare(queue, true, false, false, false, nil)
			return err
		})
	if err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.QueueBind(queue, "", exchange, false, nil); err != nil {
		return fmt.Errorf("RabbitMQ cannot bind queue %q (spec.queue.subscription) to exchange %q (spec.queue.uri): %w", queue, exchange, err)
	}
	return nil
}

// rabbitName is the exchange or queue a rabbit:// URL names, as
// rabbitpubsub reads it.
func rabbitName(u *url.URL) string { return path.Join(u.Host, u.Path) }

func dialRabbit() (*amqp.Connection, error) {
	server := os.Getenv(EnvRabbit)
	if server == "" {
		return nil, fmt.Errorf("%s is not set: a rabbit:// queue names an exchange and a queue; set %s (e.g. amqp://guest:guest@127.0.0.1:5672/) where the control plane and the agents run", EnvRabbit, EnvRabbit)
	}
	shown := server
	if u, err := url.Parse(server); err == nil {
		shown = u.Redacted()
	}
	conn, err := amqp.DialConfig(server, amqp.Config{
		Dial:       amqp.DefaultDial(5 * time.Second),
		Properties: amqp.Table{"connection_name": "spotml"},
	})
	if err != nil {
		return nil, fmt.Errorf("RabbitMQ server %s (%s) does not answer: %w", shown, EnvRabbit, err)
	}
	return conn, nil
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

// Probe sets up the queue where spotml does (Declare) and sends apply's
// probe to queue.uri, to see that the broker answers, and takes what is
// sent there (RabbitMQ refuses a message no queue is bound for), before a
// BatchInference is stored. Workers drop the probe. For Pub/Sub and SQS
// it first checks that what queue.uri and queue.subscription name exists
// (checkPubSub, checkSQS).
func Probe(ctx context.Context, q spec.BatchQueue) error {
	uri := q.URI
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := Declare(ctx, q); err != nil {
		return err
	}
	t, err := OpenTopic(ctx, uri)
	if err != nil {
		return err
	}
	err = checkPubSub(ctx, t, q)
	if err == nil {
		err = checkSQS(ctx, t, q)
	}
	if err == nil {
		err = t.Send(ctx, &pubsub.Message{Body: []byte("{}"), Metadata: map[string]string{probeKey: "1"}})
	}
	if cerr := t.Close(ctx); err == nil {
		err = cerr
	}
	if err != nil && !errors.As(err, new(Refused)) && ctx.Err() != nil {
		// gRPC clients (Pub/Sub) retry a server that refuses
		// connections until the context ends.
		return fmt.Errorf("%s does not answer within 10s%s: %w", uri, whereFrom(uri), err)
	}
	return err
}

// whereFrom says, for an error, which setting named the server a queue
// URI reaches, where one did.
func whereFrom(uri string) string {
	u, err := url.Parse(uri)
	if err != nil {
		return ""
	}
	switch u.Scheme {
	case gcppubsub.Scheme:
		if host := os.Getenv(EnvPubSubEmulator); host != "" {
			return fmt.Sprintf(" (the Pub/Sub emulator %s=%s)", EnvPubSubEmulator, host)
		}
	case awssnssqs.SQSScheme:
		if ep := u.Query().Get("endpoint"); ep != "" {
			return fmt.Sprintf(" (the endpoint %s)", ep)
		}
		for _, env := range []string{"AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL"} {
			if ep := os.Getenv(env); ep != "" {
				return fmt.Sprintf(" (the endpoint %s=%s)", env, ep)
			}
		}
	}
	return ""
}

// checkPubSub checks, for a gcppubsub:// queue, that the topic queue.uri
// names and the subscription queue.subscription names exist, and that the
// subscription is the topic's. spotml does not create them: they are
// cloud resources with their own settings (ack deadline, retention,
// dead-lettering) and permissions, the user's to create with their
// cloud's tools. Pub/Sub keeps a message only for the subscriptions that
// exist when it is published, so a batch sent to a topic without the
// workers' subscription would be lost: it is refused here, naming the
// field and the fix. Credentials that may publish but not read the
// topic's or subscription's settings (pubsub.topics.get,
// pubsub.subscriptions.get) skip the check rather than refuse a queue
// that may be right.
func checkPubSub(ctx context.Context, t *Topic, q spec.BatchQueue) error {
	u, err := url.Parse(q.URI)
	if err != nil || u.Scheme != gcppubsub.Scheme {
		return nil
	}
	topicPath := pubSubPath(u, "topics")
	if topicPath == "" {
		return Refused{fmt.Errorf("spec.queue.uri %q names no Pub/Sub topic; write gcppubsub://projects/PROJECT/topics/TOPIC", q.URI)}
	}
	su, err := url.Parse(q.Subscription)
	if err != nil || su.Scheme != gcppubsub.Scheme {
		return Refused{fmt.Errorf("spec.queue.subscription %q is not a gcppubsub:// URL; write gcppubsub://projects/PROJECT/subscriptions/NAME, a subscription of %s", q.Subscription, topicPath)}
	}
	subPath := pubSubPath(su, "subscriptions")
	if subPath == "" {
		return Refused{fmt.Errorf("spec.queue.subscription %q names no Pub/Sub subscription; write gcppubsub://projects/PROJECT/subscriptions/NAME, a subscription of %s", q.Subscription, topicPath)}
	}
	var pc *raw.PublisherClient
	if !t.As(&pc) {
		return nil
	}
	_, err = pc.GetTopic(ctx, &pb.GetTopicRequest{Topic: topicPath})
	switch status.Code(err) {
	case codes.OK:
	case codes.NotFound:
		return Refused{fmt.Errorf("spec.queue.uri: Pub/Sub topic %s does not exist; create it (gcloud pubsub topics create %s --project %s) or fix the URL", topicPath, path.Base(topicPath), pubSubProject(topicPath))}
	case codes.PermissionDenied:
		return nil
	default:
		return err
	}
	// Opened, a subscription receives nothing until asked to: this one
	// only reads the subscription's settings.
	s, err := OpenSubscription(ctx, q.Subscription)
	if err != nil {
		return err
	}
	defer s.Close(ctx)
	var sc *raw.SubscriberClient
	if !s.As(&sc) {
		return nil
	}
	sub, err := sc.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: subPath})
	switch status.Code(err) {
	case codes.OK:
	case codes.NotFound:
		return Refused{fmt.Errorf("spec.queue.subscription: Pub/Sub subscription %s does not exist; create it on the topic spec.queue.uri names (gcloud pubsub subscriptions create %s --topic %s --project %s) before applying: Pub/Sub keeps a message only for the subscriptions that exist when it is sent", subPath, path.Base(subPath), topicPath, pubSubProject(subPath))}
	case codes.PermissionDenied:
		return nil
	default:
		return err
	}
	if sub.Topic != topicPath {
		return Refused{fmt.Errorf("spec.queue.subscription: Pub/Sub subscription %s is a subscription of %s, not of %s (spec.queue.uri): the workers would not receive what is sent; name a subscription of %s", subPath, sub.Topic, topicPath, topicPath)}
	}
	return nil
}

// checkSQS checks, for an awssqs:// queue, that the queue exists: spotml
// does not create it (a cloud resource with its own settings: visibility
// timeout, retention, dead-letter queue), and SQS's answer to a send to a
// queue that is not there would read as a broker that does not answer.
// Credentials that may send but not read the queue's attributes
// (sqs:GetQueueAttributes) skip the check.
func checkSQS(ctx context.Context, t *Topic, q spec.BatchQueue) error {
	u, err := url.Parse(q.URI)
	if err != nil || u.Scheme != awssnssqs.SQSScheme {
		return nil
	}
	var c *sqs.Client
	if !t.As(&c) {
		return nil
	}
	// The queue URL as gocloud's awssnssqs makes it from queue.uri.
	queueURL := "https://" + path.Join(u.Host, u.Path)
	_, err = c.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl:       aws.String(queueURL),
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameVisibilityTimeout},
	})
	var missing *sqstypes.QueueDoesNotExist
	switch {
	case err == nil:
		return nil
	case errors.As(err, &missing):
		return Refused{fmt.Errorf("spec.queue.uri: SQS queue %s does not exist; create it (aws sqs create-queue --queue-name %s, in the queue's region and account) or fix the URL", queueURL, path.Base(u.Path))}
	case isAccessDenied(err):
		return nil
	}
	return err
}

// isAccessDenied reports whether an AWS error says the credentials may
// not do what was asked.
func isAccessDenied(err error) bool {
	var ae interface{ ErrorCode() string }
	if !errors.As(err, &ae) {
		return false
	}
	switch ae.ErrorCode() {
	case "AccessDenied", "AccessDeniedException", "UnauthorizedOperation":
		return true
	}
	return false
}

// pubSubPath is the full path (projects/P/KIND/NAME) a gcppubsub:// URL
// names, in either of the forms gocloud's gcppubsub reads
// (gcppubsub://projects/P/KIND/NAME or gcppubsub://P/NAME); "" if
// neither.
func pubSubPath(u *url.URL, kind string) string {
	p := path.Join(u.Host, u.Path)
	parts := strings.Split(p, "/")
	switch {
	case len(parts) == 4 && parts[0] == "projects" && parts[1] != "" && parts[2] == kind && parts[3] != "":
		return p
	case len(parts) == 2 && parts[0] != "" && parts[1] != "":
		return "projects/" + parts[0] + "/" + kind + "/" + parts[1]
	}
	return ""
}

// pubSubProject is P in projects/P/….
func pubSubProject(p string) string {
	parts := strings.Split(p, "/")
	if len(parts) < 2 {
		return ""
	}
	return parts[1]
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
