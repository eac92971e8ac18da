package blob

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/spotml/spotml/internal/blob/blobtest"
)

// storeKinds are the stores every behaviour in eachStore's tests must hold
// for: a file:// store in a temp dir, a mem:// store, and the three cloud
// stores, each against a stand-in that speaks its real protocol on
// loopback (see blobtest; azblob is skipped without Azurite unless
// SPOTML_REQUIRE_AZURITE=1).
var storeKinds = []string{"file", "mem", "s3", "gs", "azblob"}

// eachStore runs test against a fresh store of every kind.
func eachStore(t *testing.T, test func(t *testing.T, s *Store)) {
	t.Helper()
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			test(t, newTestStore(t, kind))
		})
	}
}

// newTestStore returns a store of the kind whose default location is a
// "root" directory in a fresh bucket (or temp dir).
func newTestStore(t testing.TB, kind string) *Store {
	t.Helper()
	var u string
	switch kind {
	case "file":
		u = "file://" + filepath.ToSlash(filepath.Join(t.TempDir(), "blobs"))
	case "mem":
		u = "mem://test/root"
	case "s3":
		u = withPath(t, blobtest.StartS3(t).Bucket(t), "/root")
	case "gs":
		u = withPath(t, blobtest.StartGCS(t).Bucket(t), "/root")
	case "azblob":
		a := blobtest.StartAzurite(t)
		u = withPath(t, a.Bucket(t), "/root")
	default:
		t.Fatalf("unknown store kind %q", kind)
	}
	s, err := NewStore(u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// withPath returns the URL u with its path set to p.
func withPath(t testing.TB, u, p string) string {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	pu.Path = p
	return pu.String()
}

// writeTree creates files under dir; keys are slash-separated paths.
func writeTree(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// readTree returns every file under dir by slash-separated relative path.
func readTree(t testing.TB, dir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		data, err := os.ReadFile(p)
		got[filepath.ToSlash(rel)] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func listKeys(t testing.TB, s *Store, location string) []string {
	t.Helper()
	objs, err := s.List(context.Background(), location)
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{}
	for _, o := range objs {
		keys = append(keys, o.Key)
	}
	return keys
}

func TestNewStoreCreatesDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	s, err := NewStore("file://" + filepath.ToSlash(dir) + "/")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("default dir not created: %v", err)
	}
	if got, want := s.DefaultURL(), "file://"+filepath.ToSlash(dir); got != want {
		t.Errorf("DefaultURL() = %q, want %q", got, want)
	}
}

func TestJoin(t *testing.T) {
	s, err := NewStore("mem://test")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		location string
		elem     []string
		want     string
	}{
		{"outputs", []string{"job1"}, "outputs/job1"},
		{"outputs/", []string{"job1/", "a.txt"}, "outputs/job1/a.txt"},
		{"outputs", []string{"job1", "gen-1/"}, "outputs/job1/gen-1/"},
		{"outputs/job1/", nil, "outputs/job1/"},
		{"a//b/./c", nil, "a/b/c"},
		{"", []string{"x"}, "x"},
		{"", nil, ""},
		{"file:///data/blobs/", []string{"sub", "f.txt"}, "file:///data/blobs/sub/f.txt"},
		{"file:///data/blobs", []string{"sub/"}, "file:///data/blobs/sub/"},
		{"file:///data/a b", []string{"c"}, "file:///data/a%20b/c"},
		{"mem://bucket/prefix", []string{"k"}, "mem://bucket/prefix/k"},
		{"mem://bucket", []string{"k"}, "mem://bucket/k"},
	}
	for _, tt := range tests {
		if got := s.Join(tt.location, tt.elem...); got != tt.want {
			t.Errorf("Join(%q, %q) = %q, want %q", tt.location, tt.elem, got, tt.want)
		}
	}
}

func TestUnknownScheme(t *testing.T) {
	s := newTestStore(t, "mem")
	ctx := context.Background()
	for _, loc := range []string{"ftp://host/x/", "hdfs://nn/x", "azure://c/x"} {
		_, err := s.Open(ctx, loc)
		var se *SchemeError
		if !errors.As(err, &se) {
			t.Fatalf("Open(%q) error = %v, want a *SchemeError", loc, err)
		}
		want := "scheme " + se.Scheme + " is not supported: use s3://BUCKET/PATH"
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q) error = %q, want it to say %q", loc, err, want)
		}
		if _, err := s.ReadAll(ctx, loc); !errors.As(err, &se) {
			t.Errorf("ReadAll(%q) error = %v, want a *SchemeError", loc, err)
		}
	}
	if _, err := NewStore("ftp://host/blobs"); err == nil || !strings.Contains(err.Error(), "scheme ftp is not supported") {
		t.Errorf("NewStore(ftp://...) error = %v", err)
	}
}

func TestBadLocations(t *testing.T) {
	s := newTestStore(t, "mem")
	ctx := context.Background()
	for _, loc := range []string{
		"/abs/path",          // looks local but has no scheme
		"../outside",         // leaves the default store
		"a/../../outside",    // likewise, after cleaning
		"file://data/x",      // relative file URL: host "data"
		"mem://b/x?prefix=y", // query parameters
	} {
		if _, err := s.List(ctx, loc); err == nil {
			t.Errorf("List(%q) succeeded, want an error", loc)
		}
	}
	if _, err := NewStore("relative/dir"); err == nil {
		t.Error("NewStore without a scheme succeeded")
	}
	for _, loc := range []string{"", "dir/", "mem://test/"} {
		if _, err := s.ReadAll(ctx, loc); err == nil || IsNotExist(err) {
			t.Errorf("ReadAll(%q) error = %v, want a directory error", loc, err)
		}
	}
}

func TestUploadGlob(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		dir := t.TempDir()
		writeTree(t, dir, map[string]string{
			"a.txt":            "a",
			"sub/b.txt":        "b",
			"sub/deep/c.txt":   "c",
			"sub/deep/d.bin":   "d",
			".hidden/e.txt":    "e",
			"sub/deep/f.txt/x": "directory named like a match",
		})

		got, err := s.UploadGlob(ctx, dir, "**/*.txt", "outputs/job1/")
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"outputs/job1/.hidden/e.txt", "outputs/job1/a.txt", "outputs/job1/sub/b.txt", "outputs/job1/sub/deep/c.txt"}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("UploadGlob ** = %q, want %q", got, want)
		}
		if keys, want := listKeys(t, s, "outputs/job1"), []string{".hidden/e.txt", "a.txt", "sub/b.txt", "sub/deep/c.txt"}; !reflect.DeepEqual(keys, want) {
			t.Errorf("List = %q, want %q", keys, want)
		}
		data, err := s.ReadAll(ctx, "outputs/job1/sub/deep/c.txt")
		if err != nil || string(data) != "c" {
			t.Errorf("ReadAll = %q, %v", data, err)
		}

		got, err = s.UploadGlob(ctx, dir, "sub/*", "outputs/job2")
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"outputs/job2/sub/b.txt"}; !reflect.DeepEqual(got, want) {
			t.Errorf("UploadGlob sub/* = %q, want %q", got, want)
		}

		got, err = s.UploadGlob(ctx, dir, "**/*.nope", "outputs/job3/")
		if err != nil || got == nil || len(got) != 0 {
			t.Errorf("UploadGlob with no match = %q, %v; want empty, nil", got, err)
		}
		if keys := listKeys(t, s, "outputs/job3/"); len(keys) != 0 {
			t.Errorf("no-match upload wrote %q", keys)
		}

		if _, err := s.UploadGlob(ctx, filepath.Join(dir, "missing"), "**", "x/"); !IsNotExist(err) {
			t.Errorf("UploadGlob of a missing dir: error = %v, want not-exist", err)
		}
		for _, bad := range []string{"", "../*", "/etc/*", "[a-"} {
			if _, err := s.UploadGlob(ctx, dir, bad, "x/"); err == nil {
				t.Errorf("UploadGlob pattern %q succeeded", bad)
			}
		}
	})
}

func TestUploadFileAndDownload(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		dir := t.TempDir()
		writeTree(t, dir, map[string]string{"model.pt": "weights"})

		if err := s.UploadFile(ctx, filepath.Join(dir, "model.pt"), "ckpt/run1/model.pt"); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, "out", "nested", "m.pt")
		if err := s.Download(ctx, "ckpt/run1/model.pt", dst); err != nil {
			t.Fatal(err)
		}
		if data, err := os.ReadFile(dst); err != nil || string(data) != "weights" {
			t.Errorf("downloaded %q, %v", data, err)
		}

		full := s.Join(s.DefaultURL(), "ckpt/run1/model.pt")
		if data, err := s.ReadAll(ctx, full); err != nil || string(data) != "weights" {
			t.Errorf("ReadAll(%s) = %q, %v", full, data, err)
		}

		if _, err := s.ReadAll(ctx, "ckpt/run1/missing"); !IsNotExist(err) {
			t.Errorf("ReadAll of a missing object: error = %v, want not-exist", err)
		}
		if err := s.Download(ctx, "ckpt/run1/missing", filepath.Join(dir, "m")); !IsNotExist(err) {
			t.Errorf("Download of a missing object: error = %v, want not-exist", err)
		}
		if err := s.UploadFile(ctx, filepath.Join(dir, "missing"), "ckpt/x"); !IsNotExist(err) {
			t.Errorf("UploadFile of a missing file: error = %v, want not-exist", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "m")); !os.IsNotExist(err) {
			t.Errorf("failed download left a file behind: %v", err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 2 {
			t.Errorf("stray files after downloads: %v", entries)
		}
	})
}

func TestUploadCancelledWritesNothing(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		dir := t.TempDir()
		writeTree(t, dir, map[string]string{"f": strings.Repeat("x", 1<<20)})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := s.UploadFile(ctx, filepath.Join(dir, "f"), "cancelled/f"); err == nil {
			t.Fatal("UploadFile with a cancelled context succeeded")
		}
		if keys := listKeys(t, s, "cancelled/"); len(keys) != 0 {
			t.Errorf("cancelled upload left %q", keys)
		}
	})
}

func TestDownloadPrefix(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		src := t.TempDir()
		files := map[string]string{"a": "1", "b/c": "2", "b/d/e.json": "3"}
		writeTree(t, src, files)
		if _, err := s.UploadGlob(ctx, src, "**", "data/"); err != nil {
			t.Fatal(err)
		}
		if err := s.UploadFile(ctx, filepath.Join(src, "a"), "data-other/a"); err != nil {
			t.Fatal(err)
		}

		dst := filepath.Join(t.TempDir(), "restored")
		if err := s.Download(ctx, "data/", dst); err != nil {
			t.Fatal(err)
		}
		if got := readTree(t, dst); !reflect.DeepEqual(got, files) {
			t.Errorf("downloaded tree = %v, want %v", got, files)
		}

		sub := filepath.Join(t.TempDir(), "sub")
		if err := s.Download(ctx, s.Join(s.DefaultURL(), "data/b/"), sub); err != nil {
			t.Fatal(err)
		}
		if got, want := readTree(t, sub), map[string]string{"c": "2", "d/e.json": "3"}; !reflect.DeepEqual(got, want) {
			t.Errorf("downloaded sub tree = %v, want %v", got, want)
		}

		empty := filepath.Join(t.TempDir(), "empty")
		if err := s.Download(ctx, "nothing-here/", empty); err != nil {
			t.Fatal(err)
		}
		if got := readTree(t, empty); len(got) != 0 {
			t.Errorf("empty prefix downloaded %v", got)
		}
	})
}

func TestDownloadRejectsEscapingKeys(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		b, err := s.Open(ctx, "evil/")
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{"fine.txt", "x/../../../escaped.txt"} {
			if err := b.WriteAll(ctx, key, []byte("data"), nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}

		parent := t.TempDir()
		dst := filepath.Join(parent, "a", "b")
		err = s.Download(ctx, "evil/", dst)
		if !errors.Is(err, ErrEscape) {
			t.Fatalf("Download error = %v, want ErrEscape", err)
		}
		if got := readTree(t, parent); len(got) != 0 {
			t.Errorf("Download wrote %v before rejecting the prefix", got)
		}
	})
}

func TestListAndOpen(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		if keys := listKeys(t, s, "never/written/"); len(keys) != 0 {
			t.Errorf("List of an unwritten location = %q", keys)
		}

		b, err := s.Open(ctx, "opened")
		if err != nil {
			t.Fatal(err)
		}
		if err := b.WriteAll(ctx, "x/y.txt", []byte("hello"), nil); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		// A second Open sees the data: mem buckets outlive a closed handle.
		b2, err := s.Open(ctx, s.Join(s.DefaultURL(), "opened/x/"))
		if err != nil {
			t.Fatal(err)
		}
		defer b2.Close()
		if data, err := b2.ReadAll(ctx, "y.txt"); err != nil || string(data) != "hello" {
			t.Errorf("ReadAll through second Open = %q, %v", data, err)
		}

		objs, err := s.List(ctx, "opened/")
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) != 1 || objs[0].Key != "x/y.txt" || objs[0].Size != 5 || objs[0].ModTime.IsZero() {
			t.Errorf("List = %+v", objs)
		}
		// "opened" as a directory does not match "opened-too".
		if err := s.UploadFile(ctx, writeTemp(t, "z"), "opened-too/z"); err != nil {
			t.Fatal(err)
		}
		if keys := listKeys(t, s, "opened"); !reflect.DeepEqual(keys, []string{"x/y.txt"}) {
			t.Errorf("List(opened) = %q", keys)
		}
	})
}

func TestMemBucketsAreSeparate(t *testing.T) {
	s := newTestStore(t, "mem")
	ctx := context.Background()
	f := writeTemp(t, "one")
	if err := s.UploadFile(ctx, f, "mem://one/k"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadAll(ctx, "mem://two/k"); !IsNotExist(err) {
		t.Errorf("mem://two sees mem://one's object: %v", err)
	}
	if data, err := s.ReadAll(ctx, "mem://one/k"); err != nil || string(data) != "one" {
		t.Errorf("ReadAll(mem://one/k) = %q, %v", data, err)
	}
}

func TestFileStoreLayout(t *testing.T) {
	// file:// objects are plain files at their path, with no metadata
	// sidecars, and a cut-off write's temporary file is not listed.
	root := t.TempDir()
	s, err := NewStore("file://" + filepath.ToSlash(root))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.UploadFile(ctx, writeTemp(t, "content"), "dir/obj.txt"); err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(root, "dir", "obj.txt.18a2b3c4d5e6f708.tmp")
	if err := os.WriteFile(stray, []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := readTree(t, root), map[string]string{"dir/obj.txt": "content", "dir/obj.txt.18a2b3c4d5e6f708.tmp": "partial"}; !reflect.DeepEqual(got, want) {
		t.Errorf("files on disk = %v, want %v", got, want)
	}
	if keys := listKeys(t, s, "dir/"); !reflect.DeepEqual(keys, []string{"obj.txt"}) {
		t.Errorf("List = %q, want only obj.txt", keys)
	}
}

func writeTemp(t testing.TB, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
