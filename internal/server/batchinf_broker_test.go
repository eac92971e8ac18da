package server_test

import (
	"bytes"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestBatchInferenceApplyRefusesDeadBroker: a broker queue whose server
// does not answer, or whose server setting is missing, is refused at
// apply, naming spec.queue.uri and the setting, and nothing is stored.
func TestBatchInferenceApplyRefusesDeadBroker(t *testing.T) {
	a := newAPI(t)
	for _, k := range []string{"in/1.png", "models/m.onnx"} {
		data := bytes.Repeat([]byte{8}, 64)
		if k == "models/m.onnx" {
			data = onnxModel(t)
		}
		if err := a.blobs.Write(a.ctx, k, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String() // nothing listens there once closed
	l.Close()
	for _, tc := range []struct{ env, server, queue, want string }{
		{"NATS_SERVER_URL", "nats://" + dead, `uri: "nats://score"`, "does not answer"},
		{"NATS_SERVER_URL", "", `uri: "nats://score"`, "NATS_SERVER_URL is not set"},
		{"RABBIT_SERVER_URL", "amqp://guest:guest@" + dead + "/", `uri: "rabbit://score", subscription: "rabbit://score-q"`, "RABBIT_SERVER_URL) does not answer"},
		{"RABBIT_SERVER_URL", "", `uri: "rabbit://score", subscription: "rabbit://score-q"`, "RABBIT_SERVER_URL is not set"},
	} {
		t.Setenv(tc.env, tc.server)
		doc := strings.Replace(batchDoc("in/", ""), "queue: {leaseTimeout: 30s}", "queue: {"+tc.queue+", leaseTimeout: 30s}", 1)
		msg := a.admin("POST", "/apply", applyFiles("b.yaml", poolYAML+"---\n"+doc), http.StatusBadRequest).errorText(t)
		if !strings.Contains(msg, "spec.queue.uri") || !strings.Contains(msg, tc.want) {
			t.Errorf("apply with %s=%q: %s; want it to name spec.queue.uri and say %q", tc.env, tc.server, msg, tc.want)
		}
		a.assertEmpty()
	}
}
