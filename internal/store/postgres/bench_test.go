package postgres_test

import (
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store/postgres"
	"github.com/spotml/spotml/internal/store/storetest"
)

// BenchmarkHeartbeat: storetest.BenchHeartbeat over PostgreSQL.
func BenchmarkHeartbeat(b *testing.B) {
	st, err := postgres.Open(b.Context(), cluster.DB(b), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	storetest.BenchHeartbeat(b, st)
}

// BenchmarkBatchLedger: storetest.BenchBatchLedger over PostgreSQL (its
// CPU figures are the client's alone: the server's work is elsewhere).
func BenchmarkBatchLedger(b *testing.B) {
	st, err := postgres.Open(b.Context(), cluster.DB(b), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	storetest.BenchBatchLedger(b, st)
}
