package control_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
)

// TestLeaderStepsDownWhenFenced: two instances over one SQLite file. The
// leader's reconcilers write all the time (silent nodes to end); when a
// successor holds the lease at a newer term, the very next reconciler
// write of the old leader is refused (its lease is far from expiring, so
// no renewal has told it yet) and it steps down at once, committing
// nothing more, and does not take the lease back while the successor holds it.
func TestLeaderStepsDownWhenFenced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spotml.db")
	st, err := sqlite.Open(t.Context(), path, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// The other instance's store, and a writer of silent nodes.
	other, err := sqlite.Open(t.Context(), path, func() time.Time { return time.Now().Add(-time.Hour) })
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	p := control.New(st, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now, control.Options{
		Interval: 10 * time.Millisecond, NodeTimeout: time.Second, LeaseTTL: time.Minute, Instance: store.Instance{ID: "a"}})
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { p.Run(ctx) })
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			name := fmt.Sprintf("silent-%d", i)
			if other.CreateNode(ctx, store.Node{Name: name, Pool: "cpu", Priority: spec.PrioritySpot, Capacity: spec.Resources{CPU: 1}}) == nil {
				other.Heartbeat(ctx, name, true)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	waitUntil(t, "a to lead and write", func() bool { return p.Leadership().Leading && st.Stats().LeaderWrites >= 3 })
	term := p.Leadership().Term

	// A successor took over (as one does once a paused leader's lease
	// expired): a newer term, held for a long while.
	if _, err := other.DB().ExecContext(ctx, `UPDATE leases SET holder = 'b', term = term + 1,
		expires_ms = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) + 60000`); err != nil {
		t.Fatal(err)
	}
	wrote := st.Stats().LeaderWrites
	waitUntil(t, "a to step down", func() bool { return !p.Leadership().Leading })
	time.Sleep(200 * time.Millisecond) // twenty passes' time
	st2 := st.Stats()
	if st2.FencedWrites < 1 {
		t.Errorf("no write refused: %+v", st2)
	}
	// One commit may be counted after the takeover: it held SQLite's
	// write lock, so it landed before.
	if st2.LeaderWrites > wrote+1 {
		t.Errorf("a committed %d writes after the takeover", st2.LeaderWrites-wrote)
	}
	if l := p.Leadership(); l.Leading || l.Term != term {
		t.Errorf("a after the takeover: %+v", l)
	}
	cp, err := p.ControlPlane(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Lease.Holder != "b" || cp.Lease.Term != term+1 || len(cp.Instances) != 1 || cp.Instances[0].ID != "a" {
		t.Errorf("control plane: %+v", cp)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
