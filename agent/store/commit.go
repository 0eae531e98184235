package store

import (
	"errors"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// committer coalesces concurrent write transactions into one commit, so
// that N concurrent ADDs cost one fsync rather than N. Unlike bbolt's
// Batch, it never waits for company: a write that finds no commit in
// flight commits at once (one fsync, ~0.7-0.9 ms here), and writes that
// arrive during a commit go together in the next one. bbolt's Batch waits
// MaxBatchDelay (10 ms) for company, which a lone ADD would pay in full.
type committer struct {
	db *bolt.DB

	mu      sync.Mutex
	pending []*commitOp
	running bool // a goroutine is committing; it takes what is pending when done
}

type commitOp struct {
	fn   func(*bolt.Tx) error
	done chan error
}

// errSkip aborts a group transaction so that it can be retried without the
// operation that failed.
var errSkip = errors.New("group commit: retry without a failed operation")

// do runs fn in a write transaction, possibly shared with other callers'
// functions, and returns once that transaction committed (nil) or fn
// failed (fn's error, and nothing fn wrote is kept). fn must depend only on
// the transaction: it may run more than once.
func (c *committer) do(fn func(*bolt.Tx) error) error {
	op := &commitOp{fn: fn, done: make(chan error, 1)}
	c.mu.Lock()
	c.pending = append(c.pending, op)
	lead := !c.running
	c.running = true
	c.mu.Unlock()
	if lead {
		c.loop()
	}
	return <-op.done
}

// loop commits what is pending in one transaction. Operations that came
// during it are committed next by a goroutine of their own: the caller
// that led this commit has its answer, and must not wait on other
// callers' writes (under a steady stream of ADDs, a leader kept
// committing for the others, and a DEL that led waited past its
// plugin's timeout).
func (c *committer) loop() {
	c.mu.Lock()
	batch := c.pending
	c.pending = nil
	c.mu.Unlock()
	c.commit(batch)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		c.running = false
		return
	}
	go c.loop()
}

// commit runs batch in one transaction. When an operation fails, the whole
// transaction is rolled back (undoing whatever the failed operation had
// written), the failure is reported to its caller, and the rest is retried.
func (c *committer) commit(batch []*commitOp) {
	for len(batch) > 0 {
		failed, failErr := -1, error(nil)
		err := c.db.Update(func(tx *bolt.Tx) error {
			for i, op := range batch {
				if err := op.fn(tx); err != nil {
					failed, failErr = i, err
					return errSkip
				}
			}
			return nil
		})
		if failed >= 0 {
			batch[failed].done <- failErr
			batch = append(batch[:failed:failed], batch[failed+1:]...)
			continue
		}
		// A commit error (disk full, closed database) fails everyone.
		for _, op := range batch {
			op.done <- err
		}
		return
	}
}
