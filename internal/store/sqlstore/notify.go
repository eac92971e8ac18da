package sqlstore

import (
	"context"
	"time"
)

// Notification channels (PostgreSQL) besides RoutesChannel.
const (
	// KickChannel carries the nudges of instances that took an API write
	// (a submit, a report, a notice) to the leader, which reconciles at
	// once instead of at its next periodic pass.
	KickChannel = "spotml_kick"
	// ChangesChannel is notified by triggers, in the transaction of the
	// change, when anything the console's live view shows changes: pools,
	// nodes (not their heartbeats), jobs, tasks, services, replicas,
	// gateway reports, events.
	ChangesChannel = "spotml_changes"
)

// Notifies reports whether the database delivers notifications between
// processes (PostgreSQL); without them (SQLite, one process) Notify does
// nothing and Watch reports false.
func (s *Store) Notifies() bool { return s.d.Listen != nil && s.d.Notify != "" }

// Notify notifies channel; every process that Watches it is called once
// the notification is delivered. Outside a transaction: delivered at once.
func (s *Store) Notify(ctx context.Context, channel string) error {
	if !s.Notifies() {
		return nil
	}
	_, err := s.db.ExecContext(ctx, s.d.Notify, channel)
	return err
}

// Watch calls changed on every notification of channel, from any process,
// until ctx ends; it reports false at once where the database has no
// notifications (SQLite: poll). A lost connection is listened on again
// after a second, and changed is called then too, since a notification
// may have been missed.
func (s *Store) Watch(ctx context.Context, channel string, changed func()) bool {
	if !s.Notifies() {
		return false
	}
	go func() {
		for ctx.Err() == nil {
			s.d.Listen(ctx, s.db.DB, channel, changed)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
				changed()
			}
		}
	}()
	return true
}
