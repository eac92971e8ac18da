package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
)

// Backup writes a consistent copy of the whole store to path, a file that
// must not exist yet, while the store stays in use.
//
// It is SQLite's VACUUM INTO, a reader like any other: one read transaction
// sees one commit, so the copy is consistent, and in WAL mode it holds no
// writer up (a heartbeat or an assignment commits meanwhile; the copy does
// not see it). The copy is checked (CheckBackup) before Backup returns.
// It is a compact database on its own, with no -wal
// file: a store that Open can use as it is. VACUUM INTO does not sync what
// it writes, so Backup syncs the file before it returns; a caller that
// renames it still syncs the directory.
func (s *Store) Backup(ctx context.Context, path string) error {
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("backup to %s: the file exists; VACUUM INTO writes a new file only", path)
	}
	// A connection of its own: the read pool is query_only, which refuses
	// VACUUM INTO, and the one writer connection must stay free.
	var seq int
	var name, file string
	if err := s.rdb.QueryRowContext(ctx, `SELECT seq, name, file FROM pragma_database_list WHERE name = 'main'`).Scan(&seq, &name, &file); err != nil {
		return fmt.Errorf("backup: find the database file: %w", err)
	}
	db, err := sql.Open("sqlite", "file:"+file+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `VACUUM INTO ?`, path); err != nil {
		os.Remove(path)
		return fmt.Errorf("backup to %s: %w", path, err)
	}
	f, err := os.Open(path)
	if err == nil {
		err = errors.Join(f.Sync(), f.Close())
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("backup to %s: sync: %w", path, err)
	}
	if _, err := CheckBackup(ctx, path); err != nil {
		os.Remove(path)
		return fmt.Errorf("backup: the copy does not check out: %w", err)
	}
	return nil
}

// CheckBackup says whether the file at path is a spotml store that this
// spotml can open: an intact SQLite database (quick_check) with a schema
// version no newer than its own. It returns that version. The file is
// opened read-only and left as it was.
func CheckBackup(ctx context.Context, path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	head := make([]byte, 16)
	_, err = f.Read(head)
	f.Close()
	if err != nil || string(head) != "SQLite format 3\x00" {
		return 0, fmt.Errorf("%s is not a SQLite database, so not a spotml backup (spotml backup FILE makes one)", path)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=query_only(1)")
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var check string
	if err := db.QueryRowContext(ctx, `PRAGMA quick_check`).Scan(&check); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if check != "ok" {
		return 0, fmt.Errorf("%s is damaged (SQLite quick_check: %s); use another backup", path, check)
	}
	var v int
	err = db.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
	if err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			err = errors.New("no schema version recorded")
		}
		return 0, fmt.Errorf("%s is a SQLite database but not a spotml store (%v)", path, err)
	}
	if v < 1 || v > len(migrations) {
		return 0, fmt.Errorf("%s is a spotml store of schema version %d, which this spotml (versions 1 to %d) cannot open; restore it with the spotml that made it, or a newer one", path, v, len(migrations))
	}
	return v, nil
}
