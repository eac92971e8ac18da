package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKubeFlags: --kubernetes needs the agents' server URL and the spotml
// image, names the flag it misses, and builds a provider from a
// kubeconfig.
func TestKubeFlags(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: a, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: a, context: {cluster: a, user: u}}]
current-context: a
`), 0o600)
	for _, tc := range []struct {
		f    kubeFlags
		want string
	}{
		{kubeFlags{enabled: true, spotmlImage: "s", kubeconfig: kc}, "--kube-agent-server-url"},
		{kubeFlags{enabled: true, agentURL: "http://x", kubeconfig: kc}, "--kube-spotml-image"},
		{kubeFlags{enabled: true, agentURL: "http://x", spotmlImage: "s", kubeconfig: kc, pullPolicy: "Sometimes"}, "--kube-image-pull-policy"},
		{kubeFlags{enabled: true, agentURL: "http://x", spotmlImage: "s", kubeconfig: kc, pullPolicy: "Never", context: "other"}, "--kube-context"},
		{kubeFlags{enabled: true, agentURL: "http://x", spotmlImage: "s", kubeconfig: kc, pullPolicy: "Never", agentEnv: []string{"1X=y"}}, "--kube-agent-env"},
		{kubeFlags{enabled: true, agentURL: "http://x", spotmlImage: "s", kubeconfig: kc, pullPolicy: "Never", agentEnv: []string{"NOVALUE"}}, "--kube-agent-env"},
		{kubeFlags{enabled: true, agentURL: "http://x", spotmlImage: "s", kubeconfig: kc, pullPolicy: "Never", envSecrets: []string{""}}, "--kube-agent-env-secret"},
		{kubeFlags{enabled: true, agentURL: "http://x/", spotmlImage: "s", kubeconfig: kc, pullPolicy: "IfNotPresent", agentEnv: []string{"AWS_REGION=us-east-1"}, envSecrets: []string{"s3-creds"}}, ""},
	} {
		p, err := tc.f.provider(nil, nil)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.f, err)
		case tc.want == "" && p == nil:
			t.Errorf("%+v: no provider", tc.f)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: error %v, want one naming %s", tc.f, err, tc.want)
		}
	}
}
