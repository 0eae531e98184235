package main

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// termWatch is what the allocator's health endpoint knows: whether a term
// of leadership has ended (its context is done) without its shutdown
// finishing. Such a process holds no Lease but may still run its embedded
// NATS server, where agents would connect to a deposed leader and wait;
// it never recovers by itself, so the kubelet should restart it.
//
// A standby, or a leader serving normally, is healthy: the probe then
// proves only that the process answers, which is all a standby has to
// show (it serves nothing else until it leads).
//
// Safe for concurrent use.
type termWatch struct {
	grace time.Duration
	now   func() time.Time

	mu      sync.Mutex
	running bool      // lead has been called and has not returned
	ended   time.Time // when the running term's context ended; zero while it lasts
}

// term records a term from its start until the returned func is called
// (when lead returns); the end of ctx is the end of the term.
func (w *termWatch) term(ctx context.Context) (finished func()) {
	w.mu.Lock()
	w.running, w.ended = true, time.Time{}
	w.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.running {
			w.ended = w.now()
		}
	})
	return func() {
		stop()
		w.mu.Lock()
		defer w.mu.Unlock()
		w.running, w.ended = false, time.Time{}
	}
}

// check fails once a term has been ending for longer than grace.
func (w *termWatch) check() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.running || w.ended.IsZero() {
		return nil
	}
	if d := w.now().Sub(w.ended); d > w.grace {
		return fmt.Errorf("the term of leadership ended %s ago and its shutdown has not finished (more than %s)", d.Round(time.Second), w.grace)
	}
	return nil
}
