// Command warmpool-agent is the node agent (one per node, a DaemonSet): it
// serves the CNI plugin's socket from the node's warm cache and its bbolt
// record, and talks to the allocator over NATS.
//
// `warmpool-agent install-cni` is the DaemonSet's init container instead:
// it installs the plugin binary and a validated network config on the
// node (package cni/install).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/cni/install"
	"github.com/warmpool/warmpool/internal/metrics"
)

// failpointEnv arms a failpoint for the fault tests: "NAME" or "NAME:N"
// kills the agent with SIGKILL the Nth time (default the first) it passes
// the step NAME (agent.Failpoints).
const failpointEnv = "WARMPOOL_FAILPOINT"

// armFailpoint parses failpointEnv's value into a Failpoint hook.
func armFailpoint(spec string) (func(string), error) {
	name, nth, hasN := strings.Cut(spec, ":")
	if !slices.Contains(agent.Failpoints, name) {
		return nil, fmt.Errorf("%s=%q: unknown failpoint, want one of %v", failpointEnv, spec, agent.Failpoints)
	}
	n := int64(1)
	if hasN {
		var err error
		if n, err = strconv.ParseInt(nth, 10, 64); err != nil || n < 1 {
			return nil, fmt.Errorf("%s=%q: the count after ':' must be a positive integer", failpointEnv, spec)
		}
	}
	var hits atomic.Int64
	return func(at string) {
		if at == name && hits.Add(1) == n {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	}, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "install-cni" {
		os.Exit(installCNI(os.Args[2:]))
	}
	var (
		node        = flag.String("node", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
		socket      = flag.String("socket", wire.DefaultSocket, "the CNI plugin's socket")
		state       = flag.String("state", "/var/lib/warmpool/agent.db", "the agent's bbolt record")
		natsURL     = flag.String("nats-url", "", "the allocator's NATS URL (required)")
		kubeconfig  = flag.String("kubeconfig", "", "kubeconfig file; empty uses the in-cluster config")
		reuseDelay  = flag.Duration("reuse-delay", agent.DefaultReuseDelay, "how long a released address cools before reuse")
		missTimeout = flag.Duration("miss-timeout", 5*time.Second, "how long an ADD with an empty cache waits for the allocator")
		gcInterval  = flag.Duration("gc-interval", agent.DefaultGCInterval, "leak GC period: an address whose pod is gone without a DEL is released within about two periods")
		logLevel    = flag.String("log-level", "info", "debug, info, warn or error")
		metricsAddr = flag.String("metrics-addr", ":9420", "where to serve /metrics; empty serves none")
		pprof       = flag.Bool("pprof", false, "also serve Go's profiles at /debug/pprof/ on the metrics address")
		maxProcs    = flag.Int("max-procs", 1, "how many threads run the agent's Go code at once (GOMAXPROCS); 0 keeps Go's default (the node's CPUs, or the container's CPU limit, or $GOMAXPROCS)")
		natsAuth    broker.ClientAuth
	)
	// --nats-token-file: the pod's projected service-account token for
	// the allocator's embedded server (docs/security.md).
	natsAuth.AddFlags(flag.CommandLine)
	flag.Parse()
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil || *node == "" || *natsURL == "" || *maxProcs < 0 {
		fmt.Fprintln(os.Stderr, "warmpool-agent: --node (or $NODE_NAME) and --nats-url are required; --log-level is debug, info, warn or error; --max-procs is 0 or more")
		os.Exit(2)
	}
	// The agent serves a few requests a second on a node whose CPUs are its
	// pods'. With more than one P, a goroutine it makes runnable (a
	// request, a watch event, a bus reply) may wake another thread to look
	// for work: on a busy node those wake-ups cost the pods CPU (measured:
	// docs/benchmark.md, "What an agent's threads cost").
	if *maxProcs > 0 {
		runtime.GOMAXPROCS(*maxProcs)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	natsOpts, err := natsAuth.Options()
	if err != nil {
		fmt.Fprintf(os.Stderr, "warmpool-agent: %v\n", err)
		os.Exit(2)
	}
	if err := run(*node, *socket, *state, *natsURL, *kubeconfig, *metricsAddr, *pprof, *reuseDelay, *missTimeout, *gcInterval, natsOpts, log); err != nil {
		log.Error("agent stopped", "node", *node, "err", err)
		os.Exit(1)
	}
}

func run(node, socket, state, natsURL, kubeconfig, metricsAddr string, pprof bool, reuseDelay, missTimeout, gcInterval time.Duration, natsOpts []nats.Option, log *slog.Logger) error {
	// agent.New adds the node to the agent's lines; this process's own
	// lines add it here (a key given twice would be logged twice).
	agentLog, log := log, log.With("node", node)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	kube, wp, err := client.Clients(kubeconfig, 20, 40)
	if err != nil {
		return err
	}
	s, err := store.Open(state, store.Options{})
	if err != nil {
		return err
	}
	defer s.Close()
	resolver := agent.NewInformerResolver(node, kube, wp)
	if err := resolver.Start(ctx, time.Minute); err != nil {
		return err
	}
	acfg := agent.Config{Node: node, Store: s, Resolver: resolver, Pods: resolver, ReuseDelay: reuseDelay, MissTimeout: missTimeout, Logger: agentLog}
	if spec := os.Getenv(failpointEnv); spec != "" {
		if acfg.Failpoint, err = armFailpoint(spec); err != nil {
			return err
		}
		log.Warn("failpoint armed: this agent will kill itself", "failpoint", spec)
	}
	a, err := agent.New(acfg)
	if err != nil {
		return err
	}
	a.Registry().MustRegister(metrics.KubeRequests())
	// The agent serves from its record while the bus is away: connect
	// without failing, and keep reconnecting.
	// Replies come to this node's own inboxes: a server that gives each
	// agent the permissions of its node lets it subscribe to those only.
	natsOpts = append(natsOpts, nats.RetryOnFailedConnect(true), nats.CustomInboxPrefix(broker.AgentInboxPrefix(node)))
	conn, err := broker.Connect(ctx, natsURL, "warmpool-agent-"+node, natsOpts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	bus := agent.NewBus(a, broker.NATS(conn), 0)
	bus.NodeReady = agent.NodeReadyProbe(kube, node)
	if err := metrics.Serve(ctx, metricsAddr, a.Registry(), log, pprof, map[string]http.Handler{agent.StatePath: a.StateHandler(bus.Fencing)}); err != nil {
		return err
	}
	srv, err := agent.Listen(a, socket)
	if err != nil {
		return err
	}
	errs := make(chan error, 2)
	go func() { errs <- bus.Run(ctx) }()
	go func() { errs <- srv.Serve(ctx) }()
	go a.RunRecycler(ctx)
	go a.RunLeakGC(ctx, gcInterval)
	log.Info("agent serving", "socket", socket, "state", state, "max_procs", runtime.GOMAXPROCS(0))
	err = <-errs
	stop()
	return errors.Join(err, <-errs)
}

// installCNI runs the install-cni subcommand and returns the exit code.
func installCNI(args []string) int {
	fs := flag.NewFlagSet("warmpool-agent install-cni", flag.ContinueOnError)
	var o install.Options
	fs.StringVar(&o.Plugin, "plugin", "/warmpool", "the warmpool plugin binary to install (in the image)")
	fs.StringVar(&o.BinDir, "bin-dir", "/host/opt/cni/bin", "the host's CNI bin directory, mounted")
	fs.StringVar(&o.Conf, "conf", "", "the network config to install (.conflist, .conf or .json), validated first (required)")
	fs.StringVar(&o.ConfDir, "conf-dir", "/host/etc/cni/multus/net.d", "the directory the config goes to, mounted")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	r, err := install.Install(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "warmpool-agent install-cni: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "warmpool-agent install-cni: plugin %s (changed: %v), config %s (changed: %v)\n", r.Plugin, r.PluginChanged, r.Conf, r.ConfChanged)
	return 0
}
