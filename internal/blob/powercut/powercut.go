// Package powercut simulates power cuts for code that writes through a
// disk.FS. A Disk forwards every call to the real file system under a root
// directory and remembers what a power cut at that moment could leave
// behind: file data survives only once synced, and a change to a name (a
// new file or directory, a rename, a removal) certainly only once its
// directory was synced, possibly any time before. The states it offers are
// the changes kept in the order they were made up to any point (as a
// journaling file system loses them) and the changes certain to survive
// alone (all POSIX promises). Outcomes says how many states a cut now could
// leave and Materialize writes one of them out as real files.
//
// A Disk can also cut the power at its n-th call (that call and every later
// one fail with ErrPowerCut and change nothing), or fail just that one call.
package powercut

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/spotml/spotml/internal/blob/disk"
)

// ErrPowerCut is returned by every call from the cut on.
var ErrPowerCut = errors.New("powercut: the power is off")

// ErrInjected is returned by the one call FailAt names.
var ErrInjected = errors.New("powercut: injected failure")

// Disk is a disk.FS that tracks what would survive a power cut.
type Disk struct {
	root string

	mu     sync.Mutex
	base   map[string]node // the tree when New ran, all durable
	ops    []op            // name changes since, in order
	inodes []*inode
	calls  int
	cutAt  int // 0: never
	failAt int // 0: never
	off    bool
	noSync bool
	steps  []string
}

var _ disk.FS = (*Disk)(nil)

type node struct {
	dir   bool
	inode int
}

type inode struct {
	data, synced []byte
}

type opKind int

const (
	opMkdir opKind = iota
	opCreate
	opRename
	opRemove
)

type op struct {
	kind     opKind
	path, to string
	inode    int
	// unsynced lists the directories whose sync this change still waits
	// for to be certain to survive.
	unsynced []string
}

// New returns a Disk over root, taking everything under it now as durable.
func New(root string) (*Disk, error) {
	root = filepath.Clean(root)
	d := &Disk{root: root, base: map[string]node{}}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		if e.IsDir() {
			d.base[p] = node{dir: true}
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		d.base[p] = node{inode: d.newInode(data, data)}
		return nil
	})
	return d, err
}

// CutAt cuts the power at the n-th call from now on (counting from 1),
// or never if n is 0.
func (d *Disk) CutAt(n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cutAt = n
	if n > 0 {
		d.cutAt += d.calls
	}
}

// FailAt makes the n-th call from now on fail, or none if n is 0.
func (d *Disk) FailAt(n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failAt = n
	if n > 0 {
		d.failAt += d.calls
	}
}

// DropSyncs makes Sync and SyncDir do nothing, as a writer that never syncs.
func (d *Disk) DropSyncs() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.noSync = true
}

// Steps returns a label for each call made so far, such as "rename
// /r/ck/LATEST.1f.tmp -> /r/ck/LATEST".
func (d *Disk) Steps() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.steps...)
}

// Off reports whether the power was cut.
func (d *Disk) Off() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.off
}

// step counts a call and says whether it may go ahead. Called with d.mu held.
func (d *Disk) step(label string) error {
	d.calls++
	d.steps = append(d.steps, label)
	if d.off || d.calls == d.cutAt {
		d.off = true
		return ErrPowerCut
	}
	if d.calls == d.failAt {
		return ErrInjected
	}
	return nil
}

func (d *Disk) newInode(data, synced []byte) int {
	d.inodes = append(d.inodes, &inode{data: data, synced: synced})
	return len(d.inodes) - 1
}

func (d *Disk) record(o op, dirs ...string) {
	o.unsynced = dirs
	d.ops = append(d.ops, o)
}

func (d *Disk) Create(name string) (disk.File, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.step("create " + name); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		return nil, err
	}
	ino := d.newInode(nil, nil)
	d.record(op{kind: opCreate, path: name, inode: ino}, filepath.Dir(name))
	return &file{d: d, f: f, inode: ino}, nil
}

func (d *Disk) Mkdir(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.step("mkdir " + name); err != nil {
		return err
	}
	if err := os.Mkdir(name, 0o777); err != nil {
		return err
	}
	d.record(op{kind: opMkdir, path: name}, filepath.Dir(name))
	return nil
}

func (d *Disk) Rename(oldpath, newpath string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.step("rename " + oldpath + " -> " + newpath); err != nil {
		return err
	}
	if err := os.Rename(oldpath, newpath); err != nil {
		return err
	}
	d.record(op{kind: opRename, path: oldpath, to: newpath}, filepath.Dir(oldpath), filepath.Dir(newpath))
	return nil
}

func (d *Disk) Remove(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.step("remove " + name); err != nil {
		return err
	}
	if err := os.Remove(name); err != nil {
		return err
	}
	d.record(op{kind: opRemove, path: name}, filepath.Dir(name))
	return nil
}

// RemoveAll is one call, but each name it removes is a change of its own,
// children first, so a cut can keep any part of it.
func (d *Disk) RemoveAll(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.step("removeall " + name); err != nil {
		return err
	}
	var names []string
	err := filepath.WalkDir(name, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		names = append(names, p)
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := os.RemoveAll(name); err != nil {
		return err
	}
	for i := len(names) - 1; i >= 0; i-- { // deepest first
		d.record(op{kind: opRemove, path: names[i]}, filepath.Dir(names[i]))
	}
	return nil
}

func (d *Disk) SyncDir(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.step("syncdir " + name); err != nil {
		return err
	}
	if d.noSync {
		return nil
	}
	name = filepath.Clean(name)
	for i := range d.ops {
		o := &d.ops[i]
		kept := o.unsynced[:0:0]
		for _, dir := range o.unsynced {
			if dir != name {
				kept = append(kept, dir)
			}
		}
		o.unsynced = kept
	}
	return nil
}

// SyncFS makes every file's data and every name change durable.
func (d *Disk) SyncFS(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.step("syncfs " + name); err != nil {
		return err
	}
	if d.noSync {
		return nil
	}
	for _, in := range d.inodes {
		in.synced = append([]byte(nil), in.data...)
	}
	for i := range d.ops {
		d.ops[i].unsynced = nil
	}
	return nil
}

// durable returns how many of the first ops a cut now certainly keeps: all
// up to the last one that is durable, since changes survive in order.
func (d *Disk) durable() int {
	n := 0
	for i, o := range d.ops {
		if len(o.unsynced) == 0 {
			n = i + 1
		}
	}
	return n
}

// Outcomes returns how many different states a power cut now could leave
// (of those Materialize writes).
func (d *Disk) Outcomes() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.outcomes()
}

func (d *Disk) outcomes() int { return len(d.ops) - d.durable() + 2 }

// Materialize writes under dst, which stands for the Disk's root, what a
// power cut now could leave. Outcomes 0 to Outcomes()-2 keep the changes
// to names in order: outcome 0 only up to the last one certain to survive,
// each next outcome one more, Outcomes()-2 all of them; that is how a
// journaling file system such as ext4 loses them. The last outcome keeps
// only the changes certain to survive, each one whose directory was synced
// after it, and nothing else, as POSIX alone promises; a name whose
// directory is lost is lost with it. Files hold only the data synced.
func (d *Disk) Materialize(outcome int, dst string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.outcomes()
	if outcome < 0 || outcome >= n {
		return fmt.Errorf("powercut: outcome %d of %d", outcome, n)
	}
	return d.materialize(outcome, outcome == n-1, dst)
}

// MaterializeCertain writes the last outcome, the changes certain to
// survive alone, whatever the number of outcomes is by then.
func (d *Disk) MaterializeCertain(dst string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.materialize(0, true, dst)
}

func (d *Disk) materialize(outcome int, strict bool, dst string) error {
	var kept []op
	if strict {
		for _, o := range d.ops {
			if len(o.unsynced) == 0 {
				kept = append(kept, o)
			}
		}
	} else {
		kept = d.ops[:d.durable()+outcome]
	}
	tree := make(map[string]node, len(d.base))
	for p, n := range d.base {
		tree[p] = n
	}
	for _, o := range kept {
		switch o.kind {
		case opMkdir:
			tree[o.path] = node{dir: true}
		case opCreate:
			tree[o.path] = node{inode: o.inode}
		case opRemove:
			delete(tree, o.path)
		case opRename:
			moved := map[string]node{}
			for p, n := range tree {
				if p == o.path || strings.HasPrefix(p, o.path+string(filepath.Separator)) {
					moved[o.to+strings.TrimPrefix(p, o.path)] = n
					delete(tree, p)
				}
			}
			for p, n := range moved {
				tree[p] = n
			}
		}
	}
	paths := make([]string, 0, len(tree))
	for p := range tree {
		paths = append(paths, p)
	}
	sort.Strings(paths) // parents first
	for _, p := range paths {
		rel, err := filepath.Rel(d.root, p)
		if err != nil || !filepath.IsLocal(rel) {
			return fmt.Errorf("powercut: %s is outside %s", p, d.root)
		}
		out := filepath.Join(dst, rel)
		if _, err := os.Stat(filepath.Dir(out)); err != nil {
			if strict {
				continue // its directory's own name was lost
			}
			return fmt.Errorf("powercut: %s survives but its directory does not: %w", p, err)
		}
		n := tree[p]
		if n.dir {
			err = os.Mkdir(out, 0o755)
		} else {
			err = os.WriteFile(out, d.inodes[n.inode].synced, 0o644)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// file is a file being written through a Disk.
type file struct {
	d     *Disk
	f     *os.File
	inode int
}

func (f *file) Name() string { return f.f.Name() }

func (f *file) Write(p []byte) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.d.step(fmt.Sprintf("write %s (%d bytes)", f.f.Name(), len(p))); err != nil {
		return 0, err
	}
	n, err := f.f.Write(p)
	in := f.d.inodes[f.inode]
	in.data = append(in.data, p[:n]...)
	return n, err
}

func (f *file) Sync() error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.d.step("sync " + f.f.Name()); err != nil {
		return err
	}
	if f.d.noSync {
		return nil
	}
	in := f.d.inodes[f.inode]
	in.synced = append([]byte(nil), in.data...)
	return nil
}

func (f *file) Close() error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.d.step("close " + f.f.Name()); err != nil {
		f.f.Close() // the descriptor, not the file: nothing on disk changes
		return err
	}
	return f.f.Close()
}
