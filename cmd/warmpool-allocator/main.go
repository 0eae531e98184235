// Command warmpool-allocator is the cluster allocator: leader-elected
// through a coordination.k8s.io Lease, it serves the agents over NATS (an
// embedded server it starts while it leads, or an external one) and
// persists NodeLeases.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
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
	healthAddr                                                                   string
	qps                                                                          float64
	burst                                                                        int
	planInterval, gcInterval, nodeLossGrace                                      time.Duration
	leaseDuration, renewDeadline, retryPeriod                                    time.Duration
	pprof                                                                        bool
	// the bus's security (docs/security.md)
	agentAuth, agentAudience, agentServiceAccount string
	tlsCert, tlsKey                               string
	natsAuth                                      broker.ClientAuth
}

// Values of --nats-agent-auth.
const (
	agentAuthNone           = "none"
	agentAuthServiceAccount = "serviceaccount"
)

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
	// Off by default: tests and the benchmark run several allocators on
	// one host, where a fixed port would collide. The install sets it.
	flag.StringVar(&o.healthAddr, "health-addr", "", "where to serve "+metrics.HealthPath+" in every role, for the kubelet's probes (the install uses :9422); empty serves none")
	flag.BoolVar(&o.pprof, "pprof", false, "also serve Go's profiles at /debug/pprof/ on the metrics address")
	flag.Float64Var(&o.qps, "kube-api-qps", 100, "Kubernetes API requests per second (client-go rate limiter)")
	flag.IntVar(&o.burst, "kube-api-burst", 200, "Kubernetes API request burst")
	flag.DurationVar(&o.planInterval, "plan-interval", allocator.DefaultPlanInterval, "planning round period when no event triggers one")
	flag.DurationVar(&o.gcInterval, "gc-interval", allocator.DefaultGCInterval, "how often lost nodes are checked for units to return")
	flag.DurationVar(&o.nodeLossGrace, "node-loss-grace", allocator.DefaultNodeLossGrace, "how long a node may be NotReady (and its agent silent) before its units are reclaimed")
	flag.StringVar(&o.agentAuth, "nats-agent-auth", agentAuthNone, "how the embedded NATS server authenticates agents: "+agentAuthServiceAccount+
		" (each agent by its pod-bound service-account token, reviewed by the apiserver, with permissions for its own node's subjects only) or "+agentAuthNone+
		" (any client, every permission: for tests and benchmarks only; production must use "+agentAuthServiceAccount+")")
	flag.StringVar(&o.agentAudience, "nats-agent-audience", broker.DefaultAgentAudience, "audience of the agents' projected service-account tokens for the bus")
	flag.StringVar(&o.agentServiceAccount, "agent-service-account", envOr("POD_NAMESPACE", "kube-system")+"/warmpool-agent", "the agents' service account, namespace/name: a token of any other is refused")
	flag.StringVar(&o.tlsCert, "nats-tls-cert-file", "", "PEM certificate (chain) of the embedded NATS server: clients must then connect with TLS (agents: --nats-ca-file)")
	flag.StringVar(&o.tlsKey, "nats-tls-key-file", "", "PEM private key of --nats-tls-cert-file")
	o.natsAuth.AddFlags(flag.CommandLine)
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
	bus, err := newBusSecurity(o, log)
	if err != nil {
		return err
	}
	defer bus.close()
	// Served in both roles: a standby serves nothing else.
	health := &termWatch{grace: 2 * o.leaseDuration, now: time.Now}
	if err := metrics.ServeHealth(ctx, o.healthAddr, health.check, log); err != nil {
		return err
	}
	e := allocator.Election{Namespace: o.namespace, Name: o.leaseName, Identity: identity,
		LeaseDuration: o.leaseDuration, RenewDeadline: o.renewDeadline, Retry: o.retryPeriod}
	err = allocator.RunLeader(ctx, kube, e, func(lctx context.Context, epoch uint64) error {
		// allocator.New adds the epoch it serves with (raised above any
		// lease's) to its lines; a key given twice would be logged twice.
		log := log.With("identity", identity)
		log.Info("leading", "epoch", epoch)
		defer health.term(lctx)()
		return lead(lctx, kube, wp, o, bus, epoch, log)
	})
	if ctx.Err() == nil {
		// Leadership ended while we meant to run (lost, or lead failed):
		// exit, so that a fresh process, not a deposed leader's state,
		// competes again.
		return fmt.Errorf("no longer leading: %w", err)
	}
	return err
}

func lead(ctx context.Context, kube kubernetes.Interface, wp *client.Clientset, o options, bus *busSecurity, epoch uint64, log *slog.Logger) error {
	// A bus that is down when the term begins (an external NATS
	// restarting) is waited for, not a reason to exit: the agents keep
	// serving from their caches meanwhile.
	url, connect := o.natsURL, func() (*nats.Conn, error) {
		return broker.Connect(ctx, o.natsURL, "warmpool-allocator", append(slices.Clip(bus.clientOpts), nats.RetryOnFailedConnect(true))...)
	}
	if url == "" {
		host, portStr, err := net.SplitHostPort(o.natsListen)
		if err != nil {
			return fmt.Errorf("--nats-listen: %w", err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil {
			return fmt.Errorf("--nats-listen: %w", err)
		}
		srv, err := broker.StartServer(broker.ServerOptions{Host: host, Port: port, Logger: log.With("component", "nats"), Auth: bus.serverAuth, TLS: bus.tls})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		url = srv.ClientURL()
		// In-process, with the server's own allocator credential.
		connect = func() (*nats.Conn, error) { return srv.Connect(ctx, "warmpool-allocator") }
	}
	conn, err := connect()
	if err != nil {
		return err
	}
	defer conn.Close()
	a, err := allocator.New(ctx, allocator.Config{Client: wp, Bus: broker.NATS(conn), Epoch: epoch, Logger: log, Kube: kube,
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
	log.Info("serving the bus", "nats", url, "epoch", a.Epoch())
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

// busSecurity is what the flags say of the bus's security: the embedded
// server's authentication and TLS, or the credentials for an external one.
type busSecurity struct {
	serverAuth *broker.ServerAuth // nil: no authentication
	tls        *tls.Config
	clientOpts []nats.Option // for an external server
	close      func()
}

func newBusSecurity(o options, log *slog.Logger) (*busSecurity, error) {
	b := &busSecurity{close: func() {}}
	embedded := o.natsURL == ""
	switch o.agentAuth {
	case agentAuthNone:
		if embedded {
			log.Warn("the embedded NATS server authenticates no one: any client may speak for any node (--nats-agent-auth=" + agentAuthServiceAccount + " in production)")
		}
	case agentAuthServiceAccount:
		if !embedded {
			return nil, fmt.Errorf("--nats-agent-auth=%s is for the embedded server; an external server's agent permissions are its own configuration (docs/security.md)", agentAuthServiceAccount)
		}
		// Reviews get a client, and a rate limit, of their own: a flood of
		// bad tokens from whoever reaches the bus must not starve the
		// election's renewals and the data path's lease writes.
		reviewKube, _, err := client.Clients(o.kubeconfig, 20, 40)
		if err != nil {
			return nil, err
		}
		reviewer, err := broker.NewTokenReviewer(reviewKube, broker.TokenReviewerOptions{Audience: o.agentAudience, ServiceAccount: o.agentServiceAccount})
		if err != nil {
			return nil, err
		}
		b.close = reviewer.Close
		b.serverAuth = broker.NewServerAuth(reviewer, log.With("component", "nats-auth"))
	default:
		return nil, fmt.Errorf("--nats-agent-auth=%q: want %s or %s", o.agentAuth, agentAuthNone, agentAuthServiceAccount)
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return nil, errors.New("--nats-tls-cert-file and --nats-tls-key-file go together")
	}
	if o.tlsCert != "" {
		if !embedded {
			return nil, errors.New("--nats-tls-cert-file is the embedded server's; for an external server's TLS give --nats-ca-file")
		}
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("nats TLS: %w", err)
		}
		b.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	opts, err := o.natsAuth.Options()
	if err != nil {
		return nil, err
	}
	if embedded && len(opts) > 0 {
		return nil, errors.New("--nats-ca-file and the --nats-* credentials are for an external server (--nats-url); the allocator connects to its embedded server in-process")
	}
	b.clientOpts = opts
	return b, nil
}
