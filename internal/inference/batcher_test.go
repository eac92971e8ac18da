package inference

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// The batcher is tested with a fake exec inside synctest bubbles: time is
// fake, so delays are exact and nothing sleeps.

// batchLog records the batches a fake exec was given, as rows per request.
type batchLog struct {
	mu      sync.Mutex
	batches [][]int
	at      []time.Duration // since the bubble's start
}

func (l *batchLog) exec(start time.Time) func([]*request) {
	return func(batch []*request) {
		var rows []int
		for _, r := range batch {
			if r.ctx.Err() != nil {
				continue
			}
			rows = append(rows, r.rows)
			r.done <- result{outputs: []Tensor{{Name: "rows", Shape: []int64{int64(r.rows)}}}}
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		l.batches = append(l.batches, rows)
		l.at = append(l.at, time.Since(start))
	}
}

func (l *batchLog) get() ([][]int, []time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.batches), slices.Clone(l.at)
}

// startBatcher runs a batcher until the test's bubble ends, once the
// requests of the given rows are queued (so that the batcher finds them all
// there); it returns those requests.
func startBatcher(t *testing.T, maxBatch, maxQueue int, delay time.Duration, rows ...int) (*batcher, *batchLog, []*request) {
	log := &batchLog{}
	b := newBatcher(maxBatch, maxQueue, delay, log.exec(time.Now()))
	queued := submit(t, b, rows...)
	ctx, cancel := context.WithCancel(context.Background())
	go b.run(ctx)
	t.Cleanup(func() { cancel(); <-b.stopped })
	return b, log, queued
}

func newRequest(ctx context.Context, rows int) *request {
	return &request{ctx: ctx, rows: rows, enqueued: time.Now(), done: make(chan result, 1)}
}

// submit queues requests of the given rows, in order.
func submit(t *testing.T, b *batcher, rows ...int) []*request {
	t.Helper()
	var reqs []*request
	for _, n := range rows {
		r := newRequest(context.Background(), n)
		if err := b.submit(r); err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, r)
	}
	return reqs
}

// await waits for the requests' answers.
func await(t *testing.T, b *batcher, reqs ...*request) {
	t.Helper()
	for _, r := range reqs {
		if _, err := b.wait(r); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBatcherFillsBatchesInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 3+4 fit, 2 does not and starts the next batch; 10 is bigger
		// than a batch and runs alone.
		b, log, queued := startBatcher(t, 8, 100, time.Second, 3, 4, 2, 5, 10, 1)
		await(t, b, queued...)
		got, at := log.get()
		want := [][]int{{3, 4}, {2, 5}, {10}, {1}}
		if !slices.EqualFunc(got, want, slices.Equal) {
			t.Errorf("batches %v, want %v", got, want)
		}
		// A full batch, or one whose next request does not fit, runs at
		// once; so does {1}, alone behind a batch that was alone.
		if wantAt := []time.Duration{0, 0, 0, 0}; !slices.Equal(at, wantAt) {
			t.Errorf("batches ran at %v, want %v", at, wantAt)
		}
	})
}

func TestBatcherWaitsForCompany(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Two callers at once, a third 1 ms later: one batch, at 2 ms.
		b, log, queued := startBatcher(t, 32, 100, 2*time.Millisecond, 1, 1)
		time.Sleep(time.Millisecond)
		await(t, b, append(queued, submit(t, b, 1)...)...)
		// A lone caller at 5 ms, behind a busy batch: waits for company.
		time.Sleep(3 * time.Millisecond)
		await(t, b, submit(t, b, 1)...)
		// Another at 10 ms, behind a lone one: runs at once.
		time.Sleep(3 * time.Millisecond)
		await(t, b, submit(t, b, 1)...)
		got, at := log.get()
		if want := [][]int{{1, 1, 1}, {1}, {1}}; !slices.EqualFunc(got, want, slices.Equal) {
			t.Errorf("batches %v, want %v", got, want)
		}
		// The delay counts from when the first request was queued.
		if want := []time.Duration{2 * time.Millisecond, 7 * time.Millisecond, 10 * time.Millisecond}; !slices.Equal(at, want) {
			t.Errorf("batches ran at %v, want %v", at, want)
		}
	})
}

func TestBatcherNoDelayRunsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Requests found waiting are run together; none is waited for.
		b, log, queued := startBatcher(t, 32, 100, 0, 2, 3)
		await(t, b, queued...)
		await(t, b, submit(t, b, 1)...)
		got, at := log.get()
		if want := [][]int{{2, 3}, {1}}; !slices.EqualFunc(got, want, slices.Equal) {
			t.Errorf("batches %v, want %v", got, want)
		}
		if !slices.Equal(at, []time.Duration{0, 0}) {
			t.Errorf("batches ran at %v, want at once", at)
		}
	})
}

func TestBatcherSkipsCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &batchLog{}
		b := newBatcher(32, 100, time.Second, log.exec(time.Now()))
		ctx, cancel := context.WithCancel(context.Background())
		gone := newRequest(ctx, 5)
		if err := b.submit(gone); err != nil {
			t.Fatal(err)
		}
		cancel() // while queued
		if _, err := b.wait(gone); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled request: %v", err)
		}
		kept := submit(t, b, 2)
		run, stop := context.WithCancel(context.Background())
		defer stop()
		go b.run(run)
		await(t, b, kept...)
		got, _ := log.get()
		if want := [][]int{{2}}; !slices.EqualFunc(got, want, slices.Equal) {
			t.Errorf("batches %v, want %v (the cancelled request never runs)", got, want)
		}
	})
}

func TestBatcherQueueFull(t *testing.T) {
	b := newBatcher(4, 2, time.Second, func([]*request) {}) // not running: the queue fills
	for range 2 {
		if err := b.submit(newRequest(context.Background(), 1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.submit(newRequest(context.Background(), 1)); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third request: %v, want ErrQueueFull", err)
	}
}

func TestBatcherStopFailsQueued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		b := newBatcher(4, 10, 0, func(batch []*request) {
			<-release // a slow run
			for _, r := range batch {
				r.done <- result{}
			}
		})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { b.run(ctx); close(done) }()
		running := newRequest(context.Background(), 1)
		b.submit(running)
		synctest.Wait() // running is in the slow run
		queued := newRequest(context.Background(), 1)
		if err := b.submit(queued); err != nil {
			t.Fatal(err)
		}
		cancel()
		close(release)
		<-done
		if _, err := b.wait(running); err != nil {
			t.Errorf("request in the last run: %v, want its answer", err)
		}
		if _, err := b.wait(queued); !errors.Is(err, ErrClosed) {
			t.Errorf("request left in the queue: %v, want ErrClosed", err)
		}
		if err := b.submit(newRequest(context.Background(), 1)); !errors.Is(err, ErrClosed) {
			t.Errorf("request after stop: %v, want ErrClosed", err)
		}
	})
}
