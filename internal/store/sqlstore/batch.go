package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// The items' states as SQL literals: a query that reads a state's partial
// index (migration 19) must name the state as a literal for SQLite to use it.
const (
	sqlPending = "'" + store.ItemPending + "'"
	sqlLeased  = "'" + store.ItemLeased + "'"
	sqlDone    = "'" + store.ItemDone + "'"
	sqlFailed  = "'" + store.ItemFailed + "'"
)

// noNodes is txNodes' list for a transaction that changes no node's work:
// the batch queue is not part of a heartbeat's answer.
var noNodes = []string{}

// ApplyBatch stores a BatchInference and queues one item per input given
// (the first listed, if any), in one transaction. The batch is stored as
// listing: the control plane lists the rest of its input (AddBatchItems,
// a page at a time) and then ends the listing (EndBatchListing). Like a
// job it is immutable: the same spec again is "unchanged" (and queues
// nothing), a different one under the same name is ErrConflict.
func (s *Store) ApplyBatch(ctx context.Context, b spec.BatchInference, inputs []string) (store.ApplyResult, error) {
	body, err := json.Marshal(b)
	if err != nil {
		return store.ApplyResult{}, err
	}
	name := b.Metadata.Name
	var res store.ApplyResult
	err = s.txNodes(ctx, noNodes, func(tx *txn) error {
		var old string
		err := tx.QueryRowContext(ctx, `SELECT spec FROM batches WHERE name = ?`, name).Scan(&old)
		switch {
		case err == nil && old == string(body):
			res = store.ApplyResult{Kind: spec.KindBatchInference, Name: name, Action: "unchanged"}
			return nil
		case err == nil:
			return store.Conflict("batchinference %q already exists with a different spec; it cannot be changed once submitted: delete it first (spotml delete batchinference %s) or use another metadata.name", name, name)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		now := s.now().UnixNano()
		if _, err := tx.ExecContext(ctx, `INSERT INTO batches (name, uid, spec, state, max_attempts, created_at, listed_at, listing) VALUES (?, ?, ?, ?, ?, ?, ?, 1)`,
			name, store.RandomHex(4), string(body), store.BatchRunning, b.Spec.Queue.MaxAttempts, now, now); err != nil {
			return err
		}
		n, err := s.addItems(ctx, tx, name, inputs)
		if err != nil {
			return err
		}
		res = store.ApplyResult{Kind: spec.KindBatchInference, Name: name, Action: "created"}
		return s.event(ctx, tx, "Submitted", "batchinference/"+name, "Applied", fmt.Sprintf("%d items so far; listing the input", n))
	})
	return res, err
}

// AddBatchItems queues the inputs a running batch does not have yet (a
// page of its first listing, a watch's new blobs) and records when the
// input was listed. It returns how many were new. An input queued already
// is left as it is, so a listing cut short (a restart) is simply done
// again.
func (s *Store) AddBatchItems(ctx context.Context, name string, inputs []string) (int, error) {
	var n int
	err := s.txNodes(ctx, noNodes, func(tx *txn) error {
		var state string
		var listing int
		if err := tx.QueryRowContext(ctx, `SELECT state, listing FROM batches WHERE name = ?`, name).Scan(&state, &listing); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("batchinference %q: %w", name, store.ErrNotFound)
			}
			return err
		}
		if state != store.BatchRunning {
			n = 0
			return nil
		}
		var err error
		if n, err = s.addItems(ctx, tx, name, inputs); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE batches SET listed_at = ? WHERE name = ?`, s.now().UnixNano(), name); err != nil {
			return err
		}
		if n > 0 && listing == 0 {
			return s.event(ctx, tx, "Queued", "batchinference/"+name, "NewInputs", fmt.Sprintf("%d items", n))
		}
		return nil
	})
	return n, err
}

// EndBatchListing records that a batch's whole input has been listed and
// queued: from now on it finishes once its items are settled.
func (s *Store) EndBatchListing(ctx context.Context, name string) error {
	return s.txNodes(ctx, noNodes, func(tx *txn) error {
		r, err := tx.ExecContext(ctx, `UPDATE batches SET listing = 0, listed_at = ? WHERE name = ? AND listing = 1`, s.now().UnixNano(), name)
		if err != nil {
			return err
		}
		if c, _ := r.RowsAffected(); c == 0 {
			return nil
		}
		var total int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM batch_items WHERE batch = ?`, name).Scan(&total); err != nil {
			return err
		}
		return s.event(ctx, tx, "Listed", "batchinference/"+name, "InputListed", fmt.Sprintf("%d items queued", total))
	})
}

// ListingBatches returns the batches whose input is still being listed,
// without their counts.
func (s *Store) ListingBatches(ctx context.Context) ([]store.Batch, error) {
	return s.batches(ctx, false, ` WHERE listing = 1`)
}

// addItems inserts the inputs not queued yet, numbering them after the
// batch's last item, up to a thousand rows a statement (a listing's page).
func (s *Store) addItems(ctx context.Context, tx *txn, name string, inputs []string) (int, error) {
	var next int64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(id), 0) FROM batch_items WHERE batch = ?`, name).Scan(&next); err != nil {
		return 0, err
	}
	added := 0
	const chunk = 1000
	for start := 0; start < len(inputs); start += chunk {
		part := inputs[start:min(start+chunk, len(inputs))]
		var q strings.Builder
		q.WriteString(`INSERT INTO batch_items (batch, id, input, state) VALUES `)
		args := make([]any, 0, 4*len(part))
		for i, in := range part {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("(?, ?, ?, ?)")
			next++
			args = append(args, name, next, in, store.ItemPending)
		}
		q.WriteString(` ON CONFLICT (batch, input) DO NOTHING`)
		r, err := tx.ExecContext(ctx, q.String(), args...)
		if err != nil {
			return 0, err
		}
		n, _ := r.RowsAffected()
		added += int(n)
	}
	return added, nil
}

// LeaseBatchItems gives worker up to n pending items of a running batch,
// leased until now+ttl. An empty answer is not an error.
func (s *Store) LeaseBatchItems(ctx context.Context, name, worker string, n int, ttl time.Duration) ([]store.BatchItem, error) {
	var items []store.BatchItem
	err := s.txQueue(ctx, func(tx *txn) error {
		items = items[:0]
		now := s.now()
		// The rows are picked once, in a materialized CTE: PostgreSQL may
		// run a LIMIT … SKIP LOCKED subquery inside IN more than once. The
		// UPDATE does not ask their state again: they are locked (SQLite:
		// one writer), and with it PostgreSQL's planner read every pending
		// item rather than the picked ones by primary key.
		rows, err := tx.QueryContext(ctx, `WITH picked AS MATERIALIZED (
				SELECT i.id FROM batch_items i JOIN batches b ON b.name = i.batch
				WHERE i.batch = ? AND i.state = `+sqlPending+` AND b.state = ? ORDER BY i.id LIMIT ?`+s.skipLocked("i")+`)
			UPDATE batch_items SET state = ?, worker = ?, lease_until = ?, attempts = attempts + 1
			WHERE batch = ? AND `+s.inPicked("id", `SELECT id FROM picked`)+`
			RETURNING id, input, attempts`,
			name, store.BatchRunning, n, store.ItemLeased, worker, now.Add(ttl).UnixNano(), name)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			it := store.BatchItem{State: store.ItemLeased, Worker: worker, LeaseUntil: now.Add(ttl).UTC()}
			if err := rows.Scan(&it.ID, &it.Input, &it.Attempts); err != nil {
				return err
			}
			items = append(items, it)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(items) > 0 {
			_, err = tx.ExecContext(ctx, `UPDATE batches SET started_at = ? WHERE name = ? AND started_at = 0`, now.UnixNano(), name)
		}
		return err
	})
	// RETURNING's order is not the statement's: leases come in id order.
	sortItems(items)
	return items, err
}

// AckBatchItems marks items done. An item done already stays as it was
// (its result was written under the same name again), so a worker whose
// lease ran out and the one that took the item over may both ack. It
// returns how many items became done.
func (s *Store) AckBatchItems(ctx context.Context, name string, ids []int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	var n int
	err := s.txNodes(ctx, noNodes, func(tx *txn) error {
		in, args := idList(ids)
		r, err := tx.ExecContext(ctx, `UPDATE batch_items SET state = ?, worker = '', lease_until = 0, done_at = ?
			WHERE batch = ? AND state IN (?, ?) AND id IN (`+in+`)`,
			append([]any{store.ItemDone, s.now().UnixNano(), name, store.ItemPending, store.ItemLeased}, args...)...)
		if err != nil {
			return err
		}
		c, _ := r.RowsAffected()
		n = int(c)
		if dup := len(ids) - n; dup > 0 {
			// Acked again: done by another worker after this one's lease
			// ran out, or by this one before an ack that got lost. Its
			// result was written more than once (the same object).
			_, err = tx.ExecContext(ctx, `UPDATE batches SET redone = redone + ? WHERE name = ?`, dup, name)
		}
		return err
	})
	return n, err
}

// FailBatchItems marks items failed with their reasons (an undecodable
// input, a wrong shape): they are not retried and do not hold up the rest.
func (s *Store) FailBatchItems(ctx context.Context, name string, fails []store.ItemFailure) (int, error) {
	var n int
	err := s.txNodes(ctx, noNodes, func(tx *txn) error {
		n = 0
		now := s.now().UnixNano()
		for _, f := range fails {
			r, err := tx.ExecContext(ctx, `UPDATE batch_items SET state = ?, worker = '', lease_until = 0, done_at = ?, reason = ?
				WHERE batch = ? AND id = ? AND state IN (?, ?)`,
				store.ItemFailed, now, truncate(f.Reason, 1000), name, f.ID, store.ItemPending, store.ItemLeased)
			if err != nil {
				return err
			}
			c, _ := r.RowsAffected()
			n += int(c)
		}
		return nil
	})
	return n, err
}

// ReleaseBatchItems gives a worker's leased items back to the queue at
// once (its node got a notice). The lease does not count as an attempt.
// With a broker, the released items and any pending ones among ids (of
// messages the worker received but did not claim) are sent again at once.
func (s *Store) ReleaseBatchItems(ctx context.Context, name, worker string, ids []int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	var n int
	err := s.txNodes(ctx, noNodes, func(tx *txn) error {
		in, args := idList(ids)
		r, err := tx.ExecContext(ctx, `UPDATE batch_items SET state = ?, worker = '', lease_until = 0, attempts = attempts - 1, sent_at = 0
			WHERE batch = ? AND state = ? AND worker = ? AND id IN (`+in+`)`,
			append([]any{store.ItemPending, name, store.ItemLeased, worker}, args...)...)
		if err != nil {
			return err
		}
		c, _ := r.RowsAffected()
		n = int(c)
		if _, err := tx.ExecContext(ctx, `UPDATE batch_items SET sent_at = 0 WHERE batch = ? AND state = ? AND id IN (`+in+`)`,
			append([]any{name, store.ItemPending}, args...)...); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		_, err = tx.ExecContext(ctx, `UPDATE batches SET released = released + ? WHERE name = ?`, n, name)
		return err
	})
	return n, err
}

// SendBatchItems picks the pending items of a running batch to send to
// its broker, and marks them sent now: those never sent, and those sent
// before resendBefore that no worker claimed (a broker such as core NATS
// drops a message nobody is subscribed for, or a worker vanished with it
// unread). At most window items are out, sent and not claimed, at a time,
// so that a broker never holds a backlog that would be sent again. The
// items come in id order.
func (s *Store) SendBatchItems(ctx context.Context, name string, window int, resendBefore time.Time) ([]store.BatchItem, error) {
	var items []store.BatchItem
	err := s.txNodes(ctx, noNodes, func(tx *txn) error {
		items = items[:0]
		cut, now := resendBefore.UnixNano(), s.now().UnixNano()
		var out int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM batch_items WHERE batch = ? AND state = `+sqlPending+` AND sent_at > 0 AND sent_at >= ?`,
			name, cut).Scan(&out); err != nil {
			return err
		}
		n := window - out
		if n <= 0 {
			return nil
		}
		rows, err := tx.QueryContext(ctx, `UPDATE batch_items SET sent_at = ?
			WHERE batch = ? AND `+s.inPicked("id", `
				SELECT i.id FROM batch_items i JOIN batches b ON b.name = i.batch
				WHERE i.batch = ? AND i.state = `+sqlPending+` AND i.sent_at < ? AND b.state = ? ORDER BY i.id LIMIT ?`)+`
			RETURNING id, input, attempts`,
			max(now, cut+1), name, name, cut, store.BatchRunning, n)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			it := store.BatchItem{State: store.ItemPending}
			if err := rows.Scan(&it.ID, &it.Input, &it.Attempts); err != nil {
				return err
			}
			items = append(items, it)
		}
		return rows.Err()
	})
	sortItems(items)
	return items, err
}

// UnsendBatchItems marks pending items not sent (sending them failed), so
// that the next pass sends them at once.
func (s *Store) UnsendBatchItems(ctx context.Context, name string, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	return s.txNodes(ctx, noNodes, func(tx *txn) error {
		in, args := idList(ids)
		_, err := tx.ExecContext(ctx, `UPDATE batch_items SET sent_at = 0 WHERE batch = ? AND state = ? AND id IN (`+in+`)`,
			append([]any{name, store.ItemPending}, args...)...)
		return err
	})
}

// ResendBatchItems marks for sending again at once the pending items sent
// before before and not claimed: a worker subscribed then, and a broker
// that drops what nobody is subscribed for (core NATS) may have dropped
// them. It returns how many.
func (s *Store) ResendBatchItems(ctx context.Context, name string, before time.Time) (int, error) {
	var n int
	err := s.txNodes(ctx, noNodes, func(tx *txn) error {
		r, err := tx.ExecContext(ctx, `UPDATE batch_items SET sent_at = 0 WHERE batch = ? AND state = `+sqlPending+` AND sent_at > 0 AND sent_at < ?`,
			name, before.UnixNano())
		if err != nil {
			return err
		}
		c, _ := r.RowsAffected()
		n = int(c)
		return nil
	})
	return n, err
}

// ClaimBatchItems takes for worker, until now+ttl, the items among ids
// that are pending in a running batch: those of a message it got from the
// broker. Items done, failed or held by a worker are left as they are, so
// that a message delivered twice is scored once.
func (s *Store) ClaimBatchItems(ctx context.Context, name, worker string, ids []int64, ttl time.Duration) ([]store.BatchItem, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	var items []store.BatchItem
	err := s.txNodes(ctx, noNodes, func(tx *txn) error {
		items = items[:0]
		now := s.now()
		in, args := idList(ids)
		rows, err := tx.QueryContext(ctx, `UPDATE batch_items SET state = ?, worker = ?, lease_until = ?, attempts = attempts + 1
			WHERE batch = ? AND state = ? AND id IN (`+in+`) AND EXISTS (SELECT 1 FROM batches b WHERE b.name = ? AND b.state = ?)
			RETURNING id, input, attempts`,
			append(append([]any{store.ItemLeased, worker, now.Add(ttl).UnixNano(), name, store.ItemPending}, args...), name, store.BatchRunning)...)
		if err != nil {
			return err
		}
		for rows.Next() {
			it := store.BatchItem{State: store.ItemLeased, Worker: worker, LeaseUntil: now.Add(ttl).UTC()}
			if err := rows.Scan(&it.ID, &it.Input, &it.Attempts); err != nil {
				rows.Close()
				return err
			}
			items = append(items, it)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(items) > 0 {
			_, err = tx.ExecContext(ctx, `UPDATE batches SET started_at = ? WHERE name = ? AND started_at = 0`, now.UnixNano(), name)
		}
		return err
	})
	sortItems(items)
	return items, err
}

// ExpireBatchLeases returns to the queue every item whose lease ran out
// (its worker's node vanished), or fails it once it has been leased the
// batch's maximum number of times. It returns how many were requeued and
// failed.
func (s *Store) ExpireBatchLeases(ctx context.Context) (requeued, failed int, err error) {
	err = s.txNodes(ctx, noNodes, func(tx *txn) error {
		now := s.now().UnixNano()
		r, err := tx.ExecContext(ctx, `UPDATE batch_items SET state = ?, worker = '', lease_until = 0, done_at = ?,
				reason = 'leased ' || attempts || ' times; each lease ran out before the item was scored (its worker vanished or hung)'
			WHERE state = `+sqlLeased+` AND lease_until < ? AND attempts >= (SELECT b.max_attempts FROM batches b WHERE b.name = batch_items.batch)`,
			store.ItemFailed, now, now)
		if err != nil {
			return err
		}
		c, _ := r.RowsAffected()
		failed = int(c)
		rows, err := tx.QueryContext(ctx, `UPDATE batch_items SET state = ?, worker = '', lease_until = 0, sent_at = 0
			WHERE state = `+sqlLeased+` AND lease_until < ? RETURNING batch`, store.ItemPending, now)
		if err != nil {
			return err
		}
		per := map[string]int{}
		for rows.Next() {
			var b string
			if err := rows.Scan(&b); err != nil {
				rows.Close()
				return err
			}
			per[b]++
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		requeued = 0
		for b, k := range per {
			requeued += k
			if _, err := tx.ExecContext(ctx, `UPDATE batches SET expired = expired + ? WHERE name = ?`, k, b); err != nil {
				return err
			}
			if err := s.event(ctx, tx, "LeaseExpired", "batchinference/"+b, "WorkerVanished", fmt.Sprintf("%d items back in the queue", k)); err != nil {
				return err
			}
		}
		return nil
	})
	return requeued, failed, err
}

// FinishBatch ends a batch in state (succeeded); workers lease nothing
// more from it. A batch still listing its input does not finish.
func (s *Store) FinishBatch(ctx context.Context, name, state, message string) error {
	return s.txNodes(ctx, noNodes, func(tx *txn) error {
		r, err := tx.ExecContext(ctx, `UPDATE batches SET state = ?, finished_at = ? WHERE name = ? AND state = ? AND listing = 0`,
			state, s.now().UnixNano(), name, store.BatchRunning)
		if err != nil {
			return err
		}
		if c, _ := r.RowsAffected(); c == 0 {
			return nil
		}
		return s.event(ctx, tx, "Finished", "batchinference/"+name, "AllItemsScored", message)
	})
}

// DeleteBatch removes a batch and its queue.
func (s *Store) DeleteBatch(ctx context.Context, name string) error {
	return s.txNodes(ctx, noNodes, func(tx *txn) error {
		r, err := tx.ExecContext(ctx, `DELETE FROM batches WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if c, _ := r.RowsAffected(); c == 0 {
			return fmt.Errorf("batchinference %q: %w", name, store.ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM batch_items WHERE batch = ?`, name); err != nil {
			return err
		}
		return s.event(ctx, tx, "Deleted", "batchinference/"+name, "Deleted", "")
	})
}

const batchCols = `name, uid, spec, state, created_at, started_at, finished_at, listed_at, released, expired, redone, listing`

// ListBatches returns every batch with its counts, oldest first.
func (s *Store) ListBatches(ctx context.Context) ([]store.Batch, error) {
	return s.batches(ctx, true, ``)
}

// ListBatchSpecs returns every batch without its items' counts (as
// GetBatchSpec), oldest first: what the control loop reads every pass,
// where counting every item of every batch, finished ones too, cost more
// than all the leases and acks of a running one.
func (s *Store) ListBatchSpecs(ctx context.Context) ([]store.Batch, error) {
	return s.batches(ctx, false, ``)
}

// GetBatch returns one batch with its counts.
func (s *Store) GetBatch(ctx context.Context, name string) (store.Batch, error) {
	return s.getBatch(ctx, name, true)
}

// GetBatchSpec returns one batch without its items' counts (Counts holds
// only the batch's own tallies: released, expired, redone): counting reads
// every item, which a worker's lease or ack does not need.
func (s *Store) GetBatchSpec(ctx context.Context, name string) (store.Batch, error) {
	return s.getBatch(ctx, name, false)
}

func (s *Store) getBatch(ctx context.Context, name string, counts bool) (store.Batch, error) {
	bs, err := s.batches(ctx, counts, ` WHERE name = ?`, name)
	if err != nil {
		return store.Batch{}, err
	}
	if len(bs) == 0 {
		return store.Batch{}, fmt.Errorf("batchinference %q: %w", name, store.ErrNotFound)
	}
	return bs[0], nil
}

// BatchLeft counts a batch's items not yet done or failed.
func (s *Store) BatchLeft(ctx context.Context, name string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT
			(SELECT COUNT(*) FROM batch_items WHERE batch = ? AND state = `+sqlPending+`) +
			(SELECT COUNT(*) FROM batch_items WHERE batch = ? AND state = `+sqlLeased+`)`,
		name, name).Scan(&n)
	return n, err
}

func (s *Store) batches(ctx context.Context, counts bool, where string, args ...any) ([]store.Batch, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+batchCols+` FROM batches`+where+` ORDER BY created_at, name`, args...)
	if err != nil {
		return nil, err
	}
	var out []store.Batch
	for rows.Next() {
		var b store.Batch
		var body string
		var c, st, fin, listed, listing int64
		if err := rows.Scan(&b.Name, &b.UID, &body, &b.State, &c, &st, &fin, &listed, &b.Counts.Released, &b.Counts.Expired, &b.Counts.Redone, &listing); err != nil {
			rows.Close()
			return nil, err
		}
		if err := json.Unmarshal([]byte(body), &b.Spec); err != nil {
			rows.Close()
			return nil, fmt.Errorf("stored batchinference %s: %w", b.Name, err)
		}
		b.CreatedAt, b.StartedAt, b.FinishedAt, b.ListedAt = fromNanos(c), fromNanos(st), fromNanos(fin), fromNanos(listed)
		b.Listing = listing != 0
		out = append(out, b)
	}
	rows.Close()
	if err := rows.Err(); err != nil || !counts {
		return out, err
	}
	recent := s.now().Add(-time.Minute).UnixNano()
	for i := range out {
		b := &out[i]
		// One count per state, each from its partial index (migration 19).
		var last int64
		if err := s.db.QueryRowContext(ctx, `SELECT
				(SELECT COUNT(*) FROM batch_items WHERE batch = ? AND state = `+sqlPending+`),
				(SELECT COUNT(*) FROM batch_items WHERE batch = ? AND state = `+sqlLeased+`),
				(SELECT COUNT(*) FROM batch_items WHERE batch = ? AND state = `+sqlFailed+`),
				COUNT(*), COALESCE(MAX(done_at), 0), COUNT(CASE WHEN done_at >= ? THEN 1 END)
			FROM batch_items WHERE batch = ? AND state = `+sqlDone,
			b.Name, b.Name, b.Name, recent, b.Name).Scan(&b.Counts.Pending, &b.Counts.Leased, &b.Counts.Failed,
			&b.Counts.Done, &last, &b.Counts.DoneRecently); err != nil {
			return nil, err
		}
		b.Counts.Total = b.Counts.Pending + b.Counts.Leased + b.Counts.Failed + b.Counts.Done
		b.Counts.LastDoneAt = fromNanos(last)
	}
	return out, nil
}

// BatchItems returns a batch's items in one state ("" for all), in id
// order, at most limit (0: all).
func (s *Store) BatchItems(ctx context.Context, name, state string, limit int) ([]store.BatchItem, error) {
	q := `SELECT id, input, state, worker, lease_until, attempts, reason, done_at FROM batch_items WHERE batch = ?`
	args := []any{name}
	switch state {
	case "":
	case store.ItemPending, store.ItemLeased, store.ItemDone, store.ItemFailed:
		// A literal, so that SQLite reads the state's partial index (the
		// leased or failed few) rather than every item of the batch.
		q += ` AND state = '` + state + `'`
	default:
		q += ` AND state = ?`
		args = append(args, state)
	}
	q += ` ORDER BY id`
	if limit > 0 {
		q += ` LIMIT ?`
		args = append(args, limit)
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.BatchItem
	for rows.Next() {
		var it store.BatchItem
		var lease, done int64
		if err := rows.Scan(&it.ID, &it.Input, &it.State, &it.Worker, &lease, &it.Attempts, &it.Reason, &done); err != nil {
			return nil, err
		}
		it.LeaseUntil, it.DoneAt = fromNanos(lease), fromNanos(done)
		out = append(out, it)
	}
	return out, rows.Err()
}

// inPicked is "col IN (sub)", for the rows a statement picked in sub (a
// LIMIT of a queue's next items). On PostgreSQL it is "col = ANY(ARRAY(sub))",
// an index lookup per picked id: with IN, before the table's first
// ANALYZE (a new batch's rows), the planner joined every pending item
// against the picked ones in a nested loop, 2.3 million comparisons and
// a quarter of a second for a lease of 256 with 10,000 pending (4 ms now).
func (s *Store) inPicked(col, sub string) string {
	if s.d.Name == "postgres" {
		return col + " = ANY(ARRAY(" + sub + "))"
	}
	return col + " IN (" + sub + ")"
}

func idList(ids []int64) (string, []any) {
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	return strings.TrimSuffix(strings.Repeat("?, ", len(ids)), ", "), args
}

func sortItems(items []store.BatchItem) {
	slices.SortFunc(items, func(a, b store.BatchItem) int { return cmp.Compare(a.ID, b.ID) })
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
