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
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/spotml/spotml/internal/agent"
	"github.com/spotml/spotml/internal/batchinf/broker"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/notice"
	awsprov "github.com/spotml/spotml/internal/provider/aws"
	azureprov "github.com/spotml/spotml/internal/provider/azure"
	gcpprov "github.com/spotml/spotml/internal/provider/gcp"
	kubeprov "github.com/spotml/spotml/internal/provider/kubernetes"
	"github.com/spotml/spotml/internal/provider/local"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

type serverFlags struct {
	data        string
	store       string
	blobStore   string
	addr        string
	gatewayAddr string
	heartbeat   time.Duration
	nodeTimeout time.Duration
	interval    time.Duration
	retention   time.Duration
	leaseTTL    time.Duration
	instanceID  string
	advertise   string
	logLevel    string
	tracesDir   string
	api         timeouts
	gateway     gatewayOptions
	kube        kubeFlags
	cloud       cloudFlags
}

func (f *serverFlags) bind(c *cobra.Command) {
	c.Flags().StringVar(&f.data, "data", "./spotml-data", "data directory: database (unless --store names one), blobs, tokens, node work directories")
	c.Flags().StringVar(&f.store, "store", "", storeUsage)
	c.Flags().StringVar(&f.blobStore, "blob-store", "",
		"default blob store for outputs, checkpoints, logs and models: file:///DIR, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or azblob://CONTAINER/PREFIX (nodes on other machines need a cloud store); empty: DATA/blobs")
	c.Flags().StringVar(&f.addr, "addr", "127.0.0.1:8080", "address of the API")
	c.Flags().StringVar(&f.gatewayAddr, "gateway-addr", "127.0.0.1:8000", "address of the inference gateway (no admin token needed); empty: no gateway")
	c.Flags().DurationVar(&f.heartbeat, "heartbeat", time.Second, "how often agents heartbeat")
	c.Flags().DurationVar(&f.nodeTimeout, "node-timeout", 15*time.Second, "heartbeat silence after which a node is lost and its tasks requeued")
	c.Flags().DurationVar(&f.interval, "reconcile-interval", 500*time.Millisecond, "how often the control loops run")
	c.Flags().DurationVar(&f.retention, "retention", store.DefaultRetention,
		"how long ended nodes, node runs, attempts, replicas and events are kept (cost is kept per pool and day); 0: forever")
	c.Flags().DurationVar(&f.leaseTTL, "lease-ttl", control.DefaultLeaseTTL,
		"several instances over one --store: how long the leader lease lasts unrenewed (renewed every ttl/3, tried for every ttl/6 up to 500ms); a dead leader is replaced within about ttl + ttl/6")
	c.Flags().StringVar(&f.instanceID, "instance-id", "", "this instance's ID among those sharing the store (default: host name and a random suffix, new each start)")
	c.Flags().StringVar(&f.advertise, "advertise-url", "", "this instance's API URL as others reach it, shown by get controlplane (default: http://ADDR)")
	c.Flags().StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	c.Flags().StringVar(&f.tracesDir, "traces-dir", "traces", "spot traces the console's Plan view and POST /api/v1/plan may replay (see traces/README.md)")
	f.api = apiTimeouts
	f.api.bind(c.Flags(), "api-", "API", false)
	f.gateway = defaultGatewayOptions
	f.gateway.bind(c.Flags(), "gateway-")
	f.kube.bind(c)
	f.cloud.bind(c)
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q is not debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func newUpCmd(stdout, stderr io.Writer, withLocal bool) *cobra.Command {
	var f serverFlags
	use, short := "server", "Run the control plane only (no local nodes)"
	if withLocal {
		use, short = "up", "Run everything on this machine: control plane, local spot market and nodes"
	}
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := newLogger(stderr, f.logLevel)
			if err != nil {
				return err
			}
			return serve(c.Context(), f, withLocal, log, stdout)
		},
	}
	f.bind(c)
	return c
}

// serve runs the control plane (and, for up, the local provider) until ctx
// ends.
func serve(ctx context.Context, f serverFlags, withLocal bool, log *slog.Logger, stdout io.Writer) error {
	if err := f.api.check("api-"); err != nil {
		return err
	}
	if err := f.gateway.timeouts.check("gateway-"); err != nil {
		return err
	}
	if f.leaseTTL < 300*time.Millisecond {
		return fmt.Errorf("--lease-ttl: %s is too short (renewals every ttl/3 would race the database); give at least 300ms, e.g. 3s", f.leaseTTL)
	}
	retention := f.retention
	switch {
	case retention < 0:
		return fmt.Errorf("--retention: %s is negative; give a duration like 168h, or 0 to keep all history", f.retention)
	case retention == 0:
		retention = -1 // control.Options: keep everything
	}
	data, err := filepath.Abs(f.data)
	if err != nil {
		return err
	}
	// Before anything is created: a store that cannot be used stops the
	// server with nothing written.
	blobs, err := openBlobStore(ctx, f.blobStore, data)
	if err != nil {
		return err
	}
	defer blobs.Close()
	if err := os.MkdirAll(data, 0o755); err != nil {
		return fmt.Errorf("--data: %w", err)
	}
	// Snapshots a backup was streaming when the last run ended.
	left, _ := filepath.Glob(filepath.Join(data, ".backup-*"))
	for _, d := range left {
		os.RemoveAll(d)
	}
	st, backups, err := openStore(ctx, f.store, data)
	if err != nil {
		return err
	}
	defer st.Close()
	// The bootstrap secrets live in their files only; the store keeps
	// their hashes. Deleting a file and restarting rotates that secret.
	token, err := bootstrapSecret(ctx, st, data, "token")
	if err != nil {
		return err
	}
	joinToken, err := bootstrapSecret(ctx, st, data, "join-token")
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	url := "http://" + ln.Addr().String()

	providers := map[string]control.Provider{}
	cfg := server.Config{Store: st, Blobs: blobs, Token: token, JoinToken: joinToken, HeartbeatInterval: f.heartbeat, Log: log, Now: time.Now,
		Backup: backups, BackupDir: data, TracesDir: f.tracesDir}
	var loc *local.Local
	var plane *control.Plane
	if withLocal {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		// Agents get every instance's URL (plane is made below, before
		// anything runs that launches).
		loc = local.New(local.Config{Binary: self, ServerURL: url, DataDir: data, Servers: func() []string { return plane.Servers() }}, log, time.Now)
		providers[local.Name] = loc
		cfg.Metadata, cfg.MetadataPrefix = loc.Metadata(), local.MetadataPrefix
	}
	if f.kube.enabled {
		kp, err := f.kube.provider(nil, log)
		if err != nil {
			return err
		}
		providers[kubeprov.Name] = kp
	}
	if f.cloud.azure {
		ap, err := f.cloud.azureProvider(log)
		if err != nil {
			return err
		}
		providers[azureprov.Name] = ap
	}
	if f.cloud.aws {
		ap, err := f.cloud.awsProvider(log)
		if err != nil {
			return err
		}
		providers[awsprov.Name] = ap
	}
	if f.cloud.gcp {
		gp, err := f.cloud.gcpProvider(ctx, log)
		if err != nil {
			return err
		}
		providers[gcpprov.Name] = gp
	}
	if withLocal {
		// Replicas of the builtin runtime run `spotml serve` under the
		// agents: find ONNX Runtime once and hand it down.
		if lib, err := findONNXRuntime(os.Getenv, data); err != nil {
			log.Warn("builtin inference runtime unavailable until ONNX Runtime is installed", "err", err)
		} else {
			os.Setenv("SPOTML_ONNXRUNTIME_LIB", lib)
		}
	}
	advertise := f.advertise
	if advertise == "" {
		advertise = url
	}
	instance := store.Instance{ID: f.instanceID, Address: advertise, Version: buildVersion(), Started: time.Now()}
	if instance.ID == "" {
		instance.ID = control.NewInstanceID()
	}
	// BatchInferences whose queue.uri is a broker send their work here.
	publisher := broker.NewPublisher()
	defer publisher.Close(context.WithoutCancel(ctx))
	plane = control.New(st, providers, log, time.Now, control.Options{Interval: f.interval, NodeTimeout: f.nodeTimeout,
		Retention: retention, Instance: instance, LeaseTTL: f.leaseTTL, BatchPublisher: publisher,
		BatchInputs: func(ctx context.Context, in spec.BatchInput, page func([]string) error) error {
			return server.BatchInputPages(ctx, cfg.Blobs, in, page)
		}})
	cfg.Plane, cfg.Evictor = plane, plane
	g, gctx := errgroup.WithContext(ctx)
	gatewayURL := ""
	if f.gatewayAddr != "" {
		var gw http.Handler
		gatewayURL, gw, err = runGateway(gctx, g, st, f.gatewayAddr, "control-plane", f.gateway, log)
		if err != nil {
			return err
		}
		cfg.Gateway, cfg.GatewayURL = gw, gatewayURL
	}
	handler := server.New(cfg)
	srv := newAPIServer(handler, f.api)
	srv.RegisterOnShutdown(handler.CloseStreams)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error { return plane.Run(gctx) })
	if loc != nil {
		// Every instance serves the local nodes' notices, leader or not.
		g.Go(func() error { return loc.Mirror(gctx, plane) })
	}
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	fmt.Fprintf(stdout, "spotml is up\n  console: %s/ (log in with the token)\n  API:     %s\n  token:   %s\n  data:    %s\n  blobs:   %s\n", url, url, filepath.Join(data, "token"), data, blobs.DefaultURL())
	if gatewayURL != "" {
		fmt.Fprintf(stdout, "  gateway: %s\n", gatewayURL)
	}
	if f.store != "" {
		fmt.Fprintf(stdout, "  store:   %s\n", redactDSN(f.store))
	}
	log.Info("control plane started", "api", url, "data", data, "blobs", blobs.DefaultURL(), "instance", instance.ID)
	err = g.Wait()
	if loc != nil {
		stopLocalNodes(st, loc, log)
	}
	return err
}

// openBlobStore opens the default blob store that --blob-store names (DATA/
// blobs if it names none) and makes sure it can be used before anything
// is accepted that would write to it.
func openBlobStore(ctx context.Context, location, data string) (*blob.Store, error) {
	if location == "" {
		location = "file://" + filepath.Join(data, "blobs")
	}
	blobs, err := blob.NewStore(location)
	if err != nil {
		return nil, fmt.Errorf("--blob-store: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := blobs.Check(cctx); err != nil {
		blobs.Close()
		return nil, fmt.Errorf("--blob-store: %w", err)
	}
	return blobs, nil
}

// bootstrapSecret returns the secret kept in DATA/name, making it (and
// the file) when there is none or the file does not hold the secret whose
// hash the store keeps.
func bootstrapSecret(ctx context.Context, st *sqlstore.Store, data, name string) (string, error) {
	path := filepath.Join(data, name)
	have := ""
	if b, err := os.ReadFile(path); err == nil {
		have = strings.TrimSpace(string(b))
	}
	secret, err := st.EnsureSecret(ctx, name, have)
	if err != nil {
		return "", err
	}
	if secret != have {
		if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
			return "", err
		}
	}
	return secret, nil
}

// stopLocalNodes ends the local nodes when spotml up stops on purpose: they
// are processes of this machine and would otherwise linger. (A crash leaves
// them running; the next start adopts them.)
func stopLocalNodes(st *sqlstore.Store, loc *local.Local, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nodes, err := st.ListNodes(ctx)
	if err != nil {
		log.Error("list nodes at shutdown", "err", err)
		return
	}
	for _, n := range nodes {
		if !store.Live(n.State) {
			continue
		}
		if err := st.EndNode(ctx, n.Name, store.NodeTerminated, "spotml up stopped"); err != nil {
			log.Error("end node at shutdown", "node", n.Name, "err", err)
		}
		loc.Stop(ctx, n)
	}
}

func newAgentCmd(stderr io.Writer, getenv func(string) string) *cobra.Command {
	var cfg agent.Config
	var logLevel, credFile, joinFile string
	var termNotice time.Duration
	c := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent (started by providers on each node)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := newLogger(stderr, logLevel)
			if err != nil {
				return err
			}
			if cfg.Node == "" || cfg.WorkDir == "" {
				return errors.New("--node and --workdir are required")
			}
			switch {
			case credFile != "":
				// The provider's credential for this node: read once, then
				// removed so that no task of this node finds it.
				b, err := os.ReadFile(credFile)
				if err != nil {
					return fmt.Errorf("--credential-file: %w", err)
				}
				if err := os.Remove(credFile); err != nil {
					return fmt.Errorf("--credential-file: %w", err)
				}
				cfg.Credential = strings.TrimSpace(string(b))
			case joinFile != "":
				b, err := os.ReadFile(joinFile)
				if err != nil {
					return fmt.Errorf("--join-token-file: %w", err)
				}
				cfg.JoinToken = strings.TrimSpace(string(b))
			default:
				cfg.JoinToken = getenv("SPOTML_JOIN_TOKEN")
			}
			if cfg.Credential == "" && cfg.JoinToken == "" {
				return errors.New("no credential: start the agent with --join-token-file DATA_DIR/join-token (or SPOTML_JOIN_TOKEN set to that file's content); it joins with it and gets its node's own credential")
			}
			ag := agent.New(cfg, log, time.Now)
			ctx := c.Context()
			if termNotice > 0 {
				// In a pod, SIGTERM is the eviction (the pod is evicted or
				// deleted, its grace period running): drain within it
				// instead of stopping at once. An interrupt still stops.
				terms := make(chan os.Signal, 1)
				signal.Notify(terms, syscall.SIGTERM)
				defer signal.Stop(terms)
				var stop context.CancelFunc
				ctx, stop = signal.NotifyContext(context.WithoutCancel(ctx), os.Interrupt)
				defer stop()
				go func() {
					select {
					case <-terms:
						log.Warn("SIGTERM: draining as on an eviction notice", "notice", termNotice)
						ag.Terminate(notice.Notice{Deadline: time.Now().Add(termNotice), Format: "kubernetes", Detail: "SIGTERM"})
					case <-ctx.Done():
					}
				}()
			}
			return ag.Run(ctx)
		},
	}
	c.Flags().DurationVar(&termNotice, "termination-notice", 0, "treat SIGTERM as an eviction notice of this length (a pod's grace period): drain, checkpoint and report, then exit; 0: SIGTERM stops the agent at once")
	c.Flags().StringVar(&cfg.AdvertiseHost, "advertise-host", "", "the host gateways reach this node's replicas on (a pod's IP); default 127.0.0.1")
	c.Flags().StringVar(&credFile, "credential-file", "", "file holding this node's own credential (providers write it at launch); read once and deleted")
	c.Flags().StringVar(&joinFile, "join-token-file", "", "file holding the control plane's join token (DATA_DIR/join-token), exchanged at registration for this node's own credential; default $SPOTML_JOIN_TOKEN")
	c.Flags().StringVar(&cfg.Server, "server", "http://127.0.0.1:8080", "control plane URL, or its instances' URLs separated by commas (the agent moves to the next when one stops answering)")
	c.Flags().StringVar(&cfg.Node, "node", "", "this node's name")
	c.Flags().StringVar(&cfg.WorkDir, "workdir", "", "this node's work directory")
	c.Flags().StringVar(&cfg.MetadataPath, "metadata-path", "", "instead of --metadata-url: the path under every control-plane server where this node's simulated metadata is served (local provider)")
	c.Flags().StringVar(&cfg.MetadataURL, "metadata-url", "", "base URL of the instance metadata endpoint to watch for eviction notices")
	c.Flags().StringVar(&cfg.MetadataFormat, "metadata-format", "azure", "azure, aws or gcp")
	c.Flags().DurationVar(&cfg.NoticePoll, "notice-poll", time.Second, "how often to poll for an eviction notice")
	c.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return c
}

// buildVersion is this binary's module version, "(devel)" when built from
// a checkout.
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
