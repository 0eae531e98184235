package main

import (
	"context"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// TestTermWatch: healthy as a standby and while leading, and while a term
// shuts down within the grace; unhealthy once a shutdown hangs past it;
// healthy again when the term finishes.
func TestTermWatch(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Unix(1000, 0))
	w := &termWatch{grace: 30 * time.Second, now: clock.Now}
	if err := w.check(); err != nil {
		t.Fatalf("standby: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	finished := w.term(ctx)
	clock.Step(time.Hour)
	if err := w.check(); err != nil {
		t.Fatalf("leading for an hour: %v", err)
	}
	cancel()
	// AfterFunc runs in its own goroutine: wait until it recorded the end.
	deadline := time.Now().Add(5 * time.Second)
	for {
		w.mu.Lock()
		ended := !w.ended.IsZero()
		w.mu.Unlock()
		if ended {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the end of the term was never recorded")
		}
		time.Sleep(time.Millisecond)
	}
	clock.Step(29 * time.Second)
	if err := w.check(); err != nil {
		t.Fatalf("shutting down within the grace: %v", err)
	}
	clock.Step(2 * time.Second)
	if err := w.check(); err == nil {
		t.Fatal("a shutdown hung past the grace is healthy")
	}
	finished()
	if err := w.check(); err != nil {
		t.Fatalf("after the term finished: %v", err)
	}
	// A term that finishes before its context ends leaves no trace.
	ctx2, cancel2 := context.WithCancel(context.Background())
	w.term(ctx2)()
	cancel2()
	clock.Step(time.Hour)
	if err := w.check(); err != nil {
		t.Fatalf("after a finished term: %v", err)
	}
}
