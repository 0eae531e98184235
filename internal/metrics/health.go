package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
)

// HealthPath is where ServeHealth answers.
const HealthPath = "/healthz"

// ServeHealth serves HealthPath on addr until ctx ends: 200 "ok" while
// check returns nil, 503 with check's error otherwise. It is for a
// component that serves nothing else in some of its roles (the standby
// allocator), so that a kubelet's probes reach it in every role. An empty
// addr serves nothing. It fails at once if addr cannot be bound.
func ServeHealth(ctx context.Context, addr string, check func() error, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc(HealthPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := check(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintln(w, err)
			return
		}
		_, _ = fmt.Fprintln(w, "ok")
	})
	_, err := serve(ctx, addr, mux, "health", log)
	return err
}
