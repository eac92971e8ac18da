package brokertest

import (
	"context"
	"testing"
	"time"

	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
)

// PubSub is Google's own in-process Cloud Pub/Sub fake (pstest), serving
// the Pub/Sub gRPC API on a loopback port: what gocloud's gcppubsub talks
// to, and what a process started by the test reaches through
// PUBSUB_EMULATOR_HOST, as it would Google's emulator. Like Pub/Sub it
// keeps a topic's messages only for the subscriptions that exist when they
// are published, and redelivers a message that is nacked or whose ack
// deadline passes.
//
// Pub/Sub topics and subscriptions are cloud resources the user creates;
// Topic and Subscription create them on the fake, as gcloud would.
type PubSub struct {
	// Addr is host:port, the value for PUBSUB_EMULATOR_HOST.
	Addr string
	// Server is the fake, for tests that look at what it holds or set its
	// clock (SetTimeNowFunc).
	Server *pstest.Server
}

// NewPubSub starts the fake on a free loopback port for the test; it is
// closed when the test ends. It needs nothing installed.
func NewPubSub(t testing.TB) *PubSub {
	t.Helper()
	srv := pstest.NewServerWithAddress("127.0.0.1:0")
	t.Cleanup(func() { srv.Close() })
	return &PubSub{Addr: srv.Addr, Server: srv}
}

// Topic creates projects/PROJECT/topics/NAME and returns its path.
func (p *PubSub) Topic(t testing.TB, project, name string) string {
	t.Helper()
	tp, err := p.Server.GServer.CreateTopic(context.Background(), &pb.Topic{Name: "projects/" + project + "/topics/" + name})
	if err != nil {
		t.Fatal(err)
	}
	return tp.Name
}

// Subscription creates projects/PROJECT/subscriptions/NAME on topic (a
// path Topic returned) with the given ack deadline (10s to 600s, as
// Pub/Sub allows), and returns its path.
func (p *PubSub) Subscription(t testing.TB, project, name, topic string, ackDeadline time.Duration) string {
	t.Helper()
	s, err := p.Server.GServer.CreateSubscription(context.Background(), &pb.Subscription{
		Name:               "projects/" + project + "/subscriptions/" + name,
		Topic:              topic,
		AckDeadlineSeconds: int32(ackDeadline / time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s.Name
}
