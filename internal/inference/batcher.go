package inference

import (
	"context"
	"time"
)

// request is one Predict call waiting for its batch.
type request struct {
	ctx      context.Context
	inputs   []Tensor // in the model's input order
	rows     int
	enqueued time.Time
	// done receives the result; buffered so that the batcher never waits
	// for a caller.
	done chan result
}

type result struct {
	outputs []Tensor
	err     error
}

// batcher combines queued requests into batches of at most maxBatch rows
// and hands each batch to exec, one batch at a time. Small models are far
// cheaper per row in batches (ONNX Runtime ran the Fashion-MNIST model 4x
// faster per row at 32 rows than at 1), so waiting a little for company pays.
type batcher struct {
	queue    chan *request
	maxBatch int
	delay    time.Duration
	// exec runs a batch and answers every live request in it.
	exec    func(batch []*request)
	stopped chan struct{}
}

func newBatcher(maxBatch, maxQueue int, delay time.Duration, exec func([]*request)) *batcher {
	return &batcher{
		queue:    make(chan *request, maxQueue),
		maxBatch: maxBatch,
		delay:    delay,
		exec:     exec,
		stopped:  make(chan struct{}),
	}
}

// submit queues r, or refuses it when the queue is full (back-pressure: the
// caller is told to retry rather than left waiting without bound).
func (b *batcher) submit(r *request) error {
	select {
	case <-b.stopped:
		return ErrClosed
	default:
	}
	select {
	case b.queue <- r:
		return nil
	default:
		return ErrQueueFull
	}
}

// wait returns r's result once its batch has run, or why it will not be.
func (b *batcher) wait(r *request) ([]Tensor, error) {
	select {
	case res := <-r.done:
		return res.outputs, res.err
	case <-r.ctx.Done():
		return nil, r.ctx.Err()
	case <-b.stopped:
		// The last batch may have answered r just before the batcher
		// stopped.
		select {
		case res := <-r.done:
			return res.outputs, res.err
		default:
			return nil, ErrClosed
		}
	}
}

// run forms and executes batches until ctx ends. A batch starts with the
// oldest waiting request and takes the requests behind it, in order, while
// they fit in maxBatch rows. A request that does not fit starts the next
// batch; a request larger than maxBatch on its own runs alone. Cancelled
// requests are passed over.
//
// When the queue runs dry before the batch is full, the batch waits for
// more until delay has passed since its first request was queued, but only
// when there is company to be had: when this batch or the one before it
// held more than one request. A lone caller (one client waiting for each
// answer before it asks again) would otherwise pay the whole delay on every
// request for nothing; under load the queue is never empty for long and
// batches fill.
func (b *batcher) run(ctx context.Context) {
	defer close(b.stopped)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var batch []*request
	var next *request // taken from the queue, but did not fit the last batch
	company := false  // the last batch held more than one request
	for ctx.Err() == nil {
		first := next
		next = nil
		if first == nil {
			select {
			case first = <-b.queue:
			case <-ctx.Done():
				return
			}
		}
		if first.ctx.Err() != nil {
			continue
		}
		batch = append(batch[:0], first)
		rows := first.rows
		timing := false
	collect:
		for rows < b.maxBatch {
			var r *request
			select {
			case r = <-b.queue:
			default:
				wait := b.delay - time.Since(first.enqueued)
				if wait <= 0 || !(company || len(batch) > 1) {
					break collect
				}
				if !timing {
					timer.Reset(wait)
					timing = true
				}
				select {
				case r = <-b.queue:
				case <-timer.C:
					timing = false
					break collect
				case <-ctx.Done():
					break collect
				}
			}
			if r.ctx.Err() != nil {
				continue
			}
			if rows+r.rows > b.maxBatch {
				next = r
				break
			}
			batch = append(batch, r)
			rows += r.rows
		}
		if timing {
			timer.Stop()
		}
		company = len(batch) > 1
		b.exec(batch)
		clear(batch) // let answered requests be collected
	}
}
