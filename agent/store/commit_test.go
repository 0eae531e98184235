package store

import (
	"errors"
	"testing"

	bolt "go.etcd.io/bbolt"
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
