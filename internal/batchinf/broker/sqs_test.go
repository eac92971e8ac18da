package broker

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/batchinf/broker/brokertest"
	"github.com/spotml/spotml/internal/spec"
)

// sqsQueue starts an SQS fake (moto_server) for the test, points the
// AWS SDK at it through the environment, as a user points it at an
// SQS-compatible endpoint, and creates a queue with the given visibility
// timeout; the batch spec names it. queueURL is its URL on the fake.
func sqsQueue(t *testing.T, batchSize int, visibility time.Duration) (s *brokertest.SQS, sp spec.BatchSpec, queueURL string) {
	s = brokertest.NewSQS(t)
	for k, v := range s.SQSEnv() {
		t.Setenv(k, v)
	}
	queueURL = s.Queue(t, "scores", visibility)
	q, err := url.Parse(queueURL)
	if err != nil {
		t.Fatal(err)
	}
	// The queue URL a user writes: SQS's host, the account, the queue.
	sp.Queue = spec.BatchQueue{URI: "awssqs://sqs." + brokertest.SQSRegion + ".amazonaws.com" + q.Path + "?region=" + brokertest.SQSRegion}
	sp.Runtime.BatchSize = batchSize
	return s, sp, queueURL
}

// TestSQSRoundTrip: apply's probe passes (a worker drops it), what the
// publisher sends a worker receives once, and an acknowledged message is
// deleted from the queue.
func TestSQSRoundTrip(t *testing.T) {
	s, sp, q := sqsQueue(t, 4, 30*time.Second)
	if err := Probe(t.Context(), sp.Queue); err != nil {
		t.Fatalf("probe: %v", err)
	}
	sub, err := Subscribe(t.Context(), "b", sp)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	publish(t, sp.Queue.URI, 1, 2, 3)
	receiveEach(t, sub, 0, 1, 2, 3)
	// Acks are sent in batches, after Ack returns: the queue empties
	// once they are.
	deadline := time.Now().Add(10 * time.Second)
	for s.Messages(t, q) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the queue holds %d messages after every one was acked", s.Messages(t, q))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSQSRedelivery: a message a worker nacks (it gave its items back on
// a notice) comes back at once; one a worker received and never settled
// (its node vanished) comes back to another worker once the queue's
// visibility timeout has passed, and not before.
func TestSQSRedelivery(t *testing.T) {
	_, sp, _ := sqsQueue(t, 1, 3*time.Second)
	// The copy received after the nack was received no sooner than the
	// nack: its visibility timeout runs from then.
	held := nackThenVanish(t, sp, 7)
	b, err := Subscribe(t.Context(), "b", sp)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	m, msg := receive(t, b, 15*time.Second)
	if m == nil || msg.Items[0].ID != 7 {
		t.Fatalf("after the first worker went, the second received %v; want item 7", msg)
	}
	if d := time.Since(held); d < 3*time.Second {
		t.Fatalf("item 7 came back %s after it was received, inside the 3s visibility timeout", d)
	}
	m.Ack()
}

// TestSQSBadQueue: a queue that does not exist is refused at apply,
// naming spec.queue.uri and the fix.
func TestSQSBadQueue(t *testing.T) {
	_, sp, _ := sqsQueue(t, 1, 30*time.Second)
	q := spec.BatchQueue{URI: strings.Replace(sp.Queue.URI, "/scores?", "/nope?", 1)}
	err := Probe(t.Context(), q)
	if !errors.As(err, new(Refused)) || !strings.Contains(err.Error(), "spec.queue.uri") || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), "aws sqs create-queue --queue-name nope") {
		t.Fatalf("probe of a queue that does not exist: %v; want a Refused naming spec.queue.uri and the fix", err)
	}
}

// TestSQSDoesNotAnswer: an endpoint where nothing listens is a broker
// that does not answer, naming the endpoint.
func TestSQSDoesNotAnswer(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	t.Setenv("AWS_ENDPOINT_URL_SQS", "http://"+addr)
	t.Setenv("AWS_ACCESS_KEY_ID", "spotml-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "spotml-test")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	err := Probe(t.Context(), spec.BatchQueue{URI: "awssqs://sqs.us-east-1.amazonaws.com/123456789012/q?region=us-east-1"})
	if err == nil || errors.As(err, new(Refused)) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("probe of a dead SQS endpoint: %v; want an error naming %s", err, addr)
	}
}
