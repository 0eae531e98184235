package allocator

import (
	"context"
	"math"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/warmpool/warmpool/broker"
)

// TestPaceCountsTheLastWindow: at a steady rate the pace is the ADDs of
// about the last window; it decays once they stop.
func TestPaceCountsTheLastWindow(t *testing.T) {
	const window = 30 * time.Second
	start := time.Unix(1000, 0)
	var p pace
	if v := p.valueAt(start, window); v != 0 {
		t.Fatalf("a pace never added to is %v, want 0", v)
	}
	now := start
	for range 300 { // one ADD a second for 5 minutes
		now = now.Add(time.Second)
		p.add(now, window, 1)
	}
	if v := p.valueAt(now, window); math.Abs(v-30) > 1 {
		t.Fatalf("after 1 ADD/s for 5 min: %v, want about 30 (the ADDs of the last 30 s)", v)
	}
	if v := p.valueAt(now.Add(3*window), window); v > 2 {
		t.Fatalf("3 windows after the last ADD: %v, want it decayed below 2", v)
	}
	if v := p.valueAt(now.Add(-time.Second), window); v > 31 {
		t.Fatalf("a read before the last add (a clock step back): %v, want no growth", v)
	}
}

// TestReportsRaiseTheHeadroom: the ADDs a node's reports count raise its
// target above warmTarget, and the raise decays once they stop.
func TestReportsRaiseTheHeadroom(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	a, _, _ := memAllocator(t, ctx, "10.0.0.0/24", Config{Epoch: 1, Clock: clk})
	if _, _, _, err := a.grant(ctx, "p", "n1", 1); err != nil {
		t.Fatal(err)
	}
	target := func() int {
		t.Helper()
		for _, s := range plan(a.demand()["p"]) {
			if s.node == "n1" {
				return s.target
			}
		}
		t.Fatal("n1 not planned")
		return 0
	}
	if got := target(); got != 4 {
		t.Fatalf("target before any ADD: %d, want warmTarget 4", got)
	}
	for seq := uint64(1); seq <= 20; seq++ {
		clk.Step(time.Second)
		m := broker.Msg{Data: broker.Encode(&broker.Report{V: broker.ProtocolVersion, Node: "n1", Run: "r", Seq: seq,
			Served: map[string]broker.Served{"p": {Hits: int64(2 * seq)}}})}
		if r := a.handleReport(ctx, m).(*broker.ReportReply); r.Error != "" {
			t.Fatal(r.Error)
		}
	}
	// 40 ADDs in 20 s, decayed over 30 s: about 29.
	if got := target(); got < 25 || got > 35 {
		t.Fatalf("target after 2 ADDs/s for 20 s: %d, want about 29", got)
	}
	clk.Step(5 * time.Minute)
	if got := target(); got != 4 {
		t.Fatalf("target 5 min after the last ADD: %d, want warmTarget 4 again", got)
	}
	a.mu.Lock()
	n := len(a.pace)
	a.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d paces kept after they decayed, want none", n)
	}
}
