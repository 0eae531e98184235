package allocator

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
)

// The transitions of a unit in the ledger, on in-memory leases: free ->
// desired (claimed) -> observed (stored) -> listed to the node; desired
// -> in flight (a write of unknown outcome) -> observed or free once the
// lease is seen at another version; observed -> not desired (given back,
// returned) -> free once stored without it.

// syncListing is what a sync of node's agent is told it holds of pool p.
func syncListing(t *testing.T, ctx context.Context, a *Allocator, node string, seq uint64) []string {
	t.Helper()
	reply := a.handleSync(ctx, broker.Msg{Subject: broker.SubjectSyncFrom(node), Data: broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: node, Run: "r", Seq: seq})}).(*broker.SyncReply)
	if reply.Error != "" {
		t.Fatal(reply.Error)
	}
	var ids []string
	for _, l := range reply.Leases {
		for _, u := range l.Units {
			ids = append(ids, u.ID)
		}
	}
	return ids
}

// freeUnits counts pool p's free units.
func freeUnits(a *Allocator) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ledger.pools["p"].freeLocked()
}

// TestAClaimedUnitIsListedOnlyOnceStored: a unit claimed for a node is not
// free, and not listed to the node until its lease stores it.
func TestAClaimedUnitIsListedOnlyOnceStored(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, _, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1})
	unlock := a.lockLease("p", "n1")
	a.mu.Lock()
	claimed := a.ledger.pools["p"].claimLocked("n1", 2)
	a.mu.Unlock()
	unlock()
	if len(claimed) != 2 || freeUnits(a) != 4 {
		t.Fatalf("claimed %v, %d free; want 2 claimed, 4 free", claimed, freeUnits(a))
	}
	if got := syncListing(t, ctx, a, "n1", 1); len(got) != 0 {
		t.Fatalf("listed %v before the lease stored them", got)
	}
	gained, err := a.syncLease(ctx, "p", "n1", causeGrant)
	if err != nil || len(gained) != 2 {
		t.Fatalf("sync of the lease: gained %v, %v", gained, err)
	}
	if got := syncListing(t, ctx, a, "n1", 2); len(got) != 2 {
		t.Fatalf("listed %v once stored, want both", got)
	}
}

// TestAWriteInFlightKeepsItsUnitsUntilTheLeaseMovesOn: a grant's write and
// its resend both end without an answer (the API down). Their units are
// neither free nor listed; once the API is back, the next round stores
// them and they are the node's.
func TestAWriteInFlightKeepsItsUnitsUntilTheLeaseMovesOn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, leases, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1})
	down := true
	leases.fault = func(string, string) writeFault {
		if down {
			return writeDown
		}
		return writeOK
	}
	if _, _, _, err := a.grant(ctx, "p", "n1", 2); !errors.Is(err, errUnknownOutcome) {
		t.Fatalf("grant with the API down: %v, want errUnknownOutcome", err)
	}
	if free := freeUnits(a); free != 4 {
		t.Fatalf("%d free, want 4: the 2 in flight are not", free)
	}
	if got := syncListing(t, ctx, a, "n1", 1); len(got) != 0 {
		t.Fatalf("listed %v while their write is in flight", got)
	}
	down = false
	if !a.syncDirty(ctx) {
		t.Fatal("the round did not store the lease")
	}
	if got := syncListing(t, ctx, a, "n1", 2); len(got) != 2 || freeUnits(a) != 4 {
		t.Fatalf("after the round: listed %v, %d free; want 2 listed, 4 free", got, freeUnits(a))
	}
}

// TestAReturnWhoseAnswerIsLostListsNothing: a lost node's units are
// returned; the write lands and its answer and its resend's are lost. The
// node's sync lists nothing (the agent voids what it holds), the units are
// not free while the ledger cannot tell whether the write landed, and are
// once a read says it did: they are never listed to the node and granted
// to another at once (fault-suite seed 93).
func TestAReturnWhoseAnswerIsLostListsNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, leases, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1})
	units, _, _, err := a.grant(ctx, "p", "n1", 3)
	if err != nil || len(units) != 3 {
		t.Fatalf("grant: %v %v", units, err)
	}
	leases.fault = inTurn(writeLost, writeLost)
	unlock := a.lockLease("p", "n1")
	a.mu.Lock()
	ps := a.ledger.pools["p"]
	ps.unclaimLocked("n1", slices.Collect(maps.Keys(ps.leases["n1"].desired)))
	a.mu.Unlock()
	_, err = a.syncLeaseHeld(ctx, "p", "n1", causeGrant)
	unlock()
	if !errors.Is(err, errUnknownOutcome) {
		t.Fatalf("the return with its answers lost: %v, want errUnknownOutcome", err)
	}
	if got := syncListing(t, ctx, a, "n1", 1); len(got) != 0 {
		t.Fatalf("the node's sync lists %v, units being returned", got)
	}
	if got, _, _, err := a.grant(ctx, "p", "n2", 6); err != nil || len(got) != 3 {
		t.Fatalf("grant to n2 while the return's outcome is unknown: %v %v, want the 3 others only", got, err)
	}
	if !a.syncDirty(ctx) {
		t.Fatal("the round did not settle the return")
	}
	if got, _, _, err := a.grant(ctx, "p", "n2", 3); err != nil || len(got) != 3 {
		t.Fatalf("grant to n2 once the return is settled: %v %v, want the 3 returned", got, err)
	}
	if n := unitsInLeases(t, ctx, leases); n != 6 {
		t.Fatalf("%d units in leases, want 6 (n2's)", n)
	}
}

// TestAWriteThatChangesNothingStillSettlesOneInFlight: a grant's write to
// an empty lease is still in flight at the apiserver (and its resend gets
// no answer) when the node gives the units up. Writing the empty lease
// again changes nothing, which would leave the lease at the version the
// grant was sent at, where it can still land: the allocator writes again
// with a new annotation, so the grant can no longer land and the units
// are free at once.
func TestAWriteThatChangesNothingStillSettlesOneInFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leases := newMemLeases()
	storeLeases(t, ctx, leases, map[string][]string{"n1": nil})
	a, _ := memAllocatorOn(t, ctx, leases, "10.0.0.0/30", Config{Epoch: 1})
	leases.fault = inTurn(writeLate, writeDown)
	if _, _, _, err := a.grant(ctx, "p", "n1", 2); !errors.Is(err, errUnknownOutcome) || freeUnits(a) != 0 {
		t.Fatalf("grant: %v, %d free; want errUnknownOutcome and nothing free", err, freeUnits(a))
	}
	unlock := a.lockLease("p", "n1")
	a.mu.Lock()
	a.ledger.pools["p"].unclaimLocked("n1", []int{0, 1})
	a.mu.Unlock()
	_, err := a.syncLeaseHeld(ctx, "p", "n1", causeGrant)
	unlock()
	if err != nil || freeUnits(a) != 2 {
		t.Fatalf("writing the lease as it is: %v, %d free; want it settled and both free", err, freeUnits(a))
	}
	leases.landLate()
	if n := unitsInLeases(t, ctx, leases); n != 0 {
		t.Fatalf("the late grant landed: %d units leased, want 0", n)
	}
}

// TestAGrantThatLandedIsNotTakenBack: a grant's write lands with its
// answer lost, and the writes around it meet conflicts until the sync
// gives up. The units did land (a read showed them, and a sync may have
// listed them to the node): the grant keeps them and returns them, and
// they are never free for another node (fault-suite seeds 1208 and 1212:
// the grant took them back and returned them to the node, then the next
// round freed them and granted them elsewhere).
func TestAGrantThatLandedIsNotTakenBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, leases, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1})
	if _, _, _, err := a.grant(ctx, "p", "n1", 1); err != nil { // the lease exists
		t.Fatal(err)
	}
	leases.fault = inTurn(writeConflict, writeConflict, writeLost, writeConflict)
	got, _, _, err := a.grant(ctx, "p", "n1", 2)
	if err != nil || len(got) != 2 {
		t.Fatalf("grant whose write landed among conflicts: %v %v, want its 2 units", got, err)
	}
	if !a.syncDirty(ctx) {
		t.Fatal("round")
	}
	if other, _, _, err := a.grant(ctx, "p", "n2", 6); err != nil || len(other) != 3 {
		t.Fatalf("grant to n2: %v %v, want the 3 units n1 does not hold", other, err)
	}
	if n := unitsInLeases(t, ctx, leases); n != 6 {
		t.Fatalf("%d units leased, want 6", n)
	}
}

// TestARefusedGrantGivesItsUnitsBack: a grant whose write the apiserver
// refuses (an admission webhook, say) leaves its units free.
func TestARefusedGrantGivesItsUnitsBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, leases, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1})
	leases.fault = func(string, string) writeFault { return writeRefused }
	if _, _, _, err := a.grant(ctx, "p", "n1", 2); err == nil || errors.Is(err, errUnknownOutcome) {
		t.Fatalf("grant with its write refused: %v, want the refusal", err)
	}
	if free := freeUnits(a); free != 6 {
		t.Fatalf("%d free after a refused grant, want all 6", free)
	}
}

// TestADeletedLeaseIsWrittenAgain: a lease deleted behind the allocator
// (by hand) is created again with what the node is to hold.
func TestADeletedLeaseIsWrittenAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, leases, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1})
	if _, _, _, err := a.grant(ctx, "p", "n1", 2); err != nil {
		t.Fatal(err)
	}
	leases.mu.Lock()
	delete(leases.objs, v1alpha1.NodeLeaseName("p", "n1"))
	leases.mu.Unlock()
	if got, _, _, err := a.grant(ctx, "p", "n1", 1); err != nil || len(got) != 1 {
		t.Fatalf("grant after the lease was deleted: %v %v", got, err)
	}
	if n := unitsInLeases(t, ctx, leases); n != 3 {
		t.Fatalf("%d units leased, want the 3 of n1", n)
	}
}

// TestAUnitInTwoStoredLeasesStaysWithTheFirst: a new leader loads two
// leases listing one unit (an invariant violation from outside). The unit
// stays the first node's, is listed to neither twice, is not free, and the
// second lease is rewritten without it.
func TestAUnitInTwoStoredLeasesStaysWithTheFirst(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leases := newMemLeases()
	storeLeases(t, ctx, leases, map[string][]string{"node-a": {"10.0.0.1"}, "node-b": {"10.0.0.1"}})
	a, _ := memAllocatorOn(t, ctx, leases, "10.0.0.0/30", Config{Epoch: 2})
	if a, b := syncListing(t, ctx, a, "node-a", 1), syncListing(t, ctx, a, "node-b", 1); len(a) != 1 || len(b) != 0 {
		t.Fatalf("listed %v to node-a and %v to node-b, want it to node-a only", a, b)
	}
	if !a.syncDirty(ctx) {
		t.Fatal("the second lease was not rewritten")
	}
	if n := unitsInLeases(t, ctx, leases); n != 1 || freeUnits(a) != 1 {
		t.Fatalf("%d units leased, %d free; want 1 (node-a's) and the other free", n, freeUnits(a))
	}
}
