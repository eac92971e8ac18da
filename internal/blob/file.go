package blob

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"gocloud.dev/blob"
	"gocloud.dev/blob/driver"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/gcerrors"

	"github.com/spotml/spotml/internal/blob/disk"
)

// fileBucket is the file:// driver. Attributes go to gocloud.dev's
// fileblob; reads, writes and deletes are its own (listing is too, in
// filelist.go). Reads are cheaper (NewRangeReader); writes because fileblob
// renames a written object into place without syncing it or its directory,
// and offers no hook between the last write and the rename to add that. An
// object written here is durable once Close returns: the data is synced
// before the rename makes the name visible, and the directory after it, so a
// power cut leaves either the old object or the whole new one, never an
// empty or short file under the object's name. Deletes sync the directory
// too. All changes go through a disk.FS so that tests can cut the power
// between any two steps.
//
// The bucket is rooted at "/": a key is an absolute path without its
// leading slash.
type fileBucket struct {
	sharedBucket // a fileblob bucket rooted at "/"
	disk         *fileDisk
}

var _ driver.Bucket = (*fileBucket)(nil)

func openFileBucket(d *fileDisk) (*blob.Bucket, error) {
	// Plain files without metadata sidecars, as the store has always kept
	// them; fileblob's own writer is never used.
	fb, err := fileblob.OpenBucket("/", &fileblob.Options{
		NoTempDir: true,
		Metadata:  fileblob.MetadataDontWrite,
	})
	if err != nil {
		return nil, err
	}
	return blob.NewBucket(&fileBucket{sharedBucket: sharedBucket{fb}, disk: d}), nil
}

func (b *fileBucket) Close() error { return b.b.Close() }

func (b *fileBucket) ErrorCode(err error) gcerrors.ErrorCode {
	if errors.Is(err, fs.ErrNotExist) {
		return gcerrors.NotFound
	}
	return gcerrors.Code(err)
}

// path returns the file that holds key: the one fileblob reads it from.
func (b *fileBucket) path(key string) (string, error) {
	if key == "" || strings.HasSuffix(key, ".attrs") {
		return "", fmt.Errorf("file store: key %q cannot be stored as a file: names ending in .attrs are fileblob's metadata files; choose another name", key)
	}
	return filepath.Join("/", escapeKey(key)), nil
}

// NewRangeReader opens the file that holds key. fileblob's own reader
// stats the file, then opens its .attrs sidecar (which this store never
// writes) for a content type nobody reading the bytes asks for, and
// escapes the key in time quadratic in its length: for a BatchInference's
// small inputs that was twice what os.ReadFile pays
// (BenchmarkFileReadSmall). Here: one open (disk.Open) and one fstat; the sidecar,
// for files another fileblob program wrote, is read only if the content
// type is asked for.
func (b *fileBucket) NewRangeReader(ctx context.Context, key string, offset, length int64, opts *driver.ReaderOptions) (driver.Reader, error) {
	path, err := b.path(key)
	if err != nil {
		return nil, err
	}
	f, err := disk.Open(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && fi.IsDir() {
		// A directory is a prefix, not an object, as fileblob has it.
		err = &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
	if err == nil && opts.BeforeRead != nil {
		err = opts.BeforeRead(func(i any) bool {
			p, ok := i.(**os.File)
			if ok {
				*p = f
			}
			return ok
		})
	}
	if err == nil && offset > 0 {
		_, err = f.Seek(offset, io.SeekStart)
	}
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	r := io.Reader(f)
	if length >= 0 {
		r = io.LimitReader(r, length)
	}
	return &fileReader{r: r, f: f, path: path, attrs: driver.ReaderAttributes{ModTime: fi.ModTime(), Size: fi.Size()}}, nil
}

// fileReader is an open file; its content type comes from fileblob's
// sidecar, if there is one, when asked.
type fileReader struct {
	r     io.Reader
	f     *os.File
	path  string
	once  sync.Once
	attrs driver.ReaderAttributes
}

func (r *fileReader) Read(p []byte) (int, error) { return r.r.Read(p) }
func (r *fileReader) Close() error               { return r.f.Close() }

func (r *fileReader) Attributes() *driver.ReaderAttributes {
	r.once.Do(func() { r.attrs.ContentType = sidecarContentType(r.path) })
	return &r.attrs
}

func (r *fileReader) As(i any) bool {
	p, ok := i.(*io.Reader)
	if ok {
		*p = r.r
	}
	return ok
}

// sidecarContentType is the content type fileblob would give the file at
// path: its .attrs sidecar's, or application/octet-stream without one.
func sidecarContentType(path string) string {
	const unknown = "application/octet-stream"
	b, err := os.ReadFile(path + ".attrs")
	if err != nil {
		return unknown
	}
	var xa struct {
		ContentType string `json:"user.content_type"`
	}
	if json.Unmarshal(b, &xa) != nil || xa.ContentType == "" {
		return unknown
	}
	return xa.ContentType
}

func (b *fileBucket) NewTypedWriter(ctx context.Context, key, contentType string, opts *driver.WriterOptions) (driver.Writer, error) {
	if opts.IfNotExist {
		return nil, fmt.Errorf("file store: IfNotExist is not supported")
	}
	path, err := b.path(key)
	if err != nil {
		return nil, err
	}
	if opts.BeforeWrite != nil {
		if err := opts.BeforeWrite(func(any) bool { return false }); err != nil {
			return nil, err
		}
	}
	if err := mkdirAllDurable(b.disk, filepath.Dir(path)); err != nil {
		return nil, err
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	// The temporary name matches fileTempRE, so listings hide it if a crash
	// leaves it behind.
	f, err := b.disk.Create(path + "." + hex.EncodeToString(rnd[:]) + ".tmp")
	if err != nil {
		return nil, err
	}
	return &fileWriter{ctx: ctx, disk: b.disk, f: f, path: path}, nil
}

func (b *fileBucket) Delete(ctx context.Context, key string, opts *driver.DeleteOptions) error {
	if opts.BeforeDelete != nil {
		if err := opts.BeforeDelete(func(any) bool { return false }); err != nil {
			return err
		}
	}
	path, err := b.path(key)
	if err != nil {
		return err
	}
	if err := b.disk.Remove(path); err != nil {
		return err
	}
	return b.disk.SyncDir(filepath.Dir(path))
}

func (b *fileBucket) Copy(ctx context.Context, dstKey, srcKey string, opts *driver.CopyOptions) error {
	r, err := b.b.NewReader(ctx, srcKey, nil)
	if err != nil {
		return err
	}
	defer r.Close()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := b.NewTypedWriter(wctx, dstKey, r.ContentType(), &driver.WriterOptions{BeforeWrite: opts.BeforeCopy})
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, r); err != nil {
		cancel()
		_ = w.Close()
		return err
	}
	return w.Close()
}

// fileWriter writes an object to a temporary file beside it and, on Close,
// syncs it, renames it into place and syncs the directory, in that order
// (or leaves all three to a Syncs the context carries). A cancelled
// context discards the write.
type fileWriter struct {
	ctx  context.Context
	disk *fileDisk
	f    disk.File
	path string
	err  error // the first failed write: Close then commits nothing
}

func (w *fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil && w.err == nil {
		w.err = err
	}
	return n, err
}

// Upload lets blob.Writer hand over the reader, so a local file is copied
// with copy_file_range where the OS has it.
func (w *fileWriter) Upload(r io.Reader) error {
	_, err := io.Copy(w.f, r)
	if err != nil && w.err == nil {
		w.err = err
	}
	return err
}

// Close commits the object unless a write failed or the context ended.
// blob.Bucket.WriteAll closes after a failed write, so the writer itself
// has to remember it.
func (w *fileWriter) Close() error {
	tmp := w.f.Name()
	err := w.err
	if err == nil {
		err = w.ctx.Err()
	}
	if run := deferredSyncs(w.ctx); run != nil {
		// Synced and renamed into place with the rest of the run.
		if cerr := w.f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = w.disk.Remove(tmp)
			return err
		}
		run.add(pendingWrite{fs: w.disk, tmp: tmp, path: w.path})
		return nil
	}
	if err == nil {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = w.disk.Rename(tmp, w.path)
	}
	if err != nil {
		_ = w.disk.Remove(tmp)
		return err
	}
	return w.disk.SyncDir(filepath.Dir(w.path))
}

// fileDisk is what a Store's file buckets write through: the disk, and the
// directories this Store is creating, whose parents are not synced yet.
type fileDisk struct {
	disk.FS

	mu       sync.Mutex
	creating map[string]chan struct{} // closed once the directory is durable
}

func newFileDisk(d disk.FS) *fileDisk {
	return &fileDisk{FS: d, creating: map[string]chan struct{}{}}
}

// claim registers dir as being created by the caller (mine) or returns the
// channel that another caller creating it will close.
func (d *fileDisk) claim(dir string) (ch chan struct{}, mine bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ch := d.creating[dir]; ch != nil {
		return ch, false
	}
	ch = make(chan struct{})
	d.creating[dir] = ch
	return ch, true
}

func (d *fileDisk) release(dir string, ch chan struct{}) {
	d.mu.Lock()
	delete(d.creating, dir)
	d.mu.Unlock()
	close(ch)
}

// pending returns the channel of a directory being created, or nil.
func (d *fileDisk) pending(dir string) chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.creating[dir]
}

// mkdirAllDurable creates dir and its missing parents, syncing the parent of
// each one it creates so that the new directory survives a power cut. When
// another write through the same Store is creating one of them, it waits
// until that one is durable; a directory that exists otherwise is durable
// already (its creator synced it before its write returned).
func mkdirAllDurable(d *fileDisk, dir string) error {
	var missing []string
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return &fs.PathError{Op: "mkdir", Path: p, Err: errors.New("not a directory")}
			}
			if ch := d.pending(p); ch != nil {
				<-ch
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		missing = append(missing, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		p := missing[i]
		ch, mine := d.claim(p)
		if !mine {
			<-ch
			continue
		}
		err := d.Mkdir(p)
		if errors.Is(err, fs.ErrExist) {
			err = nil // made by another process; sync its entry all the same
		}
		if err == nil {
			err = d.SyncDir(filepath.Dir(p))
		}
		d.release(p, ch)
		if err != nil {
			return err
		}
	}
	return nil
}

// escapeKey maps a key to a relative file path exactly as fileblob does (on
// systems whose path separator is "/"): control characters, the slash of
// "../" and of "//", a trailing slash and anything that reads as an escape
// become "__0x<hex>__". Taken from gocloud.dev/blob/fileblob and
// gocloud.dev/internal/escape (Apache 2.0), which do not export it.
func escapeKey(key string) string {
	r := []rune(key)
	var sb strings.Builder
	for i, c := range r {
		esc := c < 32 ||
			(i > 1 && c == '/' && r[i-1] == '.' && r[i-2] == '.') ||
			(i > 0 && c == '/' && r[i-1] == '/') ||
			(c == '/' && i == len(r)-1) ||
			isEscapeSequence(r, i)
		if esc {
			fmt.Fprintf(&sb, "__%#x__", c)
		} else {
			sb.WriteRune(c)
		}
	}
	return sb.String()
}

// isEscapeSequence reports whether r[i:] starts with "__0x<hex>__" that
// parses as an int32.
func isEscapeSequence(r []rune, i int) bool {
	// Most runes start no "__": checked before the rest of the key is
	// made a string, which for every rune made escaping a key quadratic
	// (4 % of a batch worker's CPU, from a profile).
	if r[i] != '_' || i+1 >= len(r) || r[i+1] != '_' {
		return false
	}
	s := string(r[i:])
	if !strings.HasPrefix(s, "__0x") {
		return false
	}
	digits, _, ok := strings.Cut(s[4:], "_")
	if !ok || !strings.HasPrefix(s[4+len(digits):], "__") {
		return false
	}
	_, err := strconv.ParseInt(digits, 16, 32)
	return err == nil
}
