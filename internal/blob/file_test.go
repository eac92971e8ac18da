package blob

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/gcerrors"

	"github.com/spotml/spotml/internal/blob/disk"
	"github.com/spotml/spotml/internal/blob/powercut"
)

// withFileblob opens a file store's bucket over a new directory and a
// plain fileblob bucket over the same one, with opts.
func withFileblob(t *testing.T, opts *fileblob.Options) (ours, theirs *blob.Bucket) {
	t.Helper()
	root := t.TempDir()
	s, err := NewStore("file://" + filepath.ToSlash(root))
	if err != nil {
		t.Fatal(err)
	}
	if ours, err = s.Open(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ours.Close() })
	if theirs, err = fileblob.OpenBucket(root, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { theirs.Close() })
	return ours, theirs
}

// TestFileKeysMatchFileblob writes keys that fileblob escapes through the
// file store and reads them back through plain fileblob, and the other way
// round: both map a key to the same file.
func TestFileKeysMatchFileblob(t *testing.T) {
	ctx := context.Background()
	ours, theirs := withFileblob(t, &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
	keys := []string{"plain.txt", "a/b/c", "x/../../up", "dots../y", "a//b", "__0x2f__", "ctl\x01char", "sp ace/ü"}
	for i, key := range keys {
		for _, w := range []struct {
			name     string
			put, get *blob.Bucket
		}{{"ours->fileblob", ours, theirs}, {"fileblob->ours", theirs, ours}} {
			want := []byte(fmt.Sprint(w.name, i))
			if err := w.put.WriteAll(ctx, key, want, nil); err != nil {
				t.Fatalf("%s: write %q: %v", w.name, key, err)
			}
			got, err := w.get.ReadAll(ctx, key)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s: key %q read back %q, %v; want %q", w.name, key, got, err, want)
			}
		}
		// Copy and Delete go through the file store's own writer too.
		if err := ours.Copy(ctx, key+".copy", key, nil); err != nil {
			t.Fatalf("copy %q: %v", key, err)
		}
		if got, err := theirs.ReadAll(ctx, key+".copy"); err != nil || string(got) != fmt.Sprint("fileblob->ours", i) {
			t.Errorf("copy of %q read back %q, %v", key, got, err)
		}
		if err := ours.Delete(ctx, key+".copy"); err != nil {
			t.Errorf("delete %q: %v", key+".copy", err)
		}
		if ok, err := theirs.Exists(ctx, key+".copy"); ok || err != nil {
			t.Errorf("after delete, %q exists = %v, %v", key+".copy", ok, err)
		}
	}
}

// TestFileReaderAsFileblob reads through the file store's own reader what
// fileblob reads: whole objects and ranges, their size and time, the
// content type of a file that another fileblob program wrote with its
// .attrs sidecar (and none without one), and a directory or a missing key
// as not found.
func TestFileReaderAsFileblob(t *testing.T) {
	ctx := context.Background()
	ours, theirs := withFileblob(t, &fileblob.Options{Metadata: fileblob.MetadataInSidecar})
	if err := theirs.WriteAll(ctx, "d/typed.txt", []byte("0123456789"), &blob.WriterOptions{ContentType: "text/x-spotml"}); err != nil {
		t.Fatal(err)
	}
	if err := ours.WriteAll(ctx, "d/plain", []byte("abcdef"), nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		key            string
		offset, length int64
	}{{"d/typed.txt", 0, -1}, {"d/typed.txt", 3, 4}, {"d/typed.txt", 8, 10}, {"d/plain", 0, -1}, {"d/plain", 2, 0}} {
		var got [2]string
		for i, b := range []*blob.Bucket{ours, theirs} {
			r, err := b.NewRangeReader(ctx, c.key, c.offset, c.length, nil)
			if err != nil {
				t.Fatalf("%+v: %v", c, err)
			}
			data, err := io.ReadAll(r)
			r.Close()
			if err != nil {
				t.Fatalf("%+v: %v", c, err)
			}
			got[i] = fmt.Sprintf("%q size=%d time=%v type=%q", data, r.Size(), r.ModTime().UnixNano(), r.ContentType())
		}
		if got[0] != got[1] {
			t.Errorf("%+v: the file store read %s; fileblob %s", c, got[0], got[1])
		}
	}
	for _, key := range []string{"d", "d/missing"} {
		_, err := ours.NewReader(ctx, key, nil)
		if gcerrors.Code(err) != gcerrors.NotFound || !IsNotExist(err) {
			t.Errorf("reading %q: %v; want not found", key, err)
		}
	}
}

// TestFileListPaged lists a tree in small pages through the file store:
// every key once, in key order (a file "a-b" before the directory "a/"),
// escaped names read back as their keys, sidecars and other prefixes left
// out; a listing by delimiter still collapses directories.
func TestFileListPaged(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s, err := NewStore("file://" + filepath.ToSlash(root))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Open(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	keys := []string{"p/a-b", "p/a/x", "p/a/y", "p/a.b", "p/a/z/w", "p/aa", "p/b", "p/c//d", "p/ctl\x01", "p/__0x2f__", "p/sp ace/ü", "pq/no", "q/no", "p0"}
	for _, k := range keys {
		if err := b.WriteAll(ctx, k, []byte(k), nil); err != nil {
			t.Fatal(err)
		}
	}
	// A sidecar that fileblob would have written is not an object.
	if err := os.WriteFile(filepath.Join(root, "p", "b.attrs"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, k := range keys {
		if strings.HasPrefix(k, "p/") {
			want = append(want, k)
		}
	}
	slices.Sort(want)
	for _, size := range []int{1, 2, 3, 1000} {
		var got []string
		token := blob.FirstPageToken
		for len(token) > 0 {
			objs, next, err := b.ListPage(ctx, token, size, &blob.ListOptions{Prefix: "p/"})
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) > size {
				t.Fatalf("page size %d: a page of %d", size, len(objs))
			}
			for _, o := range objs {
				got = append(got, o.Key)
				if o.Size != int64(len(o.Key)) {
					t.Errorf("%q: size %d, want %d", o.Key, o.Size, len(o.Key))
				}
			}
			token = next
		}
		if !slices.Equal(got, want) {
			t.Errorf("page size %d: listed\n%q\nwant\n%q", size, got, want)
		}
	}
	// A prefix that ends inside a name.
	objs, _, err := b.ListPage(ctx, blob.FirstPageToken, 100, &blob.ListOptions{Prefix: "p/a"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range objs {
		got = append(got, o.Key)
	}
	if w := []string{"p/a-b", "p/a.b", "p/a/x", "p/a/y", "p/a/z/w", "p/aa"}; !slices.Equal(got, w) {
		t.Errorf("prefix p/a: listed %q, want %q", got, w)
	}
	objs, _, err = b.ListPage(ctx, blob.FirstPageToken, 100, &blob.ListOptions{Prefix: "p/", Delimiter: "/"})
	if err != nil {
		t.Fatal(err)
	}
	dirs := 0
	for _, o := range objs {
		if o.IsDir {
			dirs++
		}
	}
	if dirs != 3 { // p/a/, p/c/, p/sp ace/
		t.Errorf("delimiter: %d directories, want 3", dirs)
	}
}

// BenchmarkFilePut writes one object per iteration through the file store
// (synced file and directory before and after the rename) and through
// fileblob's own writer as the store used it before (rename only, nothing
// synced), so the cost of durability shows side by side.
func BenchmarkFilePut(b *testing.B) {
	ctx := context.Background()
	for _, size := range []int{4 << 10, 1 << 20, 64 << 20} {
		data := make([]byte, size)
		rand.Read(data)
		for _, kind := range []string{"synced", "unsynced-fileblob"} {
			b.Run(fmt.Sprintf("%s/%dKiB", kind, size>>10), func(b *testing.B) {
				dir := b.TempDir()
				var bk *blob.Bucket
				var err error
				if kind == "synced" {
					bk, err = openFileBucket(newFileDisk(disk.OS{}))
				} else {
					bk, err = fileblob.OpenBucket("/", &fileblob.Options{NoTempDir: true, Metadata: fileblob.MetadataDontWrite})
				}
				if err != nil {
					b.Fatal(err)
				}
				defer bk.Close()
				key := filepath.ToSlash(dir)[1:] + "/obj.bin"
				b.SetBytes(int64(size))
				for b.Loop() {
					if err := write(ctx, bk, key, bytes.NewReader(data)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestConcurrentWritesDurableOnReturn writes objects at once into
// directories that do not exist yet, and as each write returns cuts the
// power: the object must be in every state the cut could leave, even when
// another write created its directory and had not synced it yet (the sync
// that makes a/b/c0 and a/b/c1 durable is slowed to open that window).
func TestConcurrentWritesDurableOnReturn(t *testing.T) {
	ctx := context.Background()
	for round := range 3 {
		root := t.TempDir()
		d, err := powercut.New(root)
		if err != nil {
			t.Fatal(err)
		}
		slow := slowSyncDir{Disk: d, dir: filepath.Join(root, "a", "b")}
		s, err := NewStore("file://"+filepath.ToSlash(root), WithDisk(slow))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key := fmt.Sprintf("a/b/c%d/obj%d", i%2, i)
				if err := s.Write(ctx, key, strings.NewReader(key)); err != nil {
					errs <- err
					return
				}
				for _, certain := range []bool{false, true} {
					dst := t.TempDir()
					var err error
					if certain {
						err = d.MaterializeCertain(dst)
					} else {
						err = d.Materialize(0, dst) // the fewest changes kept in order
					}
					if err != nil {
						errs <- err
						return
					}
					if got, err := os.ReadFile(filepath.Join(dst, filepath.FromSlash(key))); err != nil || string(got) != key {
						errs <- fmt.Errorf("round %d: %s after a cut once its write returned: %q, %v", round, key, got, err)
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
}

// slowSyncDir delays syncing one directory.
type slowSyncDir struct {
	*powercut.Disk
	dir string
}

func (s slowSyncDir) SyncDir(name string) error {
	if filepath.Clean(name) == s.dir {
		time.Sleep(50 * time.Millisecond)
	}
	return s.Disk.SyncDir(name)
}

// BenchmarkFileList lists 20,000 files, a thousand to a directory (a
// BatchInference's input), through the file store.
func BenchmarkFileList(b *testing.B) {
	dir := b.TempDir()
	const n = 20000
	for i := range n {
		p := filepath.Join(dir, "in", fmt.Sprintf("%02d/%05d.png", i/1000, i))
		if i%1000 == 0 {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	s, err := NewStore("file://" + dir)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		objs, err := s.List(context.Background(), "in/")
		if err != nil || len(objs) != n {
			b.Fatal(len(objs), err)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "objects/s")
}

// BenchmarkFilePutSmall writes small objects (a BatchInference result,
// 200 bytes) in runs of 32 into one directory, each synced and renamed
// into place, the directory synced after each object or once per run
// (DeferSyncs). ns/op is per object; cpu-µs/op counts this process's
// user and system time, what a worker pays per result.
func BenchmarkFilePutSmall(b *testing.B) {
	data := bytes.Repeat([]byte("r"), 200)
	for _, deferred := range []bool{false, true} {
		b.Run(fmt.Sprintf("deferSyncs=%v", deferred), func(b *testing.B) {
			dir := b.TempDir()
			s, err := NewStore("file://" + dir)
			if err != nil {
				b.Fatal(err)
			}
			bk, err := s.Open(context.Background(), "out")
			if err != nil {
				b.Fatal(err)
			}
			defer bk.Close()
			cpu0 := cpuTime()
			ctx, syncs := context.Background(), (*Syncs)(nil)
			flush := func() {
				if syncs != nil {
					if err := syncs.Sync(); err != nil {
						b.Fatal(err)
					}
				}
			}
			i := 0
			for b.Loop() {
				if deferred && i%32 == 0 {
					flush()
					ctx, syncs = DeferSyncs(context.Background())
				}
				i++
				if err := bk.WriteAll(ctx, fmt.Sprintf("r/%d.jsonl", i%1000), data, nil); err != nil {
					b.Fatal(err)
				}
			}
			flush()
			b.ReportMetric((cpuTime()-cpu0).Seconds()*1e6/float64(b.N), "cpu-µs/op")
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFileReadSmall reads small objects (a BatchInference's input: a
// 28×28 PNG is about 600 bytes) from a directory of a thousand, through
// the file store's bucket and, side by side, with os.ReadFile: what a
// program that reads its files itself pays. ns/op and cpu-µs/op are per
// object.
func BenchmarkFileReadSmall(b *testing.B) {
	dir := b.TempDir()
	const n = 1000
	data := bytes.Repeat([]byte("p"), 600)
	for i := range n {
		p := filepath.Join(dir, "in", fmt.Sprintf("%05d.png", i))
		if i == 0 {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	s, err := NewStore("file://" + dir)
	if err != nil {
		b.Fatal(err)
	}
	bk, err := s.Open(context.Background(), "in")
	if err != nil {
		b.Fatal(err)
	}
	defer bk.Close()
	for _, way := range []string{"store", "os.ReadFile"} {
		b.Run("way="+way, func(b *testing.B) {
			cpu0, i := cpuTime(), 0
			for b.Loop() {
				name := fmt.Sprintf("%05d.png", i%n)
				i++
				var got []byte
				var err error
				if way == "store" {
					got, err = bk.ReadAll(context.Background(), name)
				} else {
					got, err = os.ReadFile(filepath.Join(dir, "in", name))
				}
				if err != nil || len(got) != len(data) {
					b.Fatal(len(got), err)
				}
			}
			b.ReportMetric((cpuTime()-cpu0).Seconds()*1e6/float64(b.N), "cpu-µs/op")
		})
	}
}
