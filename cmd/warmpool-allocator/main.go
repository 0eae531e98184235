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

	"k8s.io/client-go/kubernetes"

	"github.com/warmpool/warmpool/allocator"
	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/metrics"
)

func main() {
	var (
		kubeconfig  = flag.String("kubeconfig", "", "kubeconfig file; empty uses the in-cluster config")
		natsURL     = flag.String("nats-url", "", "external NATS URL; empty starts an embedded server while leading")
		natsListen  = flag.String("nats-listen", "0.0.0.0:4222", "address of the embedded NATS server")
		namespace   = flag.String("namespace", envOr("POD_NAMESPACE", "kube-system"), "namespace of the leader-election Lease")
		leaseName   = flag.String("lease-name", "warmpool-allocator", "name of the leader-election Lease")
		logLevel    = flag.String("log-level", "info", "debug, info, warn or error")
		metricsAddr = flag.String("metrics-addr", ":9421", "where to serve /metrics while leading; empty serves none")
	)
	flag.Parse()
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "--log-level: %v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := run(*kubeconfig, *natsURL, *natsListen, *namespace, *leaseName, *metricsAddr, log); err != nil {
		log.Error("allocator stopped", "err", err)
		os.Exit(1)
	}
}

func run(kubeconfig, natsURL, natsListen, namespace, leaseName, metricsAddr string, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	kube, wp, err := client.Clients(kubeconfig)
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	identity := host + "-" + hex.EncodeToString(suffix)
	e := allocator.Election{Namespace: namespace, Name: leaseName, Identity: identity}
	err = allocator.RunLeader(ctx, kube, e, func(lctx context.Context, epoch uint64) error {
		log := log.With("epoch", epoch, "identity", identity)
		log.Info("leading")
		return lead(lctx, kube, wp, natsURL, natsListen, metricsAddr, epoch, log)
	})
	if ctx.Err() == nil {
		// Leadership ended while we meant to run (lost, or lead failed):
		// exit, so that a fresh process, not a deposed leader's state,
		// competes again.
		return fmt.Errorf("no longer leading: %w", err)
	}
	return err
}

func lead(ctx context.Context, kube kubernetes.Interface, wp *client.Clientset, natsURL, natsListen, metricsAddr string, epoch uint64, log *slog.Logger) error {
	url := natsURL
	if url == "" {
		host, portStr, err := net.SplitHostPort(natsListen)
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
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := broker.Connect(cctx, url, "warmpool-allocator")
	if err != nil {
		return err
	}
	defer conn.Close()
	a, err := allocator.New(ctx, allocator.Config{Client: wp, Conn: conn, Epoch: epoch, Logger: log, Kube: kube})
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		return err
	}
	if err := metrics.Serve(ctx, metricsAddr, a.Registry(), log); err != nil {
		return err
	}
	log.Info("serving the bus", "nats", conn.ConnectedUrlRedacted())
	<-ctx.Done()
	a.Stop()
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
