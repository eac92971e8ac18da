// Package blob moves job inputs, outputs and checkpoints between local
// directories and blob storage.
//
// A location names a place in blob storage. It is either a full URL
// (file:///abs/dir/sub/, mem://bucket/prefix) or a slash-separated path with
// no scheme, which is relative to the Store's default URL ("outputs/job1/").
// A location that ends in "/" is a directory (a key prefix); one that does not
// names a single object, except where a method says it takes a directory.
//
// Built in: file, mem, and the cloud object stores s3, gs and azblob (see
// cloud.go for their URLs, credentials and how they differ from a local
// directory). file:// stores objects as plain files (no metadata sidecars)
// and writes each one to a temporary file next to it, synced before it is
// renamed into place and its directory synced after, so readers never see
// half an object and a write that returned survives a power cut (see
// fileBucket). mem:// buckets live as long as the Store that opened them;
// mem://a and mem://b are different buckets.
package blob

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/blob/memblob"
	"gocloud.dev/gcerrors"

	"github.com/spotml/spotml/internal/blob/disk"
)

// Store resolves blob locations. A location is either a full URL
// (file:///abs/dir/sub/, mem://bucket/prefix, s3://bucket/prefix) or a path
// without a scheme, which is relative to the default store (e.g.
// "outputs/job1/").
//
// A Store is safe for concurrent use.
type Store struct {
	defaultURL string
	def        ref
	disk       *fileDisk // what file:// writes go through
	transfers  int       // objects moved at once in one call

	mu    sync.Mutex
	mem   map[string]*blob.Bucket // mem:// buckets by host name, kept for the Store's life
	cloud map[string]*blob.Bucket // cloud buckets by bucketURL, opened once (see cloud.go)
}

// SchemeError reports a location whose URL scheme has no driver built into
// this binary.
type SchemeError struct {
	Scheme string
}

func (e *SchemeError) Error() string {
	return "scheme " + e.Scheme + " is not supported: use s3://BUCKET/PATH, gs://BUCKET/PATH, azblob://CONTAINER/PATH, file:///ABS/PATH or mem://NAME/PATH"
}

// Option changes how NewStore sets up a Store.
type Option func(*Store)

// WithDisk makes file:// locations write through d instead of the operating
// system's file system directly; tests pass one that simulates power cuts.
func WithDisk(d disk.FS) Option { return func(s *Store) { s.disk = newFileDisk(d) } }

// WithTransfers sets how many objects one call moves at once (default 8);
// 1 makes the order of writes repeatable.
func WithTransfers(n int) Option { return func(s *Store) { s.transfers = max(n, 1) } }

// NewStore returns a Store whose schemeless locations are relative to
// defaultURL, e.g. "file:///work/spotml-data/blobs". For file:// the
// directory is created if it is missing. A cloud store is not contacted
// until it is used; Check contacts it.
func NewStore(defaultURL string, opts ...Option) (*Store, error) {
	if !hasScheme(defaultURL) {
		return nil, fmt.Errorf("default blob store %q: want a URL such as file:///var/lib/spotml/blobs, s3://bucket/spotml or mem://test", defaultURL)
	}
	s := &Store{mem: map[string]*blob.Bucket{}, cloud: map[string]*blob.Bucket{}, disk: newFileDisk(disk.OS{}), transfers: transfers}
	for _, o := range opts {
		o(s)
	}
	def, err := s.resolve(defaultURL)
	if err != nil {
		return nil, fmt.Errorf("default blob store: %w", err)
	}
	def.key = dirKey(def.key)
	if def.scheme == fileblob.Scheme {
		if err := mkdirAllDurable(s.disk, def.filePath()); err != nil {
			return nil, fmt.Errorf("default blob store %q: %w", defaultURL, err)
		}
	}
	s.def = def
	s.defaultURL = def.url()
	return s, nil
}

// DefaultURL returns the URL that schemeless locations are relative to, in
// canonical form without a trailing slash.
func (s *Store) DefaultURL() string { return s.defaultURL }

// Open returns a bucket rooted at the location, which is taken as a
// directory whether or not it ends in "/". The caller closes it.
func (s *Store) Open(ctx context.Context, location string) (*blob.Bucket, error) {
	r, err := s.resolve(location)
	if err != nil {
		return nil, err
	}
	b, err := s.root(ctx, r)
	if err != nil {
		return nil, err
	}
	if p := dirKey(r.key); p != "" {
		return blob.PrefixedBucket(b, p), nil
	}
	return b, nil
}

// Join returns location with elem appended, slash-separated and cleaned. The
// result ends in "/" when the last non-empty element does (or, with no
// elements, when location does). Join does not check that the result stays
// inside the store; resolving it does.
func (s *Store) Join(location string, elem ...string) string {
	if hasScheme(location) {
		if u, err := url.Parse(location); err == nil {
			u.Path = "/" + joinPath(strings.TrimPrefix(u.Path, "/"), elem...)
			u.RawPath = ""
			return u.String()
		}
	}
	return joinPath(location, elem...)
}

// IsNotExist reports whether err says that an object, a location or a local
// file does not exist.
func IsNotExist(err error) bool {
	if err == nil {
		return false
	}
	return errors.Is(err, fs.ErrNotExist) || gcerrors.Code(err) == gcerrors.NotFound
}

// ref is a resolved location: which bucket, and the key inside it.
type ref struct {
	scheme string // "file", "mem", or a cloud scheme
	host   string // the bucket (container) name; always "" for file
	query  string // a cloud bucket's driver options, encoded in key order
	key    string // slash-separated, no leading "/"; a trailing "/" marks a directory
}

// filePath is the local path of a file ref. File buckets are rooted at "/",
// so the key is the absolute path without its leading slash.
func (r ref) filePath() string { return filepath.FromSlash("/" + r.key) }

func (r ref) url() string {
	u := url.URL{Scheme: r.scheme, Host: r.host, Path: "/" + strings.TrimSuffix(r.key, "/"), RawQuery: r.query}
	return u.String()
}

// with returns r with key replaced.
func (r ref) with(key string) ref {
	r.key = key
	return r
}

func (s *Store) resolve(location string) (ref, error) {
	if !hasScheme(location) {
		return s.resolveRelative(location)
	}
	u, err := url.Parse(location)
	if err != nil {
		return ref{}, fmt.Errorf("blob location %q: %w", location, err)
	}
	if u.Fragment != "" {
		return ref{}, fmt.Errorf("blob location %q: fragments (#...) are not supported; remove it", location)
	}
	if u.RawQuery != "" && !isCloud(u.Scheme) {
		return ref{}, fmt.Errorf("blob location %q: query parameters are only for s3, gs and azblob URLs; remove it", location)
	}
	r := ref{scheme: u.Scheme, key: cleanKey(u.Path)}
	switch {
	case u.Scheme == fileblob.Scheme:
		if u.Host != "" && u.Host != "localhost" {
			return ref{}, fmt.Errorf("blob location %q: a file URL needs an absolute path, as in file:///%s%s", location, u.Host, u.Path)
		}
	case u.Scheme == memblob.Scheme:
		r.host = u.Host
	case isCloud(u.Scheme):
		if u.Host == "" {
			return ref{}, fmt.Errorf("blob location %q names no bucket: write %s://BUCKET/PATH", location, u.Scheme)
		}
		r.host = u.Host
		// Canonical order, so that one bucket opens once however its
		// options were written.
		r.query = u.Query().Encode()
	default:
		return ref{}, fmt.Errorf("blob location %q: %w", location, &SchemeError{Scheme: u.Scheme})
	}
	return r, nil
}

func (s *Store) resolveRelative(location string) (ref, error) {
	if strings.HasPrefix(location, "/") {
		return ref{}, fmt.Errorf("blob location %q has no scheme: write file://%s for a local directory, or drop the leading / for a path in the default store", location, location)
	}
	if c := path.Clean(location); c == ".." || strings.HasPrefix(c, "../") {
		return ref{}, fmt.Errorf("blob location %q leaves the default store", location)
	}
	return s.def.with(joinPath(s.def.key, location)), nil
}

// root opens the whole bucket that r lives in. Keys passed to it are r.key
// and keys derived from it.
func (s *Store) root(ctx context.Context, r ref) (*blob.Bucket, error) {
	if isCloud(r.scheme) {
		return s.openCloud(ctx, r)
	}
	switch r.scheme {
	case fileblob.Scheme:
		// Rooted at "/" so that a location is just a key and reading a
		// location that does not exist yet lists nothing rather than failing
		// to open a directory. Temporary files sit next to their objects, so
		// the final rename cannot fail with a cross-device link; stray ones
		// are hidden by listObjects.
		return openFileBucket(s.disk)
	case memblob.Scheme:
		s.mu.Lock()
		defer s.mu.Unlock()
		b := s.mem[r.host]
		if b == nil {
			b = memblob.OpenBucket(nil)
			s.mem[r.host] = b
		}
		return blob.NewBucket(sharedBucket{b}), nil
	}
	return nil, &SchemeError{Scheme: r.scheme}
}

var schemeRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*://`)

func hasScheme(location string) bool { return schemeRE.MatchString(location) }

// cleanKey turns a URL path into a key: cleaned, without a leading "/",
// keeping a trailing "/". ".." cannot climb above the root.
func cleanKey(p string) string {
	dir := strings.HasSuffix(p, "/")
	k := strings.TrimPrefix(path.Clean("/"+p), "/")
	if dir && k != "" {
		k += "/"
	}
	return k
}

// dirKey returns key as a directory prefix: "" stays "", anything else ends
// in "/".
func dirKey(key string) string {
	if key == "" || strings.HasSuffix(key, "/") {
		return key
	}
	return key + "/"
}

// joinPath joins slash-separated paths like path.Join, but keeps a trailing
// "/" from the last non-empty element and returns "" rather than ".".
func joinPath(base string, elem ...string) string {
	trailing := strings.HasSuffix(base, "/")
	for _, e := range elem {
		if e != "" {
			trailing = strings.HasSuffix(e, "/")
		}
	}
	p := path.Join(append([]string{base}, elem...)...)
	if p == "." || p == "" {
		return ""
	}
	if trailing && p != "/" {
		p += "/"
	}
	return p
}
