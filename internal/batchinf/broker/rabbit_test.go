package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"gocloud.dev/pubsub"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/spec"
)

// queues numbers the tests' queues: the broker is shared by the
// package's tests and keeps (durable) queues across -count runs.
var queues atomic.Int64

// rabbitBatch is a batch spec over RabbitMQ with an exchange and a queue
// of the test's own.
func rabbitBatch(t *testing.T, batchSize, groupSize int) spec.BatchSpec {
	name := fmt.Sprintf("%s.%d", strings.ToLower(t.Name()), queues.Add(1))
	var sp spec.BatchSpec
	sp.Queue = spec.BatchQueue{URI: "rabbit://" + name, Subscription: "rabbit://" + name + "-q", GroupSize: groupSize}
	sp.Runtime.BatchSize = batchSize
	return sp
}

// receive waits up to d for a message of the batch; nil when none came.
func receive(t *testing.T, sub *Subscription, d time.Duration) (*pubsub.Message, *api.BatchMessage) {
	t.Helper()
	for {
		ctx, cancel := context.WithTimeout(t.Context(), d)
		m, err := sub.Receive(ctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil
			}
			t.Fatalf("receive: %v", err)
		}
		msg, ok, err := Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		if !ok { // apply's probe
			m.Ack()
			continue
		}
		return m, &msg
	}
}

func publish(t *testing.T, uri string, ids ...int64) {
	t.Helper()
	p := NewPublisher()
	defer p.Close(t.Context())
	var msgs []api.BatchMessage
	for _, id := range ids {
		msgs = append(msgs, api.BatchMessage{Batch: "b", Items: []api.LeasedItem{{ID: id, Input: fmt.Sprintf("%d.png", id)}}})
	}
	if err := p.Publish(t.Context(), uri, msgs); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// receiveEach receives one message for each of ids, acknowledging each,
// and fails unless every one came exactly once; then that none comes
// again within again.
func receiveEach(t *testing.T, sub *Subscription, again time.Duration, ids ...int64) {
	t.Helper()
	got := map[int64]int{}
	for range ids {
		m, msg := receive(t, sub, 10*time.Second)
		if m == nil {
			t.Fatalf("received %v, want items %v", got, ids)
		}
		got[msg.Items[0].ID]++
		m.Ack()
	}
	if again > 0 {
		if m, msg := receive(t, sub, again); m != nil {
			t.Fatalf("item %d came again after its ack (received %v)", msg.Items[0].ID, got)
		}
	}
	for _, id := range ids {
		if got[id] != 1 {
			t.Fatalf("received %v, want items %v once each", got, ids)
		}
	}
}

// nackThenVanish plays a worker that receives item id, nacks it (it gave
// its items back on a notice), must receive it again at once, and then
// goes holding it, neither acked nor nacked (its node vanished). It
// returns when the nack was sent: the redelivered copy was received no
// sooner.
func nackThenVanish(t *testing.T, sp spec.BatchSpec, id int64) (nacked time.Time) {
	t.Helper()
	a, err := Subscribe(t.Context(), "b", sp)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, sp.Queue.URI, id)
	m, msg := receive(t, a, 10*time.Second)
	if m == nil || msg.Items[0].ID != id {
		t.Fatalf("received %v, want item %d", msg, id)
	}
	nacked = time.Now()
	m.Nack()
	m, msg = receive(t, a, 10*time.Second)
	if m == nil || msg.Items[0].ID != id {
		t.Fatalf("after a nack, received %v; want item %d again", msg, id)
	}
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	return nacked
}

// TestRabbitRoundTrip: apply's probe declares the exchange, the queue and
// the binding (twice is a no-op), what the publisher sends a worker's
// subscription receives once, and an acknowledged message does not come
// back.
func TestRabbitRoundTrip(t *testing.T) {
	rabbitServer(t)
	sp := rabbitBatch(t, 4, 2)
	for range 2 {
		if err := Probe(t.Context(), sp.Queue); err != nil {
			t.Fatalf("probe: %v", err)
		}
	}
	sub, err := Subscribe(t.Context(), "b", sp)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	publish(t, sp.Queue.URI, 1, 2, 3)
	receiveEach(t, sub, 500*time.Millisecond, 1, 2, 3)
}

// TestRabbitRedelivery: a message a worker nacks (it gave its items back
// on a notice) comes back at once, and so do those a worker received and
// never settled when its connection ends (its node was evicted): another
// worker gets them.
func TestRabbitRedelivery(t *testing.T) {
	rabbitServer(t)
	sp := rabbitBatch(t, 1, 1)
	if err := Probe(t.Context(), sp.Queue); err != nil {
		t.Fatal(err)
	}
	nackThenVanish(t, sp, 7)
	b, err := Subscribe(t.Context(), "b", sp)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	m, msg := receive(t, b, 10*time.Second)
	if m == nil || msg.Items[0].ID != 7 {
		t.Fatalf("after the first worker went, the second received %v; want item 7", msg)
	}
	m.Ack()
}

// TestRabbitPrefetch: a worker holds at most two batches' worth of
// messages ahead, so one that subscribed first leaves the rest to the
// others (RabbitMQ's default would hand it every message on the queue).
func TestRabbitPrefetch(t *testing.T) {
	rabbitServer(t)
	sp := rabbitBatch(t, 2, 2) // one message a batch: prefetch 2
	if err := Probe(t.Context(), sp.Queue); err != nil {
		t.Fatal(err)
	}
	a, err := Subscribe(t.Context(), "b", sp)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	// a's consumer is on the queue before anything is sent.
	m, _ := receive(t, a, 300*time.Millisecond)
	if m != nil {
		t.Fatal("a message before any was sent")
	}
	publish(t, sp.Queue.URI, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	if m, _ = receive(t, a, 10*time.Second); m == nil {
		t.Fatal("the first worker received nothing")
	}
	defer m.Ack()
	b, err := Subscribe(t.Context(), "b", sp)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	n := 0
	for n < 8 {
		m, _ := receive(t, b, 10*time.Second)
		if m == nil {
			t.Fatalf("the second worker received %d messages, want the 8 the first does not hold", n)
		}
		m.Ack()
		n++
	}
}

// TestRabbitDeclareUsesWhatExists: an exchange and a queue the user
// declared (here a non-durable topic exchange, unlike spotml's) are used as
// they are, and spotml's binding makes what is sent reach the queue.
func TestRabbitDeclareUsesWhatExists(t *testing.T) {
	url := rabbitServer(t)
	sp := rabbitBatch(t, 1, 1)
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	ex, q := strings.TrimPrefix(sp.Queue.URI, "rabbit://"), strings.TrimPrefix(sp.Queue.Subscription, "rabbit://")
	if err := ch.ExchangeDeclare(ex, amqp.ExchangeTopic, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, false, false, false, false, amqp.Table{"x-max-length": int32(100)}); err != nil {
		t.Fatal(err)
	}
	if err := Probe(t.Context(), sp.Queue); err != nil {
		t.Fatalf("probe over the user's exchange and queue: %v", err)
	}
	sub, err := Subscribe(t.Context(), "b", sp)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	publish(t, sp.Queue.URI, 5)
	if m, msg := receive(t, sub, 10*time.Second); m == nil || msg.Items[0].ID != 5 {
		t.Fatalf("received %v, want item 5", msg)
	}
	if _, err := ch.QueueDeclarePassive(q, false, false, false, false, amqp.Table{"x-max-length": int32(100)}); err != nil {
		t.Fatalf("the user's queue changed: %v", err)
	}
}

// TestRabbitBadQueue: a rabbit:// queue without a subscription, or with
// one of another broker, is refused naming the field; a publish to an
// exchange that is gone fails (the control plane sends those items
// again), and a worker's Subscribe sets the queue up again.
func TestRabbitBadQueue(t *testing.T) {
	url := rabbitServer(t)
	ctx := t.Context()
	if err := Probe(ctx, spec.BatchQueue{URI: "rabbit://x"}); err == nil || !strings.Contains(err.Error(), "spec.queue.subscription") {
		t.Fatalf("probe without a subscription: %v", err)
	}
	if err := Probe(ctx, spec.BatchQueue{URI: "rabbit://x", Subscription: "nats://x"}); err == nil || !strings.Contains(err.Error(), "spec.queue.subscription") {
		t.Fatalf("probe with a nats:// subscription: %v", err)
	}
	// RabbitMQ answers but refuses the queue (names under amq. are its
	// own): the error says so, naming the field, not that the broker
	// did not answer.
	err := Probe(ctx, spec.BatchQueue{URI: "rabbit://spotml.badq", Subscription: "rabbit://amq.spotml-q"})
	if err == nil || !errors.As(err, new(Refused)) || !strings.Contains(err.Error(), `spec.queue.subscription: RabbitMQ queue "amq.spotml-q": cannot declare it`) {
		t.Fatalf("probe with a queue RabbitMQ refuses: %v", err)
	}
	for _, q := range []spec.BatchQueue{{URI: "rabbit://x"}, {URI: "rabbit://x", Subscription: "nats://x"}} {
		if err := Probe(ctx, q); !errors.As(err, new(Refused)) {
			t.Errorf("probe %+v: %v is not a Refused", q, err)
		}
	}
	sp := rabbitBatch(t, 1, 1)
	if err := Probe(ctx, sp.Queue); err != nil {
		t.Fatal(err)
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	ex := strings.TrimPrefix(sp.Queue.URI, "rabbit://")
	if err := ch.ExchangeDelete(ex, false, false); err != nil {
		t.Fatal(err)
	}
	p := NewPublisher()
	defer p.Close(ctx)
	if err := p.Publish(ctx, sp.Queue.URI, []api.BatchMessage{{Batch: "b", Items: []api.LeasedItem{{ID: 1}}}}); err == nil {
		t.Fatal("publish to a deleted exchange succeeded")
	}
	sub, err := Subscribe(ctx, "b", sp)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	if err := p.Publish(ctx, sp.Queue.URI, []api.BatchMessage{{Batch: "b", Items: []api.LeasedItem{{ID: 2}}}}); err != nil {
		t.Fatalf("publish once a worker set the queue up again: %v", err)
	}
	if m, msg := receive(t, sub, 10*time.Second); m == nil || msg.Items[0].ID != 2 {
		t.Fatalf("received %v, want item 2", msg)
	}
}
