package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/warmpool/warmpool/internal/rig/child"
)

// TestServeHealthFollowsTheCheck: the answer changes with the check's,
// at every request.
func TestServeHealthFollowsTheCheck(t *testing.T) {
	addr, err := child.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var failing atomic.Bool
	check := func() error {
		if failing.Load() {
			return errors.New("the term ended 40s ago and its shutdown has not finished")
		}
		return nil
	}
	if err := ServeHealth(ctx, addr, check, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	get := func() (int, string) {
		resp, err := http.Get("http://" + addr + HealthPath)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("healthy: %d %q", code, body)
	}
	failing.Store(true)
	if code, body := get(); code != http.StatusServiceUnavailable || !strings.Contains(body, "shutdown has not finished") {
		t.Errorf("unhealthy: %d %q", code, body)
	}
	if err := ServeHealth(ctx, addr, check, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("a second server bound the same address")
	}
}
