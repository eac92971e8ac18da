package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/spotml/spotml/internal/api"
)

// `spotml wait batchinference` shows a progress bar of the items settled,
// says what finished on stdout, and exits 1 when items failed (spotml logs
// lists them), 0 when every item was scored.
func TestWaitBatchInference(t *testing.T) {
	for _, tc := range []struct {
		name   string
		last   api.BatchInference
		code   int    // exit code; 0: no error
		stdout string // what it says at the end
	}{
		{"scored", api.BatchInference{State: "succeeded", Total: 4, Done: 4, Evictions: 2}, 0,
			"batchinference/b succeeded: 4 items scored, 2 evictions survived\n"},
		{"failed items", api.BatchInference{State: "succeeded", Total: 4, Done: 3, Failed: 1, Evictions: 2}, 1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var looks atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != api.Prefix+"/batchinferences/b" {
					http.NotFound(w, r)
					return
				}
				b := api.BatchInference{Name: "b", State: "running", Total: 4, Done: 1, InFlight: 2, Workers: 2, Evictions: 1, Listing: true}
				if looks.Add(1) > 1 {
					b = tc.last
				}
				json.NewEncoder(w).Encode(b)
			}))
			defer srv.Close()
			env := map[string]string{"SPOTML_SERVER": srv.URL, "SPOTML_TOKEN": "t"}
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), []string{"wait", "batchinference", "b"}, func(k string) string { return env[k] }, &stdout, &stderr)
			var ee exitError
			switch {
			case tc.code == 0 && err != nil:
				t.Fatalf("wait: %v", err)
			case tc.code != 0 && (!errors.As(err, &ee) || ee.code != tc.code || !strings.Contains(err.Error(), "spotml logs batchinference/b")):
				t.Fatalf("wait: %v; want exit %d pointing at spotml logs", err, tc.code)
			}
			// 1 of 4 settled: a quarter of the bar's 24 columns.
			if want := "[######..................] 1/4+ (listing) items done, 2 in flight, 0 failed, 2 workers, 1 evictions"; !strings.Contains(stderr.String(), want) {
				t.Errorf("progress %q; want a line with %q", stderr.String(), want)
			}
			if !strings.Contains(stderr.String(), "[########################] ") {
				t.Errorf("progress %q; want a full bar at the end", stderr.String())
			}
			if stdout.String() != tc.stdout {
				t.Errorf("stdout %q, want %q", stdout.String(), tc.stdout)
			}
		})
	}
}
