package e2e

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// TestAsRuntimeRetriesWhatTheRuntimeRetries: the tests' stand-in for a
// kubelet undoes and retries an ADD that failed with 11 or 104 (retrying
// a failed undo as a teardown), and returns at once on success or on any
// other failure.
func TestAsRuntimeRetriesWhatTheRuntimeRetries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fails := []error{
		&types.Error{Code: wire.CodeMissTimeout, Msg: "no warm address"},
		&types.Error{Code: wire.CodeTryAgainLater, Msg: "not synced"},
	}
	adds, undos := 0, 0
	tries, err := asRuntime(ctx, func() error {
		adds++
		if adds <= len(fails) {
			return fails[adds-1]
		}
		return nil
	}, func() error { undos++; return nil })
	if err != nil || tries != 2 || adds != 3 || undos != 2 {
		t.Fatalf("two retryable failures then success: err %v, %d tries, %d ADDs, %d undos", err, tries, adds, undos)
	}

	exhausted := &types.Error{Code: wire.CodePoolExhausted, Msg: "pool exhausted"}
	adds, undos = 0, 0
	tries, err = asRuntime(ctx, func() error { adds++; return exhausted }, func() error { undos++; return nil })
	if !errors.Is(err, exhausted) || tries != 0 || adds != 1 || undos != 0 {
		t.Fatalf("an exhausted pool: err %v, %d tries, %d ADDs, %d undos; want the error at once", err, tries, adds, undos)
	}

	undoErr := errors.New("DEL failed")
	adds, undos = 0, 0
	tries, err = asRuntime(ctx, func() error {
		adds++
		if adds == 1 {
			return fails[0]
		}
		return nil
	}, func() error {
		undos++
		if undos <= 2 {
			return undoErr
		}
		return nil
	})
	if err != nil || tries != 1 || adds != 2 || undos != 3 {
		t.Fatalf("an undo that fails twice: err %v, %d tries, %d ADDs, %d undos; want the undo retried, then the ADD", err, tries, adds, undos)
	}
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	tries, err = asRuntime(short, func() error { return fails[0] }, func() error { return undoErr })
	if !errors.Is(err, undoErr) || tries != 0 {
		t.Fatalf("an undo that always fails: err %v, %d tries; want the undo's error once the context ends", err, tries)
	}

	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if _, err := asRuntime(cctx, func() error { return fails[0] }, nil); testenv.CNICode(err) != wire.CodeMissTimeout {
		t.Fatalf("a cancelled context: %v, want the last ADD's error", err)
	}
}
