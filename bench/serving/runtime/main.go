// Command runtime measures spotml's builtin inference runtime against its
// ceiling and against the server one would write without it, on the
// Fashion-MNIST example model:
//
//	in-process   ONNX Runtime through internal/inference (Model.Predict):
//	             no HTTP, no JSON; the ceiling of the builtin runtime;
//	spotml serve the builtin runtime, dynamic batching on (-max-batch,
//	             -max-queue-delay), over HTTP with KServe v2 JSON (1 image
//	             and 32 images per request), over HTTP with the binary
//	             tensor extension (1 image), and over gRPC (KServe v2
//	             ModelInfer, raw contents, 1 image per call, a client
//	             generated from grpc_predict_v2.proto on one connection);
//	spotml serve @REV  the same built at -baseline REV (KServe v2 JSON, 1
//	             image), for "before" figures in the same run;
//	Flask+torch  bench/serving/flask/app.py: Flask's threaded server and
//	             the same network in PyTorch, one forward pass per request.
//
// For each measurement of spotml serve it reads the server's /metrics
// before and after, and splits the cost of a request into decoding, waiting
// in the queue, running the model and encoding.
//
// The servers (and the in-process run) are pinned to the same CPUs
// (-cpus, taskset) with the same compute threads (-threads); wrk runs on
// the other CPUs. HTTP is measured with wrk (bench/serving/wrk/post.lua)
// at each of -connections (closed loop: the concurrency), in interleaved
// rounds; the table gives medians. It prints Markdown.
//
//	go run ./bench/serving/runtime -cpus 0 -threads 1 -connections 1,64 -duration 15s -baseline efa3b1f
package main

import (
	"context"
	"encoding/binary"
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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/spotml/spotml/bench/cluster"
	"github.com/spotml/spotml/bench/serving/machine"
	"github.com/spotml/spotml/bench/serving/wrk"
	"github.com/spotml/spotml/internal/inference"
	"github.com/spotml/spotml/internal/inference/kservev2"
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
	baseline      string // git revision to build and measure too
	inProcess     bool   // internal: run the in-process measurement and print JSON
	grpcLoad      string // internal: run the gRPC load against this address and print JSON
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
	fs.StringVar(&cfg.baseline, "baseline", "", "a git revision of spotml to build and measure too (HTTP/JSON, 1 image), e.g. the commit before a change")
	fs.BoolVar(&cfg.inProcess, "in-process", false, "internal: measure in-process only and print JSON")
	fs.StringVar(&cfg.grpcLoad, "grpc-load", "", "internal: call ModelInfer at this address from -connections callers for -duration and print JSON")
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
	if cfg.grpcLoad != "" {
		return grpcLoad(ctx, cfg, stdout)
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
	}
	if cfg.baseline != "" {
		old, err := buildRevision(ctx, cfg.baseline, stderr)
		if err != nil {
			return err
		}
		servers = append(servers, server{name: "spotml serve @" + cfg.baseline, argv: []string{old, "serve", "--model", modelFile, "--name", modelName,
			"--threads", strconv.Itoa(cfg.threads), "--max-batch", strconv.Itoa(cfg.maxBatch), "--max-queue-delay", cfg.maxQueueDelay.String(), "--data", dir},
			env: []string{inference.LibraryEnv + "=" + ortLib}, addrFlag: "--addr"})
	}
	servers = append(servers, server{name: "Flask + PyTorch", argv: []string{cfg.python, flaskApp, "--model", modelFile, "--name", modelName, "--threads", strconv.Itoa(cfg.threads)},
		portFlag: "--port"})
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
	batchBody, binBody, binHeader, err := writeBodies(dir, cfg.maxBatch)
	if err != nil {
		return err
	}

	var cases []benchCase
	for si := range servers {
		cases = append(cases, benchCase{what: servers[si].name + ", HTTP/JSON, 1 image per request", server: si, protocol: "json", body: requestFile, images: 1})
		if si == 0 {
			cases = append(cases,
				benchCase{what: fmt.Sprintf("spotml serve, HTTP/JSON, %d images per request", cfg.maxBatch), server: 0, protocol: "json", body: batchBody, images: cfg.maxBatch},
				benchCase{what: "spotml serve, HTTP binary tensors, 1 image per request", server: 0, protocol: "binary", body: binBody, header: binHeader, images: 1},
				benchCase{what: "spotml serve, gRPC raw tensors, 1 image per call", server: 0, protocol: "grpc", images: 1})
		}
	}
	results := make([][][]measurement, len(cases)) // [case][connections] per round
	for i := range results {
		results[i] = make([][]measurement, len(cfg.connections))
	}
	for round := range cfg.rounds {
		for ci, conns := range cfg.connections {
			for i, c := range cases {
				m, err := measureCase(ctx, self, cfg, servers[c.server], c, conns)
				if err != nil {
					return err
				}
				fmt.Fprintf(stderr, "round %d, %d connections, %s: %.0f requests/s, p50 %s, p99 %s, %d errors\n",
					round+1, conns, c.what, m.RPS, wrk.Ms(m.P50), wrk.Ms(m.P99), m.Errors)
				results[i][ci] = append(results[i][ci], m)
			}
		}
	}
	batches := batchStats(servers[0].stats())
	printReport(stdout, args, cfg, host, inProc, cases, results, agree, batches, figuresCommand(results))
	return nil
}

// benchCase is one way of loading one server.
type benchCase struct {
	what     string
	server   int
	protocol string // json, binary or grpc
	body     string // request body file (HTTP)
	header   string // extra HTTP header
	images   int    // per request
}

// measurement is one run of a case: wrk's figures (or the gRPC load's in
// the same form) and, for spotml serve, what its /metrics counted.
type measurement struct {
	wrk.Result
	costs costs
}

// costs are spotml serve's per-phase counters (its /metrics).
type costs struct{ requests, runs, rows, decode, queue, run, encode float64 }

func (c costs) minus(o costs) costs {
	return costs{c.requests - o.requests, c.runs - o.runs, c.rows - o.rows, c.decode - o.decode, c.queue - o.queue, c.run - o.run, c.encode - o.encode}
}

// readCosts reads spotml serve's /metrics (zero for another server).
func readCosts(ctx context.Context, addr string) costs {
	var c costs
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return c
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return c
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		name, v, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		f, _ := strconv.ParseFloat(v, 64)
		switch strings.TrimPrefix(name, "spotml_inference_") {
		case "requests_total":
			c.requests = f
		case "runs_total":
			c.runs = f
		case "rows_total":
			c.rows = f
		case "decode_seconds_total":
			c.decode = f
		case "queue_seconds_total":
			c.queue = f
		case "run_seconds_total":
			c.run = f
		case "encode_seconds_total":
			c.encode = f
		}
	}
	return c
}

func measureCase(ctx context.Context, self string, cfg config, s server, c benchCase, conns int) (measurement, error) {
	var m measurement
	before := readCosts(ctx, s.addr)
	var err error
	switch c.protocol {
	case "grpc":
		m.Result, err = runGRPCLoad(ctx, self, cfg, s.addr, conns)
	default:
		m.Result, err = wrk.Run(ctx, wrk.Options{URL: s.url(), Body: c.body, Header: c.header, Threads: 1, Connections: conns, Duration: cfg.duration, CPUs: cfg.wrkCPUs})
	}
	m.costs = readCosts(ctx, s.addr).minus(before)
	return m, err
}

// writeBodies writes the request bodies of the batch and binary cases
// into dir: the sample image repeated rows times as KServe v2 JSON, and
// once in the binary tensor extension (with the header it needs).
func writeBodies(dir string, rows int) (batch, bin, header string, err error) {
	image, err := sampleImage()
	if err != nil {
		return "", "", "", err
	}
	data := make([]float32, 0, rows*len(image))
	for range rows {
		data = append(data, image...)
	}
	b, _ := json.Marshal(map[string]any{"id": "batch", "inputs": []any{map[string]any{
		"name": "input", "shape": []int{rows, 1, 28, 28}, "datatype": "FP32", "data": data}}})
	batch = filepath.Join(dir, "batch.json")
	if err := os.WriteFile(batch, b, 0o644); err != nil {
		return "", "", "", err
	}
	head := fmt.Sprintf(`{"id":"bin","inputs":[{"name":"input","shape":[1,1,28,28],"datatype":"FP32","parameters":{"binary_data_size":%d}}],`+
		`"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}`, 4*len(image))
	body := []byte(head)
	for _, f := range image {
		body = binary.LittleEndian.AppendUint32(body, math.Float32bits(f))
	}
	bin = filepath.Join(dir, "binary.bin")
	if err := os.WriteFile(bin, body, 0o644); err != nil {
		return "", "", "", err
	}
	return batch, bin, fmt.Sprintf("Inference-Header-Content-Length: %d", len(head)), nil
}

// buildRevision builds spotml as it was at rev (git archive of this
// repository) into build/bench/spotml-REV, once: a build from another
// directory shares little of Go's build cache and takes minutes.
func buildRevision(ctx context.Context, rev string, log io.Writer) (string, error) {
	bin, err := filepath.Abs(filepath.Join("build", "bench", "spotml-"+rev))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	src := filepath.Join("build", "src-"+rev)
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "building spotml at %s into %s ...\n", rev, bin)
	archive := exec.CommandContext(ctx, "sh", "-c", "git archive --format=tar "+rev+" | tar -x -C "+src)
	if out, err := archive.CombinedOutput(); err != nil {
		return "", fmt.Errorf("-baseline %s: git archive: %v: %s", rev, err, out)
	}
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/spotml")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("-baseline %s: go build: %v: %s", rev, err, out)
	}
	return bin, nil
}

// runGRPCLoad runs the gRPC load as a child pinned to wrk's CPUs.
func runGRPCLoad(ctx context.Context, self string, cfg config, addr string, conns int) (wrk.Result, error) {
	argv := []string{self, "-grpc-load", addr, "-connections", strconv.Itoa(conns), "-duration", cfg.duration.String()}
	if cfg.wrkCPUs != "" {
		argv = append([]string{"taskset", "-c", cfg.wrkCPUs}, argv...)
	}
	res := wrk.Result{Command: strings.Join(argv, " ")}
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	if err != nil {
		return res, fmt.Errorf("%s: %w", res.Command, err)
	}
	var r grpcResult
	if err := json.Unmarshal(out, &r); err != nil {
		return res, fmt.Errorf("%s: its output %q: %w", res.Command, out, err)
	}
	res.Requests, res.Elapsed, res.Errors = r.Calls, time.Duration(r.ElapsedNs), r.Errors
	res.RPS = float64(r.Calls) / res.Elapsed.Seconds()
	res.P50, res.P99 = time.Duration(r.P50Ns), time.Duration(r.P99Ns)
	return res, nil
}

// grpcResult is what -grpc-load prints.
type grpcResult struct {
	Calls, Errors           int64
	ElapsedNs, P50Ns, P99Ns int64
	FirstError              string
}

// grpcLoad calls ModelInfer with the sample image (raw contents) from
// -connections goroutines over one connection, closed loop, for
// -duration, as a Triton or KServe client would.
func grpcLoad(ctx context.Context, cfg config, stdout io.Writer) error {
	image, err := sampleImage()
	if err != nil {
		return err
	}
	raw := make([]byte, 0, 4*len(image))
	for _, f := range image {
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(f))
	}
	conn, err := grpc.NewClient("passthrough:///"+cfg.grpcLoad, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := kservev2.NewGRPCInferenceServiceClient(conn)
	req := &kservev2.ModelInferRequest{ModelName: modelName,
		Inputs:           []*kservev2.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 1, 28, 28}}},
		RawInputContents: [][]byte{raw}}
	if _, err := client.ModelInfer(ctx, req); err != nil { // connect and warm up
		return err
	}
	callers := cfg.connections[0]
	lat := make([][]time.Duration, callers)
	var errs atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	deadline := start.Add(cfg.duration)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			for {
				t0 := time.Now()
				if !t0.Before(deadline) {
					return
				}
				if _, err := client.ModelInfer(ctx, req); err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	r := grpcResult{Calls: int64(len(all)), Errors: errs.Load(), ElapsedNs: int64(elapsed)}
	if len(all) > 0 {
		r.P50Ns, r.P99Ns = int64(all[len(all)/2]), int64(all[len(all)*99/100])
	}
	if e, ok := firstErr.Load().(string); ok {
		r.FirstError = e
	}
	return json.NewEncoder(stdout).Encode(r)
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

// batchStats says how well spotml serve batched over every measurement.
func batchStats(st runStats) string {
	if st.runs == 0 {
		return ""
	}
	return fmt.Sprintf("%.0f requests in %.0f model runs, %.1f images per run on average over every measurement", st.requests, st.runs, st.rows/st.runs)
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

func median[T float64 | time.Duration](ms []measurement, f func(measurement) T) T {
	vs := make([]T, len(ms))
	for i, m := range ms {
		vs[i] = f(m)
	}
	slices.Sort(vs)
	return vs[len(vs)/2]
}

// figuresCommand is a wrk command line of the report's, for an example.
func figuresCommand(results [][][]measurement) string {
	return results[0][len(results[0])-1][0].Command
}

func printReport(w io.Writer, args []string, cfg config, host string, inProc []inProcessResult, cases []benchCase, results [][][]measurement,
	agree float64, batches, wrkExample string) {
	wrkCPUs := cfg.wrkCPUs
	if wrkCPUs == "" {
		wrkCPUs = "not pinned"
	}
	fmt.Fprintf(w, "\n### Builtin runtime: %d thread(s) on CPU %s\n\n", cfg.threads, cfg.cpus)
	fmt.Fprintf(w, "command: `%s`\n\n", strings.TrimSpace("go run ./bench/serving/runtime "+strings.Join(args[1:], " ")))
	fmt.Fprintf(w, "machine: %s\n\n", host)
	fmt.Fprintf(w, "Every server and the in-process run pinned to CPU %s (`taskset -c %s`) with %d compute thread(s); wrk (1 thread) and the gRPC client on CPU %s, e.g. `%s`. "+
		"`spotml serve --max-batch %d --max-queue-delay %s`; Flask: `%s %s --threads %d` (%s; Flask's threaded server, no batching). "+
		"Load figures are medians over %d interleaved rounds of %s; in-process figures are one run of %s each.\n\n",
		cfg.cpus, cfg.cpus, cfg.threads, wrkCPUs, wrkExample, cfg.maxBatch, cfg.maxQueueDelay,
		cfg.python, flaskApp, cfg.threads, flaskVersion(cfg.python), cfg.rounds, cfg.duration, cfg.duration)
	fmt.Fprintln(w, "| what | concurrency | inferences/s | requests/s | p50 | p99 | errors |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	var batchInProc, jsonBatch float64
	for _, r := range inProc {
		extra := ""
		if r.RowsPerRun > 0 {
			extra = fmt.Sprintf(" (%.1f images per model run)", r.RowsPerRun)
		}
		if r.RowsPerCall == cfg.maxBatch {
			batchInProc = r.PerSecond
		}
		fmt.Fprintf(w, "| in-process ONNX Runtime: %s%s | %d | %.0f | – | – | – | – |\n", r.Name, extra, r.Callers, r.PerSecond)
	}
	rate := map[string]float64{} // case what @ connections -> inferences/s
	for i, c := range cases {
		for ci, conns := range cfg.connections {
			ms := results[i][ci]
			var errs int64
			for _, m := range ms {
				errs += m.Errors
			}
			rps := median(ms, func(m measurement) float64 { return m.RPS })
			rate[fmt.Sprintf("%s@%d", c.what, conns)] = rps * float64(c.images)
			if c.images == cfg.maxBatch && c.protocol == "json" {
				jsonBatch = max(jsonBatch, rps*float64(c.images))
			}
			fmt.Fprintf(w, "| %s | %d | %.0f | %.0f | %s | %s | %d |\n", c.what, conns, rps*float64(c.images), rps,
				wrk.Ms(median(ms, func(m measurement) time.Duration { return m.P50 })),
				wrk.Ms(median(ms, func(m measurement) time.Duration { return m.P99 })), errs)
		}
	}
	fmt.Fprintln(w)

	// The targets, from this run's figures.
	top := cfg.connections[len(cfg.connections)-1]
	get := func(what string) float64 { return rate[fmt.Sprintf("%s@%d", what, top)] }
	json1 := get(cases[0].what)
	grpc1 := get("spotml serve, gRPC raw tensors, 1 image per call")
	var before, flask float64
	for _, c := range cases {
		if strings.HasPrefix(c.what, "spotml serve @") {
			before = get(c.what)
		}
		if strings.HasPrefix(c.what, "Flask") {
			flask = get(c.what)
		}
	}
	verdict := func(ok bool) string {
		if ok {
			return "**held**"
		}
		return "**not held**"
	}
	fmt.Fprintln(w, "Targets (issue #14, item 4), from this run:")
	if batchInProc > 0 {
		fmt.Fprintf(w, "- %d images per request over HTTP/JSON: best %.0f images/s = %.2f× in-process ONNX Runtime at batch %d (%.0f); target ≥ 0.5×: %s.\n",
			cfg.maxBatch, jsonBatch, jsonBatch/batchInProc, cfg.maxBatch, batchInProc, verdict(jsonBatch >= 0.5*batchInProc))
	}
	if before > 0 {
		fmt.Fprintf(w, "- single images over gRPC raw tensors at %d concurrent calls: %.0f/s = %.2f× the HTTP/JSON figure before (spotml serve @%s, %.0f/s); target ≥ 3×: %s. (HTTP/JSON now: %.0f/s.)\n",
			top, grpc1, grpc1/before, cfg.baseline, before, verdict(grpc1 >= 3*before), json1)
	}
	if flask > 0 {
		fmt.Fprintf(w, "- against Flask + PyTorch at %d connections: HTTP/JSON %.1f×, gRPC %.1f× (Flask %.0f/s); target ≥ 20×: %s (HTTP/JSON), %s (gRPC).\n",
			top, json1/flask, grpc1/flask, flask, verdict(json1 >= 20*flask), verdict(grpc1 >= 20*flask))
	}
	fmt.Fprintln(w)

	// Where a request's time goes.
	fmt.Fprintln(w, "Cost per request in spotml serve (its /metrics, summed over the rounds): decode, model and encode are the time each phase took "+
		"(model: the runs' time divided by the requests they served), which is CPU time on the server's one core when requests do not overlap (1 connection); "+
		"with many in flight, phases of different requests interleave on the core and their clocks include each other's time, so they overstate CPU. "+
		"queue is time waited for a batch to start, not CPU; rest is 1/throughput − decode − model − encode: at 1 connection the round trip "+
		"(client, kernel, HTTP or gRPC stack), at 64 the server's HTTP or gRPC stack and networking.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| what | concurrency | µs per request (1/throughput) | decode | model | encode | rest | queue (wait) | images per run |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for i, c := range cases {
		if c.server != 0 {
			continue
		}
		for ci, conns := range cfg.connections {
			var sum costs
			var secs float64
			for _, m := range results[i][ci] {
				sum.requests += m.costs.requests
				sum.runs += m.costs.runs
				sum.rows += m.costs.rows
				sum.decode += m.costs.decode
				sum.queue += m.costs.queue
				sum.run += m.costs.run
				sum.encode += m.costs.encode
				secs += m.Elapsed.Seconds()
			}
			if sum.requests == 0 || sum.runs == 0 {
				continue
			}
			per := func(v float64) float64 { return v / sum.requests * 1e6 }
			total := secs / sum.requests * 1e6
			fmt.Fprintf(w, "| %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", c.what, conns, total,
				per(sum.decode), per(sum.run), per(sum.encode), total-per(sum.decode)-per(sum.run)-per(sum.encode), per(sum.queue), sum.rows/sum.runs)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "- the servers' logits for the sample request differ by at most %.2g (same weights: app.py loads them from the ONNX file).\n", agree)
	if batches != "" {
		fmt.Fprintf(w, "- spotml serve: %s.\n", batches)
	}
	fmt.Fprintln(w, "- requests/s per round, in order:")
	for i, c := range cases {
		for ci, conns := range cfg.connections {
			var vs []string
			for _, m := range results[i][ci] {
				vs = append(vs, fmt.Sprintf("%.0f", m.RPS))
			}
			fmt.Fprintf(w, "  - %s, %d: %s\n", c.what, conns, strings.Join(vs, ", "))
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
