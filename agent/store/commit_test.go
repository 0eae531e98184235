package store

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"k8s.io/apimachinery/pkg/util/wait"
)

// TestCommitIsolatesAFailure puts a failing operation that wrote before
// failing between two good ones in one group: the good ones commit, the
// failed one's write is rolled back, and each caller gets its own result.
func TestCommitIsolatesAFailure(t *testing.T) {
	s, _ := open(t)
	boom := errors.New("boom")
	put := func(k string, fail bool) *commitOp {
		return &commitOp{done: make(chan error, 1), fn: func(tx *bolt.Tx) error {
			if err := tx.Bucket(bucketMeta).Put([]byte(k), []byte("v")); err != nil {
				return err
			}
			if fail {
				return boom
			}
			return nil
		}}
	}
	ops := []*commitOp{put("a", false), put("bad", true), put("b", false)}
	s.commit.commit(ops)
	for i, want := range []error{nil, boom, nil} {
		if got := <-ops[i].done; !errors.Is(got, want) {
			t.Errorf("op %d: %v, want %v", i, got, want)
		}
	}
	_ = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if b.Get([]byte("a")) == nil || b.Get([]byte("b")) == nil {
			t.Error("a good operation of the group was not committed")
		}
		if b.Get([]byte("bad")) != nil {
			t.Error("the failed operation's write was kept")
		}
		return nil
	})
}

// TestCommitAfterCloseFails: a commit error reaches every caller.
func TestCommitAfterCloseFails(t *testing.T) {
	s, _ := open(t)
	s.Close()
	if err := s.Assign(Assignment{Attachment: "c/eth0", Pool: "p", UnitID: "x"}); !errors.Is(err, bolt.ErrDatabaseNotOpen) {
		t.Fatalf("assign on a closed store: %v", err)
	}
}

// TestALeaderDoesNotCommitForOthers: the caller whose write started a
// commit returns once that commit is done, though writes that came
// during it are still to be committed (they go in the next commit, led
// by a goroutine of their own).
func TestALeaderDoesNotCommitForOthers(t *testing.T) {
	s, _ := open(t)
	inA, releaseA := make(chan struct{}), make(chan struct{})
	inB, releaseB := make(chan struct{}), make(chan struct{})
	block := func(in, release chan struct{}) func(*bolt.Tx) error {
		var once sync.Once
		return func(*bolt.Tx) error {
			once.Do(func() { close(in) })
			<-release
			return nil
		}
	}
	doneA, doneB := make(chan error, 1), make(chan error, 1)
	go func() { doneA <- s.commit.do(block(inA, releaseA)) }()
	<-inA // A leads, and its commit is running
	go func() { doneB <- s.commit.do(block(inB, releaseB)) }()
	if err := wait.PollUntilContextTimeout(context.Background(), time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		s.commit.mu.Lock()
		defer s.commit.mu.Unlock()
		return len(s.commit.pending) == 1, nil
	}); err != nil {
		t.Fatal("B's write never queued behind A's commit")
	}
	close(releaseA)
	select {
	case err := <-doneA:
		if err != nil {
			t.Fatalf("A: %v", err)
		}
	case <-time.After(10 * time.Second):
		close(releaseB) // so that the store can close
		t.Fatal("A's write committed, but A waits while B's commit runs")
	}
	<-inB
	close(releaseB)
	if err := <-doneB; err != nil {
		t.Fatalf("B: %v", err)
	}
}
