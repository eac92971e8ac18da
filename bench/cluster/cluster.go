// Package cluster runs a whole spotml on this machine for the
// whole-system benchmarks (bench/bagoftasks, bench/serving): `spotml up` (control plane, simulated spot market, agent
// processes, inference gateway) with its own data directory and ports,
// driven through the CLI and the API as a user would.
package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/client"
	"github.com/spotml/spotml/internal/inference"
	"github.com/spotml/spotml/internal/store"
)

// Build compiles a package of this module (e.g.
// "github.com/spotml/spotml/cmd/spotml") into dir and returns the binary's
// path.
func Build(ctx context.Context, dir, pkg string) (string, error) {
	bin := filepath.Join(dir, filepath.Base(pkg))
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin, nil
}

// Workspace is one benchmark run's temporary directory, with spotml built
// in it.
type Workspace struct {
	Dir string // data directories go under it
	Bin string // the spotml binary
	log io.Writer
}

// NewWorkspace makes a temporary directory named after prefix and builds
// spotml there, saying so on log.
func NewWorkspace(ctx context.Context, prefix string, log io.Writer) (*Workspace, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(log, "building spotml ...")
	bin, err := Build(ctx, dir, "github.com/spotml/spotml/cmd/spotml")
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &Workspace{Dir: dir, Bin: bin, log: log}, nil
}

// Close removes the workspace, unless keep is set or the run failed (err
// is its error): then it says where the data directories are, to look at.
func (w *Workspace) Close(keep bool, err error) {
	if keep || err != nil {
		fmt.Fprintln(w.log, "data directories kept under", w.Dir)
		return
	}
	os.RemoveAll(w.Dir)
}

// ONNXRuntime returns the ONNX Runtime library the builtin runtime needs:
// $SPOTML_ONNXRUNTIME_LIB, else build/onnxruntime of the repository the
// benchmark runs from.
func ONNXRuntime() (string, error) {
	return inference.FindLibrary(os.Getenv, filepath.Join("build", "onnxruntime"))
}

// Cluster is one `spotml up`.
type Cluster struct {
	Bin, Data string
	Addr      string // the API, host:port
	Gateway   string // the inference gateway, host:port
	API       *client.Client

	up       *exec.Cmd
	exited   chan struct{} // closed when up has exited
	stopOnce sync.Once
}

// Start starts `spotml up` with data as its data directory and ortLib as
// the builtin runtime's ONNX Runtime ("": whatever spotml finds), and waits
// until it answers.
// Heartbeats and reconcile passes are every 200ms, as in the end-to-end
// tests, so that the figures are about spotml's decisions rather than its
// polling intervals.
func Start(ctx context.Context, bin, data, ortLib string) (*Cluster, error) {
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, err
	}
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	gw, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(data, "up.log"))
	if err != nil {
		return nil, err
	}
	c := &Cluster{Bin: bin, Data: data, Addr: addr, Gateway: gw, exited: make(chan struct{})}
	c.up = exec.Command(bin, "up", "--data", data, "--addr", addr, "--gateway-addr", gw,
		"--heartbeat", "200ms", "--reconcile-interval", "200ms")
	c.up.Env = os.Environ()
	if ortLib != "" {
		c.up.Env = append(c.up.Env, inference.LibraryEnv+"="+ortLib)
	}
	c.up.Stdout, c.up.Stderr = logf, logf
	if err := c.up.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start spotml up: %w", err)
	}
	go func() {
		c.up.Wait()
		logf.Close()
		close(c.exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-c.exited:
			return nil, errors.New("spotml up exited at start; see " + filepath.Join(data, "up.log"))
		case <-ctx.Done():
			c.Stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.Stop()
			return nil, errors.New("spotml up not healthy after 30s; see " + filepath.Join(data, "up.log"))
		}
	}
	token, err := os.ReadFile(filepath.Join(data, "token"))
	if err != nil {
		c.Stop()
		return nil, err
	}
	c.API = client.New("http://"+addr, strings.TrimSpace(string(token)))
	return c, nil
}

// PID is spotml up's process ID: its agents and their tasks are its
// descendants.
func (c *Cluster) PID() int { return c.up.Process.Pid }

// Exited is closed when spotml up has exited.
func (c *Cluster) Exited() <-chan struct{} { return c.exited }

// Stop interrupts spotml up, which ends its nodes (agents and replicas);
// if it does not exit in time it is killed, and any agent of this data
// directory still running is killed too.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		c.up.Process.Signal(os.Interrupt)
		select {
		case <-c.exited:
		case <-time.After(20 * time.Second):
			c.up.Process.Kill()
			<-c.exited
		}
		killAgents(c.Data)
	})
}

// Signal sends sig to `spotml up`.
func (c *Cluster) Signal(sig os.Signal) error { return c.up.Process.Signal(sig) }

// CLI runs the spotml CLI against this cluster and returns its stdout.
func (c *Cluster) CLI(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.Bin, append([]string{"--data", c.Data, "--server", "http://" + c.Addr}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("spotml %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Apply applies YAML documents (written to a file in the data directory).
func (c *Cluster) Apply(ctx context.Context, name, yaml string) error {
	f := filepath.Join(c.Data, name)
	if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
		return err
	}
	_, err := c.CLI(ctx, "apply", "-f", f)
	return err
}

// Service reads one service with its live replicas.
func (c *Cluster) Service(ctx context.Context, name string) (store.Service, error) {
	var s store.Service
	err := c.API.Do(ctx, http.MethodGet, api.Prefix+"/services/"+name, nil, &s)
	return s, err
}

// Nodes lists the live nodes.
func (c *Cluster) Nodes(ctx context.Context) ([]store.Node, error) {
	out, err := c.CLI(ctx, "get", "nodes", "-o", "json")
	if err != nil {
		return nil, err
	}
	var nodes []store.Node
	if err := json.Unmarshal(out, &nodes); err != nil {
		return nil, fmt.Errorf("spotml get nodes -o json: %w", err)
	}
	return nodes, nil
}

// Ready returns the service's replicas that take requests: ready, and on
// a node without an eviction notice.
func Ready(s store.Service) []store.Replica {
	var out []store.Replica
	for _, r := range s.Replicas {
		if r.State == store.ReplicaReady && !r.Noticed {
			out = append(out, r)
		}
	}
	return out
}

// WaitServing waits until the service has n ready replicas and the
// gateway routes to it.
func (c *Cluster) WaitServing(ctx context.Context, name string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		s, err := c.Service(ctx, name)
		if err == nil && len(Ready(s)) >= n {
			resp, err := http.Get("http://" + c.Gateway + "/v2/models/" + name + "/ready")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("service %s: not %d ready replicas behind the gateway after %s (last: %d ready, err %v); see %s",
				name, n, timeout, len(Ready(s)), err, filepath.Join(c.Data, "up.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.exited:
			return errors.New("spotml up exited; see " + filepath.Join(c.Data, "up.log"))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// killAgents kills what is left of the agent processes started for data
// (their command lines name their work directories under it), with their
// process groups. spotml up stopping normally leaves none.
func killAgents(data string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("\x00--workdir\x00"+data+"/")) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		syscall.Kill(-pid, syscall.SIGKILL) // agents lead their process group
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// FreeAddr returns a loopback address with a port nothing listens on now.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
