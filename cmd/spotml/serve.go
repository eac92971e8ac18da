package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/spotml/spotml/internal/inference"
)

// serveFlags are spotml serve's settings.
type serveFlags struct {
	model, name, addr, data string
	maxBatch, maxQueue      int
	maxQueueDelay           time.Duration
	threads                 int
	maxBody                 int64
	shutdownTimeout         time.Duration
	logLevel                string
	timeouts                timeouts
}

// newServeCmd is `spotml serve`: the builtin inference runtime, one ONNX
// model over HTTP/1.1 (TensorFlow Serving REST, KServe v2 JSON and binary)
// and gRPC (KServe v2 / Open Inference Protocol) on the same address.
// Service replicas with the builtin runtime are this command, started by
// the agent with PORT set.
func newServeCmd(getenv func(string) string, stdout, stderr io.Writer) *cobra.Command {
	f := serveFlags{timeouts: serveTimeouts}
	d := inference.DefaultOptions()
	addr := "127.0.0.1:8500"
	if p := getenv("PORT"); p != "" {
		addr = net.JoinHostPort("127.0.0.1", p)
	}
	c := &cobra.Command{
		Use:   "serve --model PATH",
		Short: "Serve an ONNX model over HTTP and gRPC (TensorFlow Serving and KServe v2 APIs), batching concurrent requests",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := newLogger(stderr, f.logLevel)
			if err != nil {
				return err
			}
			return runServe(c.Context(), f, getenv, log, stdout)
		},
	}
	c.Flags().StringVar(&f.model, "model", "", "the .onnx model file to serve (required)")
	c.Flags().StringVar(&f.name, "name", "", "the model's name in request paths (default: the file name without .onnx)")
	c.Flags().StringVar(&f.addr, "addr", addr, "address to serve on (default 127.0.0.1:$PORT when PORT is set)")
	c.Flags().IntVar(&f.maxBatch, "max-batch", d.MaxBatch, "most rows in one model run; concurrent requests are batched up to it")
	c.Flags().DurationVar(&f.maxQueueDelay, "max-queue-delay", d.MaxQueueDelay, "longest a batch waits for more requests (0: run what is queued at once)")
	c.Flags().IntVar(&f.maxQueue, "max-queue", d.MaxQueue, "most requests waiting for the model; beyond it requests get 503")
	c.Flags().IntVar(&f.threads, "threads", d.Threads, "ONNX Runtime threads per model run (0: as many as the CPUs this process may use)")
	c.Flags().Int64Var(&f.maxBody, "max-body-bytes", inference.DefaultMaxBodyBytes, "largest request body or gRPC message; larger ones get 413 (HTTP) or RESOURCE_EXHAUSTED (gRPC)")
	c.Flags().StringVar(&f.data, "data", "./spotml-data", "data directory: ONNX Runtime is looked for in its lib/ (also $"+inference.LibraryEnv+", ./build/onnxruntime, beside the executable)")
	c.Flags().DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long requests in flight may take to finish")
	c.Flags().StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	f.timeouts.bind(c.Flags(), "", "model server", true)
	return c
}

// runServe serves the model until ctx ends, then stops taking connections,
// lets the requests in flight finish and closes the model.
func runServe(ctx context.Context, f serveFlags, getenv func(string) string, log *slog.Logger, stdout io.Writer) error {
	switch {
	case f.model == "":
		return errors.New("--model: name the .onnx file to serve (spotml serve --model model.onnx)")
	case f.maxBatch < 1:
		return fmt.Errorf("--max-batch %d: must be at least 1", f.maxBatch)
	case f.maxQueue < 1:
		return fmt.Errorf("--max-queue %d: must be at least 1", f.maxQueue)
	case f.threads < 0:
		return fmt.Errorf("--threads %d: must be at least 1 (or 0 for one per CPU)", f.threads)
	case f.maxQueueDelay < 0:
		return fmt.Errorf("--max-queue-delay %s: must not be negative", f.maxQueueDelay)
	case f.maxBody < 1 || f.maxBody > math.MaxInt32:
		return fmt.Errorf("--max-body-bytes %d: must be between 1 and %d", f.maxBody, math.MaxInt32)
	}
	if err := f.timeouts.check(""); err != nil {
		return err
	}
	name := f.name
	if name == "" {
		name = strings.TrimSuffix(filepath.Base(f.model), ".onnx")
	}
	lib, err := findONNXRuntime(getenv, f.data)
	if err != nil {
		return err
	}
	m, err := inference.Open(f.model, inference.Options{
		Library: lib, Threads: f.threads, MaxBatch: f.maxBatch, MaxQueueDelay: f.maxQueueDelay, MaxQueue: f.maxQueue, Log: log,
	})
	if err != nil {
		return err
	}
	// Deferred, so closed after the server has stopped: requests in flight
	// still have their model while Shutdown waits for them.
	defer m.Close()
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	h := inference.NewHandler(name, m, inference.WithMaxBodyBytes(f.maxBody), inference.WithLogger(log))
	srv := newServer(h, f.timeouts)
	gsrv := inference.NewGRPCServer(inference.NewGRPCService(name, m, log), int(f.maxBody))
	// One address, both protocols: gRPC clients open with HTTP/2's
	// preface, HTTP/1.1 clients with a request line.
	split := inference.NewSplit(ln, readHeaderTimeout)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(split.Run)
	g.Go(func() error {
		if err := srv.Serve(split.HTTP()); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error { return gsrv.Serve(split.GRPC()) }) // nil after GracefulStop
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down: finishing requests in flight", "timeout", f.shutdownTimeout)
		sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
		defer cancel()
		defer ln.Close() // after both servers have stopped taking connections
		stopped := make(chan struct{})
		go func() { gsrv.GracefulStop(); close(stopped) }()
		err := srv.Shutdown(sctx)
		select {
		case <-stopped:
		case <-sctx.Done():
			gsrv.Stop() // cuts the calls still running
			<-stopped
		}
		return err
	})

	url := "http://" + ln.Addr().String()
	fmt.Fprintf(stdout, "spotml serve: model %s on %s\n  TensorFlow Serving: POST %s/v1/models/%s:predict\n  KServe v2:          POST %s/v2/models/%s/infer\n  KServe v2 gRPC:     inference.GRPCInferenceService on %s (h2c)\n",
		name, url, url, name, url, name, ln.Addr())
	threads := f.threads
	if threads == 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	log.Info("model server ready", "model", name, "file", f.model, "addr", url,
		"inputs", describeTensors(m.Inputs()), "outputs", describeTensors(m.Outputs()),
		"max_batch", f.maxBatch, "max_queue_delay", f.maxQueueDelay, "threads", threads, "onnxruntime", lib)
	err = g.Wait()
	st := m.Stats()
	log.Info("model server stopped", "requests", st.Requests, "runs", st.Runs, "rows", st.Rows,
		"decode", st.Decode, "queue", st.Queue, "run", st.Run, "encode", st.Encode)
	return err
}

// describeTensors writes tensors for the log: input:FP32[-1,1,28,28].
func describeTensors(ts []inference.TensorInfo) string {
	var parts []string
	for _, t := range ts {
		dims := make([]string, len(t.Shape))
		for i, d := range t.Shape {
			dims[i] = fmt.Sprint(d)
		}
		parts = append(parts, fmt.Sprintf("%s:%s[%s]", t.Name, t.DataType, strings.Join(dims, ",")))
	}
	return strings.Join(parts, " ")
}
