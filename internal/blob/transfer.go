package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/bmatcuk/doublestar/v4"
	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"golang.org/x/sync/errgroup"
)

// Object describes one stored object. Key is relative to the listed location.
type Object struct {
	Key     string    `json:"key"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"modTime"`
}

// transfers is how many objects move at once in one call. Enough to hide the
// per-request latency of a remote store without opening hundreds of files.
const transfers = 8

// UploadGlob uploads each regular file under dir matching pattern (doublestar
// syntax, relative to dir, e.g. "**/*.pt") to location plus its path relative
// to dir, and returns the locations written, sorted. No match is not an
// error. A dir that does not exist is (IsNotExist reports it).
func (s *Store) UploadGlob(ctx context.Context, dir, pattern, location string) ([]string, error) {
	written, err := s.uploadGlob(ctx, dir, pattern, location)
	return written, s.explain(location, err)
}

func (s *Store) uploadGlob(ctx context.Context, dir, pattern, location string) ([]string, error) {
	if pattern == "" || strings.HasPrefix(pattern, "/") || hasDotDot(pattern) {
		return nil, fmt.Errorf("upload pattern %q: want a pattern relative to %s with no .. element, such as **/*.pt", pattern, dir)
	}
	if !doublestar.ValidatePattern(pattern) {
		return nil, fmt.Errorf("upload pattern %q: %w", pattern, doublestar.ErrBadPattern)
	}
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("upload %s: %w", dir, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("upload %s: not a directory", dir)
	}
	matches, err := doublestar.Glob(os.DirFS(dir), pattern, doublestar.WithFilesOnly(), doublestar.WithFailOnIOErrors())
	if err != nil {
		return nil, fmt.Errorf("upload %s/%s: %w", dir, pattern, err)
	}
	var rels []string
	for _, m := range matches {
		// WithFilesOnly keeps symlinks to files and special files; only
		// regular files (through any symlink) have content to upload.
		fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(m)))
		if err != nil {
			return nil, fmt.Errorf("upload %s: %w", m, err)
		}
		if fi.Mode().IsRegular() {
			rels = append(rels, m)
		}
	}
	sort.Strings(rels)
	if len(rels) == 0 {
		return []string{}, nil
	}

	r, err := s.resolve(location)
	if err != nil {
		return nil, err
	}
	prefix := dirKey(r.key)
	b, err := s.root(ctx, r)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	if err := uploadFiles(ctx, b, dir, rels, prefix, s.transfers); err != nil {
		return nil, err
	}
	written := make([]string, len(rels))
	for i, rel := range rels {
		written[i] = s.Join(location, rel)
	}
	return written, nil
}

// UploadFile uploads the local file at path to location, which names the
// object itself.
func (s *Store) UploadFile(ctx context.Context, path, location string) error {
	return s.explain(location, s.uploadFile(ctx, path, location))
}

func (s *Store) uploadFile(ctx context.Context, path, location string) error {
	r, err := s.objectRef(location)
	if err != nil {
		return err
	}
	b, err := s.root(ctx, r)
	if err != nil {
		return err
	}
	defer b.Close()
	return uploadFile(ctx, b, path, r.key)
}

// Download copies one object to the local file path, creating parent
// directories. If location ends in "/", it copies every object under that
// prefix into the directory path instead; an object key that would land
// outside path is an error, and nothing is written then.
func (s *Store) Download(ctx context.Context, location, path string) error {
	return s.explain(location, s.download(ctx, location, path))
}

func (s *Store) download(ctx context.Context, location, path string) error {
	if location != "" && !endsInSlash(location) {
		r, err := s.objectRef(location)
		if err != nil {
			return err
		}
		b, err := s.root(ctx, r)
		if err != nil {
			return err
		}
		defer b.Close()
		return downloadFile(ctx, b, r.key, path)
	}
	r, err := s.resolve(location)
	if err != nil {
		return err
	}
	b, err := s.root(ctx, r)
	if err != nil {
		return err
	}
	defer b.Close()
	objs, err := listObjects(ctx, b, r, dirKey(r.key))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return err
	}
	return downloadAll(ctx, b, dirKey(r.key), objs, path)
}

// ReadAll returns the content of the object at location.
func (s *Store) ReadAll(ctx context.Context, location string) ([]byte, error) {
	data, err := s.readAll(ctx, location)
	return data, s.explain(location, err)
}

func (s *Store) readAll(ctx context.Context, location string) ([]byte, error) {
	r, err := s.objectRef(location)
	if err != nil {
		return nil, err
	}
	b, err := s.root(ctx, r)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	data, err := b.ReadAll(ctx, r.key)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", location, err)
	}
	return data, nil
}

// List returns every object under location, which is taken as a directory,
// recursively, in key order. A location with nothing under it lists empty.
func (s *Store) List(ctx context.Context, location string) ([]Object, error) {
	objs, err := s.list(ctx, location)
	return objs, s.explain(location, err)
}

func (s *Store) list(ctx context.Context, location string) ([]Object, error) {
	r, err := s.resolve(location)
	if err != nil {
		return nil, err
	}
	b, err := s.root(ctx, r)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	prefix := dirKey(r.key)
	objs, err := listObjects(ctx, b, r, prefix)
	if err != nil {
		return nil, err
	}
	for i := range objs {
		objs[i].Key = strings.TrimPrefix(objs[i].Key, prefix)
	}
	return objs, nil
}

// ListPages lists the objects under location like List, handing them to
// page a page at a time (up to size objects; 1,000 when size is 0) in
// key order, so that a caller can act on a large prefix as it is listed.
// An error from page ends the listing and is returned.
func (s *Store) ListPages(ctx context.Context, location string, size int, page func([]Object) error) error {
	r, err := s.resolve(location)
	if err != nil {
		return s.explain(location, err)
	}
	b, err := s.root(ctx, r)
	if err != nil {
		return s.explain(location, err)
	}
	defer b.Close()
	if size <= 0 {
		size = 1000
	}
	prefix := dirKey(r.key)
	token := blob.FirstPageToken
	for len(token) > 0 {
		objs, next, err := b.ListPage(ctx, token, size, &blob.ListOptions{Prefix: prefix})
		if err != nil {
			return s.explain(location, fmt.Errorf("list %s: %w", r.with(prefix).url(), err))
		}
		out := make([]Object, 0, len(objs))
		for _, o := range objs {
			if o.IsDir || strings.HasSuffix(o.Key, "/") || (r.scheme == fileblob.Scheme && fileTempRE.MatchString(o.Key)) {
				continue // as in listObjects
			}
			out = append(out, Object{Key: strings.TrimPrefix(o.Key, prefix), Size: o.Size, ModTime: o.ModTime})
		}
		if len(out) > 0 {
			if err := page(out); err != nil {
				return err
			}
		}
		token = next
	}
	return nil
}

// objectRef resolves a location that must name a single object.
func (s *Store) objectRef(location string) (ref, error) {
	r, err := s.resolve(location)
	if err != nil {
		return ref{}, err
	}
	if r.key == "" || strings.HasSuffix(r.key, "/") || endsInSlash(location) {
		return ref{}, fmt.Errorf("blob location %q names a directory, want an object", location)
	}
	return r, nil
}

// endsInSlash reports whether location, less a URL's query, ends in "/":
// whether it names a directory.
func endsInSlash(location string) bool {
	if hasScheme(location) {
		location, _, _ = strings.Cut(location, "?")
	}
	return strings.HasSuffix(location, "/")
}

// uploadFiles uploads dir/rel to prefix+rel for each rel, n at a time.
func uploadFiles(ctx context.Context, b *blob.Bucket, dir string, rels []string, prefix string, n int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(n)
	for _, rel := range rels {
		g.Go(func() error {
			return uploadFile(ctx, b, filepath.Join(dir, filepath.FromSlash(rel)), prefix+rel)
		})
	}
	return g.Wait()
}

// uploadFile writes the local file to key.
func uploadFile(ctx context.Context, b *blob.Bucket, file, key string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("upload %s: %w", file, err)
	}
	defer f.Close()
	if err := write(ctx, b, key, f); err != nil {
		return fmt.Errorf("upload %s: %w", file, err)
	}
	return nil
}

// write stores what r yields at key. The write is cancelled if reading r
// fails, so a partial object is never committed: fileblob renames its
// temporary file, and a cloud store commits the object (completes the
// multipart upload, commits the block list, finalizes the upload), only
// when Close sees a live context. The driver reads r itself where it can
// (Bucket.Upload), streaming in parts without a copy through a pipe.
func write(ctx context.Context, b *blob.Bucket, key string, r io.Reader) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	return b.Upload(wctx, key, cancelOnError{r, cancel}, &blob.WriterOptions{ContentType: contentType(key)})
}

// cancelOnError cancels the write it feeds as soon as reading fails, before
// the driver sees the error and before the writer is closed.
type cancelOnError struct {
	r      io.Reader
	cancel context.CancelFunc
}

func (c cancelOnError) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		c.cancel()
	}
	return n, err
}

func contentType(key string) string {
	if t := mime.TypeByExtension(path.Ext(key)); t != "" {
		return t
	}
	return "application/octet-stream"
}

// downloadAll copies objs, whose keys start with prefix, under dir. Every key
// is checked before anything is written.
func downloadAll(ctx context.Context, b *blob.Bucket, prefix string, objs []Object, dir string) error {
	targets := make([]string, len(objs))
	for i, o := range objs {
		t, err := LocalPath(dir, strings.TrimPrefix(o.Key, prefix))
		if err != nil {
			return err
		}
		targets[i] = t
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(transfers)
	for i, o := range objs {
		g.Go(func() error { return downloadFile(ctx, b, o.Key, targets[i]) })
	}
	return g.Wait()
}

// ErrEscape is returned when an object key would be written outside the
// directory it is downloaded into.
var ErrEscape = errors.New("object key leaves the target directory")

// LocalPath maps a relative key to a path under dir, refusing keys that
// would escape it.
func LocalPath(dir, rel string) (string, error) {
	p := filepath.FromSlash(rel)
	if rel == "" || strings.HasSuffix(rel, "/") || !filepath.IsLocal(p) || hasDotDot(rel) {
		return "", fmt.Errorf("download key %q: %w", rel, ErrEscape)
	}
	return filepath.Join(dir, p), nil
}

// hasDotDot reports whether a slash-separated path has a ".." element.
func hasDotDot(p string) bool {
	for _, e := range strings.Split(p, "/") {
		if e == ".." {
			return true
		}
	}
	return false
}

// downloadFile copies key to the local file (see WriteFile).
func downloadFile(ctx context.Context, b *blob.Bucket, key, file string) error {
	return WriteFile(file, func(w io.Writer) error {
		if err := b.Download(ctx, key, w, nil); err != nil {
			return fmt.Errorf("download %s: %w", key, err)
		}
		return nil
	})
}

// WriteFile replaces file with what fill writes, atomically: the content
// goes to a temporary file in the same directory (created with its
// parents) that is renamed over file only once fill and Close succeed.
// On failure the temporary file is removed and file is left as it was.
func WriteFile(file string, fill func(io.Writer) error) (err error) {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// fileTempRE matches the temporary files fileblob writes next to an object
// (key + "." + hex nanoseconds + ".tmp"). A write cut off by a crash leaves
// one behind; it is not an object.
var fileTempRE = regexp.MustCompile(`\.[0-9a-f]{8,16}\.tmp$`)

// listObjects returns every object whose key starts with prefix, with full
// keys, in key order.
func listObjects(ctx context.Context, b *blob.Bucket, r ref, prefix string) ([]Object, error) {
	it := b.List(&blob.ListOptions{Prefix: prefix})
	objs := []Object{}
	for {
		o, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", r.with(prefix).url(), err)
		}
		if o.IsDir || (r.scheme == fileblob.Scheme && fileTempRE.MatchString(o.Key)) {
			continue
		}
		if strings.HasSuffix(o.Key, "/") {
			// A zero-byte directory marker that a cloud console or another
			// tool made: a cloud store has no directories, and no file
			// could be downloaded under this name.
			continue
		}
		objs = append(objs, Object{Key: o.Key, Size: o.Size, ModTime: o.ModTime})
	}
}

// Write stores what r yields as the object at location. Nothing is stored
// if reading r fails.
func (s *Store) Write(ctx context.Context, location string, r io.Reader) error {
	return s.explain(location, s.writeObject(ctx, location, r))
}

func (s *Store) writeObject(ctx context.Context, location string, r io.Reader) error {
	ref, err := s.objectRef(location)
	if err != nil {
		return err
	}
	b, err := s.root(ctx, ref)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := write(ctx, b, ref.key, r); err != nil {
		return fmt.Errorf("write %s: %w", location, err)
	}
	return nil
}

// Copy streams the object at location to w.
func (s *Store) Copy(ctx context.Context, w io.Writer, location string) error {
	return s.explain(location, s.copyTo(ctx, w, location))
}

func (s *Store) copyTo(ctx context.Context, w io.Writer, location string) error {
	ref, err := s.objectRef(location)
	if err != nil {
		return err
	}
	b, err := s.root(ctx, ref)
	if err != nil {
		return err
	}
	defer b.Close()
	rd, err := b.NewReader(ctx, ref.key, nil)
	if err != nil {
		return fmt.Errorf("read %s: %w", location, err)
	}
	defer rd.Close()
	_, err = io.Copy(w, rd)
	return err
}
