package kubetest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// Environment the re-executed test binary finds itself in.
const (
	envInside   = "SPOTML_KUBETEST_INSIDE"   // set inside the namespaces Main made
	envNoNS     = "SPOTML_KUBETEST_NO_NETNS" // why Main could not make them
	envCgroup   = "SPOTML_KUBETEST_CGROUP"   // cgroup name every container of this run lives under
	envRunDir   = "SPOTML_KUBETEST_DIR"      // directory the clusters' directories are made in
	envRequire  = "SPOTML_REQUIRE_KUBE"
	envKubeBin  = "SPOTML_KUBE_BIN"
	kubeVersion = "v1.37.2"
)

// Main runs the test binary's tests inside a network, mount and PID namespace
// of their own, so that the cluster, its nodes' addresses and everything that
// talks to them stay off this machine's network, and so that every process the
// tests started (containers included) dies with the test binary: when the
// namespace's first process exits the kernel kills the rest. Afterwards it
// removes the cgroups the run's containers used. Call it from TestMain:
//
//	func TestMain(m *testing.M) { kubetest.Main(m) }
//
// Without root or unshare(1) the tests run where they are and Start skips.
func Main(m *testing.M) {
	if os.Getenv(envInside) != "" {
		os.Exit(runInside(m))
	}
	code, err := reexec()
	if err != nil {
		// Run the tests anyway: those that need a cluster skip (or fail
		// under SPOTML_REQUIRE_KUBE) naming this reason.
		os.Setenv(envNoNS, err.Error())
		os.Exit(m.Run())
	}
	os.Exit(code)
}

// reexec runs this test binary again under unshare(1) and returns its exit
// status. Only an error starting it is returned as an error.
func reexec() (int, error) {
	if os.Geteuid() != 0 {
		return 0, errors.New("kubetest needs root to make a network namespace (run the tests as root)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		return 0, errors.New("kubetest needs unshare(1) from util-linux to make a network namespace")
	}
	self, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("kubetest: find the test binary: %w", err)
	}
	cgroup := "spotml-kubetest-" + strconv.Itoa(os.Getpid())
	// Every cluster's directory lives under this one, removed afterwards
	// even if the tests crashed before their cleanups ran.
	runDir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		return 0, fmt.Errorf("kubetest: %w", err)
	}
	defer os.RemoveAll(runDir)
	args := append([]string{"--net", "--mount", "--pid", "--fork", "--kill-child",
		"--propagation", "private", "--mount-proc", self}, os.Args[1:]...)
	cmd := exec.Command(unshare, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envInside+"=1", envCgroup+"="+cgroup, envRunDir+"="+runDir)
	// If this process is killed, unshare dies, and --kill-child takes the
	// tests' namespace, and so everything in it, down with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("kubetest: start the tests under unshare: %w", err)
	}
	// An interrupt reaches the tests (and through them their clusters)
	// rather than leaving them running.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		for s := range sigs {
			cmd.Process.Signal(s)
		}
	}()
	err = cmd.Wait()
	signal.Stop(sigs)
	removeCgroups(cgroup)
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exit):
		if exit.ExitCode() < 0 {
			return 1, nil // killed by a signal
		}
		return exit.ExitCode(), nil
	default:
		return 1, nil
	}
}

// runInside prepares the fresh namespaces and runs the tests.
func runInside(m *testing.M) int {
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		os.Setenv(envNoNS, fmt.Sprintf("kubetest: bring up loopback in the test's network namespace: %v: %s (install iproute2)", err, out))
	}
	code := m.Run()
	unmountRunDirs()
	return code
}

// removeCgroups removes the cgroup subtree name in every hierarchy, deepest
// first (a cgroup directory is removed with rmdir, not by removing files).
func removeCgroups(name string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
	if _, err := os.Stat("/sys/fs/cgroup/" + name); err == nil {
		roots = append(roots, "/sys/fs/cgroup/"+name)
	}
	for _, root := range roots {
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
	}
}

// RunDir is a directory of this test run's own, removed when the run ends
// (even if the tests crashed before their cleanups ran): for files several
// tests share, such as a binary built once.
func RunDir() string { return os.Getenv(envRunDir) }
