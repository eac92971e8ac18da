package sqlite_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/storetest"
)

// BenchmarkHeartbeat: storetest.BenchHeartbeat over SQLite.
func BenchmarkHeartbeat(b *testing.B) {
	st, err := sqlite.Open(b.Context(), filepath.Join(b.TempDir(), "spotml.db"), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	storetest.BenchHeartbeat(b, st)
}

// BenchmarkBatchLedger: storetest.BenchBatchLedger over SQLite.
func BenchmarkBatchLedger(b *testing.B) {
	st, err := sqlite.Open(b.Context(), filepath.Join(b.TempDir(), "spotml.db"), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	storetest.BenchBatchLedger(b, st)
}
