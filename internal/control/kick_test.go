package control_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/postgres"
	"github.com/spotml/spotml/internal/store/postgres/pgtest"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// TestKickReachesLeader: two instances over one PostgreSQL, the leader's
// periodic pass a minute apart. A change that only a pass acts on (a node
// gone silent) waits for that pass; a Kick on the follower, as its API
// does after a write it took, reaches the leader through a notification,
// and the leader acts on the change at once.
func TestKickReachesLeader(t *testing.T) {
	dsn := pgtest.New(t).DB(t)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	open := func(now func() time.Time) *sqlstore.Store {
		st, err := postgres.Open(ctx, dsn, now)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	plane := func(id string) *control.Plane {
		p := control.New(open(time.Now), nil, log, time.Now, control.Options{Interval: time.Minute, NodeTimeout: time.Second,
			LeaseTTL: time.Second, Instance: store.Instance{ID: id}})
		wg.Go(func() { p.Run(ctx) })
		return p
	}
	a := plane("a")
	waitUntil(t, "a to lead", func() bool { return a.Leadership().Leading })
	b := plane("b")
	waitUntil(t, "a's first pass", func() bool { return !a.Leadership().FirstPass.IsZero() })
	time.Sleep(1500 * time.Millisecond) // past the new term's liveness grace (NodeTimeout)
	if !a.Leadership().Leading || b.Leadership().Leading {
		t.Fatalf("a should lead and b follow: %+v %+v", a.Leadership(), b.Leadership())
	}

	// A node whose agent was last heard an hour ago: the next pass ends it.
	past := open(func() time.Time { return time.Now().Add(-time.Hour) })
	if err := past.CreateNode(ctx, store.Node{Name: "silent", Pool: "cpu", Priority: spec.PrioritySpot, Capacity: spec.Resources{CPU: 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := past.Heartbeat(ctx, "silent", true); err != nil {
		t.Fatal(err)
	}
	check := open(time.Now)
	live := func() bool {
		n, err := check.GetNode(ctx, "silent")
		if err != nil {
			t.Fatal(err)
		}
		return store.Live(n.State)
	}
	time.Sleep(time.Second)
	if !live() {
		t.Fatal("the silent node was ended before any kick: the leader ran a pass it should not have")
	}
	kicked := time.Now()
	b.Kick()
	deadline := kicked.Add(20 * time.Second) // a third of the periodic pass
	for live() {
		if time.Now().After(deadline) {
			t.Fatalf("a kick on the follower did not reach the leader within %s", time.Since(kicked))
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("the leader acted on the follower's kick %s after it", time.Since(kicked).Round(time.Millisecond))
}
