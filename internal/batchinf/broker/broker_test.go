package broker

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/batchinf/broker/brokertest"
	"github.com/spotml/spotml/internal/spec"
)

// rabbit is the RabbitMQ broker this package's tests share (it takes
// seconds to boot).
var rabbit brokertest.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	rabbit.Stop()
	os.Exit(code)
}

// natsServer starts a nats-server and points NATS_SERVER_URL at it.
func natsServer(t *testing.T) {
	t.Setenv(EnvNATS, brokertest.NATS(t))
}

// rabbitServer points RABBIT_SERVER_URL at the package's RabbitMQ.
func rabbitServer(t *testing.T) string {
	url := rabbit.URL(t)
	t.Setenv(EnvRabbit, url)
	return url
}

// TestNATSRoundTrip: what the publisher sends, a worker's subscription
// (a queue group per batch) receives, and apply's probe is told apart.
func TestNATSRoundTrip(t *testing.T) {
	natsServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q := spec.BatchQueue{URI: "nats://spotml.test"}
	sub, err := OpenSubscription(ctx, SubscriptionURL("b", q))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(ctx)
	if err := Probe(ctx, q); err != nil {
		t.Fatalf("probe: %v", err)
	}
	p := NewPublisher()
	defer p.Close(ctx)
	sent := []api.BatchMessage{
		{Batch: "b", Items: []api.LeasedItem{{ID: 1, Input: "a.png"}, {ID: 2, Input: "b.png"}}},
		{Batch: "b", Items: []api.LeasedItem{{ID: 3, Input: "c.png"}}},
	}
	if err := p.Publish(ctx, q.URI, sent); err != nil {
		t.Fatal(err)
	}
	probes, got := 0, map[int64]string{}
	for len(got) < 3 {
		m, err := sub.Receive(ctx)
		if err != nil {
			t.Fatalf("receive: %v (got %v)", err, got)
		}
		msg, ok, err := Decode(m)
		m.Ack()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			probes++
			continue
		}
		for _, it := range msg.Items {
			got[it.ID] = it.Input
		}
	}
	if probes != 1 || got[1] != "a.png" || got[3] != "c.png" {
		t.Fatalf("probes %d, items %v", probes, got)
	}
}

// TestBrokerDoesNotAnswer: a NATS server that is not there, or a broker
// whose settings are missing, is an error at once.
func TestBrokerDoesNotAnswer(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	t.Setenv(EnvNATS, "nats://"+addr)
	ctx := context.Background()
	if err := Probe(ctx, spec.BatchQueue{URI: "nats://spotml.x"}); err == nil || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("probe of a dead NATS server: %v", err)
	}
	t.Setenv(EnvNATS, "")
	if err := Probe(ctx, spec.BatchQueue{URI: "nats://spotml.x"}); err == nil || !strings.Contains(err.Error(), EnvNATS) {
		t.Fatalf("probe without %s: %v", EnvNATS, err)
	}
	rq := spec.BatchQueue{URI: "rabbit://x", Subscription: "rabbit://x-q"}
	t.Setenv(EnvRabbit, "amqp://guest:guest@"+addr+"/")
	if err := Probe(ctx, rq); err == nil || !strings.Contains(err.Error(), "does not answer") || !strings.Contains(err.Error(), EnvRabbit) {
		t.Fatalf("probe of a dead RabbitMQ server: %v", err)
	}
	t.Setenv(EnvRabbit, "")
	if err := Probe(ctx, rq); err == nil || !strings.Contains(err.Error(), EnvRabbit+" is not set") {
		t.Fatalf("probe of rabbit:// without %s: %v", EnvRabbit, err)
	}
}

func TestSubscriptionURL(t *testing.T) {
	for _, tc := range []struct {
		q    spec.BatchQueue
		want string
	}{
		{spec.BatchQueue{URI: "nats://score.up"}, "nats://score.up?queue=spotml.b"},
		{spec.BatchQueue{URI: "nats://score.up?natsv2=true"}, "nats://score.up?natsv2=true&queue=spotml.b"},
		{spec.BatchQueue{URI: "nats://score.up?queue=mine"}, "nats://score.up?queue=mine"},
		{spec.BatchQueue{URI: "rabbit://ex", Subscription: "rabbit://q"}, "rabbit://q"},
		{spec.BatchQueue{URI: "awssqs://sqs.us-east-2.amazonaws.com/1/q"}, "awssqs://sqs.us-east-2.amazonaws.com/1/q"},
	} {
		if got := SubscriptionURL("b", tc.q); got != tc.want {
			t.Errorf("SubscriptionURL(%+v) = %q, want %q", tc.q, got, tc.want)
		}
	}
}
