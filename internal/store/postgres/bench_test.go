package postgres_test

import (
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store/postgres"
	"github.com/spotml/spotml/internal/store/sqlstore"
	"github.com/spotml/spotml/internal/store/storetest"
)

// benchStore is a store over an empty database of the test cluster for
// one benchmark, closed after it.
func benchStore(b *testing.B) *sqlstore.Store {
	st, err := postgres.Open(b.Context(), cluster.DB(b), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st
}

// BenchmarkHeartbeat: storetest.BenchHeartbeat over PostgreSQL.
func BenchmarkHeartbeat(b *testing.B) { storetest.BenchHeartbeat(b, benchStore(b)) }

// BenchmarkBatchLedger: storetest.BenchBatchLedger over PostgreSQL (its
// CPU figures are the client's alone: the server's work is elsewhere).
func BenchmarkBatchLedger(b *testing.B) { storetest.BenchBatchLedger(b, benchStore(b)) }
