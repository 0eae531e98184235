package metrics

import (
	"strconv"

	"github.com/warmpool/warmpool/internal/child"

	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestServePprofOnlyWhenAsked: /metrics is always served, Go's profiles
// only with pprof on.
func TestServePprofOnlyWhenAsked(t *testing.T) {
	for _, pprof := range []bool{false, true} {
		t.Run(fmt.Sprint("pprof=", pprof), func(t *testing.T) {
			ports, err := child.FreePorts(1)
			if err != nil {
				t.Fatal(err)
			}
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
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
