package control

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// BatchWorkerRetries is how often a worker task that fails (crashes, not
// an eviction) is started again.
const BatchWorkerRetries = 3

// reconcileBatches runs the BatchInference loop: leases that ran out go
// back to the queue (their worker's node vanished), a batch whose items
// are all settled finishes (trigger once), and each running batch gets the
// workers its queue calls for. Workers are the tasks of worker jobs
// (api.BatchWorkerJob), so that pools grow from them and evictions requeue
// them like any task; a worker exits by itself when nothing is left.
func (p *Plane) reconcileBatches(ctx context.Context) error {
	requeued, failed, err := p.store.ExpireBatchLeases(ctx)
	if err != nil {
		return err
	}
	if requeued+failed > 0 {
		p.log.Info("batch leases expired", "requeued", requeued, "failed", failed)
	}
	// Without counts: a running batch's left is counted from its
	// pending and leased items alone (an index range), the whole batch
	// only when it finishes.
	bs, err := p.store.ListBatchSpecs(ctx)
	if err != nil || len(bs) == 0 {
		return err
	}
	jobs, err := p.store.ListJobs(ctx)
	if err != nil {
		return err
	}
	active, running, seq := map[string]int{}, map[string]int{}, map[string]int{}
	for _, j := range jobs {
		b, ok := api.BatchOfJob(j.Spec.Metadata.Name)
		if !ok {
			continue
		}
		active[b] += j.Counts[store.TaskPending] + j.Counts[store.TaskRunning]
		running[b] += j.Counts[store.TaskRunning]
		seq[b]++
	}
	var errs []error
	for _, b := range bs {
		if b.State != store.BatchRunning {
			continue
		}
		sp := b.Spec.Spec
		if sp.Trigger == spec.TriggerWatch {
			_, err := p.watchBatch(ctx, b)
			errs = append(errs, err)
		}
		left, err := p.store.BatchLeft(ctx, b.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if left == 0 && !b.Listing && sp.Trigger != spec.TriggerWatch {
			if b, err = p.store.GetBatch(ctx, b.Name); err != nil {
				errs = append(errs, err)
				continue
			}
			msg := fmt.Sprintf("%d done, %d failed", b.Counts.Done, b.Counts.Failed)
			p.log.Info("batch finished", "batch", b.Name, "done", b.Counts.Done, "failed", b.Counts.Failed)
			errs = append(errs, p.store.FinishBatch(ctx, b.Name, store.BatchSucceeded, msg))
			continue
		}
		want := BatchWorkers(sp.Workers, left)
		if add := want - active[b.Name]; add > 0 {
			errs = append(errs, p.addBatchWorkers(ctx, b, seq[b.Name]+1, add, left))
		}
		if sp.Queue.URI != spec.QueueStore {
			errs = append(errs, p.sendBatch(ctx, b, running[b.Name]))
		}
	}
	return errors.Join(errs...)
}

// BatchPublisher sends messages to a broker's topic.
type BatchPublisher interface {
	Publish(ctx context.Context, topic string, msgs []api.BatchMessage) error
}

// sendBatch sends a broker batch's pending items to its topic, in
// messages of queue.groupSize items. The store keeps the ledger and the
// broker carries the work: only the store can count what is left, tell a
// redelivered item from a new one, and survive a broker (core NATS) that
// drops what nobody is subscribed for. So items are sent while workers
// run, at most two leases' worth per worker unclaimed at a time, and an
// item no worker claimed within the lease timeout is sent again.
func (p *Plane) sendBatch(ctx context.Context, b store.Batch, running int) error {
	sp := b.Spec.Spec
	if p.opt.BatchPublisher == nil || running == 0 {
		return nil
	}
	window := running * 2 * LeaseSize(sp)
	items, err := p.store.SendBatchItems(ctx, b.Name, window, p.now().Add(-sp.Queue.LeaseTimeout.Duration))
	if err != nil || len(items) == 0 {
		return err
	}
	msgs := BatchMessages(b.Name, items, sp.Queue.GroupSize)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.opt.BatchPublisher.Publish(pctx, sp.Queue.URI, msgs); err != nil {
		ids := make([]int64, len(items))
		for i, it := range items {
			ids[i] = it.ID
		}
		return errors.Join(fmt.Errorf("batchinference %s: send to spec.queue.uri: %w", b.Name, err), p.store.UnsendBatchItems(ctx, b.Name, ids))
	}
	p.log.Debug("batch items sent", "batch", b.Name, "items", len(items), "messages", len(msgs))
	return nil
}

// LeaseSize is how many items a worker takes at once: whole groups of
// queue.groupSize, at least runtime.batchSize.
func LeaseSize(sp spec.BatchSpec) int {
	g := max(sp.Queue.GroupSize, 1)
	return (max(sp.Runtime.BatchSize, 1) + g - 1) / g * g
}

// BatchMessages groups items, in order, into messages of size items.
func BatchMessages(batch string, items []store.BatchItem, size int) []api.BatchMessage {
	size = max(size, 1)
	var out []api.BatchMessage
	for start := 0; start < len(items); start += size {
		m := api.BatchMessage{Batch: batch}
		for _, it := range items[start:min(start+size, len(items))] {
			m.Items = append(m.Items, api.LeasedItem{ID: it.ID, Input: it.Input})
		}
		out = append(out, m)
	}
	return out
}

// watchBatch lists a watched batch's input once its poll interval has
// passed and queues what is new. The store queues an input once per batch
// ((batch, input) is unique), so a blob is never scored twice, whatever
// restarts. The batch's first listing is the lister's.
func (p *Plane) watchBatch(ctx context.Context, b store.Batch) (int, error) {
	sp := b.Spec.Spec
	if p.opt.BatchInputs == nil || b.Listing || p.now().Sub(b.ListedAt) < sp.Queue.PollInterval.Duration {
		return 0, nil
	}
	n, err := p.queueInputs(ctx, b)
	if n > 0 {
		p.log.Info("batch inputs queued", "batch", b.Name, "new", n)
	}
	return n, err
}

// queueInputs lists b's input and queues what is not queued yet, one
// transaction per listing page, so that queueing starts with the first
// page and a listing cut short keeps what it queued. It returns how many
// items were new.
func (p *Plane) queueInputs(ctx context.Context, b store.Batch) (int, error) {
	n := 0
	err := p.opt.BatchInputs(ctx, b.Spec.Spec.Input, func(inputs []string) error {
		k, err := p.store.AddBatchItems(ctx, b.Name, inputs)
		n += k
		return err
	})
	if err != nil {
		return n, fmt.Errorf("batchinference %s: list spec.input: %w", b.Name, err)
	}
	return n, nil
}

// runBatchLister lists the input of every batch still listing (applied,
// or cut short by a restart), one batch after another, beside the
// reconcile loop: an apply stores the batch and returns, and 70,000 inputs
// take longer to list and queue than an apply should wait, or than a
// reconcile pass should stall the rest. A listing cut short (a crash, a
// lost lease) is done again from the start by the next leader: an input
// is queued once per batch, so nothing is lost or queued twice.
func (p *Plane) runBatchLister(ctx context.Context) {
	t := time.NewTicker(p.opt.Interval)
	defer t.Stop()
	for {
		if err := p.fenced(p.ListBatchInputs(ctx)); err != nil && ctx.Err() == nil {
			p.log.Error("batch listing failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ListBatchInputs lists and queues the whole input of each batch still
// listing, then ends its listing; the batch can then finish.
func (p *Plane) ListBatchInputs(ctx context.Context) error {
	bs, err := p.store.ListingBatches(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, b := range bs {
		start := p.now()
		var n int
		var err error
		if p.opt.BatchInputs != nil {
			n, err = p.queueInputs(ctx, b)
		}
		if errors.Is(err, store.ErrNotFound) {
			continue // deleted while listed
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := p.store.EndBatchListing(ctx, b.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		p.log.Info("batch input listed", "batch", b.Name, "new", n, "took", p.now().Sub(start))
		p.kickLocal()
	}
	return errors.Join(errs...)
}

// BatchWorkers is how many workers a queue of left items calls for:
// ceil(left / itemsPerWorker) between min and max, and min (0 by default)
// when nothing is left.
func BatchWorkers(w spec.BatchWorkers, left int) int {
	if left <= 0 {
		return w.Min
	}
	per := max(w.ItemsPerWorker, 1)
	n := (left + per - 1) / per
	return max(min(n, w.Max), w.Min, 1)
}

// addBatchWorkers submits a worker job of n workers for batch b.
func (p *Plane) addBatchWorkers(ctx context.Context, b store.Batch, seq, n, left int) error {
	sp := b.Spec.Spec
	j := spec.Job{APIVersion: spec.APIVersion, Kind: spec.KindJob,
		Metadata: spec.Metadata{Name: api.BatchWorkerJob(b.Name, seq), Labels: map[string]string{"spotml/batchinference": b.Name}},
		Spec: spec.JobSpec{Pool: sp.Pool, Priority: sp.Priority, OnDemandAfterPreemptions: sp.OnDemandAfterPreemptions, Count: n, Template: &spec.TaskSpec{
			Command:    spec.Command{"spotml", api.BatchWorkerCmd},
			Env:        map[string]string{api.EnvBatch: b.Name},
			Resources:  sp.Resources,
			MaxRetries: BatchWorkerRetries,
		}}}
	j.Default()
	if _, err := p.store.Apply(ctx, nil, []spec.Job{j}); err != nil {
		return fmt.Errorf("batchinference %s: add workers: %w", b.Name, err)
	}
	p.log.Info("batch workers added", "batch", b.Name, "job", j.Metadata.Name, "workers", n, "left", left)
	return p.store.AddEvent(ctx, "Scaled", "batchinference/"+b.Name, "QueueDepth",
		fmt.Sprintf("%d workers added (job %s) for %d items left", n, j.Metadata.Name, left))
}
