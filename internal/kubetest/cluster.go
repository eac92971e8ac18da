package kubetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options shape the cluster Start brings up. The zero value is a control
// plane with no nodes; add played nodes with AddNode.
type Options struct {
	// RealKubelet also starts containerd and a real kubelet, registered as
	// node RealNodeName, on a bridge address private to the test's network
	// namespace. Pods on it run in real containers; images come from
	// ImportImage.
	RealKubelet bool
	// NodeMonitorGracePeriod is how long a node may miss heartbeats before
	// the node lifecycle controller marks it Unknown (and taints it
	// node.kubernetes.io/unreachable). Default 20s.
	NodeMonitorGracePeriod time.Duration
	// Controllers replaces the controller-manager's list of controllers
	// (DefaultControllers).
	Controllers []string
	// APIServerFlags, ControllerManagerFlags and SchedulerFlags are added to
	// the respective command lines (a later flag overrides an earlier one).
	APIServerFlags, ControllerManagerFlags, SchedulerFlags []string
}

// DefaultControllers are the controllers kube-controller-manager runs: those
// that act on pods, nodes and disruptions the way a managed cluster does.
var DefaultControllers = []string{
	"job-controller", "garbage-collector-controller", "namespace-controller",
	"serviceaccount-controller", "root-ca-certificate-publisher-controller",
	"node-lifecycle-controller", "taint-eviction-controller",
	"pod-garbage-collector-controller", "disruption-controller",
	"replicaset-controller", "deployment-controller",
	"endpointslice-controller", "ttl-after-finished-controller",
}

// RealNodeName is the name of the real kubelet's node.
const RealNodeName = "kubelet-0"

// A Cluster is a running control plane (and its nodes). Everything is
// stopped and removed when the test that started it ends.
type Cluster struct {
	// Config reaches the apiserver as cluster admin (system:masters).
	Config *rest.Config
	// Kubeconfig is a kubeconfig file with the same credentials, for
	// programs that load one (KUBECONFIG=, kubectl --kubeconfig).
	Kubeconfig string
	// Client is a clientset on Config.
	Client *kubernetes.Clientset
	// Dir holds the cluster's files: certificates, logs (*.log), etcd's
	// data, played nodes' pods.
	Dir string
	// StartupTime is how long Start took from nothing to a ready control
	// plane (and, with RealKubelet, a Ready real node).
	StartupTime time.Duration

	t       testing.TB
	bins    binaries
	opts    Options
	pki     pki
	token   string
	apiPort int
	cgroup  string // cgroup parent of every container of this cluster
	procs   []*proc

	mu     sync.Mutex
	nodes  map[string]*Node
	images map[string]string // image name → rootfs directory (played nodes)
	addrs  int               // played node addresses handed out
	real   *realKubelet
}

// Start brings up etcd, kube-apiserver, kube-scheduler and
// kube-controller-manager (and with opts.RealKubelet containerd and a
// kubelet), waits until the apiserver is ready and the controllers have made
// the default service account, and returns the cluster. It skips the test
// when the binaries are missing (see scripts/kube-build.sh) and fails it on
// any other error. The cluster is torn down by t.Cleanup: every process it
// started is killed by its PID, its directory removed.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	bins, err := findBinaries(opts.RealKubelet)
	if err != nil {
		unavailable(t, err.Error())
	}
	if reason := os.Getenv(envNoNS); reason != "" {
		unavailable(t, reason)
	}
	if os.Getenv(envInside) == "" {
		t.Fatal("kubetest: Start runs only under kubetest.Main: add `func TestMain(m *testing.M) { kubetest.Main(m) }` to the test package")
	}
	if opts.NodeMonitorGracePeriod == 0 {
		opts.NodeMonitorGracePeriod = 20 * time.Second
	}
	if opts.Controllers == nil {
		opts.Controllers = DefaultControllers
	}
	began := time.Now()
	// A short path: containerd's and etcd's unix sockets live under it.
	dir, err := os.MkdirTemp(os.Getenv(envRunDir), "kt-")
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	c := &Cluster{
		Dir: dir, t: t, bins: bins, opts: opts,
		nodes: map[string]*Node{}, images: map[string]string{},
		cgroup: os.Getenv(envCgroup) + "/" + filepath.Base(dir),
	}
	t.Cleanup(c.stop)
	if err := c.start(); err != nil {
		// The cleanup shows the end of each process's log.
		t.Fatalf("kubetest: start the cluster: %v", err)
	}
	c.StartupTime = time.Since(began)
	t.Logf("kubetest: cluster ready in %s (%s)", c.StartupTime.Round(time.Millisecond), c.Dir)
	return c
}

func (c *Cluster) start() error {
	var ips []net.IP
	if c.opts.RealKubelet {
		ips = append(ips, net.ParseIP(realNodeIP))
	}
	var err error
	if c.pki, err = writePKI(c.Dir, ips); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	c.token = randomHex(16)
	tokenFile := filepath.Join(c.Dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(c.token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return err
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdPort, peerPort := ports[0], ports[1]
	c.apiPort = ports[2]
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	if _, err := c.spawn("etcd", c.bins.etcd,
		"--name=kubetest", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		// A test's data need not survive a power cut: fsync would only
		// cost time on this shared disk.
		"--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return err
	}

	bind := "127.0.0.1"
	if c.opts.RealKubelet {
		// Real pods (their own network namespaces) reach the apiserver
		// through the node's bridge address; still only inside the test's
		// namespace.
		bind = "0.0.0.0"
	}
	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + bind, "--secure-port=" + strconv.Itoa(c.apiPort),
		"--advertise-address=127.0.0.1",
		// A loopback advertise address is refused by the endpoint
		// reconciler; nothing here needs the kubernetes Service's endpoints.
		"--endpoint-reconciler-type=none",
		"--tls-cert-file=" + c.pki.serverCert, "--tls-private-key-file=" + c.pki.serverKey,
		"--client-ca-file=" + c.pki.caCert,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + c.pki.saPub,
		"--service-account-signing-key-file=" + c.pki.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--kubelet-preferred-address-types=InternalIP",
		"--allow-privileged=true",
		"--profiling=false",
	}
	if _, err := c.spawn("kube-apiserver", c.bins.apiserver, append(apiArgs, c.opts.APIServerFlags...)...); err != nil {
		return err
	}

	c.Config = &rest.Config{
		Host:            "https://127.0.0.1:" + strconv.Itoa(c.apiPort),
		BearerToken:     c.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.pki.caPEM},
		QPS:             200, Burst: 400,
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, c.Config); err != nil {
		return err
	}
	if err := c.waitFor(60*time.Second, "the apiserver's /readyz", func(ctx context.Context) (bool, error) {
		body, err := c.Client.RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(body) == "ok", nil
	}); err != nil {
		return err
	}

	if _, err := c.spawn("kube-scheduler", c.bins.scheduler, append([]string{
		"--kubeconfig=" + c.Kubeconfig, "--leader-elect=false", "--secure-port=0",
	}, c.opts.SchedulerFlags...)...); err != nil {
		return err
	}
	if _, err := c.spawn("kube-controller-manager", c.bins.controllerManager, append([]string{
		"--kubeconfig=" + c.Kubeconfig, "--leader-elect=false", "--secure-port=0",
		"--controllers=" + strings.Join(c.opts.Controllers, ","),
		"--root-ca-file=" + c.pki.caCert,
		"--service-account-private-key-file=" + c.pki.saKey,
		"--use-service-account-credentials=false",
		"--node-monitor-grace-period=" + c.opts.NodeMonitorGracePeriod.String(),
		"--node-monitor-period=2s",
	}, c.opts.ControllerManagerFlags...)...); err != nil {
		return err
	}
	// The service account controller making "default" shows the
	// controller-manager is working; pods are refused until it exists.
	if err := c.waitFor(60*time.Second, "the default service account", func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return err
	}
	if c.opts.RealKubelet {
		if err := c.startRealKubelet(); err != nil {
			return fmt.Errorf("real kubelet: %w", err)
		}
	}
	return nil
}

// CreateNamespace creates namespace name and waits until pods can be
// created in it (its default service account exists).
func (c *Cluster) CreateNamespace(ctx context.Context, name string) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
}

// waitFor polls cond until it holds, a process of the cluster exits, or the
// timeout passes.
func (c *Cluster) waitFor(timeout time.Duration, what string, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		for _, p := range c.procs {
			if p.exited() {
				return false, fmt.Errorf("%s exited (%v); see %s", p.name, p.err, p.log)
			}
		}
		return cond(ctx)
	})
	if err != nil {
		return fmt.Errorf("waiting for %s: %w", what, err)
	}
	return nil
}

// stop tears the cluster down: nodes first (their pods' containers), then
// the real kubelet and containerd, then the control plane, then the files.
func (c *Cluster) stop() {
	c.mu.Lock()
	nodes := make([]*Node, 0, len(c.nodes))
	for _, n := range c.nodes {
		nodes = append(nodes, n)
	}
	c.mu.Unlock()
	for _, n := range nodes {
		n.kill()
	}
	if c.real != nil {
		c.real.stop()
	}
	if c.t.Failed() {
		c.dumpLogs()
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop(5 * time.Second)
	}
	removeCgroups(c.cgroup)
	unmountUnder(c.Dir)
	if os.Getenv("SPOTML_KUBETEST_KEEP") == "" {
		os.RemoveAll(c.Dir)
	} else {
		c.t.Logf("kubetest: kept %s (SPOTML_KUBETEST_KEEP)", c.Dir)
	}
}

// dumpLogs logs the end of each process's log, for a test that failed.
func (c *Cluster) dumpLogs() {
	for _, p := range c.procs {
		data, _ := os.ReadFile(p.log)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 25 {
			lines = lines[len(lines)-25:]
		}
		c.t.Logf("kubetest: last lines of %s:\n%s", p.log, strings.Join(lines, "\n"))
	}
}

// Token is the cluster-admin bearer token (also in Config and Kubeconfig).
func (c *Cluster) Token() string { return c.token }

// CACert is the PEM certificate that signed the apiserver's.
func (c *Cluster) CACert() []byte { return c.pki.caPEM }

// A proc is one process the cluster started.
type proc struct {
	name, log string
	cmd       *exec.Cmd
	done      chan struct{}
	err       error
}

// spawn starts a cluster process, its output going to Dir/<name>.log.
func (c *Cluster) spawn(name, path string, args ...string) (*proc, error) {
	p, err := startProc(name, filepath.Join(c.Dir, name+".log"), path, args, nil)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

func startProc(name, log, path string, args, env []string) (*proc, error) {
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	// Should the test binary die without cleaning up, its children die too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, log: log, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// rss is the process's resident memory in bytes (0 once it has exited).
func (p *proc) rss() int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	f := bytes.Fields(data)
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(string(f[1]), 10, 64)
	return pages * int64(os.Getpagesize())
}

// RSS reports the resident memory of each process of the control plane
// (and of the real kubelet and containerd), by name.
func (c *Cluster) RSS() map[string]int64 {
	out := map[string]int64{}
	for _, p := range c.procs {
		out[p.name] = p.rss()
	}
	return out
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func writeKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "admin"}
	kc.CurrentContext = "kubetest"
	return clientcmd.WriteToFile(*kc, path)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
