package blob

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestCheckpointSaveRestore(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		dir := t.TempDir()

		ok, err := s.Checkpoint("ckpt/job1", dir).Restore(ctx)
		if err != nil || ok {
			t.Fatalf("Restore with no checkpoint = %v, %v; want false, nil", ok, err)
		}

		first := map[string]string{"step.txt": "100", "model/w.bin": "w1", "model/opt/state": "s1"}
		writeTree(t, dir, first)
		c := s.Checkpoint("ckpt/job1", dir)
		n, err := c.Save(ctx)
		if err != nil || n != 3 {
			t.Fatalf("Save = %d, %v; want 3, nil", n, err)
		}
		if got := latest(t, s, "ckpt/job1/"); got != "gen-1" {
			t.Errorf("LATEST = %q, want gen-1", got)
		}

		// Change, add and remove files; the second generation replaces the first.
		if err := os.Remove(filepath.Join(dir, "model", "opt", "state")); err != nil {
			t.Fatal(err)
		}
		second := map[string]string{"step.txt": "200", "model/w.bin": "w2", "new/file": "n"}
		writeTree(t, dir, second)
		if n, err := c.Save(ctx); err != nil || n != 3 {
			t.Fatalf("second Save = %d, %v", n, err)
		}
		if got := latest(t, s, "ckpt/job1/"); got != "gen-2" {
			t.Errorf("LATEST = %q, want gen-2", got)
		}
		want := []string{"LATEST", "gen-2/model/w.bin", "gen-2/new/file", "gen-2/step.txt"}
		if keys := listKeys(t, s, "ckpt/job1"); !reflect.DeepEqual(keys, want) {
			t.Errorf("stored keys = %q, want %q", keys, want)
		}

		// Restore replaces whatever the target holds.
		target := t.TempDir()
		writeTree(t, target, map[string]string{"junk": "x", "model/old": "y"})
		ok, err = s.Checkpoint("ckpt/job1/", target).Restore(ctx)
		if err != nil || !ok {
			t.Fatalf("Restore = %v, %v", ok, err)
		}
		if got := readTree(t, target); !reflect.DeepEqual(got, second) {
			t.Errorf("restored %v, want %v", got, second)
		}
		if entries, _ := os.ReadDir(target); len(entries) != 3 {
			t.Errorf("restored dir has %d entries (staging left behind?): %v", len(entries), entries)
		}

		// Restore into a directory that does not exist yet.
		fresh := filepath.Join(t.TempDir(), "fresh")
		if ok, err := s.Checkpoint("ckpt/job1", fresh).Restore(ctx); err != nil || !ok {
			t.Fatalf("Restore into a new dir = %v, %v", ok, err)
		}
		if got := readTree(t, fresh); !reflect.DeepEqual(got, second) {
			t.Errorf("restored %v, want %v", got, second)
		}
	})
}

func TestCheckpointInterruptedSave(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		dir := t.TempDir()
		good := map[string]string{"a": "good", "b/c": "good"}
		writeTree(t, dir, good)
		c := s.Checkpoint("ckpt/job2", dir)
		if _, err := c.Save(ctx); err != nil {
			t.Fatal(err)
		}

		// A Save cut off half-way: gen-2 has some files but LATEST was never
		// rewritten.
		partial := writeTemp(t, "half-written")
		for _, k := range []string{"ckpt/job2/gen-2/a", "ckpt/job2/gen-2/zzz"} {
			if err := s.UploadFile(ctx, partial, k); err != nil {
				t.Fatal(err)
			}
		}

		target := t.TempDir()
		if ok, err := s.Checkpoint("ckpt/job2", target).Restore(ctx); err != nil || !ok {
			t.Fatalf("Restore = %v, %v", ok, err)
		}
		if got := readTree(t, target); !reflect.DeepEqual(got, good) {
			t.Errorf("restored %v after an interrupted save, want the previous generation %v", got, good)
		}

		// The next Save skips past the leftover generation and removes it.
		writeTree(t, dir, map[string]string{"a": "newer"})
		if _, err := c.Save(ctx); err != nil {
			t.Fatal(err)
		}
		if got := latest(t, s, "ckpt/job2/"); got != "gen-3" {
			t.Errorf("LATEST = %q, want gen-3", got)
		}
		want := []string{"LATEST", "gen-3/a", "gen-3/b/c"}
		if keys := listKeys(t, s, "ckpt/job2"); !reflect.DeepEqual(keys, want) {
			t.Errorf("stored keys = %q, want %q", keys, want)
		}
	})
}

func TestCheckpointPruneRemovesDirectories(t *testing.T) {
	root := t.TempDir()
	s, err := NewStore("file://" + filepath.ToSlash(root))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"deep/er/f": "1"})
	c := s.Checkpoint("ck", dir)
	for range 3 {
		if _, err := c.Save(ctx); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := os.ReadDir(filepath.Join(root, "ck"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"LATEST", "gen-3"}; !reflect.DeepEqual(names, want) {
		t.Errorf("checkpoint dir holds %q, want %q", names, want)
	}
}

func TestCheckpointRestoreRejectsEscape(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		b, err := s.Open(ctx, "ckpt/evil/")
		if err != nil {
			t.Fatal(err)
		}
		for key, v := range map[string]string{"LATEST": "gen-1\n", "gen-1/ok": "1", "gen-1/x/../../../../pwned": "2"} {
			if err := b.WriteAll(ctx, key, []byte(v), nil); err != nil {
				t.Fatal(err)
			}
		}
		b.Close()

		parent := t.TempDir()
		dir := filepath.Join(parent, "work")
		writeTree(t, dir, map[string]string{"mine": "keep"})
		_, err = s.Checkpoint("ckpt/evil", dir).Restore(ctx)
		if !errors.Is(err, ErrEscape) {
			t.Fatalf("Restore error = %v, want ErrEscape", err)
		}
		if got, want := readTree(t, parent), map[string]string{"work/mine": "keep"}; !reflect.DeepEqual(got, want) {
			t.Errorf("after a rejected restore the files are %v, want %v", got, want)
		}
	})
}

func TestCheckpointErrors(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		if _, err := s.Checkpoint("ckpt/none", filepath.Join(t.TempDir(), "missing")).Save(ctx); !IsNotExist(err) {
			t.Errorf("Save of a missing dir: error = %v, want not-exist", err)
		}
		if err := s.UploadFile(ctx, writeTemp(t, "garbage"), "ckpt/bad/LATEST"); err != nil {
			t.Fatal(err)
		}
		_, err := s.Checkpoint("ckpt/bad", t.TempDir()).Restore(ctx)
		if err == nil || !strings.Contains(err.Error(), "not a generation name") {
			t.Errorf("Restore with a corrupt LATEST: error = %v", err)
		}
		if _, err := s.Checkpoint("ftp://b/ckpt", t.TempDir()).Save(ctx); err == nil {
			t.Error("Save to ftp:// succeeded")
		}
	})
}

func TestCheckpointEmptyDir(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		dir := t.TempDir()
		if n, err := s.Checkpoint("ckpt/empty", dir).Save(ctx); err != nil || n != 0 {
			t.Fatalf("Save of an empty dir = %d, %v", n, err)
		}
		target := t.TempDir()
		writeTree(t, target, map[string]string{"old": "x"})
		if ok, err := s.Checkpoint("ckpt/empty", target).Restore(ctx); err != nil || !ok {
			t.Fatalf("Restore = %v, %v", ok, err)
		}
		if got := readTree(t, target); len(got) != 0 {
			t.Errorf("restoring an empty checkpoint left %v", got)
		}
	})
}

func latest(t *testing.T, s *Store, location string) string {
	t.Helper()
	data, err := s.ReadAll(context.Background(), location+"LATEST")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// BenchmarkCheckpointSave saves 20 files of 1 MiB per iteration; MB/s is
// the snapshot size over the time to save it. The cloud kinds go to their
// stand-ins on loopback: they measure the client side (signing, checksums,
// HTTP), not a cloud's latency.
func BenchmarkCheckpointSave(b *testing.B) {
	const files, size = 20, 1 << 20
	for _, kind := range storeKinds {
		b.Run(kind, func(b *testing.B) {
			s := newTestStore(b, kind)
			dir := b.TempDir()
			buf := make([]byte, size)
			for i := range files {
				rand.Read(buf)
				p := filepath.Join(dir, "shard", string(rune('a'+i))+".bin")
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					b.Fatal(err)
				}
				if err := os.WriteFile(p, buf, 0o644); err != nil {
					b.Fatal(err)
				}
			}
			c := s.Checkpoint("bench/ckpt", dir)
			ctx := context.Background()
			b.SetBytes(files * size)
			for b.Loop() {
				if n, err := c.Save(ctx); err != nil || n != files {
					b.Fatalf("Save = %d, %v", n, err)
				}
			}
		})
	}
}
