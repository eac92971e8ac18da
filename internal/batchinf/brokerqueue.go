package batchinf

import (
	"context"
	"errors"
	"net/http"
	"time"

	"gocloud.dev/pubsub"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/batchinf/broker"
)

// brokerQueue receives a batch's work from its broker and claims each
// message's items in the store's ledger before scoring them: a message
// delivered twice, or after its items were scored, is scored once. A
// message is acknowledged only once its items are settled in the ledger,
// so a worker that vanishes leaves it to the broker's redelivery (where
// the broker redelivers) and to the ledger's resend (where it does not).
type brokerQueue struct {
	w   *worker
	sub *broker.Subscription
	// fill is how long the worker waits for more messages to fill a batch
	// once it has one.
	fill time.Duration
}

func openBrokerQueue(ctx context.Context, w *worker) (*brokerQueue, error) {
	sub, err := broker.Subscribe(ctx, w.cfg.Batch, w.spec)
	if err != nil {
		return nil, err
	}
	// Say so: what was sent before anyone listened goes out again.
	var resp api.BatchCounts
	if err := w.call(ctx, http.MethodPost, "/subscribed", api.ClaimRequest{Worker: w.cfg.Worker}, &resp); err != nil {
		sub.Close(ctx)
		return nil, err
	}
	return &brokerQueue{w: w, sub: sub, fill: 20 * time.Millisecond}, nil
}

// next gathers messages until it holds a batch's worth of items (or none
// more is waiting), claims their items and returns those it got. While
// nothing comes it asks the ledger how the batch stands, to know when to
// exit.
func (q *brokerQueue) next(stop, work context.Context) (*lease, error) {
	w := q.w
	idleSince := time.Now()
	for stop.Err() == nil {
		l := &lease{}
		wait := w.cfg.Poll
		for len(l.sent) < w.spec.Runtime.BatchSize {
			m, err := q.receive(stop, wait)
			if err != nil {
				if stop.Err() != nil {
					break
				}
				q.release(work, l)
				return nil, err
			}
			if m == nil {
				break
			}
			wait = q.fill
			msg, ok, err := broker.Decode(m)
			if err != nil || !ok || msg.Batch != w.cfg.Batch {
				if err != nil {
					w.cfg.Log.Warn("dropping a message that is not this batch's", "err", err)
				}
				m.Ack()
				continue
			}
			l.msgs = append(l.msgs, m)
			for _, it := range msg.Items {
				l.sent = append(l.sent, it.ID)
			}
		}
		if stop.Err() != nil {
			q.release(work, l)
			return nil, nil
		}
		if len(l.msgs) == 0 {
			// A claim of nothing says how the batch stands, with what is
			// left counted (the batch's GET does not count: a worker that
			// read "nothing left" there would exit whenever a poll came
			// back empty, as one on SQS's short polls does).
			var st api.LeaseResponse
			if err := w.call(work, http.MethodPost, "/claim", api.ClaimRequest{Worker: w.cfg.Worker}, &st); err != nil {
				return nil, err
			}
			if w.idle(st.Running, st.Listing, st.Left, idleSince) {
				return nil, nil
			}
			continue
		}
		var resp api.LeaseResponse
		if err := w.call(work, http.MethodPost, "/claim", api.ClaimRequest{Worker: w.cfg.Worker, IDs: l.sent}, &resp); err != nil {
			q.release(work, l)
			return nil, err
		}
		if stop.Err() != nil {
			l.items = resp.Items
			q.release(work, l)
			return nil, nil
		}
		if len(resp.Items) == 0 {
			// Done already, or another worker holds them: what carried
			// them is spent.
			ackAll(l.msgs)
			if !resp.Running {
				return nil, nil
			}
			continue
		}
		l.items = resp.Items
		return l, nil
	}
	return nil, nil
}

// receive waits up to d for a message; nil when none came.
func (q *brokerQueue) receive(stop context.Context, d time.Duration) (*pubsub.Message, error) {
	ctx, cancel := context.WithTimeout(stop, d)
	defer cancel()
	m, err := q.sub.Receive(ctx)
	if errors.Is(err, context.DeadlineExceeded) && stop.Err() == nil {
		return nil, nil
	}
	return m, err
}

func (q *brokerQueue) settle(ctx context.Context, l *lease, done []int64, fails []api.ItemFailed) error {
	if err := q.w.ack(ctx, done, fails); err != nil {
		nackAll(l.msgs)
		return err
	}
	ackAll(l.msgs)
	return nil
}

// release gives back the items claimed and those of the messages not
// claimed (sent again at once), and hands the messages back to the
// broker where it takes them back.
func (q *brokerQueue) release(ctx context.Context, l *lease) {
	ids := append([]int64(nil), l.sent...)
	for _, it := range l.items {
		ids = append(ids, it.ID)
	}
	q.w.releaseIDs(ctx, ids)
	nackAll(l.msgs)
}

// close stops receiving. Messages the broker handed this worker but it
// never asked for (NATS pushes them ahead) are drained and their items
// sent again at once, rather than after the resend time.
func (q *brokerQueue) close(ctx context.Context) {
	l := &lease{}
	for {
		m, err := q.receive(ctx, 100*time.Millisecond)
		if err != nil || m == nil {
			break
		}
		msg, ok, _ := broker.Decode(m)
		if ok {
			l.msgs = append(l.msgs, m)
			for _, it := range msg.Items {
				l.sent = append(l.sent, it.ID)
			}
		} else {
			m.Ack()
		}
	}
	if len(l.msgs) > 0 {
		q.w.cfg.Log.Info("giving back messages received but not started", "messages", len(l.msgs), "items", len(l.sent))
		q.release(ctx, l)
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	q.sub.Close(sctx)
}

func ackAll(msgs []*pubsub.Message) {
	for _, m := range msgs {
		m.Ack()
	}
}

// nackAll hands messages back for redelivery now, where the broker can;
// elsewhere (core NATS) the ledger sends their items again.
func nackAll(msgs []*pubsub.Message) {
	for _, m := range msgs {
		if m.Nackable() {
			m.Nack()
		} else {
			m.Ack()
		}
	}
}
