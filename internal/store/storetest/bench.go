package storetest

import (
	"context"
	"fmt"
	"sync/atomic"
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
