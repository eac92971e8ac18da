package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/gateway"
	"github.com/spotml/spotml/internal/inference"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// newGatewayCmd runs a gateway on its own, over the store of a control
// plane on this machine (more gateways, or one restarted apart from the
// control plane).
func newGatewayCmd(stdout, stderr io.Writer) *cobra.Command {
	var data, dsn, addr, id, logLevel string
	opts := defaultGatewayOptions
	c := &cobra.Command{
		Use:   "gateway",
		Short: "Run an inference gateway alone, routing by the store (--store, or the one in --data)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := newLogger(stderr, logLevel)
			if err != nil {
				return err
			}
			if err := opts.timeouts.check(""); err != nil {
				return err
			}
			if dsn == "" {
				// The gateway makes no store of its own: it routes by
				// the control plane's.
				if _, err := os.Stat(filepath.Join(data, "spotml.db")); err != nil {
					return fmt.Errorf("--data %s: no spotml store there (%w); start the control plane first, point --data at its data directory, or give its --store", data, err)
				}
			}
			st, _, err := openStore(c.Context(), dsn, data)
			if err != nil {
				return err
			}
			defer st.Close()
			g, gctx := errgroup.WithContext(c.Context())
			url, _, err := runGateway(gctx, g, st, addr, id, opts, log)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "spotml gateway: %s\n", url)
			return g.Wait()
		},
	}
	c.Flags().StringVar(&data, "data", "./spotml-data", "the control plane's data directory")
	c.Flags().StringVar(&dsn, "store", "", "the control plane's store, as its --store; default: spotml.db in --data")
	c.Flags().StringVar(&addr, "addr", "127.0.0.1:8000", "address to serve on")
	c.Flags().StringVar(&id, "id", "", "name of this gateway in the QPS reports (default gateway-HOSTNAME-PID)")
	c.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	opts.bind(c.Flags(), "")
	return c
}

// gatewayOptions bound what a gateway holds for its clients.
type gatewayOptions struct {
	timeouts    timeouts
	maxBuffered int64
}

// defaultGatewayOptions are the flags' defaults, for spotml gateway and up.
var defaultGatewayOptions = gatewayOptions{timeouts: gatewayTimeouts, maxBuffered: gateway.DefaultMaxBufferedBytes}

func (o *gatewayOptions) bind(fs *pflag.FlagSet, prefix string) {
	o.timeouts.bind(fs, prefix, "gateway", true)
	fs.Var(bytesFlag{&o.maxBuffered}, prefix+"max-buffered-bytes", "most bytes of request bodies the gateway holds at once, all services together; past it requests get 429")
}

// runGateway listens on addr and serves a gateway fed from st, in g, until
// ctx ends. It returns the gateway's URL.
func runGateway(ctx context.Context, g *errgroup.Group, st *sqlstore.Store, addr, id string, opts gatewayOptions, log *slog.Logger) (string, *gateway.Gateway, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("gateway address %s: %w", addr, err)
	}
	if id == "" {
		host, _ := os.Hostname()
		id = fmt.Sprintf("gateway-%s-%d", host, os.Getpid())
	}
	log = log.With("gateway", id)
	gw := gateway.New(gateway.Config{Log: log, Now: time.Now, MaxBufferedBytes: opts.maxBuffered})
	srv := newGatewayServer(gw, opts.timeouts)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error { return control.FeedGateway(ctx, st, gw, log, time.Now, control.FeedOptions{ID: id}) })
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	return "http://" + ln.Addr().String(), gw, nil
}

// newGatewayServer is the HTTP server of a gateway: HTTP/1.1, and HTTP/2
// for gRPC calls (h2c on a plain address).
func newGatewayServer(gw *gateway.Gateway, t timeouts) *http.Server {
	srv := newServer(gw, t)
	gateway.ServeProtocols(srv)
	return srv
}

// findONNXRuntime looks for ONNX Runtime's shared library where spotml's
// setup puts it: $SPOTML_ONNXRUNTIME_LIB, DATA/lib, ./build/onnxruntime,
// and beside the executable.
func findONNXRuntime(getenv func(string) string, data string) (string, error) {
	dirs := []string{filepath.Join(data, "lib"), filepath.Join("build", "onnxruntime")}
	if exe, err := os.Executable(); err == nil {
		d := filepath.Dir(exe)
		dirs = append(dirs, d, filepath.Join(d, "..", "build", "onnxruntime"))
	}
	return inference.FindLibrary(getenv, dirs...)
}
