package blob

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"

	"github.com/spotml/spotml/internal/blob/disk"
	"github.com/spotml/spotml/internal/blob/powercut"
)

// TestFileKeysMatchFileblob writes keys that fileblob escapes through the
// file store and reads them back through plain fileblob, and the other way
// round: both map a key to the same file.
func TestFileKeysMatchFileblob(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s, err := NewStore("file://" + filepath.ToSlash(root))
	if err != nil {
		t.Fatal(err)
	}
	ours, err := s.Open(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	theirs, err := fileblob.OpenBucket(root, &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
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
