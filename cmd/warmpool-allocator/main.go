// Command warmpool-allocator is the cluster allocator: leader-elected
// through a coordination.k8s.io Lease, it serves the agents over NATS (an
// embedded server it starts while it leads, or an external one) and
// persists NodeLeases.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"k8s.io/client-go/kubernetes"

	"github.com/warmpool/warmpool/allocator"
	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/metrics"
)

// options are the allocator's flags.
type options struct {
	kubeconfig, natsURL, natsListen, namespace, leaseName, identity, metricsAddr string
	qps                                                                          float64
	burst                                                                        int
	planInterval, gcInterval, nodeLossGrace                                      time.Duration
	leaseDuration, renewDeadline, retryPeriod                                    time.Duration
	pprof                                                                        bool
}

func main() {
	var o options
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster config")
	flag.StringVar(&o.natsURL, "nats-url", "", "external NATS URL; empty starts an embedded server while leading")
	flag.StringVar(&o.natsListen, "nats-listen", "0.0.0.0:4222", "address of the embedded NATS server")
	flag.StringVar(&o.namespace, "namespace", envOr("POD_NAMESPACE", "kube-system"), "namespace of the leader-election Lease")
	flag.StringVar(&o.leaseName, "lease-name", "warmpool-allocator", "name of the leader-election Lease")
	flag.StringVar(&o.identity, "identity", os.Getenv("POD_NAME"), "this replica's name in the leader-election Lease, to which a random suffix is added (default $POD_NAME, else the host name)")
	flag.DurationVar(&o.leaseDuration, "leader-lease-duration", 15*time.Second, "how long a leader's Lease lasts unrenewed: a dead leader's successor waits this long")
	flag.DurationVar(&o.renewDeadline, "leader-renew-deadline", 10*time.Second, "how long a leader keeps trying to renew before it steps down; less than the lease duration")
	flag.DurationVar(&o.retryPeriod, "leader-retry-period", 2*time.Second, "how often candidates try to take the Lease and the leader renews it")
	flag.StringVar(&o.metricsAddr, "metrics-addr", ":9421", "where to serve /metrics while leading; empty serves none")
	flag.BoolVar(&o.pprof, "pprof", false, "also serve Go's profiles at /debug/pprof/ on the metrics address")
	flag.Float64Var(&o.qps, "kube-api-qps", 100, "Kubernetes API requests per second (client-go rate limiter)")
	flag.IntVar(&o.burst, "kube-api-burst", 200, "Kubernetes API request burst")
	flag.DurationVar(&o.planInterval, "plan-interval", allocator.DefaultPlanInterval, "planning round period when no event triggers one")
	flag.DurationVar(&o.gcInterval, "gc-interval", allocator.DefaultGCInterval, "leak GC period; a leak is freed within about two periods")
	flag.DurationVar(&o.nodeLossGrace, "node-loss-grace", allocator.DefaultNodeLossGrace, "how long a node may be NotReady (and its agent silent) before its units are reclaimed")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	flag.Parse()
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "--log-level: %v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := run(o, log); err != nil {
		log.Error("allocator stopped", "err", err)
		os.Exit(1)
	}
}

func run(o options, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	kube, wp, err := client.Clients(o.kubeconfig, float32(o.qps), o.burst)
	if err != nil {
		return err
	}
	// Unique per process, as kube-controller-manager's is: a process
	// restarted under the same name must not take the Lease as a renewal
	// of its predecessor's term (no change of hands, no new epoch).
	identity := o.identity
	if identity == "" {
		identity, _ = os.Hostname()
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	identity += "_" + hex.EncodeToString(suffix)
	if o.renewDeadline >= o.leaseDuration || o.retryPeriod <= 0 || o.retryPeriod >= o.renewDeadline {
		return fmt.Errorf("leader election: want 0 < --leader-retry-period (%s) < --leader-renew-deadline (%s) < --leader-lease-duration (%s)", o.retryPeriod, o.renewDeadline, o.leaseDuration)
	}
	e := allocator.Election{Namespace: o.namespace, Name: o.leaseName, Identity: identity,
		LeaseDuration: o.leaseDuration, RenewDeadline: o.renewDeadline, Retry: o.retryPeriod}
	err = allocator.RunLeader(ctx, kube, e, func(lctx context.Context, epoch uint64) error {
		log := log.With("epoch", epoch, "identity", identity)
		log.Info("leading")
		return lead(lctx, kube, wp, o, epoch, log)
	})
	if ctx.Err() == nil {
		// Leadership ended while we meant to run (lost, or lead failed):
		// exit, so that a fresh process, not a deposed leader's state,
		// competes again.
		return fmt.Errorf("no longer leading: %w", err)
	}
	return err
}

func lead(ctx context.Context, kube kubernetes.Interface, wp *client.Clientset, o options, epoch uint64, log *slog.Logger) error {
	url := o.natsURL
	if url == "" {
		host, portStr, err := net.SplitHostPort(o.natsListen)
		if err != nil {
			return fmt.Errorf("--nats-listen: %w", err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil {
			return fmt.Errorf("--nats-listen: %w", err)
		}
		srv, err := broker.StartServer(broker.ServerOptions{Host: host, Port: port, Logger: log.With("component", "nats")})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		url = srv.ClientURL()
	}
	// A bus that is down when the term begins (an external NATS
	// restarting) is waited for, not a reason to exit: the agents keep
	// serving from their caches meanwhile.
	conn, err := broker.Connect(ctx, url, "warmpool-allocator", nats.RetryOnFailedConnect(true))
	if err != nil {
		return err
	}
	defer conn.Close()
	a, err := allocator.New(ctx, allocator.Config{Client: wp, Conn: conn, Epoch: epoch, Logger: log, Kube: kube,
		PlanInterval: o.planInterval, GCInterval: o.gcInterval, NodeLossGrace: o.nodeLossGrace})
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		return err
	}
	a.Registry().MustRegister(metrics.KubeRequests())
	if err := metrics.Serve(ctx, o.metricsAddr, a.Registry(), log, o.pprof, nil); err != nil {
		return err
	}
	log.Info("serving the bus", "nats", url)
	select {
	case <-ctx.Done():
		a.Stop()
		return nil
	case <-a.Deposed():
		a.Stop()
		return allocator.ErrDeposed
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
