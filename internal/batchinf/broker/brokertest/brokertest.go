// Package brokertest starts real message brokers from Debian's packages
// for tests: nats-server and rabbitmq-server, each in a temporary
// directory, listening on free loopback ports only, stopped when the test
// (or, for the RabbitMQ a package shares, the test binary) ends. For the
// cloud brokers it starts what stands in for them: Google's own Pub/Sub
// fake, in process (NewPubSub), and moto's SQS server (NewSQS), each on a
// free loopback port.
//
//	url := brokertest.NATS(t)              // nats://127.0.0.1:PORT
//
//	var rabbit brokertest.Shared            // one broker for the package
//	func TestMain(m *testing.M) { code := m.Run(); rabbit.Stop(); os.Exit(code) }
//	func TestX(t *testing.T) { url := rabbit.URL(t) … } // amqp://guest:guest@127.0.0.1:PORT/
//
// Where a broker is not installed the tests that ask for it are skipped,
// saying so, unless SPOTML_REQUIRE_NATS=1, SPOTML_REQUIRE_RABBITMQ=1 or
// SPOTML_REQUIRE_MOTO=1 (CI), where they fail. The Pub/Sub fake is a Go
// module: it is always there.
package brokertest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The variables that, set to 1, make a missing broker a test failure.
const (
	RequireNATS   = "SPOTML_REQUIRE_NATS"
	RequireRabbit = "SPOTML_REQUIRE_RABBITMQ"
)

// RabbitServer is where Debian's rabbitmq-server package puts the server's
// own start script. /usr/sbin/rabbitmq-server is a wrapper that, run as
// root, re-runs it as the rabbitmq user with /var/lib/rabbitmq as its
// home and its output in /var/log/rabbitmq; this one runs as whoever calls
// it, and takes every path from the environment.
const RabbitServer = "/usr/lib/rabbitmq/bin/rabbitmq-server"

// NATS starts a nats-server on a free loopback port for the test and
// returns its URL. It is core NATS, what gocloud's natspubsub speaks.
func NATS(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		missing(t, RequireNATS, "nats-server not installed (apt-get install nats-server)")
	}
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(addr)
	log := filepath.Join(t.TempDir(), "nats.log")
	p, err := start(log, nil, bin, "-a", host, "-p", port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	err = waitFor(10*time.Second, p, func() error {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("nats-server did not listen on %s: %v\n%s", addr, err, tail(log))
	}
	return "nats://" + addr
}

// RabbitMQ starts a RabbitMQ broker for the test (see Start) and returns
// its AMQP URL.
func RabbitMQ(t testing.TB) string {
	t.Helper()
	r, err := Start()
	if err != nil {
		if errors.Is(err, errNotInstalled) {
			missing(t, RequireRabbit, err.Error())
		}
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r.URL
}

// Shared is a RabbitMQ broker that a package's tests share, started by the
// first that asks (a broker takes seconds to boot) and stopped by Stop,
// from TestMain.
type Shared struct {
	once sync.Once
	r    *Rabbit
	err  error
}

// URL starts the broker if it is not yet and returns its AMQP URL; without
// one it skips the test, or fails it where SPOTML_REQUIRE_RABBITMQ=1.
func (s *Shared) URL(t testing.TB) string {
	t.Helper()
	s.once.Do(func() { s.r, s.err = Start() })
	if s.err != nil {
		if errors.Is(s.err, errNotInstalled) {
			missing(t, RequireRabbit, s.err.Error())
		}
		t.Fatal(s.err)
	}
	return s.r.URL
}

// Stop stops the broker, if one was started.
func (s *Shared) Stop() {
	s.once.Do(func() {}) // none may start after this
	if s.r != nil {
		s.r.Stop()
	}
}

// Rabbit is a running throwaway RabbitMQ broker.
type Rabbit struct {
	// URL is the broker's AMQP URL, with the guest user (which RabbitMQ
	// admits from loopback only).
	URL  string
	dir  string
	epmd *proc
	srv  *proc
}

var errNotInstalled = errors.New("rabbitmq-server not installed (apt-get install rabbitmq-server)")

// Start boots a RabbitMQ broker from Debian's rabbitmq-server in a new
// temporary directory, and returns once it accepts AMQP connections.
//
// Everything it keeps is in that directory (RABBITMQ_MNESIA_BASE,
// RABBITMQ_LOG_BASE, its config and enabled-plugins files, HOME for the
// Erlang cookie; RABBITMQ_CONF_ENV_FILE keeps /etc/rabbitmq out), and it
// listens on loopback only: AMQP on RABBITMQ_NODE_PORT, Erlang
// distribution on RABBITMQ_DIST_PORT, and an epmd of its own on
// ERL_EPMD_PORT. That epmd is started here, in the foreground: one that
// Erlang starts itself daemonizes and would outlive the test, and one on
// the default port would be shared with whatever else runs Erlang here.
// No plugins are enabled, which keeps the boot to seconds. It runs as
// whoever runs the tests, root included (RabbitMQ does not refuse it).
func Start() (*Rabbit, error) {
	if _, err := os.Stat(RabbitServer); err != nil {
		return nil, errNotInstalled
	}
	epmdBin, err := exec.LookPath("epmd")
	if err != nil {
		return nil, fmt.Errorf("epmd not found (it comes with rabbitmq-server's erlang-base): %w", err)
	}
	dir, err := os.MkdirTemp("", "spotml-rabbit-")
	if err != nil {
		return nil, err
	}
	r := &Rabbit{dir: dir}
	ok := false
	defer func() {
		if !ok {
			r.Stop()
		}
	}()
	var ports [3]string
	for i := range ports {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		_, ports[i], _ = net.SplitHostPort(addr)
	}
	amqpPort, distPort, epmdPort := ports[0], ports[1], ports[2]

	if r.epmd, err = start(filepath.Join(dir, "epmd.log"), nil, epmdBin, "-port", epmdPort, "-address", "127.0.0.1"); err != nil {
		return nil, err
	}
	if err := waitFor(10*time.Second, r.epmd, func() error {
		c, err := net.Dial("tcp", "127.0.0.1:"+epmdPort)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return nil, fmt.Errorf("epmd did not listen on port %s: %v\n%s", epmdPort, err, tail(filepath.Join(dir, "epmd.log")))
	}

	files := map[string]string{
		// Keep publishers from blocking on a test machine's full disk.
		"rabbitmq.conf":     "listeners.tcp.default = 127.0.0.1:" + amqpPort + "\ndisk_free_limit.absolute = 1MB\n",
		"enabled_plugins":   "[].\n",
		"rabbitmq-env.conf": "",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			return nil, err
		}
	}
	env := []string{
		"HOME=" + dir,
		"RABBITMQ_CONF_ENV_FILE=" + filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE=" + filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE=" + filepath.Join(dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE=" + filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE=" + filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE=" + filepath.Join(dir, "log"),
		"RABBITMQ_NODENAME=" + fmt.Sprintf("spotml-%d-%s@localhost", os.Getpid(), amqpPort),
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT=" + amqpPort,
		"RABBITMQ_DIST_PORT=" + distPort,
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"ERL_EPMD_PORT=" + epmdPort,
		// Distribution listens on loopback only, like the rest.
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	}
	log := filepath.Join(dir, "rabbitmq.log")
	if r.srv, err = start(log, env, RabbitServer); err != nil {
		return nil, err
	}
	r.URL = "amqp://guest:guest@127.0.0.1:" + amqpPort + "/"
	if err := waitFor(120*time.Second, r.srv, func() error {
		c, err := amqp.DialConfig(r.URL, amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return nil, fmt.Errorf("rabbitmq-server did not accept AMQP connections on port %s: %v\n%s", amqpPort, err, tail(log))
	}
	ok = true
	return r, nil
}

// Stop kills the broker and its epmd and removes their directory.
func (r *Rabbit) Stop() {
	if r.srv != nil {
		r.srv.stop()
	}
	if r.epmd != nil {
		r.epmd.stop()
	}
	os.RemoveAll(r.dir)
}

// proc is a process started in a process group of its own, so that stop
// ends what it started too (rabbitmq-server's beam.smp and helpers).
type proc struct {
	cmd    *exec.Cmd
	log    *os.File
	exited chan struct{}
}

func start(log string, env []string, bin string, args ...string) (*proc, error) {
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, log: f, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(p.exited) }()
	return p, nil
}

func (p *proc) stop() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
	p.log.Close()
}

// waitFor calls ready until it succeeds, p exits or d passes.
func waitFor(d time.Duration, p *proc, ready func() error) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("it exited (%v)", p.cmd.ProcessState)
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// tail is the end of a log, for an error that says why a broker did not
// start.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	s := string(b)
	if len(s) > 4000 {
		s = "…" + s[len(s)-4000:]
	}
	return strings.TrimSpace(s)
}

func missing(t testing.TB, env, msg string) {
	t.Helper()
	if os.Getenv(env) == "1" {
		t.Fatalf("%s (%s=1 makes this a failure, not a skip)", msg, env)
	}
	t.Skip(msg)
}
