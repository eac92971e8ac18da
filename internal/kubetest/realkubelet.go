package kubetest

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The real kubelet: containerd (Debian's 1.6, with runc) and the kubelet
// built by scripts/kube-build.sh, configured as ../shared/kubernetes-here.md
// records. Its node address lives on a bridge inside the test's network
// namespace; pods get addresses from a CNI bridge there too.
const (
	realNodeIP     = "10.222.0.1"
	realNodeBridge = "kt-node0"
	podBridge      = "kt-cni0"
	podSubnet      = "10.223.0.0/24"
	pauseImage     = "docker.io/kubetest/pause:1"
)

// runDirs are the paths containerd and the kubelet write outside their
// scratch directories; Main's private mount namespace covers each with a
// tmpfs of its own so nothing lands in the machine's.
var runDirs = []string{"/run/containerd", "/run/netns", "/var/lib/cni", "/var/log/pods", "/var/log/containers"}

var (
	runDirsOnce    sync.Once
	runDirsErr     error
	runDirsCreated []string
	runDirsMounted []string
)

// mountRunDirs covers runDirs with tmpfs mounts, once per test binary.
func mountRunDirs() error {
	runDirsOnce.Do(func() {
		for _, d := range runDirs {
			if _, err := os.Stat(d); os.IsNotExist(err) {
				if err := os.MkdirAll(d, 0o755); err != nil {
					runDirsErr = err
					return
				}
				runDirsCreated = append(runDirsCreated, d)
			}
			if err := syscall.Mount("tmpfs", d, "tmpfs", 0, "mode=755"); err != nil {
				runDirsErr = fmt.Errorf("mount a tmpfs at %s: %w", d, err)
				return
			}
			runDirsMounted = append(runDirsMounted, d)
		}
	})
	return runDirsErr
}

// unmountRunDirs undoes mountRunDirs, removing the mount points it made.
func unmountRunDirs() {
	for i := len(runDirsMounted) - 1; i >= 0; i-- {
		unmountUnder(runDirsMounted[i])
		syscall.Unmount(runDirsMounted[i], syscall.MNT_DETACH)
	}
	for i := len(runDirsCreated) - 1; i >= 0; i-- {
		os.Remove(runDirsCreated[i])
	}
}

// unmountUnder unmounts every mount below dir (not dir itself), deepest
// first: containers' rootfs, volumes, network namespaces' bind mounts.
func unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var points []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			points = append(points, fields[4])
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, p := range points {
		syscall.Unmount(p, syscall.MNT_DETACH)
	}
}

type realKubelet struct {
	c          *Cluster
	dir        string
	sock       string
	containerd *proc
	kubelet    *proc
}

func (c *Cluster) startRealKubelet() error {
	if err := mountRunDirs(); err != nil {
		return err
	}
	for _, tool := range []string{"containerd", "ctr", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed: install the Debian packages containerd and runc", tool)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		return fmt.Errorf("no CNI bridge plugin in /usr/lib/cni: install the Debian package containernetworking-plugins")
	}
	k := &realKubelet{c: c, dir: filepath.Join(c.Dir, "real"), sock: filepath.Join(c.Dir, "containerd.sock")}
	c.real = k
	for _, d := range []string{"containerd", "cni", "kubelet", "podlogs"} {
		if err := os.MkdirAll(filepath.Join(k.dir, d), 0o755); err != nil {
			return err
		}
	}
	// The node's address, on a bridge: the kernel here has no dummy links.
	for _, args := range [][]string{
		{"link", "add", realNodeBridge, "type", "bridge"},
		{"addr", "add", realNodeIP + "/24", "dev", realNodeBridge},
		{"link", "set", realNodeBridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	cni := `{"cniVersion": "0.4.0", "name": "kubetest", "plugins": [
  {"type": "bridge", "bridge": "` + podBridge + `", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "` + podSubnet + `"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}`
	if err := os.WriteFile(filepath.Join(k.dir, "cni", "10-kubetest.conflist"), []byte(cni), 0o644); err != nil {
		return err
	}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # The VM lacks CAP_SYS_RESOURCE: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
`, filepath.Join(k.dir, "containerd", "root"), filepath.Join(k.dir, "containerd", "state"), k.sock, pauseImage, filepath.Join(k.dir, "cni"))
	configPath := filepath.Join(k.dir, "containerd.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return err
	}
	var err error
	if k.containerd, err = c.spawn("containerd", "containerd", "--config", configPath); err != nil {
		return err
	}
	if err := c.waitFor(30*time.Second, "containerd's socket", func(ctx context.Context) (bool, error) {
		return exec.Command("ctr", "--address", k.sock, "--connect-timeout", "1s", "version").Run() == nil, nil
	}); err != nil {
		return err
	}
	if err := k.importPause(); err != nil {
		return fmt.Errorf("pause image: %w", err)
	}

	// The kubelet's cgroups live under this cluster's cgroup, which must
	// exist beforehand; cpuset needs its cpus and mems filled in.
	cgroupRoot := "/" + c.cgroup + "/kubelet"
	if err := makeCgroup(cgroupRoot); err != nil {
		return err
	}
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	kcfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
address: %s
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://%s
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
evictionHard: {memory.available: 100Mi, nodefs.available: 1%%, imagefs.available: 1%%, nodefs.inodesFree: 1%%}
failSwapOn: false
resolvConf: ""
podLogsDir: %s
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
serializeImagePulls: false
`, cgroupRoot, realNodeIP, ports[0], ports[1], k.sock, filepath.Join(k.dir, "podlogs"))
	kcfgPath := filepath.Join(k.dir, "kubelet.yaml")
	if err := os.WriteFile(kcfgPath, []byte(kcfg), 0o644); err != nil {
		return err
	}
	if k.kubelet, err = c.spawn("kubelet", c.bins.kubelet,
		"--config="+kcfgPath, "--kubeconfig="+c.Kubeconfig,
		"--hostname-override="+RealNodeName, "--node-ip="+realNodeIP,
		"--root-dir="+filepath.Join(k.dir, "kubelet"), "--cert-dir="+filepath.Join(k.dir, "kubelet", "pki"),
		"--v=1"); err != nil {
		return err
	}
	return c.waitFor(90*time.Second, "node "+RealNodeName+" Ready", func(ctx context.Context) (bool, error) {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, RealNodeName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
}

// makeCgroup creates path in every cgroup v1 hierarchy (and the v2 one),
// copying cpuset's cpus and mems down from the root.
func makeCgroup(path string) error {
	entries, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return err
	}
	for _, e := range entries {
		root := filepath.Join("/sys/fs/cgroup", e.Name())
		if e.Type()&fs.ModeSymlink != 0 || !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
			continue
		}
		parts := strings.Split(strings.Trim(path, "/"), "/")
		cur := root
		for _, p := range parts {
			cur = filepath.Join(cur, p)
			if err := os.Mkdir(cur, 0o755); err != nil && !os.IsExist(err) {
				return fmt.Errorf("create cgroup %s: %w", cur, err)
			}
			if strings.Contains(e.Name(), "cpuset") {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					if b, err := os.ReadFile(filepath.Join(root, f)); err == nil {
						os.WriteFile(filepath.Join(cur, f), b, 0o644)
					}
				}
			}
		}
	}
	// cgroup v2: one hierarchy at /sys/fs/cgroup itself.
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return os.MkdirAll(filepath.Join("/sys/fs/cgroup", path), 0o755)
	}
	return nil
}

// pauseSource is the sandbox's pause program: it reaps the pod's orphans
// and exits on SIGINT or SIGTERM.
const pauseSource = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, _ := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 {
				break
			}
		}
	}
}
`

// importPause builds the pause program (the Go build cache makes this
// quick after the first time) and imports it as the sandbox image.
func (k *realKubelet) importPause() error {
	src := filepath.Join(k.dir, "pause-src")
	root := filepath.Join(k.dir, "pause-rootfs")
	os.MkdirAll(src, 0o755)
	os.MkdirAll(root, 0o755)
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(pauseSource), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module kubetestpause\n\ngo 1.22\n"), 0o644); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(root, "pause"), ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build the pause program: %v: %s", err, out)
	}
	return k.importArchive(pauseImage, root, []string{"/pause"})
}

func (k *realKubelet) importImage(name, rootfs string) error {
	return k.importArchive(name, rootfs, nil)
}

// importArchive writes rootfs as a docker-archive (one layer, a config,
// manifest.json naming the image in RepoTags) and imports it into
// containerd's k8s.io namespace, where the CRI looks for images.
func (k *realKubelet) importArchive(name, rootfs string, entrypoint []string) error {
	work, err := os.MkdirTemp(k.dir, "image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	layerPath := filepath.Join(work, "layer.tar")
	diffID, err := tarDir(rootfs, layerPath)
	if err != nil {
		return err
	}
	cfg := map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"Entrypoint": entrypoint,
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + diffID}},
		"history": []map[string]string{{"created_by": "kubetest"}},
	}
	cfgJSON, _ := json.Marshal(cfg)
	cfgSum := sha256.Sum256(cfgJSON)
	cfgName := hex.EncodeToString(cfgSum[:]) + ".json"
	if err := os.WriteFile(filepath.Join(work, cfgName), cfgJSON, 0o644); err != nil {
		return err
	}
	manifest, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{name}, "Layers": []string{"layer.tar"}}})
	if err := os.WriteFile(filepath.Join(work, "manifest.json"), manifest, 0o644); err != nil {
		return err
	}
	archive := filepath.Join(work, "image.tar")
	if err := tarFiles(work, archive, []string{"manifest.json", cfgName, "layer.tar"}); err != nil {
		return err
	}
	out, err := exec.Command("ctr", "--address", k.sock, "--connect-timeout", "5s", "-n", "k8s.io",
		"images", "import", archive).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import: %v: %s", err, out)
	}
	return nil
}

// tarDir writes dir's tree as a tar file and returns the tar's sha256.
func tarDir(dir, to string) (string, error) {
	f, err := os.Create(to)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(f, h))
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			if _, err := io.Copy(tw, in); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// tarFiles writes the named files of dir into a tar file.
func tarFiles(dir, to string, names []string) error {
	f, err := os.Create(to)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, n := range names {
		st, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: st.Size(), Typeflag: tar.TypeReg, ModTime: st.ModTime()}); err != nil {
			return err
		}
		in, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, in)
		in.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// stop ends the real kubelet's part: the kubelet first (so it restarts
// nothing), then every container and sandbox by its containerd ID, then
// containerd, then the mounts and links they left.
func (k *realKubelet) stop() {
	if k.kubelet != nil {
		k.kubelet.stop(10 * time.Second)
	}
	if k.containerd != nil && !k.containerd.exited() {
		ctr := func(args ...string) ([]byte, error) {
			return exec.Command("ctr", append([]string{"--address", k.sock, "--connect-timeout", "2s", "-n", "k8s.io"}, args...)...).Output()
		}
		out, _ := ctr("tasks", "ls", "-q")
		ids := strings.Fields(string(out))
		for _, id := range ids {
			ctr("tasks", "kill", "--all", "--signal", "SIGKILL", id)
		}
		for _, id := range ids {
			for range 50 {
				if _, err := ctr("tasks", "delete", id); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		out, _ = ctr("containers", "ls", "-q")
		for _, id := range strings.Fields(string(out)) {
			ctr("containers", "delete", id)
		}
		k.containerd.stop(10 * time.Second)
	}
	// Pod network namespaces (bind mounts in /run/netns, this run's tmpfs),
	// their results, and the kubelet's and containerd's mounts.
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			p := filepath.Join("/run/netns", e.Name())
			syscall.Unmount(p, syscall.MNT_DETACH)
			os.Remove(p)
		}
	}
	os.RemoveAll("/var/lib/cni/networks/kubetest")
	os.RemoveAll("/var/lib/cni/results")
	unmountUnder(k.c.Dir)
	unmountUnder("/run/containerd")
	for _, link := range []string{podBridge, realNodeBridge} {
		exec.Command("ip", "link", "del", link).Run()
	}
}

// RealNodeIP is the real kubelet's node address (and the address real pods
// reach the test process on, through their gateway).
func (c *Cluster) RealNodeIP() string { return realNodeIP }
