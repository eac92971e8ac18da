package agent_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/agent"
	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob/blobtest"
)

// TestAgentChecksItsBlobStore: an agent that cannot use the blob store the
// control plane hands it at registration stops at once, saying which node,
// which store and what to fix, instead of failing each task it is given.
func TestAgentChecksItsBlobStore(t *testing.T) {
	s3 := blobtest.StartS3(t)
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.Prefix+"/agent/register", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.RegisterResponse{BlobURL: s3.URL("gone-bucket"), HeartbeatInterval: 20 * time.Millisecond})
	})
	var heartbeats atomic.Int32
	mux.HandleFunc("POST "+api.Prefix+"/agent/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		heartbeats.Add(1)
		json.NewEncoder(w).Encode(api.HeartbeatResponse{})
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	err := agent.New(agent.Config{Server: srv.URL, Credential: "c", Node: "n-1", WorkDir: filepath.Join(t.TempDir(), "node")}, log, time.Now).Run(t.Context())
	for _, want := range []string{"node n-1 cannot use the blob store", "--blob-store", `bucket "gone-bucket" does not exist`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Run error = %v, want it to say %q", err, want)
		}
	}
	if n := heartbeats.Load(); n != 0 {
		t.Errorf("the agent heartbeat %d times with a store it cannot use", n)
	}
}
