package storetest

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// BenchHeartbeat is the store's side of one agent heartbeat from a fleet
// of 1,000 ready nodes, called from many goroutines at once as the API's
// handlers call it (Heartbeat, then NodeWork for the answer): ns/op is the
// store's cost per heartbeat, and heartbeats/s what it sustains. Every
// backend's package runs it over its own empty store st.
func BenchHeartbeat(b *testing.B, st *sqlstore.Store) {
	ctx := context.Background()
	const nodes = 1000
	for i := range nodes {
		n := store.Node{Name: fmt.Sprintf("n%04d", i), Pool: "cpu", Priority: spec.PrioritySpot, InstanceType: "local-small"}
		if err := st.CreateNode(ctx, n); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Heartbeat(ctx, n.Name, true); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	b.SetParallelism(50)
	b.ResetTimer()
	t0 := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			name := fmt.Sprintf("n%04d", next.Add(1)%nodes)
			if _, err := st.Heartbeat(ctx, name, true); err != nil {
				b.Error(err)
				return
			}
			if _, err := st.NodeWork(ctx, name); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "heartbeats/s")
}

// BenchBatchLedger is the store's side of a BatchInference at scale: each
// op queues 10,000 items (the apply's first page, then the listing's pages
// of 1,000), then leases them 256 at a time as workers do and acks each
// lease, then reads the batch's counts once. It reports the wall time an
// item of each phase took (add-µs/item, lease+ack-µs/item), and for an
// in-process backend (SQLite) the benchmark process's CPU time too
// (add-cpu-µs/item, lease+ack-cpu-µs/item): that is where the control
// plane's per-item cost is.
func BenchBatchLedger(b *testing.B, st *sqlstore.Store) {
	ctx := context.Background()
	const items, page, lease = 10_000, 1_000, 256
	doc := batchDoc(b, "bench", 3)
	all := inputs(items)
	var addWall, ackWall, addCPU, ackCPU time.Duration
	for i := 0; b.Loop(); i++ {
		doc.Metadata.Name = fmt.Sprintf("bench-%d", i)
		c0, t0 := cpuTime(), time.Now()
		if _, err := st.ApplyBatch(ctx, doc, all[:page]); err != nil {
			b.Fatal(err)
		}
		for p := page; p < items; p += page {
			if _, err := st.AddBatchItems(ctx, doc.Metadata.Name, all[p:p+page]); err != nil {
				b.Fatal(err)
			}
		}
		if err := st.EndBatchListing(ctx, doc.Metadata.Name); err != nil {
			b.Fatal(err)
		}
		c1, t1 := cpuTime(), time.Now()
		done := 0
		for {
			got, err := st.LeaseBatchItems(ctx, doc.Metadata.Name, "w1", lease, time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			if len(got) == 0 {
				break
			}
			n, err := st.AckBatchItems(ctx, doc.Metadata.Name, ids(got))
			if err != nil {
				b.Fatal(err)
			}
			done += n
		}
		c2, t2 := cpuTime(), time.Now()
		addWall, ackWall = addWall+t1.Sub(t0), ackWall+t2.Sub(t1)
		addCPU, ackCPU = addCPU+c1-c0, ackCPU+c2-c1
		got, err := st.GetBatch(ctx, doc.Metadata.Name)
		if err != nil {
			b.Fatal(err)
		}
		if done != items || got.Counts.Done != items || got.Counts.Total != items {
			b.Fatalf("acked %d, counts %+v; want %d done of %d", done, got.Counts, items, items)
		}
	}
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N*items) }
	b.ReportMetric(per(addWall), "add-µs/item")
	b.ReportMetric(per(ackWall), "lease+ack-µs/item")
	b.ReportMetric(per(addCPU), "add-cpu-µs/item")
	b.ReportMetric(per(ackCPU), "lease+ack-cpu-µs/item")
}

// cpuTime is the process's CPU time so far, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
