package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/client"
)

// Backups of the SQLite store. The snapshot is taken and checked by the
// running control plane (GET /backup: SQLite's VACUUM INTO, one read
// transaction, so it is consistent and holds no writer up) and streamed to
// the CLI, which keeps it only once it is whole (length and SHA-256 as the
// server sent them) and on disk. Like every client command it speaks the
// API only; spotml restore (restore.go) opens the file itself.

func newBackupCmd(g *globals, stdout, stderr io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "backup FILE",
		Short: "Save a consistent copy of the running control plane's store (SQLite) to FILE, online",
		Long: `Save a consistent copy of the running control plane's store to FILE while
everything keeps running. FILE is written in full, checked and synced to disk
before it replaces an older FILE. Needs an admin token. The blob store (for
spotml up: DATA/blobs) is not in FILE: copy it after the backup (see README).`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			size, sum, err := backup(c.Context(), cl, args[0], stderr)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "backup %s: %s, SHA-256 %s\n", args[0], sizeString(size), sum)
			return nil
		},
	}
}

// backup downloads a snapshot into file through a temporary file beside
// it: checked against the server's length and SHA-256, synced, then
// renamed over file and the directory synced. A cut-off or damaged
// download leaves file as it was.
func backup(ctx context.Context, cl *client.Client, file string, progress io.Writer) (size int64, sum string, err error) {
	dir := filepath.Dir(file)
	if fi, err := os.Stat(file); err == nil && fi.IsDir() {
		return 0, "", fmt.Errorf("backup %s: a directory; name the file to write, e.g. %s", file, filepath.Join(file, "spotml-"+time.Now().Format("20060102-150405")+".db"))
	}
	body, err := cl.Download(ctx, api.Prefix+"/backup")
	if err != nil {
		return 0, "", fmt.Errorf("backup: %w", err)
	}
	defer body.Close()
	want := body.Header.Get(api.BackupSHA256Header)
	if want == "" {
		return 0, "", fmt.Errorf("backup: the server sent no %s header; is it a spotml of this version?", api.BackupSHA256Header)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(file)+".*.tmp")
	if err != nil {
		return 0, "", fmt.Errorf("backup %s: %w", file, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bar := newTransferBar(progress, "backup", body.Size)
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), bar.reader(body))
	if err != nil {
		return 0, "", fmt.Errorf("backup: %w", err)
	}
	if body.Size >= 0 && n != body.Size {
		return 0, "", fmt.Errorf("backup: got %d of %d bytes; try again", n, body.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return 0, "", fmt.Errorf("backup: the file's SHA-256 is %s, the server's %s: it was damaged on the way; try again", got, want)
	}
	if err := tmp.Sync(); err != nil {
		return 0, "", fmt.Errorf("backup %s: %w", file, err)
	}
	if err := tmp.Close(); err != nil {
		return 0, "", fmt.Errorf("backup %s: %w", file, err)
	}
	bar.finish()
	if err := os.Rename(tmp.Name(), file); err != nil {
		return 0, "", fmt.Errorf("backup %s: %w", file, err)
	}
	if err := syncDir(dir); err != nil {
		return 0, "", fmt.Errorf("backup %s: %w", file, err)
	}
	return n, want, nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
