package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/spotml/spotml/internal/store"
)

// Fence is what a leader's writes carry: the lease term it was given and
// its instance ID. A transaction run with a fence in its context
// (WithFence) first checks, in the same transaction, that the lease is
// still held at that term and has not expired by the database's clock,
// and fails with store.ErrFenced otherwise. On PostgreSQL the check
// reads the lease row FOR SHARE, so a successor's takeover (an UPDATE of
// that row) waits until the fenced write has committed or rolled back:
// no write of an old leader can land after its successor took over. On
// SQLite the one-writer lock gives the same order.
type Fence struct {
	Holder string
	Term   int64
}

type fenceKey struct{}

// WithFence returns ctx whose store writes are fenced by f.
func WithFence(ctx context.Context, f Fence) context.Context {
	return context.WithValue(ctx, fenceKey{}, f)
}

// FenceFrom returns the fence ctx carries.
func FenceFrom(ctx context.Context) (Fence, bool) {
	f, ok := ctx.Value(fenceKey{}).(Fence)
	return f, ok
}

// sqliteNowMillis is SQLite's clock in Unix ms (julianday keeps ms).
const sqliteNowMillis = `CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)`

func (s *Store) checkFence(ctx context.Context, tx *txn, f Fence) error {
	var term int64
	err := tx.QueryRowContext(ctx, `SELECT term FROM leases WHERE name = ? AND holder = ? AND term = ? AND expires_ms > `+
		s.d.NowMillis+s.d.ForShare, store.LeaderLease, f.Holder, f.Term).Scan(&term)
	if errors.Is(err, sql.ErrNoRows) {
		s.fenced.Add(1)
		return fmt.Errorf("instance %s, term %d: %w", f.Holder, f.Term, store.ErrFenced)
	}
	return err
}

// AcquireLease takes or renews the leader lease for holder for ttl, by
// the database's clock: the holder renews it (same term) while it is
// valid; anyone takes it over once it has expired, with the term
// incremented. It returns the lease as it stands afterwards, Held saying
// whether holder has it. Never fenced: ctx's fence is ignored.
func (s *Store) AcquireLease(ctx context.Context, holder string, ttl time.Duration) (store.Lease, error) {
	ctx = context.WithValue(ctx, fenceKey{}, nil)
	var l store.Lease
	ms := ttl.Milliseconds()
	if ms <= 0 {
		return l, fmt.Errorf("lease ttl %s: must be at least 1ms", ttl)
	}
	err := s.txNodes(ctx, []string{}, func(tx *txn) error {
		l = store.Lease{}
		var now, acq, exp int64
		if s.d.LeaseLockTimeout != "" {
			if _, err := tx.ExecContext(ctx, s.d.LeaseLockTimeout); err != nil {
				return err
			}
		}
		err := tx.QueryRowContext(ctx, `SELECT holder, term, acquired_ms, expires_ms, `+s.d.NowMillis+` FROM leases WHERE name = ?`+s.d.ForUpdate,
			store.LeaderLease).Scan(&l.Holder, &l.Term, &acq, &exp, &now)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			if err := tx.QueryRowContext(ctx, `SELECT `+s.d.NowMillis).Scan(&now); err != nil {
				return err
			}
			l = store.Lease{Holder: holder, Term: 1}
			acq, exp = now, now+ms
			if _, err := tx.ExecContext(ctx, `INSERT INTO leases (name, holder, term, acquired_ms, expires_ms) VALUES (?, ?, ?, ?, ?)`,
				store.LeaderLease, holder, l.Term, acq, exp); err != nil {
				return err
			}
		case err != nil:
			return err
		case l.Holder == holder && exp > now: // renew
			exp = now + ms
			if _, err := tx.ExecContext(ctx, `UPDATE leases SET expires_ms = ? WHERE name = ?`, exp, store.LeaderLease); err != nil {
				return err
			}
		case exp <= now: // take over, even from a former self: a new term
			l.Holder, l.Term = holder, l.Term+1
			acq, exp = now, now+ms
			if _, err := tx.ExecContext(ctx, `UPDATE leases SET holder = ?, term = ?, acquired_ms = ?, expires_ms = ? WHERE name = ?`,
				holder, l.Term, acq, exp, store.LeaderLease); err != nil {
				return err
			}
			if err := s.event(ctx, tx, "Leader", "controlplane/"+holder, "LeaseAcquired", fmt.Sprintf("term %d", l.Term)); err != nil {
				return err
			}
		}
		l.AcquiredAt, l.Expires = fromMillis(acq), fromMillis(exp)
		l.Valid = exp > now
		l.Held = l.Holder == holder && l.Valid
		return nil
	})
	return l, err
}

// ReleaseLease ends holder's lease now (an instance stopping on purpose),
// so that a follower takes over at its next try instead of after the TTL.
func (s *Store) ReleaseLease(ctx context.Context, holder string) error {
	ctx = context.WithValue(ctx, fenceKey{}, nil)
	return s.txNodes(ctx, []string{}, func(tx *txn) error {
		_, err := tx.ExecContext(ctx, `UPDATE leases SET expires_ms = `+s.d.NowMillis+` WHERE name = ? AND holder = ?`, store.LeaderLease, holder)
		return err
	})
}

// TouchInstance records that an instance is up (its row made on the first
// call), with the database's clock.
func (s *Store) TouchInstance(ctx context.Context, in store.Instance) error {
	ctx = context.WithValue(ctx, fenceKey{}, nil)
	return s.txNodes(ctx, []string{}, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `UPDATE instances SET seen_ms = `+s.d.NowMillis+`, address = ?, version = ? WHERE id = ?`,
			in.Address, in.Version, in.ID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n > 0 {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO instances (id, address, version, started_ms, seen_ms) VALUES (?, ?, ?, ?, `+s.d.NowMillis+`)`,
			in.ID, in.Address, in.Version, in.Started.UnixMilli())
		return err
	})
}

// RemoveInstance forgets an instance (it stopped on purpose), and
// instances not seen for longer than staleAfter.
func (s *Store) RemoveInstance(ctx context.Context, id string, staleAfter time.Duration) error {
	ctx = context.WithValue(ctx, fenceKey{}, nil)
	return s.txNodes(ctx, []string{}, func(tx *txn) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM instances WHERE id = ? OR seen_ms < `+s.d.NowMillis+` - ?`, id, staleAfter.Milliseconds())
		return err
	})
}

// ControlPlane returns the leader lease and the instances seen within
// seenWithin (by the database's clock), oldest first.
func (s *Store) ControlPlane(ctx context.Context, seenWithin time.Duration) (store.ControlPlane, error) {
	var cp store.ControlPlane
	var now, acq, exp int64
	err := s.db.QueryRowContext(ctx, `SELECT holder, term, acquired_ms, expires_ms, `+s.d.NowMillis+` FROM leases WHERE name = ?`,
		store.LeaderLease).Scan(&cp.Lease.Holder, &cp.Lease.Term, &acq, &exp, &now)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return cp, err
	default:
		cp.Lease.AcquiredAt, cp.Lease.Expires = fromMillis(acq), fromMillis(exp)
		cp.Lease.Valid = exp > now
	}
	rows, err := s.db.QueryContext(ctx, `SELECT id, address, version, started_ms, seen_ms FROM instances WHERE seen_ms >= `+
		s.d.NowMillis+` - ? ORDER BY started_ms, id`, seenWithin.Milliseconds())
	if err != nil {
		return cp, err
	}
	defer rows.Close()
	for rows.Next() {
		var in store.Instance
		var started, seen int64
		if err := rows.Scan(&in.ID, &in.Address, &in.Version, &started, &seen); err != nil {
			return cp, err
		}
		in.Started, in.LastSeen = fromMillis(started), fromMillis(seen)
		cp.Instances = append(cp.Instances, in)
	}
	return cp, rows.Err()
}

func fromMillis(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// RoutesChannel is the notification channel of route changes (PostgreSQL).
const RoutesChannel = "spotml_routes"

// WatchRoutes calls changed after every committed change of services,
// replicas or node notices, from any process, until ctx ends; it reports
// false at once where the database has no notifications (SQLite: poll).
// A lost connection is listened on again after a second, and changed is
// called then too, since a notification may have been missed.
func (s *Store) WatchRoutes(ctx context.Context, changed func()) bool {
	return s.Watch(ctx, RoutesChannel, changed)
}
