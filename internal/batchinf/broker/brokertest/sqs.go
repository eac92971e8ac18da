package brokertest

import (
	"context"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// RequireMoto, set to 1, makes a missing moto_server a test failure.
const RequireMoto = "SPOTML_REQUIRE_MOTO"

// SQSRegion is the region the SQS fake's queues are in.
const SQSRegion = "us-east-1"

// SQS is moto's server (moto_server, from the moto Python package) on a
// free loopback port: an Amazon SQS that speaks the AWS JSON 1.0
// protocol aws-sdk-go-v2's SQS client (and so gocloud's awssnssqs) uses,
// and behaves as SQS documents it: a received message is hidden for the
// queue's visibility timeout, comes back when that passes or when its
// visibility is set to 0 (a nack), and is gone once deleted (an ack).
// The Go fakes on the module proxy speak only the older query protocol.
type SQS struct {
	// Endpoint is the server's URL, the value for AWS_ENDPOINT_URL_SQS
	// (or a queue URL's endpoint parameter).
	Endpoint string
	client   *sqs.Client
}

// SQSEnv is the environment a process needs to reach the fake: its
// endpoint, static credentials (moto takes any; without them the SDK
// would look for an instance role), and no instance metadata lookups.
func (s *SQS) SQSEnv() map[string]string {
	return map[string]string{
		"AWS_ENDPOINT_URL_SQS":      s.Endpoint,
		"AWS_ACCESS_KEY_ID":         "spotml-test",
		"AWS_SECRET_ACCESS_KEY":     "spotml-test",
		"AWS_EC2_METADATA_DISABLED": "true",
		"AWS_REGION":                SQSRegion,
	}
}

// NewSQS starts moto_server for the test; it is stopped when the test
// ends. Without moto the test is skipped, or fails where
// SPOTML_REQUIRE_MOTO=1.
func NewSQS(t testing.TB) *SQS {
	t.Helper()
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		missing(t, RequireMoto, "moto_server not installed (the moto Python package, with its server extra)")
	}
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(addr)
	log := filepath.Join(t.TempDir(), "moto.log")
	p, err := start(log, nil, bin, "-H", host, "-p", port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	s := &SQS{Endpoint: "http://" + addr}
	err = waitFor(30*time.Second, p, func() error {
		resp, err := http.Get(s.Endpoint + "/moto-api/")
		if err == nil {
			resp.Body.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("moto_server did not listen on %s: %v\n%s", addr, err, tail(log))
	}
	s.client = sqs.New(sqs.Options{
		Region:       SQSRegion,
		BaseEndpoint: aws.String(s.Endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider("spotml-test", "spotml-test", ""),
	})
	return s
}

// Queue creates the queue name with the given visibility timeout, as a
// user would with their cloud's tools, and returns its URL on the fake.
func (s *SQS) Queue(t testing.TB, name string, visibility time.Duration) string {
	t.Helper()
	out, err := s.client.CreateQueue(context.Background(), &sqs.CreateQueueInput{
		QueueName:  aws.String(name),
		Attributes: map[string]string{"VisibilityTimeout": strconv.Itoa(int(visibility / time.Second))},
	})
	if err != nil {
		t.Fatal(err)
	}
	return *out.QueueUrl
}

// Messages is how many messages the queue holds, visible or not.
func (s *SQS) Messages(t testing.TB, queueURL string) int {
	t.Helper()
	out, err := s.client.GetQueueAttributes(context.Background(), &sqs.GetQueueAttributesInput{
		QueueUrl:       aws.String(queueURL),
		AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameApproximateNumberOfMessages, types.QueueAttributeNameApproximateNumberOfMessagesNotVisible},
	})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, v := range out.Attributes {
		i, _ := strconv.Atoi(v)
		n += i
	}
	return n
}
