package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"

	"golang.org/x/sync/errgroup"

	"github.com/spotml/spotml/internal/blob/disk"
)

// Checkpoint keeps a local directory in blob storage.
//
// Each Save uploads a full snapshot as a new generation under
// location/gen-<n>/, then writes location/LATEST naming it, then deletes the
// other generations. Each step starts only once the one before is durable
// (on file:// every object is synced, with its directory, before its write
// returns): LATEST never names a generation that a power cut could leave
// empty or short, and the previous generation is deleted only once LATEST
// naming the new one would survive. LATEST is the commit point: a Save cut
// off before it leaves the previous generation in place and still named, and
// the next Save removes the leftovers. Restore reads LATEST and nothing else
// decides which generation is current.
//
// One process saves a given location at a time; Restore may run alongside a
// Save elsewhere and retries if the generation it was reading is deleted.
// Only regular files are kept (symlinks to files are followed and stored as
// copies); empty directories, modes and other links are not.
type Checkpoint struct {
	store    *Store
	location string
	dir      string
}

const (
	latestName    = "LATEST"
	stagingPrefix = ".spotml-restore-"
	// restoreTries bounds how often Restore follows a LATEST that moved on
	// while it was downloading.
	restoreTries = 3
)

var genRE = regexp.MustCompile(`^gen-([0-9]{1,18})$`)

// Checkpoint returns a Checkpoint that keeps dir at location, a directory.
// Nothing is checked until Save or Restore.
func (s *Store) Checkpoint(location, dir string) *Checkpoint {
	return &Checkpoint{store: s, location: location, dir: dir}
}

// Save uploads the directory as a new generation, makes it the latest, and
// deletes older ones. It returns the number of files saved. If the error
// says that removing older generations failed, the new generation is saved
// and current.
func (c *Checkpoint) Save(ctx context.Context) (files int, err error) {
	files, err = c.save(ctx)
	return files, c.store.explain(c.location, err)
}

func (c *Checkpoint) save(ctx context.Context) (files int, err error) {
	r, err := c.store.resolve(c.location)
	if err != nil {
		return 0, err
	}
	prefix := dirKey(r.key)
	b, err := c.store.root(ctx, r)
	if err != nil {
		return 0, err
	}
	defer b.Close()

	rels, err := localFiles(c.dir)
	if err != nil {
		return 0, fmt.Errorf("checkpoint %s: %w", c.dir, err)
	}
	latest, err := readLatest(ctx, b, prefix)
	if err != nil {
		return 0, fmt.Errorf("checkpoint %s: %w", c.location, err)
	}
	gens, err := generations(ctx, b, prefix)
	if err != nil {
		return 0, fmt.Errorf("checkpoint %s: %w", c.location, err)
	}
	// Past every generation seen, not just LATEST, so that files left by an
	// interrupted Save never mix into the new snapshot.
	next := genNumber(latest)
	for _, g := range gens {
		next = max(next, genNumber(g))
	}
	gen := "gen-" + strconv.FormatInt(next+1, 10)

	// Durable once uploadFiles returns: every object write syncs.
	if err := uploadFiles(ctx, b, c.dir, rels, prefix+gen+"/", c.store.transfers); err != nil {
		return 0, fmt.Errorf("checkpoint %s: %w", c.location, err)
	}
	if err := b.WriteAll(ctx, prefix+latestName, []byte(gen+"\n"), &blob.WriterOptions{ContentType: "text/plain"}); err != nil {
		return 0, fmt.Errorf("checkpoint %s: commit %s: %w", c.location, gen, err)
	}
	if err := prune(ctx, b, c.store.disk, r, prefix, gen); err != nil {
		return len(rels), fmt.Errorf("checkpoint %s: saved %s, but removing older generations failed: %w", c.location, gen, err)
	}
	return len(rels), nil
}

// Restore replaces the directory's contents with the latest generation and
// reports whether there was one. Without a checkpoint the directory is left
// alone. The generation is downloaded beside the existing contents first, so
// a failed download leaves the directory as it was.
func (c *Checkpoint) Restore(ctx context.Context) (bool, error) {
	ok, err := c.restoreLatest(ctx)
	return ok, c.store.explain(c.location, err)
}

func (c *Checkpoint) restoreLatest(ctx context.Context) (bool, error) {
	r, err := c.store.resolve(c.location)
	if err != nil {
		return false, err
	}
	prefix := dirKey(r.key)
	b, err := c.store.root(ctx, r)
	if err != nil {
		return false, err
	}
	defer b.Close()

	for try := 1; ; try++ {
		gen, err := readLatest(ctx, b, prefix)
		if err != nil {
			return false, fmt.Errorf("checkpoint %s: %w", c.location, err)
		}
		if gen == "" {
			return false, nil
		}
		err = c.restore(ctx, b, r, prefix+gen+"/")
		if err == nil {
			return true, nil
		}
		if IsNotExist(err) && try < restoreTries {
			// A Save that committed meanwhile deletes the generation we were
			// reading; follow LATEST to the new one.
			if now, lerr := readLatest(ctx, b, prefix); lerr == nil && now != gen {
				continue
			}
		}
		return false, fmt.Errorf("checkpoint %s: restore %s: %w", c.location, gen, err)
	}
}

// restore downloads the objects under genPrefix into a staging directory
// inside c.dir (inside, so that the final renames stay on one file system
// even when c.dir is a mount point), then swaps them in.
func (c *Checkpoint) restore(ctx context.Context, b *blob.Bucket, r ref, genPrefix string) error {
	objs, err := listObjects(ctx, b, r, genPrefix)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return err
	}
	staging, err := os.MkdirTemp(c.dir, stagingPrefix)
	if err != nil {
		return err
	}
	defer os.RemoveAll(staging)
	if err := downloadAll(ctx, b, genPrefix, objs, staging); err != nil {
		return err
	}

	old, err := os.ReadDir(c.dir)
	if err != nil {
		return err
	}
	for _, e := range old {
		if e.Name() == filepath.Base(staging) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(c.dir, e.Name())); err != nil {
			return err
		}
	}
	restored, err := os.ReadDir(staging)
	if err != nil {
		return err
	}
	for _, e := range restored {
		if err := os.Rename(filepath.Join(staging, e.Name()), filepath.Join(c.dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// localFiles returns the slash-separated paths of the files under dir to
// save, sorted: regular files and symlinks to regular files, skipping the
// staging directories of an interrupted Restore.
func localFiles(dir string) ([]string, error) {
	var rels []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			if !d.IsDir() {
				return fmt.Errorf("%s is not a directory", dir)
			}
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if !strings.Contains(rel, "/") && strings.HasPrefix(d.Name(), stagingPrefix) {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			fi, err := os.Stat(p)
			if err != nil || !fi.Mode().IsRegular() {
				return nil // dangling, or a link to a directory (which could loop)
			}
		} else if !d.Type().IsRegular() {
			return nil
		}
		rels = append(rels, rel)
		return nil
	})
	sort.Strings(rels)
	return rels, err
}

// readLatest returns the generation LATEST names, or "" if there is none.
func readLatest(ctx context.Context, b *blob.Bucket, prefix string) (string, error) {
	data, err := b.ReadAll(ctx, prefix+latestName)
	if IsNotExist(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	gen := strings.TrimSpace(string(data))
	if !genRE.MatchString(gen) {
		return "", fmt.Errorf("%s holds %q, not a generation name; delete it to start over", latestName, gen)
	}
	return gen, nil
}

// generations returns the names of the gen-<n> directories under prefix.
func generations(ctx context.Context, b *blob.Bucket, prefix string) ([]string, error) {
	var gens []string
	it := b.List(&blob.ListOptions{Prefix: prefix, Delimiter: "/"})
	for {
		o, err := it.Next(ctx)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return gens, nil
			}
			return nil, err
		}
		name := strings.TrimSuffix(strings.TrimPrefix(o.Key, prefix), "/")
		if o.IsDir && genRE.MatchString(name) {
			gens = append(gens, name)
		}
	}
}

// genNumber returns n for "gen-<n>" and 0 for anything else.
func genNumber(gen string) int64 {
	m := genRE.FindStringSubmatch(gen)
	if m == nil {
		return 0
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// prune deletes every generation under prefix except keep. Other objects
// under prefix are left alone.
func prune(ctx context.Context, b *blob.Bucket, d disk.FS, r ref, prefix, keep string) error {
	if r.scheme == fileblob.Scheme {
		// Removing the directories also removes the empty subdirectories and
		// any temporary files a cut-off write left, which deleting the
		// listed objects one by one would not.
		dir := r.with(prefix).filePath()
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		// The removals need not be durable: a generation that comes back
		// after a power cut is not named by LATEST, and the next Save
		// removes it again. So no directory sync, which the eviction notice
		// has little time for.
		for _, e := range entries {
			if e.IsDir() && genRE.MatchString(e.Name()) && e.Name() != keep {
				if err := d.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
					return err
				}
			}
		}
		return nil
	}
	// A cloud store has no directories: a generation is gone once its
	// objects are. They are deleted several at a time, as they were
	// uploaded, since each delete is a round trip.
	objs, err := listObjects(ctx, b, r, prefix)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(transfers)
	for _, o := range objs {
		gen, _, nested := strings.Cut(strings.TrimPrefix(o.Key, prefix), "/")
		if !nested || gen == keep || !genRE.MatchString(gen) {
			continue
		}
		g.Go(func() error {
			if err := b.Delete(gctx, o.Key); err != nil && !IsNotExist(err) {
				return err
			}
			return nil
		})
	}
	return g.Wait()
}
