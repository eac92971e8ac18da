package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/proc"
)

// replica is one service replica on this node: a model server process (the
// builtin `spotml serve`, or the user's command) on a port of its own,
// probed until it answers, drained before it is stopped.
type replica struct {
	a   *Agent
	as  api.ReplicaAssignment
	dir string

	mu       sync.Mutex
	addr     string // host:port once started
	cmd      *exec.Cmd
	group    proc.ID // the process group, once started
	ready    bool
	exited   bool
	msg      string
	stopping bool
	stopCh   chan struct{} // closed by stop
}

func newReplica(a *Agent, as api.ReplicaAssignment) *replica {
	return &replica{a: a, as: as, dir: filepath.Join(a.cfg.WorkDir, "replicas", as.Name), stopCh: make(chan struct{})}
}

// drainDelay is how long a replica being stopped keeps serving before
// SIGTERM: long enough for every gateway to have reloaded its routes (they
// poll the store every 200ms) so that no new request is sent to it.
const drainDelay = 2 * time.Second

// stopGrace is how long a replica may take to finish its in-flight
// requests after SIGTERM before it is killed.
const stopGrace = 25 * time.Second

func (r *replica) status() api.ReplicaStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return api.ReplicaStatus{ID: r.as.ID, Ready: r.ready && !r.stopping, Addr: r.addr, Exited: r.exited, Message: r.msg}
}

// processGroup is the process group while it runs; zero otherwise.
func (r *replica) processGroup() proc.ID {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.exited {
		return proc.ID{}
	}
	return r.group
}

func (r *replica) isExited() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.exited
}

// stop drains and stops the replica; it returns at once.
func (r *replica) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.stopping {
		r.stopping = true
		close(r.stopCh)
	}
}

func (r *replica) fail(msg string) {
	r.mu.Lock()
	r.exited, r.ready, r.msg = true, false, msg
	r.mu.Unlock()
	r.a.log.Error("replica failed", "replica", r.as.Name, "why", msg)
}

// run fetches the model, starts the server, probes it and stops it when
// asked, when the node's notice runs out or when ctx ends.
func (r *replica) run(ctx context.Context) {
	a, as := r.a, r.as
	log := a.log.With("replica", as.Name, "service", as.Service, "version", as.Version)
	if err := os.RemoveAll(r.dir); err != nil {
		r.fail("clean working directory: " + err.Error())
		return
	}
	modelDir := filepath.Join(r.dir, "model")
	if err := os.MkdirAll(modelDir, 0o755); err != nil {
		r.fail("create working directory: " + err.Error())
		return
	}
	modelPath := filepath.Join(modelDir, path.Base(strings.TrimSuffix(as.Spec.ModelURI, "/")))
	if as.Spec.ModelURI != "" {
		if err := a.blobs.Download(ctx, as.Spec.ModelURI, modelPath); err != nil {
			r.fail(fmt.Sprintf("download model %s: %v", as.Spec.ModelURI, err))
			return
		}
	}
	port := as.Spec.Port
	if port == 0 {
		p, err := freePort(a.cfg.advertiseHost())
		if err != nil {
			r.fail("find a free port: " + err.Error())
			return
		}
		port = p
	}
	addr := net.JoinHostPort(a.cfg.advertiseHost(), strconv.Itoa(port))

	var argv []string
	switch as.Spec.Runtime {
	case "builtin", "":
		exe, err := os.Executable()
		if err != nil {
			r.fail("find the spotml executable: " + err.Error())
			return
		}
		// On the address gateways reach it at: in a pod that is the
		// pod's IP, which a server on 127.0.0.1 would not answer.
		argv = []string{exe, "serve", "--model", modelPath, "--name", as.Service, "--addr", addr}
		if as.Spec.MaxBatch > 0 {
			argv = append(argv, "--max-batch", strconv.Itoa(as.Spec.MaxBatch))
		}
		// Always passed: 0 (the spec's default) means no waiting, while
		// spotml serve alone defaults to 2ms.
		argv = append(argv, "--max-queue-delay", as.Spec.MaxQueueDelay.String())
		if as.Spec.Threads > 0 {
			argv = append(argv, "--threads", strconv.Itoa(as.Spec.Threads))
		}
		if as.Spec.MaxRequestBytes > 0 {
			argv = append(argv, "--max-body-bytes", strconv.FormatInt(as.Spec.MaxRequestBytes, 10))
		}
	default:
		argv = as.Spec.Command
	}
	if len(argv) == 0 {
		r.fail("runtime command: no command to run")
		return
	}
	stdout, err1 := os.Create(filepath.Join(r.dir, "stdout.log"))
	stderr, err2 := os.Create(filepath.Join(r.dir, "stderr.log"))
	if err := errors.Join(err1, err2); err != nil {
		r.fail("create log files: " + err.Error())
		return
	}
	defer stdout.Close()
	defer stderr.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = r.dir
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.Env = append(Environ(os.Environ()),
		"PORT="+strconv.Itoa(port),
		"SPOTML_MODEL_PATH="+modelPath,
		"SPOTML_SERVICE="+as.Service,
		"SPOTML_REPLICA="+as.Name,
		"SPOTML_NODE="+a.cfg.Node,
	)
	for k, v := range as.Spec.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	r.mu.Lock()
	err := cmd.Start()
	r.cmd, r.addr = cmd, addr
	if err == nil {
		r.group = identify(cmd.Process.Pid)
	}
	r.mu.Unlock()
	if err != nil {
		r.fail(fmt.Sprintf("start %s: %v", argv[0], err))
		return
	}
	a.writePIDs()
	log.Info("replica started", "pid", cmd.Process.Pid, "addr", addr, "dir", r.dir)

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	probeCtx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	go r.probe(probeCtx, addr)

	signal := func(sig syscall.Signal) { syscall.Kill(-cmd.Process.Pid, sig) }
	var termAt, killAt <-chan time.Time
	stopCh := r.stopCh
	drainCh := a.drainCh
	for {
		select {
		case err := <-exited:
			r.mu.Lock()
			stopping := r.stopping
			r.mu.Unlock()
			msg := "exited"
			if err != nil {
				msg = err.Error()
			}
			if !stopping {
				msg += lastLine(filepath.Join(r.dir, "stderr.log"))
				log.Error("replica exited on its own", "err", msg)
			} else {
				log.Info("replica stopped")
			}
			r.mu.Lock()
			r.exited, r.ready, r.msg = true, false, msg
			r.mu.Unlock()
			a.writePIDs()
			return
		case <-stopCh:
			stopCh = nil
			termAt = time.After(drainDelay)
		case <-drainCh:
			// The node will be gone at the deadline. Gateways stopped
			// sending here when the notice was recorded; finish what is in
			// flight and stop cleanly a little before the end.
			drainCh = nil
			deadline := a.draining()
			termAt = time.After(max(time.Until(deadline)-time.Second, 0))
		case <-ctx.Done():
			ctx = context.Background() // once
			termAt = time.After(0)
		case <-termAt:
			termAt = nil
			signal(syscall.SIGTERM)
			killAt = time.After(stopGrace)
		case <-killAt:
			killAt = nil
			signal(syscall.SIGKILL)
		}
	}
}

// probe marks the replica ready while its readiness path answers 2xx.
func (r *replica) probe(ctx context.Context, addr string) {
	sp := r.as.Spec
	period, timeout := sp.ReadinessPeriod, sp.ReadinessTimeout
	if period <= 0 {
		period = time.Second
	}
	if timeout <= 0 {
		timeout = time.Second
	}
	p := sp.ReadinessPath
	if p == "" {
		p = "/"
	}
	url := "http://" + addr + p
	client := &http.Client{Timeout: timeout}
	wait := sp.InitialDelay
	// Probe often until first ready: the replica joins the gateway sooner.
	fast := min(period, 200*time.Millisecond)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		ok, why := false, ""
		resp, err := client.Get(url)
		if err != nil {
			why = err.Error()
		} else {
			resp.Body.Close()
			ok = resp.StatusCode/100 == 2
			why = "readiness probe " + p + ": " + resp.Status
		}
		r.mu.Lock()
		was := r.ready
		r.ready = ok
		if !ok && !r.exited {
			r.msg = why
		}
		r.mu.Unlock()
		if ok != was {
			r.a.log.Info("replica readiness", "replica", r.as.Name, "ready", ok)
		}
		wait = period
		if !ok && !was {
			wait = fast
		}
	}
}

// freePort asks the kernel for a free loopback port.
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// lastLine returns ": " and the last non-empty line of a log file, or "".
func lastLine(file string) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if l := strings.TrimSpace(lines[len(lines)-1]); l != "" {
		if len(l) > 300 {
			l = l[:300] + "…"
		}
		return ": " + l
	}
	return ""
}
