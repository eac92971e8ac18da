package sqlite_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/sqlstore"
	"github.com/spotml/spotml/internal/store/storetest"
)

// benchStore is an empty SQLite store for one benchmark, closed after it.
func benchStore(b *testing.B) *sqlstore.Store {
	st, err := sqlite.Open(b.Context(), filepath.Join(b.TempDir(), "spotml.db"), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st
}

// BenchmarkHeartbeat: storetest.BenchHeartbeat over SQLite.
func BenchmarkHeartbeat(b *testing.B) { storetest.BenchHeartbeat(b, benchStore(b)) }

// BenchmarkBatchLedger: storetest.BenchBatchLedger over SQLite.
func BenchmarkBatchLedger(b *testing.B) { storetest.BenchBatchLedger(b, benchStore(b)) }
