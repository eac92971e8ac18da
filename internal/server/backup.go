package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spotml/spotml/internal/api"
)

// Backuper writes a consistent copy of a running store to a new file
// (the SQLite store's Backup).
type Backuper interface {
	Backup(ctx context.Context, path string) error
}

// backup answers with a snapshot of the store, taken now while everything
// keeps running: written to a temporary file beside the data (the store
// makes it consistent and checks it, see store.Backup), then streamed with
// its length and SHA-256 so that the client can tell a cut-off or damaged
// copy from a whole one, then removed. Admin only: the copy holds every secret's hash and every spec.
func (s *Server) backup(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Backup == nil {
		return fmt.Errorf("backup: %w (a PostgreSQL store is backed up with pg_dump: see the README, Backups)", errNotImplemented)
	}
	dir, err := os.MkdirTemp(s.cfg.BackupDir, ".backup-")
	if err != nil {
		return fmt.Errorf("backup: temporary directory: %w", err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "spotml.db")
	if err := s.cfg.Backup.Backup(r.Context(), path); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	// Hashed first, so that the hash can go before the body: the client
	// checks that the file it wrote is the one made here.
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	s.cfg.Log.Info("backup taken", "bytes", size, "by", caller(r).name)
	w.Header().Set("Content-Type", api.BackupContentType)
	w.Header().Set(api.BackupSHA256Header, hex.EncodeToString(h.Sum(nil)))
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.Header().Set("Content-Disposition", `attachment; filename="spotml-backup.db"`)
	io.Copy(w, f)
	return nil
}
