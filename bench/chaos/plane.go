package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// daemon is a long-running spotml process (`spotml up` or `spotml
// gateway`) that the soak can kill and start again with the same
// arguments, its output appended to one log file.
type daemon struct {
	name   string
	args   []string
	env    []string
	health string // URL that answers 200 when it is up
	logf   string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// start starts the process and waits until it answers its health URL.
func (d *daemon) start(ctx context.Context) error {
	f, err := os.OpenFile(d.logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(d.args[0], d.args[1:]...)
	cmd.Env = d.env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", d.name, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		f.Close()
		close(exited)
	}()
	d.mu.Lock()
	d.cmd, d.exited = cmd, exited
	d.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := http.Get(d.health); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited at start; see %s", d.name, d.logf)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy after 60s; see %s", d.name, d.logf)
		}
	}
}

// pid is the running process's id, 0 when none runs.
func (d *daemon) pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return 0
	}
	select {
	case <-d.exited:
		return 0
	default:
		return d.cmd.Process.Pid
	}
}

// kill SIGKILLs the process and waits for it to be gone.
func (d *daemon) kill() {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// stop interrupts the process as Ctrl-C would and waits up to grace for it
// to exit; past that it is killed. It says whether it exited by itself.
func (d *daemon) stop(grace time.Duration) (bool, error) {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.mu.Unlock()
	if cmd == nil {
		return true, nil
	}
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
		return true, nil
	case <-time.After(grace):
		cmd.Process.Signal(syscall.SIGKILL)
		<-exited
		return false, errors.New(d.name + " did not exit within " + grace.String() + " of an interrupt; killed")
	}
}

func newUp(bin, data, addr, gw string, env []string) *daemon {
	return &daemon{name: "spotml up", env: env, health: "http://" + addr + "/healthz", logf: filepath.Join(data, "up.log"),
		args: []string{bin, "up", "--data", data, "--addr", addr, "--gateway-addr", gw,
			"--heartbeat", "200ms", "--reconcile-interval", "200ms", "--node-timeout", "5s"}}
}

func newGateway(bin, data, addr string, env []string) *daemon {
	return &daemon{name: "spotml gateway", env: env, health: "http://" + addr + "/healthz", logf: filepath.Join(data, "gateway.log"),
		args: []string{bin, "gateway", "--data", data, "--addr", addr, "--id", "soak"}}
}
