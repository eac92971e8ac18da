package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/spotml/spotml/internal/store"
)

// Restore is a local operation on a data directory, like spotml up
// itself: it is the one CLI command besides those that run a control
// plane that opens a store.

// storeFile is the store's file name in a data directory.
const storeFile = "spotml.db"

func newRestoreCmd(g *globals, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "restore FILE --data DIR",
		Short: "Make DIR a data directory whose store is the backup FILE; then run spotml up (or server) --data DIR",
		Long: `Restore a backup made by spotml backup into a new data directory: FILE is
checked (an intact spotml store of a schema this spotml can open) and copied
to DIR/spotml.db. DIR must not hold a store already. Nothing is started:
run spotml up --data DIR afterwards. Nodes the backup names as running are
found lost there and their work is requeued.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if !c.Flags().Changed("data") && !c.Root().PersistentFlags().Changed("data") {
				return errors.New("--data: name the data directory to restore into (a new or empty one), e.g. spotml restore " + args[0] + " --data ./spotml-restored")
			}
			v, err := restore(c.Context(), args[0], g.data)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "restored %s into %s (store schema version %d); start it with: spotml up --data %s\n", args[0], g.data, v, g.data)
			return nil
		},
	}
}

// restore copies the backup file into data as its store. It refuses a data
// directory that has a store (or its write-ahead log), and a file that is
// not a store this spotml can open; either way data is left as it was.
func restore(ctx context.Context, file, data string) (version int, err error) {
	if _, err := os.Stat(file); err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	for _, name := range []string{storeFile, storeFile + "-wal"} {
		if _, err := os.Stat(filepath.Join(data, name)); err == nil {
			return 0, fmt.Errorf("--data %s: holds a store already (%s); restore into a new directory (--data DIR where DIR does not exist or has no %s), or stop the spotml using it and move the directory away first",
				data, filepath.Join(data, name), storeFile)
		}
	}
	if version, err = store.CheckBackup(ctx, file); err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	if err := os.MkdirAll(data, 0o755); err != nil {
		return 0, fmt.Errorf("--data: %w", err)
	}
	src, err := os.Open(file)
	if err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	defer src.Close()
	tmp, err := os.CreateTemp(data, "."+storeFile+".*.tmp")
	if err != nil {
		return 0, fmt.Errorf("--data: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			removeStoreFiles(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, src); err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	// Opened once before it takes the store's name: this applies the
	// migrations a backup of an older spotml needs, so that a copy this
	// spotml cannot use never becomes the directory's store.
	st, err := store.Open(ctx, tmp.Name(), time.Now)
	if err != nil {
		return 0, fmt.Errorf("restore: %s: %w", file, err)
	}
	if err := st.Close(); err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(data, storeFile)); err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	removeStoreFiles(tmp.Name()) // its -shm, if SQLite left one
	return version, syncDir(data)
}

// removeStoreFiles removes a SQLite database file and the files SQLite
// keeps beside it.
func removeStoreFiles(path string) {
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		os.Remove(path + suffix)
	}
}
