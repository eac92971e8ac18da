package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/blob/blobtest"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/kubetest"
	kubeprov "github.com/spotml/spotml/internal/provider/kubernetes"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// spotmlBinary is the spotml executable the images carry: $SPOTML_BIN, or
// one built once for the package's tests (in kubetest's run directory,
// removed when the run ends).
func spotmlBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("SPOTML_BIN"); b != "" {
		return b
	}
	built.Do(func() {
		out := filepath.Join(kubetest.RunDir(), "spotml")
		cmd := exec.Command("go", "build", "-o", out, "github.com/spotml/spotml/cmd/spotml")
		if b, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("build spotml: %v\n%s", err, b)
			return
		}
		built.path = out
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

var built struct {
	sync.Once
	path string
	err  error
}

// setUp makes the images the tests' pods run (spotml:e2e with the
// spotml binary for the init container, train:e2e the pools' image: a
// shell and libc, no spotml, and extra, image path to file) and the
// spotml namespace.
func setUp(t *testing.T, c *kubetest.Cluster, extra map[string]string) {
	t.Helper()
	bin := spotmlBinary(t)
	train := libsOnly(withLibs(t, bin, "/usr/local/bin/spotml"))
	maps.Copy(train, extra)
	for name, files := range map[string]map[string]string{
		"spotml:e2e": withLibs(t, bin, "/usr/local/bin/spotml"),
		"train:e2e":  train,
	} {
		dir := t.TempDir()
		if err := kubetest.BuildImage(dir, files); err != nil {
			t.Fatal(err)
		}
		if err := c.ImportImage(name, dir); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.CreateNamespace(t.Context(), "spotml"); err != nil {
		t.Fatal(err)
	}
}

// karpenterNode is a played Karpenter node of capacity type ct (spot or
// on-demand) in zone.
func karpenterNode(name, ct, instanceType, zone string) kubetest.NodeOptions {
	return kubetest.NodeOptions{Name: name,
		Labels: map[string]string{"karpenter.sh/capacity-type": ct, "node.kubernetes.io/instance-type": instanceType, "topology.kubernetes.io/zone": zone},
		Capacity: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("16Gi"),
			corev1.ResourcePods: resource.MustParse("110")}}
}

func addNodes(t *testing.T, c *kubetest.Cluster, nodes ...kubetest.NodeOptions) {
	t.Helper()
	for _, n := range nodes {
		if _, err := c.AddNode(n); err != nil {
			t.Fatal(err)
		}
	}
}

// kubePool is a kubernetes pool of the karpenter flavor on image
// train:e2e, one CPU and 1 GiB per node.
func kubePool(name, priority string, max int, notice time.Duration) spec.Pool {
	pool := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: name},
		Spec: spec.PoolSpec{Provider: spec.ProviderKubernetes, Priority: priority, Min: 0, Max: max,
			Capacity:   &spec.Resources{CPU: 1, Memory: 1 << 30},
			Kubernetes: &spec.KubernetesPool{Flavor: spec.FlavorKarpenter, Image: "train:e2e", Notice: spec.Duration{Duration: notice}}}}
	return pool
}

// withLibs maps the binary into an image at path, with the shared
// libraries it loads (spotml links ONNX Runtime's loader with cgo).
func withLibs(t *testing.T, bin, path string) map[string]string {
	t.Helper()
	files := map[string]string{path: bin}
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return files // static
	}
	for _, m := range regexp.MustCompile(`(?m)(/\S+)\s+\(0x`).FindAllStringSubmatch(string(out), -1) {
		files[m[1]] = m[1]
	}
	return files
}

func libsOnly(files map[string]string) map[string]string {
	delete(files, "/usr/local/bin/spotml")
	return files
}

// plane is a control plane as spotml server runs it, with only the
// kubernetes provider, listening on loopback in the test's namespace
// (which the played nodes' pods share).
type plane struct {
	st     *sqlstore.Store
	url    string
	cancel func()
	done   chan struct{}
}

// planeConfig is what a test changes of its control plane.
type planeConfig struct {
	control.Options
	// BlobURL is the default blob store; default file://DIR/blobs (which
	// pods cannot reach: it serves the control plane only).
	BlobURL  string
	AgentEnv []corev1.EnvVar // see kubeprov.Config.AgentEnv
}

func startPlane(t *testing.T, dir string, client *kubetest.Cluster, ln net.Listener, cfg planeConfig) *plane {
	t.Helper()
	opt := cfg.Options
	if cfg.BlobURL == "" {
		cfg.BlobURL = "file://" + filepath.Join(dir, "blobs")
	}
	if opt.Interval == 0 {
		opt.Interval = 200 * time.Millisecond
	}
	opt.Retention = -1
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "spotml.db"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := blob.NewStore(cfg.BlobURL)
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	prov := kubeprov.New(client.Client, kubeprov.Config{ServerURL: url, SpotmlImage: "spotml:e2e", PullPolicy: corev1.PullNever,
		Interval: 200 * time.Millisecond, AgentEnv: cfg.AgentEnv}, log, time.Now)
	cp := control.New(st, map[string]control.Provider{kubeprov.Name: prov}, log, time.Now,
		opt)
	srv := &http.Server{Handler: server.New(server.Config{Store: st, Blobs: blobs, Plane: cp, JoinToken: "join", Token: "admin",
		HeartbeatInterval: 200 * time.Millisecond, Log: log, Now: time.Now})}
	ctx, cancel := context.WithCancel(context.Background())
	p := &plane{st: st, url: url, done: make(chan struct{})}
	go srv.Serve(ln)
	go func() {
		defer close(p.done)
		cp.Run(ctx)
	}()
	p.cancel = func() {
		cancel()
		<-p.done
		srv.Close()
		st.Close()
		blobs.Close()
	}
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cancel()
		}
	})
	return p
}

// startS3 starts an S3 server (gofakes3, the protocol's stand-in) on
// host with one bucket, until the test ends, and sets the AWS default
// chain's environment for this process; it returns the bucket's blob URL
// and that environment for the agents' pods.
func startS3(t *testing.T, host string) (string, []corev1.EnvVar) {
	t.Helper()
	backend := s3mem.New()
	if err := backend.CreateBucket("spotml"); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: gofakes3.New(backend).Server()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	var env []corev1.EnvVar
	for _, kv := range blobtest.S3Env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
		env = append(env, corev1.EnvVar{Name: k, Value: v})
	}
	q := url.Values{"endpoint": {"http://" + ln.Addr().String()}, "use_path_style": {"true"}, "region": {"us-east-1"},
		"response_checksum_validation": {"when_required"}}
	return "s3://spotml?" + q.Encode(), env
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Logf("%s", b); return len(b), nil }

func waitNode(t *testing.T, st *sqlstore.Store, what string, timeout time.Duration, ok func([]store.Node) bool) []store.Node {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		nodes, err := st.ListNodes(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if ok(nodes) {
			return nodes
		}
		if time.Now().After(deadline) {
			for _, n := range nodes {
				t.Logf("node %s: %s host=%s reason=%q notice=%v", n.Name, n.State, n.Host, n.Reason, n.NoticeDeadline)
			}
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func live(nodes []store.Node, state string) []store.Node {
	var out []store.Node
	for _, n := range nodes {
		if n.State == state {
			out = append(out, n)
		}
	}
	return out
}
