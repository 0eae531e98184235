// Command warmpool-perf runs warmpool's harness. Today it has one
// subcommand, demo: a real local control plane and embedded NATS with the
// CRDs and an example pool, reported and torn down.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/warmpool/warmpool/perf"
)

func main() {
	if len(os.Args) != 2 || os.Args[1] != "demo" {
		fmt.Fprintln(os.Stderr, "usage: warmpool-perf demo")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	if err := perf.Demo(ctx, os.Stdout); err != nil {
		slog.Error("demo failed", "err", err)
		os.Exit(1)
	}
	fmt.Printf("==> demo finished in %s\n", time.Since(start).Round(time.Millisecond))
}
