package broker

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/spec"
)

// natsServer starts a nats-server on a free loopback port and points
// NATS_SERVER_URL at it.
func natsServer(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if os.Getenv("SPOTML_REQUIRE_NATS") == "1" {
			t.Fatal("nats-server not installed (SPOTML_REQUIRE_NATS=1 makes this a failure)")
		}
		t.Skip("nats-server not installed (apt-get install nats-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", port)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server did not listen: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Setenv(EnvNATS, "nats://"+addr)
	return "nats://" + addr
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
	if err := Probe(ctx, q.URI); err != nil {
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
	if err := Probe(ctx, "nats://spotml.x"); err == nil || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("probe of a dead NATS server: %v", err)
	}
	t.Setenv(EnvNATS, "")
	if err := Probe(ctx, "nats://spotml.x"); err == nil || !strings.Contains(err.Error(), EnvNATS) {
		t.Fatalf("probe without %s: %v", EnvNATS, err)
	}
	t.Setenv("RABBIT_SERVER_URL", "")
	if err := Probe(ctx, "rabbit://x"); err == nil {
		t.Fatal("probe of rabbit:// without RABBIT_SERVER_URL succeeded")
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
