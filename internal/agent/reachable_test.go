package agent

import (
	"slices"
	"testing"
)

// TestReachable: an agent on another machine never adds a loopback or
// unspecified instance address it learned (it would name a port of its
// own node); an agent given such an address (on the control plane's own
// machine) keeps them all.
func TestReachable(t *testing.T) {
	learned := []string{"http://127.0.0.1:8080", "http://0.0.0.0:8080", "http://[::1]:8080", "http://localhost:8080", "http://10.0.0.12:8080", "https://cp.example:443"}
	if got := reachable(learned, []string{"http://10.0.0.11:8080"}); !slices.Equal(got, []string{"http://10.0.0.12:8080", "https://cp.example:443"}) {
		t.Errorf("remote agent kept %q", got)
	}
	if got := reachable(learned, []string{"http://127.0.0.1:9000"}); !slices.Equal(got, learned) {
		t.Errorf("local agent kept %q, want all", got)
	}
}
