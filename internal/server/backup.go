package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
)

// Backuper writes a consistent copy of a running store to a new file
// (the SQLite store's Backup).
type Backuper interface {
	Backup(ctx context.Context, path string) error
}

// BackupContentType is the media type of GET /backup's answer: a SQLite
// database file, a spotml store as it is.
const BackupContentType = "application/vnd.sqlite3"

// backup answers with a snapshot of the store, taken now while everything
// keeps running: written to a temporary file beside the data (the store
// makes it consistent, see store.Backup), then streamed with its length
// so that the client can tell a cut-off copy from a whole one, then
// removed. Admin only: the copy holds every secret's hash and every spec.
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
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	s.cfg.Log.Info("backup taken", "bytes", fi.Size(), "by", caller(r).name)
	w.Header().Set("Content-Type", BackupContentType)
	w.Header().Set("Content-Length", strconv.FormatInt(fi.Size(), 10))
	w.Header().Set("Content-Disposition", `attachment; filename="spotml-backup.db"`)
	io.Copy(w, f)
	return nil
}
