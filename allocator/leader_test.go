package allocator

import (
	"context"
	"errors"
	"testing"
	"time"

	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// TestLeaderThatCannotServeLetsGo: a leader whose lead fails gives the
// Lease up at once; the next candidate leads with a higher epoch. The
// Lease is a fake API's: what is tested is that RunLeader releases it,
// not the apiserver (the e2e tests elect on the real one).
func TestLeaderThatCannotServeLetsGo(t *testing.T) {
	kube := kubefake.NewClientset()
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

// TestRenewalAcrossAChangeOfHandsEndsTheTerm: a leader paused past its
// Lease whose successor released the Lease before the pause ended would
// re-acquire it on its next renewal and keep leading with an epoch older
// than the successor's. Its lock refuses that renewal and ends the term.
func TestRenewalAcrossAChangeOfHandsEndsTheTerm(t *testing.T) {
	inner := &recordingLock{}
	lost := false
	l := &termLock{Interface: inner, lost: func() { lost = true }}
	l.begin(3)
	if err := l.Update(context.Background(), resourcelock.LeaderElectionRecord{HolderIdentity: "a", LeaderTransitions: 3}); err != nil || lost {
		t.Fatalf("a renewal within the term: err %v, lost %v", err, lost)
	}
	if err := l.Update(context.Background(), resourcelock.LeaderElectionRecord{HolderIdentity: "a", LeaderTransitions: 4}); err == nil || !lost {
		t.Fatalf("a renewal that re-acquires after a change of hands: err %v, lost %v; want an error and the term ended", err, lost)
	}
	if inner.updates != 1 {
		t.Fatalf("%d updates reached the Lease, want only the renewal within the term", inner.updates)
	}
}

type recordingLock struct {
	resourcelock.Interface
	updates int
}

func (r *recordingLock) Update(context.Context, resourcelock.LeaderElectionRecord) error {
	r.updates++
	return nil
}
