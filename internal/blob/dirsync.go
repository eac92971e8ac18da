package blob

import (
	"context"
	"errors"
	"path/filepath"
	"sync"

	"github.com/spotml/spotml/internal/blob/disk"
)

// DirSyncs collects the directory syncs of a run of file-store writes, so
// that a writer of many small objects (a BatchInference worker writes one
// result per input) syncs each directory once per run instead of once per
// object. Each object is still written to a temporary file, synced and
// renamed into place, so it appears whole or not at all; what is put off
// is only making the rename itself durable, which Sync does. A write is
// therefore durable once Sync returns, not when its Close does: call Sync
// before acting on the writes (acknowledging the work they hold). Writes
// to other stores than file:// are not affected.
type DirSyncs struct {
	mu   sync.Mutex
	dirs map[string]disk.FS
}

type dirSyncsKey struct{}

// DeferDirSyncs returns a context under which file-store writes leave
// their directory syncs to the returned DirSyncs.
func DeferDirSyncs(ctx context.Context) (context.Context, *DirSyncs) {
	d := &DirSyncs{dirs: map[string]disk.FS{}}
	return context.WithValue(ctx, dirSyncsKey{}, d), d
}

func deferredDirSyncs(ctx context.Context) *DirSyncs {
	d, _ := ctx.Value(dirSyncsKey{}).(*DirSyncs)
	return d
}

func (d *DirSyncs) add(fs disk.FS, dir string) {
	d.mu.Lock()
	d.dirs[dir] = fs
	d.mu.Unlock()
}

// Sync syncs every directory that a write under the context renamed an
// object into since the last Sync.
func (d *DirSyncs) Sync() error {
	d.mu.Lock()
	dirs := d.dirs
	d.dirs = map[string]disk.FS{}
	d.mu.Unlock()
	var errs []error
	for dir, fs := range dirs {
		if err := fs.SyncDir(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// syncDir syncs the directory of path now, or records it for a DirSyncs
// the write's context carries.
func syncDir(ctx context.Context, fs disk.FS, path string) error {
	dir := filepath.Dir(path)
	if d := deferredDirSyncs(ctx); d != nil {
		d.add(fs, dir)
		return nil
	}
	return fs.SyncDir(dir)
}
