// Command gateway measures what the spotml inference gateway adds to a
// request: requests per second, latency percentiles and the proxy's CPU
// time per request through the gateway, straight to one replica, and
// through nginx as a reverse proxy over the same replicas, with the same
// load generator (wrk and bench/serving/wrk/post.lua, POSTing the
// Fashion-MNIST sample request); then a latency-under-load curve: open-loop
// load (bench/serving/loadgen) at fractions of nginx's maximum, the same
// rates to every target.
//
// It builds spotml and runs `spotml up` with a service of -replicas
// replicas of the builtin runtime on on-demand nodes (no evictions), a
// `spotml gateway` process over up's store (and, with -baseline, one of
// another spotml binary, e.g. built from main, for before and after in one
// run), then nginx (Debian package nginx) with an upstream of those
// replicas (least_conn, keepalive), and runs wrk against them in
// interleaved rounds, so that other work on the machine hits them alike.
// It prints Markdown tables of the medians over the rounds.
//
// With -grpc (callers, e.g. 1,32), the same run also measures KServe v2
// gRPC (ModelInfer, raw tensors, a client generated from the .proto on one
// HTTP/2 connection: bench/serving/grpcload) straight to one replica and
// through the spotml gateway (h2c), interleaved in the same rounds;
// -grpc-only measures only that (no wrk, no nginx).
//
//	go run ./bench/serving/gateway -duration 15s -connections 1,32 -rounds 3 -baseline /tmp/spotml-main
//	go run ./bench/serving/gateway -grpc-only -grpc 1,32 -duration 10s -rounds 3
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spotml/spotml/bench/cluster"
	"github.com/spotml/spotml/bench/serving/grpcload"
	"github.com/spotml/spotml/bench/serving/machine"
	"github.com/spotml/spotml/bench/serving/wrk"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

type config struct {
	duration    time.Duration
	connections []int
	threads     int
	rounds      int
	replicas    int
	maxBatch    int
	keep        bool
	baseline    string    // another spotml binary whose gateway runs beside
	curve       []float64 // fractions of nginx's maximum for the open-loop curve
	curveFor    time.Duration
	grpc        []int // gRPC callers to measure at; none: no gRPC case
	grpcOnly    bool
}

const (
	service     = "fmnist"
	modelFile   = "examples/fashion-mnist/model.onnx"
	requestFile = "examples/fashion-mnist/sample-request.json"
)

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	var cfg config
	var conns string
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&cfg.duration, "duration", 15*time.Second, "length of each wrk run (whole seconds)")
	fs.StringVar(&conns, "connections", "1,32", "comma-separated wrk connection counts (the concurrency) to measure at")
	fs.IntVar(&cfg.threads, "threads", 2, "wrk threads (at most the connections)")
	fs.IntVar(&cfg.rounds, "rounds", 3, "rounds over all targets; the table gives the median of each figure")
	fs.IntVar(&cfg.replicas, "replicas", 2, "replicas of the service (on-demand nodes)")
	fs.IntVar(&cfg.maxBatch, "max-batch", 32, "the replicas' runtime.maxBatch")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the data directory (spotml and nginx logs) and say where")
	fs.StringVar(&cfg.baseline, "baseline", "", "a spotml binary (e.g. built from main) whose `spotml gateway` is measured too, over the same replicas: before and after in one run")
	var curve string
	fs.StringVar(&curve, "curve", "0.1,0.25,0.5,0.75,0.9,1,1.1,1.2", "open-loop rates for the latency-under-load curve, as fractions of nginx's requests/s at the most connections; empty: no curve")
	fs.DurationVar(&cfg.curveFor, "curve-duration", 8*time.Second, "length of each open-loop run of the curve")
	var grpcCallers string
	fs.StringVar(&grpcCallers, "grpc", "1,32", "comma-separated concurrent gRPC callers (on one connection) for the gRPC case, direct and through the gateway; empty: no gRPC case")
	fs.BoolVar(&cfg.grpcOnly, "grpc-only", false, "measure only the gRPC case (no wrk, no nginx, no curve)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	for _, s := range strings.Split(grpcCallers, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return fmt.Errorf("-grpc %q: want positive integers separated by commas", grpcCallers)
		}
		cfg.grpc = append(cfg.grpc, n)
	}
	if cfg.grpcOnly {
		if len(cfg.grpc) == 0 {
			return errors.New("-grpc-only needs -grpc callers, e.g. -grpc 1,32")
		}
		cfg.connections, cfg.curve = nil, nil
	}
	for _, f := range strings.Split(curve, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || v <= 0 {
			return fmt.Errorf("-curve %q: want positive fractions separated by commas, e.g. 0.1,0.5,1,1.2", curve)
		}
		cfg.curve = append(cfg.curve, v)
	}
	for _, s := range strings.Split(conns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("-connections %q: want positive integers separated by commas", conns)
		}
		cfg.connections = append(cfg.connections, n)
	}
	switch {
	case cfg.duration < time.Second:
		return errors.New("-duration must be at least 1s")
	case cfg.rounds < 1 || cfg.threads < 1 || cfg.replicas < 1:
		return errors.New("-rounds, -threads and -replicas must be at least 1")
	}
	var nginx string
	if !cfg.grpcOnly {
		if err := wrk.Available(); err != nil {
			return err
		}
		if nginx, err = exec.LookPath("nginx"); err != nil {
			if nginx, err = exec.LookPath("/usr/sbin/nginx"); err != nil {
				return errors.New("nginx not found: apt-get install nginx")
			}
		}
	}
	ortLib, err := cluster.ONNXRuntime()
	if err != nil {
		return err
	}
	host := machine.Describe()

	ws, err := cluster.NewWorkspace(ctx, "spotml-gateway", stderr)
	if err != nil {
		return err
	}
	defer func() { ws.Close(cfg.keep, err) }()
	dir, bin := ws.Dir, ws.Bin
	c, err := cluster.Start(ctx, bin, filepath.Join(dir, "up"), ortLib)
	if err != nil {
		return err
	}
	defer c.Stop()
	if _, err := c.CLI(ctx, "blob", "put", modelFile, "models/fmnist.onnx"); err != nil {
		return err
	}
	if err := c.Apply(ctx, "spec.yaml", specYAML(cfg)); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "waiting for %d ready replicas ...\n", cfg.replicas)
	if err := c.WaitServing(ctx, service, cfg.replicas, 3*time.Minute); err != nil {
		return err
	}
	s, err := c.Service(ctx, service)
	if err != nil {
		return err
	}
	var replicas []string
	for _, r := range cluster.Ready(s) {
		replicas = append(replicas, r.Addr)
	}
	slices.Sort(replicas)

	var ngAddr string
	var ngPid int
	if !cfg.grpcOnly {
		if ngAddr, err = cluster.FreeAddr(); err != nil {
			return err
		}
		var stopNginx func()
		if stopNginx, ngPid, err = startNginx(ctx, nginx, filepath.Join(dir, "nginx"), ngAddr, replicas); err != nil {
			return err
		}
		defer stopNginx()
	}

	// The gateways run as `spotml gateway` processes of their own over
	// up's store, as a deployment runs them, so that before and after are
	// measured alike and apart from the control plane's work.
	gwAddr, stopGw, gwPid, err := startGateway(ctx, bin, c.Data, filepath.Join(dir, "gateway.log"))
	if err != nil {
		return err
	}
	defer stopGw()
	path := "/v2/models/" + service + "/infer"
	targets := []target{
		{name: "direct to one replica", url: "http://" + replicas[0] + path},
		{name: "spotml gateway", url: "http://" + gwAddr + path, pids: []int{gwPid}},
	}
	if cfg.baseline != "" {
		bAddr, stopB, bPid, err := startGateway(ctx, cfg.baseline, c.Data, filepath.Join(dir, "gateway-before.log"))
		if err != nil {
			return fmt.Errorf("-baseline: %w", err)
		}
		defer stopB()
		targets = append(targets, target{name: "spotml gateway before (-baseline)", url: "http://" + bAddr + path, pids: []int{bPid}})
	}
	if !cfg.grpcOnly {
		targets = append(targets, target{name: "nginx", url: "http://" + ngAddr + path, pids: []int{ngPid}})
		for _, t := range targets {
			if err := warmUp(ctx, t.url, 50); err != nil {
				return fmt.Errorf("warm-up of %s: %w", t.name, err)
			}
		}
	}
	// The gRPC targets: the replica's one port and the gateway's take
	// HTTP/2 as they take HTTP/1.1.
	gtargets := []target{
		{name: "gRPC direct to one replica", url: replicas[0]},
		{name: "gRPC through the spotml gateway", url: gwAddr, pids: []int{gwPid}},
	}
	image, err := sampleImage()
	if err != nil {
		return err
	}
	gfigures := make([][][]wrk.Result, len(cfg.grpc))
	gcpu := make([][][]float64, len(cfg.grpc))
	for i := range gfigures {
		gfigures[i] = make([][]wrk.Result, len(gtargets))
		gcpu[i] = make([][]float64, len(gtargets))
	}
	// figures[conn index][target index] holds one result per round.
	figures := make([][][]wrk.Result, len(cfg.connections))
	cpuPerReq := make([][][]float64, len(cfg.connections)) // µs of proxy CPU per request
	for i := range figures {
		figures[i] = make([][]wrk.Result, len(targets))
		cpuPerReq[i] = make([][]float64, len(targets))
	}
	for round := range cfg.rounds {
		for ci, conns := range cfg.connections {
			for ti, t := range targets {
				cpu0 := cpuTime(t.pids)
				r, err := wrk.Run(ctx, wrk.Options{URL: t.url, Body: requestFile, Threads: min(cfg.threads, conns), Connections: conns, Duration: cfg.duration})
				if err != nil {
					return err
				}
				if r.Requests > 0 && len(t.pids) > 0 {
					cpuPerReq[ci][ti] = append(cpuPerReq[ci][ti], float64((cpuTime(t.pids)-cpu0).Microseconds())/float64(r.Requests))
				}
				fmt.Fprintf(stderr, "round %d, %d connections, %s: %.0f requests/s, p50 %s, p99 %s, %d errors\n",
					round+1, conns, t.name, r.RPS, wrk.Ms(r.P50), wrk.Ms(r.P99), r.Errors)
				figures[ci][ti] = append(figures[ci][ti], r)
			}
		}
		for ci, callers := range cfg.grpc {
			for ti, t := range gtargets {
				cpu0 := cpuTime(t.pids)
				r, err := grpcload.Run(ctx, grpcload.Options{Addr: t.url, Model: service, Image: image, Callers: callers, Duration: cfg.duration})
				if err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
				if r.Requests > 0 && len(t.pids) > 0 {
					gcpu[ci][ti] = append(gcpu[ci][ti], float64((cpuTime(t.pids)-cpu0).Microseconds())/float64(r.Requests))
				}
				fmt.Fprintf(stderr, "round %d, %d gRPC callers, %s: %.0f calls/s, p50 %s, p99 %s, %d errors %s\n",
					round+1, callers, t.name, r.RPS, wrk.Ms(r.P50), wrk.Ms(r.P99), r.Errors, r.Detail)
				gfigures[ci][ti] = append(gfigures[ci][ti], r)
			}
		}
	}
	if !cfg.grpcOnly {
		printReport(stdout, args, cfg, host, replicas, targets, figures, cpuPerReq)
	}
	if len(cfg.grpc) > 0 {
		printGRPCReport(stdout, args, cfg, host, replicas, gtargets, gfigures, gcpu)
	}
	if len(cfg.curve) > 0 {
		last := len(cfg.connections) - 1
		peak := median(figures[last][len(targets)-1], func(r wrk.Result) float64 { return r.RPS })
		loadgen := filepath.Join(dir, "loadgen")
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", loadgen, "./bench/serving/loadgen").CombinedOutput(); err != nil {
			return fmt.Errorf("build loadgen: %v\n%s", err, out)
		}
		rows, err := runCurve(ctx, stderr, loadgen, cfg, peak, targets)
		if err != nil {
			return err
		}
		printCurve(stdout, cfg, peak, cfg.connections[last], targets, rows)
	}
	return nil
}

// target is what wrk measures; pids are the proxy's processes (their
// children too), whose CPU time per request the report shows.
type target struct {
	name, url string
	pids      []int
}

// specYAML is an on-demand pool (never evicted) and the service, all of
// its replicas on it.
func specYAML(cfg config) string {
	return fmt.Sprintf(`apiVersion: spotml/v1
kind: Pool
metadata: {name: od}
spec:
  provider: local
  priority: ondemand
  instanceType: Standard_D2s_v3
  zones: ["1"]
  min: 0
  max: %d
---
apiVersion: spotml/v1
kind: Service
metadata: {name: %s}
spec:
  model: {uri: models/fmnist.onnx}
  runtime: {type: builtin, threads: 1, maxBatch: %d}
  replicas: {min: %d, max: %d}
  placement: {tier: strict, baseOnDemand: %d}
  resources: {cpu: 1, memory: 512Mi}
`, cfg.replicas, service, cfg.maxBatch, cfg.replicas, cfg.replicas, cfg.replicas)
}

// nginxConf is a plain reverse proxy over the replicas, as one would
// write it in front of model servers: least_conn (the closest to the
// gateway's least outstanding requests), HTTP/1.1 with keepalive to the
// upstreams, no access log, bodies kept in memory.
func nginxConf(dir, addr string, replicas []string) string {
	var servers strings.Builder
	for _, r := range replicas {
		fmt.Fprintf(&servers, "    server %s;\n", r)
	}
	return fmt.Sprintf(`worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/tmp/body;
  proxy_temp_path %[1]s/tmp/proxy;
  fastcgi_temp_path %[1]s/tmp/fastcgi;
  uwsgi_temp_path %[1]s/tmp/uwsgi;
  scgi_temp_path %[1]s/tmp/scgi;
  upstream replicas {
    least_conn;
%[3]s    keepalive 64;
  }
  server {
    listen %[2]s;
    client_max_body_size 16m;
    client_body_buffer_size 1m;
    location / {
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }
  }
}
`, dir, addr, servers.String())
}

// startNginx runs nginx in the foreground with its files in dir, waits
// until it answers, and returns how to stop it.
func startNginx(ctx context.Context, bin, dir, addr string, replicas []string) (func(), int, error) {
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, 0, err
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConf(dir, addr, replicas)), 0o644); err != nil {
		return nil, 0, err
	}
	logf, err := os.Create(filepath.Join(dir, "nginx.out"))
	if err != nil {
		return nil, 0, err
	}
	cmd := exec.Command(bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", conf, "-g", "daemon off;")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, 0, fmt.Errorf("start nginx: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGQUIT) // graceful
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/v2/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return stop, cmd.Process.Pid, nil
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return nil, 0, fmt.Errorf("nginx exited at start: %s", b)
		case <-ctx.Done():
			stop()
			return nil, 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, 0, errors.New("nginx not answering after 10s; see " + dir)
		}
	}
}

func warmUp(ctx context.Context, url string, n int) error {
	body, err := os.ReadFile(requestFile)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 30 * time.Second} // a hung request fails the warm-up, not the run
	for range n {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(string(body)))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, b)
		}
	}
	return nil
}

// median of one figure over the rounds.
func median[T int64 | float64 | time.Duration](rs []wrk.Result, f func(wrk.Result) T) T {
	vs := make([]T, len(rs))
	for i, r := range rs {
		vs[i] = f(r)
	}
	slices.Sort(vs)
	return vs[len(vs)/2]
}

func printReport(w io.Writer, args []string, cfg config, host string, replicas []string, targets []target, figures [][][]wrk.Result, cpuPerReq [][][]float64) {
	fmt.Fprintf(w, "\n### Gateway overhead: %d replicas, wrk at %v connections, %d rounds of %s\n\n",
		cfg.replicas, cfg.connections, cfg.rounds, cfg.duration)
	fmt.Fprintf(w, "command: `%s`\n\n", strings.TrimSpace("go run ./bench/serving/gateway "+strings.Join(args[1:], " ")))
	fmt.Fprintf(w, "machine: %s\n\n", host)
	fmt.Fprintf(w, "One `spotml up`; a service of %d replicas (`spotml serve`, builtin runtime, 1 thread, maxBatch %d) on on-demand nodes at %s. "+
		"nginx: `worker_processes auto`, upstream of the same replicas with `least_conn` and `keepalive 64`. "+
		"wrk runs e.g. `%s` (one image per request, KServe v2 JSON, 4 kB). "+
		"Nothing is pinned: wrk, the proxies and the replicas share the machine's CPUs. Each cell is the median over %d interleaved rounds.\n\n",
		cfg.replicas, cfg.maxBatch, strings.Join(replicas, ", "), figures[0][1][0].Command, cfg.rounds)
	fmt.Fprintln(w, "| connections | target | requests/s | p50 | p99 | p50 over direct | proxy CPU per request | errors |")
	fmt.Fprintln(w, "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	for ci, conns := range cfg.connections {
		direct := median(figures[ci][0], func(r wrk.Result) time.Duration { return r.P50 })
		for ti, t := range targets {
			rs := figures[ci][ti]
			p50 := median(rs, func(r wrk.Result) time.Duration { return r.P50 })
			var errs int64
			for _, r := range rs {
				errs += r.Errors
			}
			over := "–"
			if ti > 0 {
				over = fmt.Sprintf("%+.0f µs", float64((p50-direct).Nanoseconds())/1000)
			}
			cpu := "–"
			if vs := slices.Sorted(slices.Values(cpuPerReq[ci][ti])); len(vs) > 0 {
				cpu = fmt.Sprintf("%.0f µs", vs[len(vs)/2])
			}
			fmt.Fprintf(w, "| %d | %s | %.0f | %s | %s | %s | %s | %d |\n", conns, t.name,
				median(rs, func(r wrk.Result) float64 { return r.RPS }), wrk.Ms(p50),
				wrk.Ms(median(rs, func(r wrk.Result) time.Duration { return r.P99 })), over, cpu, errs)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "- requests/s per round, in order:")
	for ci, conns := range cfg.connections {
		for ti, t := range targets {
			var vs []string
			for _, r := range figures[ci][ti] {
				vs = append(vs, fmt.Sprintf("%.0f", r.RPS))
			}
			fmt.Fprintf(w, "  - %d connections, %s: %s\n", conns, t.name, strings.Join(vs, ", "))
		}
	}
	fmt.Fprintln(w, "- proxy CPU per request: user + system CPU time of the proxy's processes (nginx: master and workers) during the wrk run, over the requests wrk completed; median over the rounds.")
	fmt.Fprintln(w, "- \"direct to one replica\" has one replica behind it, the proxies two; at 1 connection that does not matter (one request at a time), at more it does when the replicas are the bottleneck rather than the CPUs.")
}

// startGateway runs `bin gateway` over the store in data and waits until
// it routes the service.
func startGateway(ctx context.Context, bin, data, logPath string) (string, func(), int, error) {
	addr, err := cluster.FreeAddr()
	if err != nil {
		return "", nil, 0, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return "", nil, 0, err
	}
	cmd := exec.Command(bin, "gateway", "--data", data, "--addr", addr, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return "", nil, 0, fmt.Errorf("start %s gateway: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/v2/models/" + service + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr, stop, cmd.Process.Pid, nil
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			return "", nil, 0, fmt.Errorf("%s gateway exited at start: %s", bin, b)
		case <-ctx.Done():
			stop()
			return "", nil, 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, 0, fmt.Errorf("%s gateway not routing %s after 30s; see %s", bin, service, logPath)
		}
	}
}

// curvePoint is one open-loop run: loadgen's report, cut down.
type curvePoint struct {
	Rate      float64 `json:"rate"`
	Sent      int     `json:"sent"`
	OK        int     `json:"ok"`
	Failed    int     `json:"failed"`
	MaxLagMs  float64 `json:"maxLagMs"`
	LatencyMs struct {
		P50 float64 `json:"p50"`
		P99 float64 `json:"p99"`
	} `json:"latencyMs"`
}

// runCurve sends open-loop load at each fraction of peak to every target
// in turn (targets interleaved at each rate, lowest rate first) and
// returns rows[fraction][target].
func runCurve(ctx context.Context, stderr io.Writer, loadgen string, cfg config, peak float64, targets []target) ([][]curvePoint, error) {
	rows := make([][]curvePoint, len(cfg.curve))
	for i, f := range cfg.curve {
		rate := f * peak
		for _, t := range targets {
			cmd := exec.CommandContext(ctx, loadgen, "-url", t.url, "-body", requestFile,
				"-rate", strconv.FormatFloat(rate, 'f', 0, 64), "-duration", cfg.curveFor.String(), "-timeout", "10s", "-warmup", "20")
			var out strings.Builder
			cmd.Stdout, cmd.Stderr = &out, io.Discard
			if err := cmd.Run(); err != nil {
				return nil, fmt.Errorf("loadgen at %.0f/s on %s: %v", rate, t.name, err)
			}
			var p curvePoint
			if err := json.Unmarshal([]byte(out.String()), &p); err != nil {
				return nil, fmt.Errorf("loadgen at %.0f/s on %s: %v", rate, t.name, err)
			}
			fmt.Fprintf(stderr, "curve %.0f%% (%.0f/s), %s: p50 %.2f ms, p99 %.2f ms, %d/%d ok\n",
				100*f, rate, t.name, p.LatencyMs.P50, p.LatencyMs.P99, p.OK, p.Sent)
			rows[i] = append(rows[i], p)
		}
	}
	return rows, nil
}

func printCurve(w io.Writer, cfg config, peak float64, conns int, targets []target, rows [][]curvePoint) {
	fmt.Fprintf(w, "\n### Latency under load: open loop, %s per rate\n\n", cfg.curveFor)
	fmt.Fprintf(w, "Rates are fractions of nginx's %.0f requests/s at %d connections above; the same rates go to every target "+
		"(bench/serving/loadgen: request i leaves at start + i/rate whatever came back, latency from its due time; a failure is anything but 200 within 10 s). "+
		"Targets interleaved at each rate, lowest rate first. Cells: p50 / p99 in ms, then failed requests if any.\n\n", peak, conns)
	fmt.Fprint(w, "| load | rate/s |")
	for _, t := range targets {
		fmt.Fprintf(w, " %s |", t.name)
	}
	fmt.Fprint(w, "\n| ---: | ---: |")
	for range targets {
		fmt.Fprint(w, " ---: |")
	}
	fmt.Fprintln(w)
	for i, f := range cfg.curve {
		fmt.Fprintf(w, "| %.0f %% | %.0f |", 100*f, f*peak)
		for _, p := range rows[i] {
			cell := fmt.Sprintf("%.2f / %.2f", p.LatencyMs.P50, p.LatencyMs.P99)
			if p.Failed > 0 {
				cell += fmt.Sprintf(" (%d failed)", p.Failed)
			}
			fmt.Fprintf(w, " %s |", cell)
		}
		fmt.Fprintln(w)
	}
}

// cpuTime is the user + system CPU time the processes pids and their
// children (nginx's workers) have used, from /proc; 0 where unreadable.
func cpuTime(pids []int) time.Duration {
	if len(pids) == 0 {
		return 0
	}
	all := slices.Clone(pids)
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if ppid, _, ok := procStat(pid); ok && slices.Contains(pids, ppid) {
				all = append(all, pid)
			}
		}
	}
	var ticks int64
	for _, pid := range all {
		if _, t, ok := procStat(pid); ok {
			ticks += t
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on Linux.
const clockTicks = 100

// procStat reads a process's parent and utime + stime (in clock ticks).
func procStat(pid int) (ppid int, ticks int64, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// The command name may hold spaces: fields start after its ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ppid, ut + st, true
}

// printGRPCReport prints the gRPC case: calls per second and latency
// straight to one replica and through the gateway.
func printGRPCReport(w io.Writer, args []string, cfg config, host string, replicas []string, targets []target, figures [][][]wrk.Result, cpuPerCall [][][]float64) {
	fmt.Fprintf(w, "\n### KServe v2 gRPC through the gateway: %d replicas, %v callers, %d rounds of %s\n\n",
		cfg.replicas, cfg.grpc, cfg.rounds, cfg.duration)
	fmt.Fprintf(w, "command: `%s`\n\n", strings.TrimSpace("go run ./bench/serving/gateway "+strings.Join(args[1:], " ")))
	fmt.Fprintf(w, "machine: %s\n\n", host)
	fmt.Fprintf(w, "The same replicas (%s) and `spotml gateway` as the HTTP case. %s. "+
		"Each cell is the median over %d interleaved rounds.\n\n", strings.Join(replicas, ", "), figures[0][0][0].Command, cfg.rounds)
	fmt.Fprintln(w, "| callers | target | calls/s | p50 | p99 | p50 over direct | gateway CPU per call | errors |")
	fmt.Fprintln(w, "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	for ci, callers := range cfg.grpc {
		direct := median(figures[ci][0], func(r wrk.Result) time.Duration { return r.P50 })
		for ti, t := range targets {
			rs := figures[ci][ti]
			p50 := median(rs, func(r wrk.Result) time.Duration { return r.P50 })
			var errs int64
			for _, r := range rs {
				errs += r.Errors
			}
			over, cpu := "–", "–"
			if ti > 0 {
				over = fmt.Sprintf("%+.0f µs", float64((p50-direct).Nanoseconds())/1000)
			}
			if vs := slices.Sorted(slices.Values(cpuPerCall[ci][ti])); len(vs) > 0 {
				cpu = fmt.Sprintf("%.0f µs", vs[len(vs)/2])
			}
			fmt.Fprintf(w, "| %d | %s | %.0f | %s | %s | %s | %s | %d |\n", callers, t.name,
				median(rs, func(r wrk.Result) float64 { return r.RPS }), wrk.Ms(p50),
				wrk.Ms(median(rs, func(r wrk.Result) time.Duration { return r.P99 })), over, cpu, errs)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "- calls/s per round, in order:")
	for ci, callers := range cfg.grpc {
		for ti, t := range targets {
			var vs []string
			for _, r := range figures[ci][ti] {
				vs = append(vs, fmt.Sprintf("%.0f", r.RPS))
			}
			fmt.Fprintf(w, "  - %d callers, %s: %s\n", callers, t.name, strings.Join(vs, ", "))
		}
	}
	fmt.Fprintln(w, "- \"direct to one replica\" has one replica behind it, the gateway two.")
}

// sampleImage is the image of the sample request.
func sampleImage() ([]float32, error) {
	b, err := os.ReadFile(requestFile)
	if err != nil {
		return nil, fmt.Errorf("%w: run from the root of the spotml repository", err)
	}
	var req struct {
		Inputs []struct {
			Data []float32 `json:"data"`
		} `json:"inputs"`
	}
	if err := json.Unmarshal(b, &req); err != nil || len(req.Inputs) != 1 || len(req.Inputs[0].Data) != 28*28 {
		return nil, fmt.Errorf("%s: not one 28×28 image (%v)", requestFile, err)
	}
	return req.Inputs[0].Data, nil
}
