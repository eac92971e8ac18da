package kubetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Played nodes run each container with runc, the OCI runtime under
// containerd and CRI-O, from a bundle the harness writes: the image's rootfs
// (an overlay, so containers never write into the image), the pod's volumes
// as bind mounts at their mountPaths, its own PID, mount, IPC and UTS
// namespaces, and the test's network namespace (the played node's address is
// the pod's IP, as with hostNetwork). runc rather than a chroot by hand: the
// mounts, namespaces, cgroup and signal forwarding are what a real kubelet's
// runtime does, and killing a container's PID 1 takes all its processes
// with it.

// mount is one bind mount into a container.
type mount struct {
	source, target string
	readOnly       bool
}

// ctrSpec says what runs in one container.
type ctrSpec struct {
	id       string // runc's container ID
	bundle   string // directory for config.json, rootfs and the overlay's layers
	image    string // rootfs directory of the image
	args     []string
	env      []string
	cwd      string
	hostname string
	uid, gid uint32
	mounts   []mount
	cgroup   string // cgroups path
	log      string // file for the container's stdout and stderr
}

// A runningCtr is a container started by runc run in the foreground: runc
// forwards signals it gets to the container's PID 1 and exits with its
// status.
type runningCtr struct {
	spec     ctrSpec
	runcRoot string
	cmd      *exec.Cmd
	done     chan struct{}
	exitCode int
	started  time.Time
	finished time.Time
}

// startContainer mounts the rootfs and starts runc run.
func startContainer(runcRoot string, s ctrSpec) (*runningCtr, error) {
	rootfs := filepath.Join(s.bundle, "rootfs")
	upper, work := filepath.Join(s.bundle, "upper"), filepath.Join(s.bundle, "work")
	for _, d := range []string{rootfs, upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", s.image, upper, work)
	if err := syscall.Mount("overlay", rootfs, "overlay", 0, opts); err != nil {
		return nil, fmt.Errorf("mount the image's overlay at %s: %w", rootfs, err)
	}
	cfg, err := json.Marshal(ociConfig(s))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(s.bundle, "config.json"), cfg, 0o644); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("runc", "--root", runcRoot, "run", "--bundle", s.bundle, s.id)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		syscall.Unmount(rootfs, syscall.MNT_DETACH)
		if errors.Is(err, exec.ErrNotFound) {
			return nil, errors.New("runc is not installed: install the Debian package runc")
		}
		return nil, fmt.Errorf("start runc: %w", err)
	}
	r := &runningCtr{spec: s, runcRoot: runcRoot, cmd: cmd, done: make(chan struct{}), started: time.Now()}
	go func() {
		err := cmd.Wait()
		r.exitCode = 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			r.exitCode = exit.ExitCode()
			if r.exitCode < 0 { // runc itself was killed
				r.exitCode = 137
			}
		} else if err != nil {
			r.exitCode = 128
		}
		r.finished = time.Now()
		// runc run removes its container when it ends; if runc was killed
		// instead, remove it (by its ID) here.
		exec.Command("runc", "--root", runcRoot, "delete", "--force", s.id).Run()
		syscall.Unmount(rootfs, syscall.MNT_DETACH)
		close(r.done)
	}()
	return r, nil
}

// signal sends sig to the container's PID 1: SIGTERM through runc run
// (which forwards it), SIGKILL with runc kill, since killing runc run
// itself would leave the container running.
func (r *runningCtr) signal(sig syscall.Signal) {
	if sig == syscall.SIGKILL {
		exec.Command("runc", "--root", r.runcRoot, "kill", r.spec.id, "KILL").Run()
		return
	}
	r.cmd.Process.Signal(sig)
}

func (r *runningCtr) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
func (r *runningCtr) stop(grace time.Duration) {
	if r.exited() {
		return
	}
	if grace > 0 {
		r.signal(syscall.SIGTERM)
		select {
		case <-r.done:
			return
		case <-time.After(grace):
		}
	}
	for !r.exited() {
		r.signal(syscall.SIGKILL)
		select {
		case <-r.done:
		case <-time.After(time.Second):
		}
	}
}

// exec runs a command in the running container (an exec probe).
func (r *runningCtr) exec(timeout time.Duration, args ...string) error {
	cmd := exec.Command("runc", append([]string{"--root", r.runcRoot, "exec", r.spec.id}, args...)...)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("timed out after %s", timeout)
	}
}

// ociConfig is the OCI runtime config for s: runc's own defaults (runc
// spec) with containerd's default capabilities, no network namespace, and
// the pod's mounts.
func ociConfig(s ctrSpec) map[string]any {
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
		"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
		"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}
	mounts := []map[string]any{
		{"destination": "/proc", "type": "proc", "source": "proc"},
		{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": []string{"nosuid", "noexec", "nodev"}},
		{"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": []string{"nosuid", "noexec", "nodev", "ro"}},
	}
	for _, m := range s.mounts {
		opts := []string{"rbind", "rprivate"}
		if m.readOnly {
			opts = append(opts, "ro")
		} else {
			opts = append(opts, "rw")
		}
		mounts = append(mounts, map[string]any{"destination": m.target, "type": "bind", "source": m.source, "options": opts})
	}
	cwd := s.cwd
	if cwd == "" {
		cwd = "/"
	}
	return map[string]any{
		"ociVersion": "1.0.2",
		"process": map[string]any{
			"terminal": false,
			"user":     map[string]any{"uid": s.uid, "gid": s.gid},
			"args":     s.args,
			"env":      s.env,
			"cwd":      cwd,
			"capabilities": map[string]any{
				"bounding": caps, "effective": caps, "permitted": caps,
			},
		},
		"root":     map[string]any{"path": "rootfs", "readonly": false},
		"hostname": s.hostname,
		"mounts":   mounts,
		"linux": map[string]any{
			"cgroupsPath": s.cgroup,
			"namespaces": []map[string]string{
				{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
			},
			"maskedPaths": []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
				"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
				"/sys/firmware", "/proc/scsi"},
			"readonlyPaths": []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}
