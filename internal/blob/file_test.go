package blob

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"

	"github.com/spotml/spotml/internal/blob/disk"
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
					bk, err = openFileBucket(disk.OS{})
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
