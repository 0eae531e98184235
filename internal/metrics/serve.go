// Package metrics serves a component's Prometheus registry over HTTP.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Serve serves reg on addr at /metrics until ctx ends, the component's
// own read-only handlers at their paths, and with pprof Go's profiles at
// /debug/pprof/ (off by default: a profile shows internals to whoever can
// reach the port). An empty addr serves nothing. It fails at once if addr
// cannot be bound.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry, log *slog.Logger, pprof bool, handlers map[string]http.Handler) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	for path, h := range handlers {
		mux.Handle(path, h)
	}
	if pprof {
		mux.HandleFunc("/debug/pprof/", httppprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", httppprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", httppprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", httppprof.Trace)
	}
	at, err := serve(ctx, addr, mux, "metrics", log)
	if at != nil {
		log.Info("serving metrics", "listen", at.String())
	}
	return err
}

// serve listens on addr and serves mux there in the background until ctx
// ends, then shuts the server down, giving requests in flight two
// seconds. It returns the address bound: nil for an empty addr, which
// serves nothing.
func serve(ctx context.Context, addr string, mux *http.ServeMux, what string, log *slog.Logger) (net.Addr, error) {
	if addr == "" {
		return nil, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s on %s: %w", what, addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(what+" server", "err", err)
		}
	}()
	context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	return l.Addr(), nil
}
