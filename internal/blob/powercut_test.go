package blob

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/spotml/spotml/internal/blob/powercut"
)

var (
	ckptGen1 = map[string]string{"step": "1", "model/w.bin": "weights one", "model/opt/state": "optimizer one"}
	ckptGen2 = map[string]string{"step": "2", "model/w.bin": "weights two, longer", "extra": "new in two"}
)

// cutRun is one checkpoint Save run on a Disk that may cut the power.
type cutRun struct {
	disk    *powercut.Disk
	root    string
	saveErr error
	steps   []string // the Disk's calls made by the Save under test
}

// saveWithCut saves gen1 (unless first is set, then the save under test is
// the first one), then saves gen2 with the power cut at the Save's cut-th
// call (0: never) or with that call failing (fail).
func saveWithCut(t *testing.T, first bool, cut int, fail, dropSyncs bool) cutRun {
	t.Helper()
	ctx := context.Background()
	root := t.TempDir()
	d, err := powercut.New(root)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewStore("file://"+filepath.ToSlash(root)+"/blobs", WithDisk(d), WithTransfers(1))
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	c := s.Checkpoint("ck/job", src)
	want := ckptGen2
	if !first {
		writeTree(t, src, ckptGen1)
		if _, err := c.Save(ctx); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(src); err != nil {
			t.Fatal(err)
		}
	}
	writeTree(t, src, want)
	if dropSyncs { // only the Save under test; the previous generation is on disk
		d.DropSyncs()
	}
	before := len(d.Steps())
	if fail {
		d.FailAt(cut)
	} else {
		d.CutAt(cut)
	}
	_, err = c.Save(ctx)
	return cutRun{disk: d, root: root, saveErr: err, steps: d.Steps()[before:]}
}

// commitStep returns the 1-based index of the call after which the new
// LATEST is durable: the directory sync after its rename.
func commitStep(t *testing.T, steps []string) int {
	for i, s := range steps {
		if strings.HasPrefix(s, "rename ") && strings.HasSuffix(s, "/LATEST") {
			for j := i + 1; j < len(steps); j++ {
				if strings.HasPrefix(steps[j], "syncdir ") {
					return j + 1
				}
			}
		}
	}
	t.Fatalf("no durable LATEST among the steps %q", steps)
	return 0
}

// checkCuts cuts the power at every call of a checkpoint Save and, for every
// state each cut could leave, restores and checks that it finds a whole
// generation: the new one if LATEST naming it was durable, else the new or
// the previous one. It returns what went wrong, one line per bad state.
func checkCuts(t *testing.T, first, dropSyncs bool) (bad []string) {
	return checkCutsUntil(t, first, dropSyncs, func(string) bool { return false })
}

// checkCutsUntil is checkCuts that returns early once stop says yes to a
// bad state.
func checkCutsUntil(t *testing.T, first, dropSyncs bool, stop func(bad string) bool) (bad []string) {
	ctx := context.Background()
	full := saveWithCut(t, first, 0, false, dropSyncs)
	if full.saveErr != nil {
		t.Fatal(full.saveErr)
	}
	n := len(full.steps)
	commit := commitStep(t, full.steps)
	for cut := 1; cut <= n+1; cut++ {
		run := saveWithCut(t, first, cut, false, dropSyncs)
		step := "after the Save"
		if cut <= n {
			step = full.steps[cut-1]
			if run.saveErr == nil {
				t.Fatalf("cut at step %d (%s): Save succeeded", cut, step)
			}
		}
		// Outcome -1 is the process stopping at the step with the power on:
		// everything done so far stays. The others are the power cut's.
		for o := -1; o < run.disk.Outcomes(); o++ {
			dst := run.root
			what := "process stopped"
			if o >= 0 {
				dst = t.TempDir()
				what = fmt.Sprintf("power cut, outcome %d", o)
				if err := run.disk.Materialize(o, dst); err != nil {
					t.Fatal(err)
				}
			}
			// A Disk again, only to skip real fsyncs: nothing is cut.
			after, err := powercut.New(dst)
			if err != nil {
				t.Fatal(err)
			}
			s, err := NewStore("file://"+filepath.ToSlash(dst)+"/blobs", WithDisk(after))
			if err != nil {
				t.Fatal(err)
			}
			target := t.TempDir()
			ok, err := s.Checkpoint("ck/job", target).Restore(ctx)
			got := readTree(t, target)
			var why string
			switch {
			case err != nil:
				why = "restore failed: " + err.Error()
			case !ok && !first:
				why = "no checkpoint found"
			case !ok:
				if cut > commit {
					why = "no checkpoint found after LATEST was durable"
				}
			case reflect.DeepEqual(got, ckptGen2):
			case reflect.DeepEqual(got, ckptGen1) && !first:
				if cut > commit {
					why = "restored the previous generation after LATEST naming the new one was durable"
				}
			default:
				why = fmt.Sprintf("restored an incomplete generation %q", got)
			}
			if why != "" {
				bad = append(bad, fmt.Sprintf("cut at step %d (%s), %s: %s", cut, step, what, why))
				if stop(bad[len(bad)-1]) {
					return bad
				}
				continue
			}
			// Work goes on from the state the cut left.
			src := t.TempDir()
			writeTree(t, src, map[string]string{"step": "3"})
			if _, err := s.Checkpoint("ck/job", src).Save(ctx); err != nil {
				bad = append(bad, fmt.Sprintf("cut at step %d (%s), %s: next Save: %v", cut, step, what, err))
				continue
			}
			again := t.TempDir()
			if ok, err := s.Checkpoint("ck/job", again).Restore(ctx); err != nil || !ok || readTree(t, again)["step"] != "3" {
				bad = append(bad, fmt.Sprintf("cut at step %d (%s), %s: next Save then Restore = %v, %v, %q", cut, step, what, ok, err, readTree(t, again)))
			}
		}
	}
	return bad
}

// TestCheckpointSurvivesPowerCut stops a Save at every step (each mkdir,
// write, sync, close, rename, directory sync of the generation's files, of
// LATEST, and the prune), and for the process stopping there and for every
// state a power cut there could leave, checks that resuming finds a complete
// generation, the newest durable one, and that the next Save works.
func TestCheckpointSurvivesPowerCut(t *testing.T) {
	for _, first := range []bool{false, true} {
		t.Run(fmt.Sprintf("first=%v", first), func(t *testing.T) {
			full := saveWithCut(t, first, 0, false, false)
			for i, s := range full.steps {
				t.Logf("step %d: %s", i+1, s)
			}
			for _, b := range checkCuts(t, first, false) {
				t.Error(b)
			}
		})
	}
}

// TestPowerCutCatchesUnsyncedWrites runs the same cuts against a Save that
// never syncs, as the file store did before (fileblob renames without
// fsync): the harness must find states where resuming finds no complete
// generation at all, the files LATEST names (or LATEST itself) empty and
// the previous generation gone.
func TestPowerCutCatchesUnsyncedWrites(t *testing.T) {
	noComplete := func(b string) bool {
		return strings.Contains(b, "restore failed") || strings.Contains(b, "incomplete generation")
	}
	bad := checkCutsUntil(t, false, true, noComplete)
	if len(bad) == 0 || !noComplete(bad[len(bad)-1]) {
		t.Fatalf("no state without a complete generation with syncs dropped; bad ones: %q", bad)
	}
	t.Logf("with syncs dropped: %s", bad[len(bad)-1])
}

// TestCheckpointSaveFailsAtEveryStep fails each call of a Save once: the
// Save reports the error, the store still restores a complete generation
// (the new one once LATEST was durable), and a retried Save succeeds.
func TestCheckpointSaveFailsAtEveryStep(t *testing.T) {
	ctx := context.Background()
	full := saveWithCut(t, false, 0, false, false)
	commit := commitStep(t, full.steps)
	for step := 1; step <= len(full.steps); step++ {
		run := saveWithCut(t, false, step, true, false)
		label := fmt.Sprintf("failure at step %d (%s)", step, full.steps[step-1])
		if !errors.Is(run.saveErr, powercut.ErrInjected) {
			t.Errorf("%s: Save error = %v, want the injected one", label, run.saveErr)
		}
		s, err := NewStore("file://" + filepath.ToSlash(run.root) + "/blobs")
		if err != nil {
			t.Fatal(err)
		}
		target := t.TempDir()
		ok, err := s.Checkpoint("ck/job", target).Restore(ctx)
		got := readTree(t, target)
		switch {
		case err != nil || !ok:
			t.Errorf("%s: Restore = %v, %v", label, ok, err)
		case step > commit && !reflect.DeepEqual(got, ckptGen2):
			t.Errorf("%s: restored %q, want the new generation", label, got)
		case !reflect.DeepEqual(got, ckptGen1) && !reflect.DeepEqual(got, ckptGen2):
			t.Errorf("%s: restored an incomplete generation %q", label, got)
		}
		src := t.TempDir()
		writeTree(t, src, ckptGen2)
		if _, err := s.Checkpoint("ck/job", src).Save(ctx); err != nil {
			t.Errorf("%s: retried Save: %v", label, err)
		}
	}
}

// TestDeferSyncs: objects written under DeferSyncs are absent after a
// power cut before Sync and certain to survive, whole, once Sync
// returned; the run costs two file-system syncs, none per object.
func TestDeferSyncs(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d, err := powercut.New(root)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewStore("file://"+filepath.ToSlash(root)+"/blobs", WithDisk(d))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Open(ctx, "out")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	want := map[string]string{"r/a": "result a", "r/b": "result b, longer", "r/c": "c", "q/d": "in another directory"}
	dctx, syncs := DeferSyncs(ctx)
	before := len(d.Steps())
	for k, v := range want {
		if err := b.WriteAll(dctx, k, []byte(v), nil); err != nil {
			t.Fatal(err)
		}
	}
	check := func(after bool) {
		t.Helper()
		for i := range d.Outcomes() {
			dst := t.TempDir()
			if err := d.Materialize(i, dst); err != nil {
				t.Fatal(err)
			}
			for k, v := range want {
				got, err := os.ReadFile(filepath.Join(dst, "blobs", "out", filepath.FromSlash(k)))
				switch {
				case err == nil && string(got) != v:
					t.Errorf("%s after a cut (outcome %d): %q, want %q or nothing", k, i, got, v)
				case err != nil && after:
					t.Errorf("%s lost in a cut after Sync (outcome %d): %v", k, i, err)
				case err == nil && !after:
					t.Errorf("%s in place before Sync (outcome %d)", k, i)
				}
			}
		}
	}
	check(false)
	if err := syncs.Sync(); err != nil {
		t.Fatal(err)
	}
	check(true)
	var fsSyncs, fileSyncs int
	for _, st := range d.Steps()[before:] {
		switch {
		case strings.HasPrefix(st, "syncfs "):
			fsSyncs++
		case strings.HasPrefix(st, "sync "):
			fileSyncs++
		}
	}
	if fsSyncs != 2 || fileSyncs != 0 {
		t.Errorf("%d file-system syncs and %d file syncs for four objects, want 2 and 0: %q", fsSyncs, fileSyncs, d.Steps()[before:])
	}
}
