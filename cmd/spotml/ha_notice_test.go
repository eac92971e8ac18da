package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/spec"
)

// TestNoticeAfterLauncherGone: with several `spotml up` instances over
// one PostgreSQL, a local node keeps hearing its eviction notices after
// the instance that launched it (and served its simulated metadata) is
// SIGKILLed: the new leader gives the notice, and the agent reads it from
// a surviving instance's metadata, in each notice format.
func TestNoticeAfterLauncherGone(t *testing.T) {
	dsn := cluster.DB(t)
	data := t.TempDir()
	insts := []*haServer{
		startInstance(t, "up", dsn, data, "up0", "127.0.0.1:0", "--node-timeout", "10s"),
		startInstance(t, "up", dsn, data, "up1", "127.0.0.1:0", "--node-timeout", "10s"),
	}
	ctx := t.Context()
	var yaml strings.Builder
	for _, f := range []string{spec.NoticeAzure, spec.NoticeAWS, spec.NoticeGCP} {
		fmt.Fprintf(&yaml, `apiVersion: spotml/v1
kind: Pool
metadata: {name: spot-%s}
spec: {provider: local, priority: spot, instanceType: local-small, min: 1, max: 1, local: {notice: 30s, noticeFormat: %s}}
---
`, f, f)
	}
	file := filepath.Join(t.TempDir(), "pools.yaml")
	if err := os.WriteFile(file, []byte(yaml.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	token, _ := os.ReadFile(filepath.Join(data, "token"))
	env := map[string]string{"SPOTML_SERVER": insts[0].url, "SPOTML_TOKEN": strings.TrimSpace(string(token)), "SPOTML_DATA": t.TempDir()}
	if err := run(ctx, []string{"apply", "-f", file}, func(k string) string { return env[k] }, io.Discard, io.Discard); err != nil {
		t.Fatalf("apply: %v", err)
	}
	var nodes []api.Node
	waitFor(t, 60*time.Second, "three ready nodes", func() bool {
		nodes = nil
		insts[0].client(t, data).Do(ctx, http.MethodGet, api.Prefix+"/nodes", nil, &nodes)
		ready := 0
		for _, n := range nodes {
			if n.State == "ready" {
				ready++
			}
		}
		return ready == 3
	})
	// An agent learns the other instances from its heartbeat answers: let
	// every agent hear of both before its launcher goes (one that heard of
	// none has nowhere else to turn, by design).
	waitFor(t, 20*time.Second, "both instances listed", func() bool {
		return len(controlPlane(ctx, insts[0].client(t, data)).Instances) == 2
	})
	seenBoth := time.Now()
	waitFor(t, 20*time.Second, "every agent to heartbeat after both were listed", func() bool {
		var ns []api.Node
		insts[0].client(t, data).Do(ctx, http.MethodGet, api.Prefix+"/nodes", nil, &ns)
		for _, n := range ns {
			if n.State == "ready" && n.HeartbeatAt.Before(seenBoth.Add(2*time.Second)) {
				return false
			}
		}
		return len(ns) > 0
	})
	// The leader launched them; it goes.
	var leader, survivor *haServer
	waitFor(t, 10*time.Second, "a leader", func() bool {
		cp := controlPlane(ctx, insts[0].client(t, data))
		for i, in := range insts {
			if in.id == cp.Leader {
				leader, survivor = in, insts[1-i]
			}
		}
		return leader != nil
	})
	leader.kill()
	cl := survivor.client(t, data)
	waitFor(t, 30*time.Second, "the survivor to lead", func() bool { return controlPlane(ctx, cl).Leader == survivor.id })
	for _, n := range nodes {
		var got api.Node
		if err := cl.Do(ctx, http.MethodPost, api.Prefix+"/nodes/"+url.PathEscape(n.Name)+"/evict", api.EvictRequest{}, &got); err != nil {
			t.Fatalf("evict %s: %v", n.Name, err)
		}
	}
	for _, n := range nodes {
		t.Cleanup(func() {
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(data, "nodes", n.Name, "agent.log"))
				t.Logf("%s's agent log:\n%s", n.Name, b)
			}
		})
		waitFor(t, 20*time.Second, n.Name+"'s agent to read its notice", func() bool {
			var es []api.Event
			q := url.Values{"object": {"node/" + n.Name}, "kind": {"Draining"}}
			cl.Do(ctx, http.MethodGet, api.Prefix+"/events?"+q.Encode(), nil, &es)
			for _, e := range es {
				if e.Reason == "NoticeReceived" {
					return true
				}
			}
			return false
		})
	}
}
