package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// testLeaderLease: two stores over one database (two control-plane
// instances) share the leader lease. It is renewed by its holder, taken
// over only after it expired (by the database's clock) with a new term,
// and a write fenced by a lost term is refused and changes nothing.
func testLeaderLease(t *testing.T, h *Harness) {
	a, b := h.St, h.MustOpen()
	t.Cleanup(func() { b.Close() })
	ctx := h.Ctx
	const ttl = 600 * time.Millisecond
	la, err := a.AcquireLease(ctx, "a", ttl)
	if err != nil || !la.Held || la.Term != 1 || la.Holder != "a" {
		t.Fatalf("a acquires: %+v, %v", la, err)
	}
	if lb, err := b.AcquireLease(ctx, "b", ttl); err != nil || lb.Held || lb.Holder != "a" || lb.Term != 1 || !lb.Valid {
		t.Fatalf("b while a holds: %+v, %v", lb, err)
	}
	if la, err := a.AcquireLease(ctx, "a", ttl); err != nil || !la.Held || la.Term != 1 {
		t.Fatalf("a renews: %+v, %v", la, err)
	}
	fa := sqlstore.WithFence(ctx, sqlstore.Fence{Holder: "a", Term: 1})
	if err := a.AddEvent(fa, "Test", "x/1", "Fenced", "by a, term 1"); err != nil {
		t.Fatalf("a's fenced write while it leads: %v", err)
	}

	time.Sleep(ttl + 200*time.Millisecond)
	lb, err := b.AcquireLease(ctx, "b", ttl)
	if err != nil || !lb.Held || lb.Term != 2 || lb.Holder != "b" {
		t.Fatalf("b takes over after expiry: %+v, %v", lb, err)
	}
	h.Apply(PoolCPU)
	h.Node("n1", true)
	n0 := h.getNode("n1")
	before, _ := a.ListEvents(ctx, store.EventFilter{})
	for name, write := range map[string]func() error{
		"AddEvent": func() error { return a.AddEvent(fa, "Test", "x/2", "Fenced", "by a after losing") },
		"SetIdle":  func() error { return a.SetIdle(fa, "n1", h.Clock.Now()) },
		"EndNode":  func() error { return a.EndNode(fa, "n1", store.NodeLost, "fenced") },
	} {
		if err := write(); !errors.Is(err, store.ErrFenced) {
			t.Errorf("%s by the old leader: %v, want ErrFenced", name, err)
		}
	}
	if after, _ := a.ListEvents(ctx, store.EventFilter{}); len(after) != len(before) {
		t.Errorf("fenced writes left events: %d, before %d", len(after), len(before))
	}
	if n := h.getNode("n1"); n.State != n0.State || !n.IdleSince.Equal(n0.IdleSince) {
		t.Errorf("fenced writes changed node: %+v, before %+v", n, n0)
	}
	if st := a.Stats(); st.FencedWrites != 3 || st.LeaderWrites != 1 {
		t.Errorf("stats: %+v, want 3 fenced writes refused, 1 committed", st)
	}
	// Writes not fenced (the API's) go through on any instance.
	if err := a.AddEvent(ctx, "Test", "x/3", "Unfenced", "an API write"); err != nil {
		t.Errorf("unfenced write: %v", err)
	}
	if la, err := a.AcquireLease(ctx, "a", ttl); err != nil || la.Held || la.Holder != "b" || la.Term != 2 {
		t.Errorf("a after b took over: %+v, %v", la, err)
	}
	fb := sqlstore.WithFence(ctx, sqlstore.Fence{Holder: "b", Term: 2})
	if err := b.AddEvent(fb, "Test", "x/4", "Fenced", "by b, term 2"); err != nil {
		t.Errorf("b's fenced write: %v", err)
	}
	// A release hands the lease over at once, at a new term.
	if err := b.ReleaseLease(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := b.AddEvent(fb, "Test", "x/5", "Fenced", "by b after release"); !errors.Is(err, store.ErrFenced) {
		t.Errorf("b's write after release: %v, want ErrFenced", err)
	}
	la, err = a.AcquireLease(ctx, "a", ttl)
	if err != nil || !la.Held || la.Term != 3 {
		t.Errorf("a after release: %+v, %v", la, err)
	}

	for _, in := range []store.Instance{{ID: "a", Address: "http://a", Version: "v1", Started: h.Clock.Now()}, {ID: "b", Address: "http://b", Version: "v1", Started: h.Clock.Now().Add(time.Second)}} {
		for range 2 {
			if err := a.TouchInstance(ctx, in); err != nil {
				t.Fatal(err)
			}
		}
	}
	cp, err := b.ControlPlane(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Lease.Holder != "a" || cp.Lease.Term != 3 || !cp.Lease.Valid || len(cp.Instances) != 2 ||
		cp.Instances[0].ID != "a" || cp.Instances[1].Address != "http://b" || cp.Instances[0].LastSeen.IsZero() {
		t.Errorf("control plane: %+v", cp)
	}
	if err := a.RemoveInstance(ctx, "b", time.Hour); err != nil {
		t.Fatal(err)
	}
	if cp, _ := b.ControlPlane(ctx, time.Minute); len(cp.Instances) != 1 || cp.Instances[0].ID != "a" {
		t.Errorf("after b left: %+v", cp.Instances)
	}
}
