package main

import (
	"strings"
	"testing"
	"time"
)

// TestCloudFlags: --azure needs the agents' server URL and where VMs get
// spotml, names the flag it misses, and builds a provider.
func TestCloudFlags(t *testing.T) {
	for _, tc := range []struct {
		f    cloudFlags
		want string
	}{
		{cloudFlags{azure: true, spotmlURL: "https://b/spotml", azureInterval: time.Minute}, "--cloud-agent-server-url"},
		{cloudFlags{azure: true, agentURL: "https://cp", azureInterval: time.Minute}, "--cloud-spotml-url"},
		{cloudFlags{azure: true, agentURL: "cp:8080", spotmlURL: "https://b/spotml", azureInterval: time.Minute}, "--cloud-agent-server-url"},
		{cloudFlags{azure: true, agentURL: "https://cp", spotmlURL: "https://b/spotml", azureInterval: time.Millisecond}, "--azure-poll-interval"},
		{cloudFlags{azure: true, agentURL: "https://cp/", spotmlURL: "https://b/spotml", azureInterval: time.Minute}, ""},
		{cloudFlags{aws: true, agentURL: "https://cp/", azureInterval: time.Minute}, "--cloud-spotml-url: required with --aws"},
	} {
		p, err := tc.f.azureProvider(nil)
		if tc.want == "" {
			// The same flags make the aws provider.
			f := tc.f
			f.azure, f.aws, f.awsInterval = false, true, time.Minute
			if ap, err := f.awsProvider(nil); err != nil || ap == nil {
				t.Errorf("aws %+v: %v", f, err)
			}
		}
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
