package postgres_test

import (
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store/postgres"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// TestWatchRoutes: a change of services, replicas or a node's notice made
// by another process notifies a watcher when its transaction commits,
// not before, and not at all when it rolls back.
func TestWatchRoutes(t *testing.T) {
	dsn := cluster.DB(t)
	ctx := t.Context()
	watcher, err := postgres.Open(ctx, dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	writer, err := postgres.Open(ctx, dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	got := make(chan struct{}, 16)
	if !watcher.WatchRoutes(ctx, func() { got <- struct{}{} }) {
		t.Fatal("PostgreSQL store has no route notifications")
	}
	time.Sleep(300 * time.Millisecond) // LISTEN on its way
	quiet := func(what string) {
		t.Helper()
		select {
		case <-got:
			t.Fatalf("notified %s", what)
		case <-time.After(300 * time.Millisecond):
		}
	}
	for _, stmt := range []string{
		`UPDATE services SET generation = generation WHERE false`,
		`UPDATE replicas SET state = state WHERE false`,
		`UPDATE nodes SET notice_deadline = notice_deadline WHERE false`,
	} {
		tx, err := writer.DB().BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			t.Fatal(err)
		}
		quiet("before commit: " + stmt)
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("no notification after %s committed", stmt)
		}
		tx, _ = writer.DB().BeginTx(ctx, nil)
		tx.ExecContext(ctx, stmt)
		tx.Rollback()
		quiet("after a rollback: " + stmt)
	}
	// A heartbeat (nodes' heartbeat_at) is no route change.
	if _, err := writer.DB().ExecContext(ctx, `UPDATE nodes SET heartbeat_at = heartbeat_at WHERE false`); err != nil {
		t.Fatal(err)
	}
	quiet("for a heartbeat")
}

// TestWatchBatchProgress: a BatchInference's progress (an item's state,
// the batch's counts and state) notifies spotml_changes, so that the
// console's watch on PostgreSQL refreshes it; a lease's renewal, a send
// and a listing do not.
func TestWatchBatchProgress(t *testing.T) {
	dsn := cluster.DB(t)
	ctx := t.Context()
	watcher, err := postgres.Open(ctx, dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	writer, err := postgres.Open(ctx, dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	got := make(chan struct{}, 16)
	if !watcher.Watch(ctx, sqlstore.ChangesChannel, func() { got <- struct{}{} }) {
		t.Fatal("PostgreSQL store has no change notifications")
	}
	time.Sleep(300 * time.Millisecond) // LISTEN on its way
	drain := func() {
		for {
			select {
			case <-got:
			case <-time.After(300 * time.Millisecond):
				return
			}
		}
	}
	drain()
	for _, stmt := range []string{
		`UPDATE batch_items SET state = state WHERE false`,
		`UPDATE batches SET released = released WHERE false`,
		`UPDATE batches SET state = state WHERE false`,
	} {
		if _, err := writer.DB().ExecContext(ctx, stmt); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("no notification after %s", stmt)
		}
		drain()
	}
	for _, stmt := range []string{
		`UPDATE batch_items SET lease_until = lease_until WHERE false`,
		`UPDATE batch_items SET sent_at = sent_at WHERE false`,
		`UPDATE batches SET listed_at = listed_at WHERE false`,
	} {
		if _, err := writer.DB().ExecContext(ctx, stmt); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
			t.Fatalf("notified for %s", stmt)
		case <-time.After(300 * time.Millisecond):
		}
	}
}
