package blob

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/blob/blobtest"
)

// randomReader yields n pseudo-random bytes without holding them.
func randomReader(n int64, seed uint64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), n)
}

func TestLargeObjectStreams(t *testing.T) {
	// Bigger than every driver's part or block size (S3 5 MiB, Azure
	// 8 MiB, GCS 16 MiB chunks), so it goes up in several parts.
	const size = 24 << 20
	want := sha256.New()
	io.Copy(want, randomReader(size, 1))
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		if err := s.Write(ctx, "big/blob.bin", randomReader(size, 1)); err != nil {
			t.Fatal(err)
		}
		rd, err := s.NewReader(ctx, "big/blob.bin")
		if err != nil {
			t.Fatal(err)
		}
		if rd.Size() != size {
			t.Errorf("Size() = %d, want %d", rd.Size(), size)
		}
		got := sha256.New()
		n, err := io.Copy(got, rd)
		rd.Close()
		if err != nil || n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
			t.Fatalf("read back %d bytes, %v; content matches: %v", n, err, bytes.Equal(got.Sum(nil), want.Sum(nil)))
		}
		// Downloaded to a file, as the agent downloads a model.
		dst := filepath.Join(t.TempDir(), "model.bin")
		if err := s.Download(ctx, "big/blob.bin", dst); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(dst)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		got.Reset()
		io.Copy(got, f)
		if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
			t.Error("downloaded file differs from what was written")
		}
	})
}

func TestOverwriteAndDelete(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		for _, v := range []string{"first version, longer", "second"} {
			if err := s.Write(ctx, "obj/x.txt", strings.NewReader(v)); err != nil {
				t.Fatal(err)
			}
			if data, err := s.ReadAll(ctx, "obj/x.txt"); err != nil || string(data) != v {
				t.Fatalf("after writing %q: ReadAll = %q, %v", v, data, err)
			}
		}
		objs, err := s.List(ctx, "obj/")
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) != 1 || objs[0].Key != "x.txt" || objs[0].Size != int64(len("second")) {
			t.Errorf("List after overwrite = %+v, want one object of the new size", objs)
		}

		// A write whose source fails leaves the old object in place.
		failing := io.MultiReader(strings.NewReader("partial"), errReader{})
		if err := s.Write(ctx, "obj/x.txt", failing); err == nil {
			t.Fatal("Write from a failing reader succeeded")
		}
		if data, err := s.ReadAll(ctx, "obj/x.txt"); err != nil || string(data) != "second" {
			t.Errorf("after a failed overwrite: ReadAll = %q, %v; want the old content", data, err)
		}

		b, err := s.Open(ctx, "obj/")
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if err := b.Delete(ctx, "x.txt"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ReadAll(ctx, "obj/x.txt"); !IsNotExist(err) {
			t.Errorf("ReadAll after Delete: %v, want not-exist", err)
		}
		if keys := listKeys(t, s, "obj/"); len(keys) != 0 {
			t.Errorf("List after Delete = %q", keys)
		}
		if err := b.Delete(ctx, "x.txt"); !IsNotExist(err) {
			t.Errorf("deleting a missing object: %v, want not-exist", err)
		}
	})
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestMissingObjects(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		if _, err := s.ReadAll(ctx, "nope/a"); !IsNotExist(err) || !strings.Contains(err.Error(), "nope/a") {
			t.Errorf("ReadAll: %v, want a not-exist error naming the location", err)
		}
		if _, err := s.NewReader(ctx, "nope/a"); !IsNotExist(err) || !strings.Contains(err.Error(), "nope/a") {
			t.Errorf("NewReader: %v, want a not-exist error naming the location", err)
		}
		if err := s.Copy(ctx, io.Discard, "nope/a"); !IsNotExist(err) {
			t.Errorf("Copy: %v, want not-exist", err)
		}
		dst := filepath.Join(t.TempDir(), "a")
		if err := s.Download(ctx, "nope/a", dst); !IsNotExist(err) {
			t.Errorf("Download: %v, want not-exist", err)
		}
		if _, err := os.Stat(dst); !os.IsNotExist(err) {
			t.Errorf("a failed download left %s", dst)
		}
		// A checkpoint that was never saved restores nothing.
		if ok, err := s.Checkpoint("nope/ckpt/", t.TempDir()).Restore(ctx); ok || err != nil {
			t.Errorf("Restore of no checkpoint = %v, %v", ok, err)
		}
	})
}

// TestCheckpointAcrossStores saves a checkpoint as one node's agent does
// and restores it as another node's agent does after an eviction: each
// opens its own Store from the URL the control plane hands out at
// registration (DefaultURL, with the cloud options in its query).
func TestCheckpointAcrossStores(t *testing.T) {
	eachStore(t, func(t *testing.T, s *Store) {
		if strings.HasPrefix(s.DefaultURL(), "mem:") {
			t.Skip("mem:// buckets live in one Store")
		}
		ctx := context.Background()
		first, err := NewStore(s.DefaultURL())
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		if err := first.Check(ctx); err != nil {
			t.Fatal(err)
		}
		loc := "checkpoints/job/uid/task-0/"
		dir := t.TempDir()
		for step := range 3 {
			writeTree(t, dir, map[string]string{"step": string(rune('0' + step)), "weights/w.bin": strings.Repeat("w", 100*step+1)})
			if _, err := first.Checkpoint(loc, dir).Save(ctx); err != nil {
				t.Fatal(err)
			}
		}
		// The old generations are gone: one generation and LATEST remain.
		var gens []string
		for _, k := range listKeys(t, first, loc) {
			gens = append(gens, strings.SplitN(k, "/", 2)[0])
		}
		if want := []string{"LATEST", "gen-3", "gen-3"}; !reflect.DeepEqual(gens, want) {
			t.Errorf("checkpoint holds %q, want %q", gens, want)
		}

		second, err := NewStore(first.DefaultURL())
		if err != nil {
			t.Fatal(err)
		}
		defer second.Close()
		restored := t.TempDir()
		writeTree(t, restored, map[string]string{"stale": "from a previous attempt"})
		if ok, err := second.Checkpoint(loc, restored).Restore(ctx); !ok || err != nil {
			t.Fatalf("Restore = %v, %v", ok, err)
		}
		if got, want := readTree(t, restored), readTree(t, dir); !reflect.DeepEqual(got, want) {
			t.Errorf("restored %v, want %v", got, want)
		}
	})
}

func TestCloudDirectoryMarkers(t *testing.T) {
	// Tools that show folders (the S3 and Azure consoles, gsutil) create
	// zero-byte "dir/" objects; they are not files to download.
	for _, kind := range []string{"s3", "gs", "azblob"} {
		t.Run(kind, func(t *testing.T) {
			s := newTestStore(t, kind)
			ctx := context.Background()
			b, err := s.Open(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			for _, k := range []string{"in/", "in/sub/", "in/sub/f.txt"} {
				var data []byte // markers are empty
				if !strings.HasSuffix(k, "/") {
					data = []byte("file")
				}
				if err := b.WriteAll(ctx, k, data, nil); err != nil {
					t.Fatal(err)
				}
			}
			if keys := listKeys(t, s, "in/"); !reflect.DeepEqual(keys, []string{"sub/f.txt"}) {
				t.Errorf("List = %q, want only the file", keys)
			}
			dst := filepath.Join(t.TempDir(), "in")
			if err := s.Download(ctx, "in/", dst); err != nil {
				t.Fatal(err)
			}
			if got := readTree(t, dst); len(got) != 1 {
				t.Errorf("downloaded %v", got)
			}
		})
	}
}

func TestCloudLocations(t *testing.T) {
	s3 := blobtest.StartS3(t)
	// Tests reach nothing beyond loopback: without this a gs:// location
	// would look for Google credentials on a metadata server.
	t.Setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:1")
	s, err := NewStore(withPath(t, s3.Bucket(t), "/root"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()

	// The default store's options go with relative locations, and Join
	// keeps them on full URLs.
	if err := s.Write(ctx, "a/b.txt", strings.NewReader("b")); err != nil {
		t.Fatal(err)
	}
	full := s.Join(s.DefaultURL(), "a", "b.txt")
	if !strings.Contains(full, "/root/a/b.txt?") || !strings.Contains(full, "use_path_style=true") {
		t.Errorf("Join = %q, want the path before the options", full)
	}
	if data, err := s.ReadAll(ctx, full); err != nil || string(data) != "b" {
		t.Errorf("ReadAll(%s) = %q, %v", full, data, err)
	}
	// The same bucket with its options in another order is the same bucket.
	base, query, _ := strings.Cut(full, "?")
	pairs := strings.Split(query, "&")
	slices.Reverse(pairs)
	other := base + "?" + strings.Join(pairs, "&")
	if data, err := s.ReadAll(ctx, other); err != nil || string(data) != "b" {
		t.Errorf("ReadAll(%s) = %q, %v", other, data, err)
	}
	if n := len(s.cloud); n != 1 {
		t.Errorf("%d buckets opened, want 1", n)
	}

	for _, tt := range []struct {
		loc  string
		want string // in the error
	}{
		{"s3:///key", "names no bucket: write s3://BUCKET/PATH"},
		{"gs://b/x#frag", "fragments"},
		{"file:///tmp/x?region=y", "query parameters are only for s3, gs and azblob"},
		{"s3://b/x?regoin=us-east-1", `unknown query parameter "regoin"`},
		{"s3://b/x?regoin=us-east-1", "S3 credentials come from the AWS default chain"},
		{"azblob://c/x?localemu=maybe", "Azurite is named with ?localemu=true"},
		{"gs://b/x?endpoint=http://x", "STORAGE_EMULATOR_HOST"},
	} {
		_, err := s.ReadAll(ctx, tt.loc)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ReadAll(%q) error = %v, want it to say %q", tt.loc, err, tt.want)
		}
	}
}

func TestCheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s3 := blobtest.StartS3(t)
	good, err := NewStore(withPath(t, s3.Bucket(t), "/spotml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := good.Check(ctx); err != nil {
		t.Errorf("Check of an existing bucket: %v", err)
	}

	missing, err := NewStore(s3.URL("no-such-bucket"))
	if err != nil {
		t.Fatal(err)
	}
	if err := missing.Check(ctx); err == nil || !strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist: create it`) {
		t.Errorf("Check of a missing bucket: %v", err)
	}

	// Nothing listens there: the error says where credentials and
	// endpoints come from. The SDK's retries are bounded by ctx.
	down, err := NewStore("s3://b/x?endpoint=http://127.0.0.1:1&use_path_style=true&region=us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := down.Check(ctx); err == nil || !strings.Contains(err.Error(), "cannot be listed") || !strings.Contains(err.Error(), "?endpoint=") {
		t.Errorf("Check of an unreachable endpoint: %v", err)
	}

	for _, kind := range []string{"file", "mem", "gs", "azblob"} {
		if err := newTestStore(t, kind).Check(ctx); err != nil {
			t.Errorf("Check(%s): %v", kind, err)
		}
	}
}

// TestCloudErrorsSayWhereCredentialsComeFrom: an operation that the store
// refuses for its credentials, or that cannot reach the service, says where
// that scheme's credentials and endpoint come from.
func TestCloudErrorsSayWhereCredentialsComeFrom(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := blobtest.StartAzurite(t)
	u := withPath(t, a.Bucket(t), "/root")
	// Azurite checks shared-key signatures as Azure does.
	t.Setenv("AZURE_STORAGE_KEY", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==")
	s, err := NewStore(u)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Write(ctx, "x.txt", strings.NewReader("x")); err == nil || !strings.Contains(err.Error(), "credentials from AZURE_STORAGE_KEY") {
		t.Errorf("Write with a wrong key: %v, want the credential sources named", err)
	}
	if err := s.Check(ctx); err == nil || !strings.Contains(err.Error(), "cannot be listed") {
		t.Errorf("Check with a wrong key: %v", err)
	}

	blobtest.StartS3(t) // its credentials
	down, err := NewStore("s3://b/x?endpoint=http://127.0.0.1:1&use_path_style=true&region=us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	if _, err := down.ReadAll(ctx, "k"); err == nil || !strings.Contains(err.Error(), "an S3-compatible server is named with ?endpoint=") {
		t.Errorf("ReadAll from an unreachable endpoint: %v, want the endpoint option named", err)
	}
}
