// Command runtime measures spotml's builtin inference runtime against its
// ceiling and against the server one would write without it, on the
// Fashion-MNIST example model, one image per request:
//
//	in-process   ONNX Runtime through internal/inference (Model.Predict):
//	             no HTTP, no JSON; the ceiling of the builtin runtime;
//	spotml serve the builtin runtime over HTTP (KServe v2 JSON), dynamic
//	             batching on (-max-batch, -max-queue-delay);
//	Flask+torch  bench/serving/flask/app.py: Flask's threaded server and
//	             the same network in PyTorch, one forward pass per request.
//
// The servers (and the in-process run) are pinned to the same CPUs
// (-cpus, taskset) with the same compute threads (-threads); wrk runs on
// the other CPUs. HTTP is measured with wrk (bench/serving/wrk/post.lua)
// at each of -connections (closed loop: the concurrency), in interleaved
// rounds; the table gives medians. It prints Markdown.
//
//	go run ./bench/serving/runtime -cpus 0 -threads 1 -connections 1,64 -duration 15s
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spotml/spotml/bench/cluster"
	"github.com/spotml/spotml/bench/serving/machine"
	"github.com/spotml/spotml/bench/serving/wrk"
	"github.com/spotml/spotml/internal/inference"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "runtime:", err)
		os.Exit(1)
	}
}

type config struct {
	duration      time.Duration
	connections   []int
	cpus          string
	wrkCPUs       string
	threads       int
	maxBatch      int
	maxQueueDelay time.Duration
	rounds        int
	python        string
	inProcess     bool // internal: run the in-process measurement and print JSON
}

const (
	modelName   = "fmnist"
	modelFile   = "examples/fashion-mnist/model.onnx"
	requestFile = "examples/fashion-mnist/sample-request.json"
	flaskApp    = "bench/serving/flask/app.py"
)

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg config
	var conns string
	fs := flag.NewFlagSet("runtime", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&cfg.duration, "duration", 15*time.Second, "length of each measurement (whole seconds)")
	fs.StringVar(&conns, "connections", "1,64", "comma-separated concurrencies (wrk connections, in-process callers)")
	fs.StringVar(&cfg.cpus, "cpus", "0", "CPUs (taskset -c list) every server and the in-process run are pinned to")
	fs.StringVar(&cfg.wrkCPUs, "wrk-cpus", "", "CPUs wrk is pinned to (default: the others; none left: not pinned)")
	fs.IntVar(&cfg.threads, "threads", 1, "compute threads of every server (ONNX Runtime intra-op threads, torch.set_num_threads)")
	fs.IntVar(&cfg.maxBatch, "max-batch", 32, "spotml serve --max-batch and the in-process batcher's")
	fs.DurationVar(&cfg.maxQueueDelay, "max-queue-delay", 2*time.Millisecond, "spotml serve --max-queue-delay (its default) and the in-process batcher's")
	fs.IntVar(&cfg.rounds, "rounds", 3, "rounds over all servers; the table gives the median of each figure")
	fs.StringVar(&cfg.python, "python", "/usr/bin/python3", "the Python with Debian's python3-flask, python3-torch and python3-onnx")
	fs.BoolVar(&cfg.inProcess, "in-process", false, "internal: measure in-process only and print JSON")
	if err := fs.Parse(args[1:]); err != nil {
		return err
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
	case cfg.threads < 1 || cfg.maxBatch < 1 || cfg.rounds < 1:
		return errors.New("-threads, -max-batch and -rounds must be at least 1")
	}
	ortLib, err := cluster.ONNXRuntime()
	if err != nil {
		return err
	}
	if cfg.inProcess {
		return measureInProcess(ctx, cfg, ortLib, stdout)
	}
	return compare(ctx, args, cfg, ortLib, stdout, stderr)
}

// compare runs every measurement and prints the report.
func compare(ctx context.Context, args []string, cfg config, ortLib string, stdout, stderr io.Writer) error {
	if err := wrk.Available(); err != nil {
		return err
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return errors.New("taskset not found (Debian package util-linux)")
	}
	if cfg.wrkCPUs == "" {
		cfg.wrkCPUs = otherCPUs(cfg.cpus)
	}
	host := machine.Describe()
	ws, err := cluster.NewWorkspace(ctx, "spotml-runtime", stderr)
	if err != nil {
		return err
	}
	defer ws.Close(false, nil)
	dir, bin := ws.Dir, ws.Bin
	self, err := os.Executable()
	if err != nil {
		return err
	}

	// In-process first, alone on its CPUs.
	inArgs := []string{"-c", cfg.cpus, self, "-in-process", "-duration", cfg.duration.String(), "-threads", strconv.Itoa(cfg.threads),
		"-max-batch", strconv.Itoa(cfg.maxBatch), "-max-queue-delay", cfg.maxQueueDelay.String(), "-connections", joinInts(cfg.connections)}
	fmt.Fprintln(stderr, "in-process: taskset", strings.Join(inArgs, " "))
	cmd := exec.CommandContext(ctx, "taskset", inArgs...)
	cmd.Env = append(os.Environ(), inference.LibraryEnv+"="+ortLib)
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("in-process measurement: %w", err)
	}
	var inProc []inProcessResult
	if err := json.Unmarshal(out, &inProc); err != nil {
		return fmt.Errorf("in-process measurement's output %q: %w", out, err)
	}

	servers := []server{
		{name: "spotml serve", argv: []string{bin, "serve", "--model", modelFile, "--name", modelName, "--threads", strconv.Itoa(cfg.threads),
			"--max-batch", strconv.Itoa(cfg.maxBatch), "--max-queue-delay", cfg.maxQueueDelay.String(), "--data", dir},
			env: []string{inference.LibraryEnv + "=" + ortLib}, addrFlag: "--addr"},
		{name: "Flask + PyTorch", argv: []string{cfg.python, flaskApp, "--model", modelFile, "--name", modelName, "--threads", strconv.Itoa(cfg.threads)},
			portFlag: "--port"},
	}
	for i := range servers {
		if err := servers[i].start(ctx, cfg.cpus, dir); err != nil {
			for _, s := range servers[:i] {
				s.stop()
			}
			return err
		}
		defer servers[i].stop()
	}
	// Both must give the same answer to the same image.
	agree, err := compareAnswers(ctx, servers)
	if err != nil {
		return err
	}

	figures := make([][][]wrk.Result, len(servers)) // [server][connections] per round
	for i := range figures {
		figures[i] = make([][]wrk.Result, len(cfg.connections))
	}
	for round := range cfg.rounds {
		for ci, conns := range cfg.connections {
			for si, s := range servers {
				r, err := wrk.Run(ctx, wrk.Options{URL: s.url(), Body: requestFile, Threads: 1, Connections: conns, Duration: cfg.duration, CPUs: cfg.wrkCPUs})
				if err != nil {
					return err
				}
				fmt.Fprintf(stderr, "round %d, %d connections, %s: %.0f requests/s, p50 %s, p99 %s, %d errors\n",
					round+1, conns, s.name, r.RPS, wrk.Ms(r.P50), wrk.Ms(r.P99), r.Errors)
				figures[si][ci] = append(figures[si][ci], r)
			}
		}
	}
	batches := batchStats(servers[0].stats(), cfg.connections, figures[0])
	printReport(stdout, args, cfg, host, inProc, servers, figures, agree, batches)
	return nil
}

// server is one HTTP server under test, run pinned as a child process.
type server struct {
	name               string
	argv, env          []string
	addrFlag, portFlag string // how to tell it where to listen

	addr   string
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
}

func (s *server) url() string { return "http://" + s.addr + "/v2/models/" + modelName + "/infer" }

func (s *server) start(ctx context.Context, cpus, dir string) error {
	addr, err := cluster.FreeAddr()
	if err != nil {
		return err
	}
	s.addr = addr
	argv := slices.Clone(s.argv)
	if s.addrFlag != "" {
		argv = append(argv, s.addrFlag, addr)
	} else {
		argv = append(argv, s.portFlag, addr[strings.LastIndexByte(addr, ':')+1:])
	}
	s.log = filepath.Join(dir, strings.NewReplacer(" ", "", "+", "-").Replace(s.name)+".log")
	logf, err := os.Create(s.log)
	if err != nil {
		return err
	}
	s.cmd = exec.Command("taskset", append([]string{"-c", cpus}, argv...)...)
	s.cmd.Env = append(os.Environ(), s.env...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", s.name, err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); logf.Close(); close(s.exited) }()
	for deadline := time.Now().Add(60 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/v2/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.exited:
			b, _ := os.ReadFile(s.log)
			return fmt.Errorf("%s exited at start:\n%s", s.name, b)
		case <-ctx.Done():
			s.stop()
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("%s not ready after 60s; see %s", s.name, s.log)
		}
	}
}

// stop interrupts the server; its log stays readable (stats) until the
// directory is removed.
func (s *server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// runStats are the totals `spotml serve` logs as it stops.
type runStats struct{ requests, runs, rows float64 }

// stats stops the server and returns the totals `spotml serve` logs as
// it stops; zero for another server.
func (s *server) stats() runStats {
	s.stop()
	var st runStats
	b, err := os.ReadFile(s.log)
	if err != nil {
		return st
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, `msg="model server stopped"`) {
			continue
		}
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, "=")
			n, _ := strconv.ParseFloat(v, 64)
			switch k {
			case "requests":
				st.requests = n
			case "runs":
				st.runs = n
			case "rows":
				st.rows = n
			}
		}
	}
	return st
}

// batchStats says how well spotml serve batched. Its totals cover every
// measurement; at 1 connection every model run is one image, so with one
// other concurrency the batches there follow from the totals (about: wrk
// does not count the requests cut off at its end).
func batchStats(st runStats, conns []int, figures [][]wrk.Result) string {
	if st.runs == 0 {
		return ""
	}
	out := fmt.Sprintf("%.0f requests in %.0f model runs, %.1f images per run on average over every measurement", st.requests, st.runs, st.rows/st.runs)
	if len(conns) != 2 || !slices.Contains(conns, 1) {
		return out
	}
	one, other := slices.Index(conns, 1), 1-slices.Index(conns, 1)
	var single float64
	for _, r := range figures[one] {
		single += float64(r.Requests)
	}
	if runs := st.runs - single; runs > 0 {
		out += fmt.Sprintf("; at %d connections ≈ %.1f images per run", conns[other], (st.rows-single)/runs)
	}
	return out
}

// compareAnswers sends the sample request to every server and returns the
// largest difference between their logits.
func compareAnswers(ctx context.Context, servers []server) (float64, error) {
	body, err := os.ReadFile(requestFile)
	if err != nil {
		return 0, err
	}
	var logits [][]float64
	for _, s := range servers {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url(), strings.NewReader(string(body)))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", s.name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var out struct {
			Outputs []struct {
				Data []float64 `json:"data"`
			} `json:"outputs"`
		}
		if err := json.Unmarshal(b, &out); err != nil || resp.StatusCode != http.StatusOK || len(out.Outputs) != 1 || len(out.Outputs[0].Data) != 10 {
			return 0, fmt.Errorf("%s answered %s: %s", s.name, resp.Status, b)
		}
		logits = append(logits, out.Outputs[0].Data)
	}
	worst := 0.0
	for _, l := range logits[1:] {
		for k := range l {
			worst = max(worst, math.Abs(l[k]-logits[0][k]))
		}
	}
	return worst, nil
}

// inProcessResult is one in-process measurement.
type inProcessResult struct {
	Name        string  `json:"name"`
	Callers     int     `json:"callers"`
	RowsPerCall int     `json:"rowsPerCall"`
	PerSecond   float64 `json:"inferencesPerSecond"`
	RowsPerRun  float64 `json:"rowsPerRun"`
}

// measureInProcess opens the model as `spotml serve` does and calls
// Predict: from each number of callers at once with one image per call
// (the batcher groups concurrent calls), and from one caller with full
// batches of -max-batch images, the runtime's best case.
func measureInProcess(ctx context.Context, cfg config, lib string, stdout io.Writer) error {
	m, err := inference.Open(modelFile, inference.Options{Library: lib, Threads: cfg.threads, MaxBatch: cfg.maxBatch,
		MaxQueueDelay: cfg.maxQueueDelay, MaxQueue: 1024})
	if err != nil {
		return err
	}
	defer m.Close()
	image, err := sampleImage()
	if err != nil {
		return err
	}
	batch := make([]float32, 0, cfg.maxBatch*len(image))
	for range cfg.maxBatch {
		batch = append(batch, image...)
	}
	one := []inference.Tensor{{Name: "input", Shape: []int64{1, 1, 28, 28}, Data: image}}
	full := []inference.Tensor{{Name: "input", Shape: []int64{int64(cfg.maxBatch), 1, 28, 28}, Data: batch}}
	// Warm up: the first runs of a session are slow.
	for range 200 {
		if _, err := m.Predict(ctx, one); err != nil {
			return err
		}
	}
	measure := func(name string, callers int, in []inference.Tensor, rows int) (inProcessResult, error) {
		before := m.Stats()
		var calls atomic.Int64
		var firstErr error
		var once sync.Once
		deadline := time.Now().Add(cfg.duration)
		start := time.Now()
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					if _, err := m.Predict(ctx, in); err != nil {
						once.Do(func() { firstErr = err })
						return
					}
					calls.Add(1)
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		after := m.Stats()
		r := inProcessResult{Name: name, Callers: callers, RowsPerCall: rows, PerSecond: float64(calls.Load()*int64(rows)) / elapsed.Seconds()}
		if runs := after.Runs - before.Runs; runs > 0 {
			r.RowsPerRun = float64(after.Rows-before.Rows) / float64(runs)
		}
		return r, firstErr
	}
	var results []inProcessResult
	for _, c := range cfg.connections {
		r, err := measure("Predict, 1 image per call", c, one, 1)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	r, err := measure(fmt.Sprintf("Predict, %d images per call", cfg.maxBatch), 1, full, cfg.maxBatch)
	if err != nil {
		return err
	}
	results = append(results, r)
	return json.NewEncoder(stdout).Encode(results)
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

// otherCPUs is every CPU not in list (a taskset -c list), as a list; ""
// when none is left.
func otherCPUs(list string) string {
	used := map[int]bool{}
	for _, part := range strings.Split(list, ",") {
		lo, hi, found := strings.Cut(strings.TrimSpace(part), "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if found {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil {
			return ""
		}
		for c := a; c <= b; c++ {
			used[c] = true
		}
	}
	var rest []string
	for c := range runtime.NumCPU() {
		if !used[c] {
			rest = append(rest, strconv.Itoa(c))
		}
	}
	return strings.Join(rest, ",")
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func median[T float64 | time.Duration](rs []wrk.Result, f func(wrk.Result) T) T {
	vs := make([]T, len(rs))
	for i, r := range rs {
		vs[i] = f(r)
	}
	slices.Sort(vs)
	return vs[len(vs)/2]
}

func printReport(w io.Writer, args []string, cfg config, host string, inProc []inProcessResult, servers []server, figures [][][]wrk.Result, agree float64, batches string) {
	wrkCPUs := cfg.wrkCPUs
	if wrkCPUs == "" {
		wrkCPUs = "not pinned"
	}
	fmt.Fprintf(w, "\n### Builtin runtime: one image per request, %d thread(s) on CPU %s\n\n", cfg.threads, cfg.cpus)
	fmt.Fprintf(w, "command: `%s`\n\n", strings.TrimSpace("go run ./bench/serving/runtime "+strings.Join(args[1:], " ")))
	fmt.Fprintf(w, "machine: %s\n\n", host)
	fmt.Fprintf(w, "Every server and the in-process run pinned to CPU %s (`taskset -c %s`) with %d compute thread(s); wrk (1 thread) on CPU %s, e.g. `%s`. "+
		"`spotml serve --max-batch %d --max-queue-delay %s`; Flask: `%s %s --threads %d` (%s; Flask's threaded server, no batching). "+
		"HTTP figures are medians over %d interleaved rounds of %s; in-process figures are one run of %s each.\n\n",
		cfg.cpus, cfg.cpus, cfg.threads, wrkCPUs, figures[0][len(cfg.connections)-1][0].Command, cfg.maxBatch, cfg.maxQueueDelay,
		cfg.python, flaskApp, cfg.threads, flaskVersion(cfg.python), cfg.rounds, cfg.duration, cfg.duration)
	fmt.Fprintln(w, "| what | concurrency | inferences/s | p50 | p99 | errors |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: |")
	for _, r := range inProc {
		extra := ""
		if r.RowsPerRun > 0 {
			extra = fmt.Sprintf(" (%.1f images per model run)", r.RowsPerRun)
		}
		fmt.Fprintf(w, "| in-process ONNX Runtime: %s%s | %d | %.0f | – | – | – |\n", r.Name, extra, r.Callers, r.PerSecond)
	}
	for si, s := range servers {
		for ci, conns := range cfg.connections {
			rs := figures[si][ci]
			var errs int64
			for _, r := range rs {
				errs += r.Errors
			}
			fmt.Fprintf(w, "| %s over HTTP | %d | %.0f | %s | %s | %d |\n", s.name, conns,
				median(rs, func(r wrk.Result) float64 { return r.RPS }),
				wrk.Ms(median(rs, func(r wrk.Result) time.Duration { return r.P50 })),
				wrk.Ms(median(rs, func(r wrk.Result) time.Duration { return r.P99 })), errs)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "- the two servers' logits for the sample request differ by at most %.2g (same weights: app.py loads them from the ONNX file).\n", agree)
	if batches != "" {
		fmt.Fprintf(w, "- spotml serve: %s.\n", batches)
	}
	fmt.Fprintln(w, "- requests/s per round, in order:")
	for si, s := range servers {
		for ci, conns := range cfg.connections {
			var vs []string
			for _, r := range figures[si][ci] {
				vs = append(vs, fmt.Sprintf("%.0f", r.RPS))
			}
			fmt.Fprintf(w, "  - %s, %d connections: %s\n", s.name, conns, strings.Join(vs, ", "))
		}
	}
}

func flaskVersion(python string) string {
	out, err := exec.Command(python, "-c", "import importlib.metadata as m, torch; print('flask', m.version('flask'), '/ torch', torch.__version__)").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}
