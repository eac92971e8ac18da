package broker

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/batchinf/broker/brokertest"
	"github.com/spotml/spotml/internal/spec"
)

// pubSub starts Google's Pub/Sub fake for the test, points
// PUBSUB_EMULATOR_HOST at it, and creates a topic with one subscription
// (10s ack deadline, the least Pub/Sub allows); the batch spec names them.
func pubSub(t *testing.T, batchSize int) (*brokertest.PubSub, spec.BatchSpec) {
	ps := brokertest.NewPubSub(t)
	t.Setenv(EnvPubSubEmulator, ps.Addr)
	topic := ps.Topic(t, "proj", "scores")
	ps.Subscription(t, "proj", "scores-workers", topic, 10*time.Second)
	var sp spec.BatchSpec
	sp.Queue = spec.BatchQueue{
		URI:          "gcppubsub://projects/proj/topics/scores",
		Subscription: "gcppubsub://projects/proj/subscriptions/scores-workers",
	}
	sp.Runtime.BatchSize = batchSize
	return ps, sp
}

// TestPubSubRoundTrip: apply's probe passes (and reaches the
// subscription, where a worker drops it), what the publisher sends a
// worker's subscription receives once, and an acknowledged message does
// not come back.
func TestPubSubRoundTrip(t *testing.T) {
	ps, sp := pubSub(t, 4)
	for range 2 {
		if err := Probe(t.Context(), sp.Queue); err != nil {
			t.Fatalf("probe: %v", err)
		}
	}
	if n := len(ps.Server.Messages()); n != 2 {
		t.Fatalf("the fake holds %d messages after two probes, want 2", n)
	}
	sub, err := Subscribe(t.Context(), "b", sp)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	// The short form gocloud also reads (gcppubsub://PROJECT/TOPIC).
	publish(t, "gcppubsub://proj/scores", 1, 2, 3)
	receiveEach(t, sub, time.Second, 1, 2, 3)
}

// TestPubSubRedelivery: a message a worker nacks (it gave its items back
// on a notice) comes back at once; one a worker received and never
// settled (its node vanished) comes back to another worker once the
// subscription's ack deadline has passed, on the fake's clock.
func TestPubSubRedelivery(t *testing.T) {
	ps, sp := pubSub(t, 1)
	var ahead atomic.Int64 // how far the fake's clock is ahead of ours
	ps.Server.SetTimeNowFunc(func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) })
	nackThenVanish(t, sp, 7)
	b, err := Subscribe(t.Context(), "b", sp)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	if m, msg := receive(t, b, time.Second); m != nil {
		t.Fatalf("item %d came back inside its ack deadline", msg.Items[0].ID)
	}
	ahead.Store(int64(11 * time.Second))
	m, msg := receive(t, b, 10*time.Second)
	if m == nil || msg.Items[0].ID != 7 {
		t.Fatalf("after the ack deadline, the second worker received %v; want item 7", msg)
	}
	m.Ack()
}

// TestPubSubBadQueue: a topic or subscription that does not exist, a
// subscription of another topic, or a URL that names none, is refused at
// apply naming the field and the fix, and nothing is sent.
func TestPubSubBadQueue(t *testing.T) {
	ps, sp := pubSub(t, 1)
	other := ps.Topic(t, "proj", "other")
	ps.Subscription(t, "proj", "other-workers", other, 10*time.Second)
	for _, tc := range []struct {
		uri, sub string
		want     []string
	}{
		{sp.Queue.URI, "gcppubsub://projects/proj/subscriptions/nope",
			[]string{"spec.queue.subscription", "projects/proj/subscriptions/nope does not exist", "gcloud pubsub subscriptions create nope --topic projects/proj/topics/scores --project proj"}},
		{"gcppubsub://projects/proj/topics/nope", sp.Queue.Subscription,
			[]string{"spec.queue.uri", "projects/proj/topics/nope does not exist", "gcloud pubsub topics create nope --project proj"}},
		{sp.Queue.URI, "gcppubsub://proj/other-workers",
			[]string{"spec.queue.subscription", "is a subscription of projects/proj/topics/other, not of projects/proj/topics/scores (spec.queue.uri)"}},
		{sp.Queue.URI, "gcppubsub://projects/proj/topics/scores",
			[]string{"spec.queue.subscription", "names no Pub/Sub subscription"}},
		{"gcppubsub://projects/proj/subscriptions/scores-workers", sp.Queue.Subscription,
			[]string{"spec.queue.uri", "names no Pub/Sub topic"}},
	} {
		err := Probe(t.Context(), spec.BatchQueue{URI: tc.uri, Subscription: tc.sub})
		if !errors.As(err, new(Refused)) {
			t.Errorf("probe %s → %s: %v, want a Refused", tc.uri, tc.sub, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("probe %s → %s: %v; want it to say %q", tc.uri, tc.sub, err, w)
			}
		}
	}
	if n := len(ps.Server.Messages()); n != 0 {
		t.Fatalf("refused probes sent %d messages", n)
	}
}

// TestPubSubDoesNotAnswer: an emulator address where nothing listens is a
// broker that does not answer, within the probe's 10s.
func TestPubSubDoesNotAnswer(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	t.Setenv(EnvPubSubEmulator, addr)
	err := Probe(t.Context(), spec.BatchQueue{URI: "gcppubsub://projects/p/topics/t", Subscription: "gcppubsub://projects/p/subscriptions/s"})
	if err == nil || errors.As(err, new(Refused)) || !strings.Contains(err.Error(), "does not answer") || !strings.Contains(err.Error(), EnvPubSubEmulator) {
		t.Fatalf("probe of a dead emulator: %v; want a broker that does not answer, naming %s", err, EnvPubSubEmulator)
	}
}
