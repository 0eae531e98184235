package allocator

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
)

// lostNodeDropLeftUnsettled: a flaky allocator of a 6-unit pool "p" has
// granted 3 units to n1, n1 was lost, and the GC's drop of its warm units
// landed with its answer lost, and the answer of the resend that would
// have settled it lost too: the write is unsettled, and the ledger still
// lists the 3 units as n1's. It returns them.
func lostNodeDropLeftUnsettled(t *testing.T, ctx context.Context) (*Allocator, *flaky, []broker.Unit) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Now())
	a, _, api, _ := flakyAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1, Clock: clk, NodeLossGrace: time.Minute, Logger: slog.New(slog.DiscardHandler)})
	watchLostNode(t, a, clk, "n1")
	units, _, _, err := a.grant(ctx, "p", "n1", 3)
	if err != nil || len(units) != 3 {
		t.Fatalf("grant to n1: %v, %v", units, err)
	}
	clk.Step(2 * time.Minute)
	api.lose.Store(2) // the drop's answer, then the resend's
	if err := a.returnLost(ctx, "n1"); !errors.Is(err, errUnsettled) {
		t.Fatalf("drop of the lost node's units: %v, want errUnsettled", err)
	}
	if n := len(a.committedUnits("p", "n1")); n != 3 {
		t.Fatalf("the ledger lists %d units for n1 while the drop is unsettled, want its 3", n)
	}
	return a, api, units
}

// TestReloadKeepsUnitsTheNodeMayHold: the GC drops a lost node's warm
// units; the write lands but its answer is lost, and the resend's answer
// too, so it is unsettled and the ledger still lists them. The node comes
// back: its sync, needing no write, is answered from the ledger and lists
// them, and its agent assigns one. Its report's write settles the drop as
// landed and reloads the lease without them. They were then free: a
// grant gave them to another node while the first one's agent held them
// (fault-suite seed 93, a unit warm on two nodes). Now they stay reserved
// for the node until its agent says what it holds: the report's retry
// and the next sync take back what it holds, and what it does not is
// freed.
func TestReloadKeepsUnitsTheNodeMayHold(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, _, units := lostNodeDropLeftUnsettled(t, ctx)

	held := make([]broker.HeldUnit, len(units))
	for i, u := range units {
		held[i] = broker.HeldUnit{Pool: "p", Unit: u}
	}
	sync := func(seq uint64, held []broker.HeldUnit) *broker.SyncReply {
		t.Helper()
		m := broker.Msg{Data: broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: "n1", Run: "r", Seq: seq, Units: held})}
		reply := a.handleSync(ctx, m).(*broker.SyncReply)
		if reply.Error != "" {
			t.Fatalf("sync %d of n1: %s", seq, reply.Error)
		}
		return reply
	}
	listed := 0
	for _, l := range sync(1, held).Leases {
		listed += len(l.Units)
	}
	if listed != 3 {
		t.Fatalf("the sync listed %d warm units to n1, want the 3 the ledger lists", listed)
	}

	// n1's agent assigns units[0] and reports it.
	pod := broker.Pod{Namespace: "d", Name: "web", UID: "u1"}
	assigned := broker.Event{Kind: broker.EventAssigned, Pool: "p", UnitID: units[0].ID, Attachment: "ctr/eth0", Pod: pod}
	report := func(seq uint64) *broker.ReportReply {
		m := broker.Msg{Data: broker.Encode(&broker.Report{V: broker.ProtocolVersion, Node: "n1", Run: "r", Seq: seq, Events: []broker.Event{assigned}})}
		return a.handleReport(ctx, m).(*broker.ReportReply)
	}
	if r := report(2); r.Error == "" {
		t.Fatal("the report's write was applied over the unsettled drop; want the drop settled first and the lease reloaded")
	}

	// A planning round hands out all it can to n2.
	got, _, _, err := a.grant(ctx, "p", "n2", 6)
	if err != nil {
		t.Fatalf("grant to n2: %v", err)
	}
	for _, g := range got {
		for _, u := range units {
			if g.ID == u.ID {
				t.Errorf("unit %s granted to n2 while n1's agent holds it", g.ID)
			}
		}
	}

	// The report's retry and the next sync say what n1 holds: units[0]
	// assigned, units[1] warm; units[2] it dropped.
	if r := report(3); r.Error != "" {
		t.Fatalf("the report's retry: %s", r.Error)
	}
	held[0].Assigned, held[0].Attachment, held[0].Pod = true, assigned.Attachment, pod
	sync(4, held[:2])
	a.mu.Lock()
	lease := a.ledger.pools["p"].leases["n1"].units
	a.mu.Unlock()
	if u := lease[units[0].ID]; u.State != v1alpha1.UnitAssigned || u.Pod == nil || u.Pod.UID != "u1" {
		t.Errorf("n1's lease lists %s as %+v, want it assigned to web", units[0].ID, u)
	}
	if u, ok := lease[units[1].ID]; !ok || u.State != v1alpha1.UnitWarm {
		t.Errorf("n1's lease lists %s as %+v (listed %v), want it warm", units[1].ID, u, ok)
	}
	if len(lease) != 2 {
		t.Errorf("n1's lease lists %d units, want the 2 its agent holds", len(lease))
	}
	more, _, _, err := a.grant(ctx, "p", "n2", 1)
	if err != nil || len(more) != 1 || more[0].ID != units[2].ID {
		t.Fatalf("grant to n2 after n1's sync: %v, %v; want %s, which n1 no longer holds", more, err, units[2].ID)
	}
	unitsInLeases(t, ctx, a.cfg.Leases)
}

// TestUnconfirmedUnitsOfANodeStillLostAreFreed: units a reload kept for
// their node's sync are freed by the GC if the node stays lost (its agent
// has stopped using units, and no pod bound to it before then is left):
// they must not stay reserved for a sync that never comes.
func TestUnconfirmedUnitsOfANodeStillLostAreFreed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, _, _ := lostNodeDropLeftUnsettled(t, ctx)
	if !a.settleAll(ctx) {
		t.Fatal("the drop was not settled with the API answering")
	}
	got, _, _, err := a.grant(ctx, "p", "n2", 6)
	if err != nil || len(got) != 3 {
		t.Fatalf("grant to n2 before the GC: %v, %v; want the 3 units n1 never had", got, err)
	}
	if err := a.returnLost(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	got, _, _, err = a.grant(ctx, "p", "n2", 6)
	if err != nil || len(got) != 3 {
		t.Fatalf("grant to n2 after the GC: %v, %v; want the 3 units n1 lost", got, err)
	}
	unitsInLeases(t, ctx, a.cfg.Leases)
}
