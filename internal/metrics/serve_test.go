package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warmpool/warmpool/internal/rig/child"
)

// TestServePprofOnlyWhenAsked: /metrics is always served, Go's profiles
// only with pprof on.
func TestServePprofOnlyWhenAsked(t *testing.T) {
	for _, pprof := range []bool{false, true} {
		t.Run(fmt.Sprint("pprof=", pprof), func(t *testing.T) {
			addr, err := child.FreeAddr()
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if err := Serve(ctx, addr, prometheus.NewRegistry(), slog.New(slog.DiscardHandler), pprof, nil); err != nil {
				t.Fatal(err)
			}
			status := func(path string) int {
				resp, err := http.Get("http://" + addr + path)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			if got := status("/metrics"); got != http.StatusOK {
				t.Errorf("/metrics: %d", got)
			}
			want := http.StatusNotFound
			if pprof {
				want = http.StatusOK
			}
			if got := status("/debug/pprof/cmdline"); got != want {
				t.Errorf("/debug/pprof/cmdline: %d, want %d", got, want)
			}
		})
	}
}
