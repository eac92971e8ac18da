package kubernetes

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const twoContexts = `apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {server: "https://127.0.0.1:6443"}
- name: b
  cluster: {server: "https://127.0.0.2:6443"}
users:
- name: u
  user: {token: t}
contexts:
- name: ctx-a
  context: {cluster: a, user: u}
- name: ctx-b
  context: {cluster: b, user: u}
current-context: ctx-a
`

// TestRESTConfig: the kubeconfig's current context, another by name, and
// a clear error for a context that is not there.
func TestRESTConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(twoContexts), 0o600); err != nil {
		t.Fatal(err)
	}
	for ctx, host := range map[string]string{"": "https://127.0.0.1:6443", "ctx-b": "https://127.0.0.2:6443"} {
		cfg, err := RESTConfig(path, ctx)
		if err != nil {
			t.Fatalf("context %q: %v", ctx, err)
		}
		if cfg.Host != host || cfg.BearerToken != "t" {
			t.Errorf("context %q: host %s token %q, want %s", ctx, cfg.Host, cfg.BearerToken, host)
		}
	}
	_, err := RESTConfig(path, "nope")
	if err == nil || !strings.Contains(err.Error(), "--kube-context") || !strings.Contains(err.Error(), "nope") {
		t.Errorf("a missing context: %v, want an error naming --kube-context and the context", err)
	}
}
