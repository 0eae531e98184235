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
	if v := p.perWindow(now, window); math.Abs(v-30) > 1 {
		t.Fatalf("a stream of 1 ADD/s for 10 windows expects %v in the next, want about 30", v)
	}
}

// TestPaceExpectsAYoungStreamToGoOn: a stream younger than the window
// predicts the next window at its rate, not at the count it had time to
// build; one ADD after a silence is no stream.
func TestPaceExpectsAYoungStreamToGoOn(t *testing.T) {
	const window = 30 * time.Second
	now := time.Unix(1000, 0)
	var p pace
	p.add(now, window, 1)
	if v := p.perWindow(now, window); v != 1 {
		t.Fatalf("one ADD after a silence expects %v, want 1 (itself)", v)
	}
	p.add(now, window, 1)
	if v := p.perWindow(now, window); math.Abs(v-31.5) > 0.5 {
		t.Fatalf("a second ADD at once expects %v, want about 31 (the first, and one per thirtieth of the window)", v)
	}
	for range 29 { // 10 ADDs a second for 3 s
		now = now.Add(100 * time.Millisecond)
		p.add(now, window, 1)
	}
	if v := p.perWindow(now, window); v < 280 || v > 320 {
		t.Fatalf("a stream of 10 ADDs/s for 3 s expects %v in the next window, want about 300", v)
	}
	// Once it decayed to nothing a new stream starts afresh.
	now = now.Add(10 * window)
	p.add(now, window, 1)
	if v := p.perWindow(now, window); math.Abs(v-1) > 0.01 {
		t.Fatalf("one ADD after a long silence expects %v, want 1", v)
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
		m := broker.Msg{Subject: broker.SubjectReportFrom("n1"), Data: broker.Encode(&broker.Report{V: broker.ProtocolVersion, Node: "n1", Run: "r", Seq: seq,
			Served: map[string]broker.Served{"p": {Hits: int64(2 * seq)}}})}
		if r := a.handleReport(ctx, m).(*broker.ReportReply); r.Error != "" {
			t.Fatal(r.Error)
		}
	}
	// 2 ADDs a second: about 60 in the next 30 s (maxWarm is 64).
	if got := target(); got < 55 || got > 64 {
		t.Fatalf("target after 2 ADDs/s for 20 s: %d, want about 60", got)
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
