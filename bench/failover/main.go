// Command failover measures how long a control plane of several `spotml
// server` instances over one PostgreSQL is without a leader: it SIGKILLs
// the leader, again and again, and times each kill to the new leader's
// first reconcile pass (the line "first reconcile pass" its log writes
// when that pass ends), then restarts the killed instance so that the
// count stays. Each kill lands at a random point of the leader's renew
// cycle (1–3 s after the previous leader's first pass).
//
//	go run ./bench/failover -kills 20 -lease-ttl 3s
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spotml/spotml/internal/store/postgres/pgtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
}

// pass is one instance's first reconcile pass of a term, as the bench saw it.
type pass struct {
	proc *proc
	term int64
	at   time.Time
}

type proc struct {
	id   string
	cmd  *exec.Cmd
	done chan struct{}
}

var firstPass = regexp.MustCompile(`msg="first reconcile pass".* term=(\d+)`)

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("failover", flag.ContinueOnError)
	bin := fs.String("spotml", "", "spotml binary (default: go build ./cmd/spotml into a temporary directory)")
	kills := fs.Int("kills", 20, "leader kills to time")
	n := fs.Int("instances", 3, "spotml server instances")
	ttl := fs.Duration("lease-ttl", 3*time.Second, "--lease-ttl of every instance")
	interval := fs.Duration("reconcile-interval", 500*time.Millisecond, "--reconcile-interval of every instance")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "spotml-failover-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if *bin == "" {
		*bin = filepath.Join(tmp, "spotml")
		build := exec.CommandContext(ctx, "go", "build", "-o", *bin, "./cmd/spotml")
		build.Stdout, build.Stderr = stderr, stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build spotml: %w", err)
		}
	}
	cluster, err := pgtest.Start(ctx)
	if err != nil {
		return err
	}
	defer cluster.Stop()
	dsn := cluster.DSN("postgres")
	data := filepath.Join(tmp, "data")

	passes := make(chan pass, 64)
	seq := 0
	start := func() (*proc, error) {
		seq++
		p := &proc{id: fmt.Sprintf("i%d", seq), done: make(chan struct{})}
		p.cmd = exec.Command(*bin, "server", "--store", dsn, "--data", data, "--addr", "127.0.0.1:0", "--gateway-addr", "",
			"--instance-id", p.id, "--lease-ttl", ttl.String(), "--reconcile-interval", interval.String())
		out, err := p.cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		logs, err := p.cmd.StderrPipe()
		if err != nil {
			return nil, err
		}
		if err := p.cmd.Start(); err != nil {
			return nil, err
		}
		up := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if strings.Contains(sc.Text(), "API:") {
					close(up)
					break
				}
			}
			io.Copy(io.Discard, out)
		}()
		go func() {
			sc := bufio.NewScanner(logs)
			for sc.Scan() {
				if m := firstPass.FindStringSubmatch(sc.Text()); m != nil {
					term, _ := strconv.ParseInt(m[1], 10, 64)
					passes <- pass{proc: p, term: term, at: time.Now()}
				}
			}
		}()
		go func() { p.cmd.Wait(); close(p.done) }()
		select {
		case <-up:
			return p, nil
		case <-p.done:
			return nil, fmt.Errorf("instance %s exited at start", p.id)
		case <-time.After(30 * time.Second):
			return nil, fmt.Errorf("instance %s did not come up in 30s", p.id)
		}
	}
	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.cmd.Process.Kill()
			<-p.done
		}
	}()
	// One after the other: the first makes the bootstrap secrets in data.
	for range *n {
		p, err := start()
		if err != nil {
			return err
		}
		procs = append(procs, p)
	}
	wait := func(after int64) (pass, error) {
		for {
			select {
			case <-ctx.Done():
				return pass{}, ctx.Err()
			case ps := <-passes:
				if ps.term > after {
					return ps, nil
				}
			case <-time.After(60 * time.Second):
				return pass{}, fmt.Errorf("no leader's first pass after term %d within 60s", after)
			}
		}
	}
	lead, err := wait(0)
	if err != nil {
		return err
	}
	var took []time.Duration
	for k := range *kills {
		time.Sleep(time.Second + rand.N(2*time.Second))
		killed := time.Now()
		lead.proc.cmd.Process.Kill()
		<-lead.proc.done
		next, err := wait(lead.term)
		if err != nil {
			return err
		}
		d := next.at.Sub(killed)
		took = append(took, d)
		fmt.Fprintf(stderr, "kill %2d: %s (term %d) -> %s (term %d) in %s\n", k+1, lead.proc.id, lead.term, next.proc.id, next.term, d.Round(time.Millisecond))
		procs = slices.DeleteFunc(procs, func(p *proc) bool { return p == lead.proc })
		p, err := start()
		if err != nil {
			return err
		}
		procs = append(procs, p)
		lead = next
	}
	slices.Sort(took)
	pct := func(q float64) time.Duration { return took[min(len(took)-1, int(q*float64(len(took))))] }
	var sum time.Duration
	for _, d := range took {
		sum += d
	}
	fmt.Fprintf(stdout, "instances\tlease-ttl\treconcile-interval\tkills\tmin\tp50\tmean\tp99\tmax\n")
	fmt.Fprintf(stdout, "%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", *n, *ttl, *interval, len(took), took[0].Round(time.Millisecond),
		pct(0.5).Round(time.Millisecond), (sum / time.Duration(len(took))).Round(time.Millisecond), pct(0.99).Round(time.Millisecond),
		took[len(took)-1].Round(time.Millisecond))
	return nil
}
