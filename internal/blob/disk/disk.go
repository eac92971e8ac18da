// Package disk is the file system that the file:// blob store writes
// through: the few operations whose order decides what survives a power
// loss. OS is the real one; package powercut wraps it to cut the power
// between any two of them in tests.
package disk

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// FS is a file system that changes names and contents only through these
// calls. Until SyncDir of its parent directory returns, a Mkdir, a Create's
// new name, a Rename or a Remove may be lost by a power cut; until Sync
// returns, the data written to a file may be.
type FS interface {
	// Create makes a new, empty file for writing (mode 0666 before umask)
	// and fails if name exists.
	Create(name string) (File, error)
	// Mkdir makes one directory (mode 0777 before umask).
	Mkdir(name string) error
	Rename(oldpath, newpath string) error
	Remove(name string) error
	RemoveAll(name string) error
	// SyncDir makes the directory's entries durable: the names created,
	// renamed into or removed from it so far.
	SyncDir(name string) error
	// SyncFS makes everything written so far to the file system that
	// holds name durable: every file's data and every directory's entries
	// (syncfs(2)). One SyncFS costs about one file's sync, whatever was
	// written.
	SyncFS(name string) error
}

// File is a file being written.
type File interface {
	io.Writer
	Name() string
	// Sync makes the data written so far durable.
	Sync() error
	Close() error
}

// OS is the operating system's file system.
type OS struct{}

var _ FS = OS{}

func (OS) Create(name string) (File, error) {
	f, err := Open(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		return nil, err // not a File holding a nil *os.File
	}
	return f, nil
}

// Open is os.OpenFile for regular files and directories, in one system
// call and one fcntl. os.OpenFile also registers every file with the
// runtime's poller, which Linux refuses for regular files: four fcntl
// calls and an epoll_ctl, each a system call, which on the benchmark's VM
// cost as much as the open itself (a fifth of reading a small object,
// BenchmarkFileReadSmall). The file is read and written blocking, as
// regular files are anyway.
func Open(name string, flag int, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Open(name, flag|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

func (OS) Mkdir(name string) error              { return os.Mkdir(name, 0o777) }
func (OS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }
func (OS) Remove(name string) error             { return os.Remove(name) }
func (OS) RemoveAll(name string) error          { return os.RemoveAll(name) }

func (OS) SyncDir(name string) error {
	d, err := Open(name, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func (OS) SyncFS(name string) error {
	d, err := Open(name, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	err = unix.Syncfs(int(d.Fd()))
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
