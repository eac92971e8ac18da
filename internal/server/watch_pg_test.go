package server_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/postgres"
	"github.com/spotml/spotml/internal/store/postgres/pgtest"
)

// TestWatchFollowsNotifications: on PostgreSQL the watch stream re-reads
// when the store notifies a change, made by any process: a pool applied,
// a node created and an event recorded through another instance's store
// each reach an open stream well before the stream's slow periodic
// re-read (10s) could have brought them.
func TestWatchFollowsNotifications(t *testing.T) {
	dsn := pgtest.New(t).DB(t)
	ctx := t.Context()
	st, err := postgres.Open(ctx, dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	other, err := postgres.Open(ctx, dsn, nil) // another instance's store
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	blobs, err := blob.NewStore("file://" + filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	h := server.New(server.Config{Store: st, Blobs: blobs, Token: adminToken, JoinToken: joinToken, HeartbeatInterval: time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now})
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer h.CloseStreams()
	a := &apiServer{t: t, ctx: ctx, url: srv.URL, st: st, blobs: blobs}

	opened := time.Now()
	ch := a.watch()
	for _, v := range []string{"fleet", "jobs", "services", "cost"} {
		next(t, ch, v)
	}
	time.Sleep(500 * time.Millisecond) // the stream's LISTEN on its way
	// Before the stream's first slow re-read.
	slow := opened.Add(10 * time.Second)
	arrived := func(what string, changed time.Time) {
		t.Helper()
		now := time.Now()
		t.Logf("%s reached the stream %s after the change", what, now.Sub(changed).Round(time.Millisecond))
		if now.After(slow.Add(-500 * time.Millisecond)) {
			t.Errorf("%s arrived only %s after the stream opened: not from a notification", what, now.Sub(opened))
		}
	}

	pool := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: "elsewhere"},
		Spec: spec.PoolSpec{Provider: "local", Priority: spec.PrioritySpot, InstanceType: "local-small", Max: 2,
			Capacity: &spec.Resources{CPU: 1, Memory: 1 << 30}}}
	pool.Default()
	changed := time.Now()
	if _, err := other.Apply(ctx, []spec.Pool{pool}, nil); err != nil {
		t.Fatal(err)
	}
	for {
		var fl api.Fleet
		if err := json.Unmarshal([]byte(next(t, ch, "fleet")), &fl); err != nil {
			t.Fatal(err)
		}
		if len(fl.Pools) == 1 {
			break
		}
	}
	arrived("a pool applied elsewhere", changed)

	changed = time.Now()
	if err := other.CreateNode(ctx, store.Node{Name: "elsewhere-1", Pool: "elsewhere", Priority: spec.PrioritySpot,
		InstanceType: "local-small", Capacity: spec.Resources{CPU: 1, Memory: 1 << 30}}); err != nil {
		t.Fatal(err)
	}
	for {
		var fl api.Fleet
		if err := json.Unmarshal([]byte(next(t, ch, "fleet")), &fl); err != nil {
			t.Fatal(err)
		}
		if len(fl.Nodes) == 1 {
			break
		}
	}
	arrived("a node created elsewhere", changed)

	changed = time.Now()
	if err := other.AddEvent(ctx, "Note", "pool/elsewhere", "Hello", "from the other instance"); err != nil {
		t.Fatal(err)
	}
	for {
		var evs []api.Event
		if err := json.Unmarshal([]byte(next(t, ch, "events")), &evs); err != nil {
			t.Fatal(err)
		}
		if len(evs) > 0 && strings.Contains(evs[len(evs)-1].Message, "from the other instance") {
			break
		}
	}
	arrived("an event recorded elsewhere", changed)
}
