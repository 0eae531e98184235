package allocator

import (
	"context"
	"errors"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/warmpool/warmpool/internal/testenv"
)

// TestLeaderThatCannotServeLetsGo: a leader whose lead fails gives the
// Lease up at once; the next candidate leads with a higher epoch.
func TestLeaderThatCannotServeLetsGo(t *testing.T) {
	cfg := testenv.APIServerWithCRDs(t)
	kube := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := Election{Namespace: "default", Name: "warmpool-allocator", LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, Retry: 200 * time.Millisecond}
	broken := errors.New("cannot bind the bus")

	first := e
	first.Identity = "first"
	var firstEpoch uint64
	err := RunLeader(ctx, kube, first, func(_ context.Context, epoch uint64) error {
		firstEpoch = epoch
		return broken
	})
	if !errors.Is(err, broken) || firstEpoch != 1 {
		t.Fatalf("first leader: err %v epoch %d; want its lead error and epoch 1", err, firstEpoch)
	}

	second := e
	second.Identity = "second"
	start := time.Now()
	var secondEpoch uint64
	err = RunLeader(ctx, kube, second, func(_ context.Context, epoch uint64) error {
		secondEpoch = epoch
		return nil
	})
	if err != nil || secondEpoch != 2 {
		t.Fatalf("second leader: err %v epoch %d; want epoch 2", err, secondEpoch)
	}
	// Released, not expired: well under the 3 s lease duration.
	if waited := time.Since(start); waited > 2*time.Second {
		t.Errorf("the second candidate waited %s: the failed leader did not release the Lease", waited)
	}
}
