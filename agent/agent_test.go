package agent

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/broker"
)

var t0 = time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)

// clock is a test clock that only moves when told to.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

var dualPool = store.Pool{Name: "dual", Prefix4: 24, Prefix6: 64, Gateway4: "10.0.0.1", Gateway6: "fd00::1",
	Routes: []store.Route{{Dst: "172.16.0.0/12"}}}

func dualUnits(n int) []store.Unit {
	us := make([]store.Unit, n)
	for i := range us {
		v4 := fmt.Sprintf("10.0.0.%d", i+10)
		us[i] = store.Unit{Pool: "dual", ID: v4, IPv4: v4, IPv6: fmt.Sprintf("fd00::%x", i+0x10)}
	}
	return us
}

type fixture struct {
	agent *Agent
	store *store.Store
	path  string
	clock *clock
}

func newFixture(t *testing.T, units int) *fixture {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.db")
	f := &fixture{path: path, clock: &clock{now: t0}}
	f.reopen(t)
	if units > 0 {
		if err := f.agent.Grant(dualPool, dualUnits(units), 0); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// reopen simulates an agent restart: a new Agent from the same file.
func (f *fixture) reopen(t *testing.T) {
	t.Helper()
	if f.store != nil {
		f.store.Close()
	}
	s, err := store.Open(f.path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	a, err := New(Config{Node: "node-1", Store: s, Resolver: StaticResolver{Default: "dual", Known: map[string]bool{"dual": true}},
		ReuseDelay: DefaultReuseDelay, Now: f.clock.Now, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	f.agent, f.store = a, s
}

func req(op wire.Op, ctr string) *wire.Request {
	return &wire.Request{Op: op, Network: "underlay", Attachment: wire.Attachment{ContainerID: ctr, IfName: "eth0"},
		Pod: wire.Pod{Namespace: "default", Name: "pod-" + ctr, UID: "uid-" + ctr}}
}

func (f *fixture) do(t *testing.T, r *wire.Request) *wire.Response {
	t.Helper()
	return f.agent.Handle(context.Background(), r)
}

func mustAdd(t *testing.T, f *fixture, ctr string) *wire.Result {
	t.Helper()
	resp := f.do(t, req(wire.OpAdd, ctr))
	if resp.Error != nil {
		t.Fatalf("ADD %s: %v", ctr, resp.Error)
	}
	return resp.Result
}

func TestAddReturnsAPairWithGatewaysAndRoutes(t *testing.T) {
	f := newFixture(t, 2)
	res := mustAdd(t, f, "c1")
	want := []wire.Address{{CIDR: "10.0.0.10/24", Gateway: "10.0.0.1"}, {CIDR: "fd00::10/64", Gateway: "fd00::1"}}
	if fmt.Sprint(res.IPs) != fmt.Sprint(want) || len(res.Routes) != 1 || !res.Hit || res.Pool != "dual" {
		t.Fatalf("result %+v, want IPs %v, one route, a hit", res, want)
	}
}

func TestAddIsIdempotentAndDelIsToo(t *testing.T) {
	f := newFixture(t, 3)
	first := mustAdd(t, f, "c1")
	again := mustAdd(t, f, "c1")
	if fmt.Sprint(first.IPs) != fmt.Sprint(again.IPs) {
		t.Fatalf("second ADD gave %v, first %v", again.IPs, first.IPs)
	}
	if n := f.agent.WarmCount("dual"); n != 2 {
		t.Fatalf("warm after idempotent ADD = %d, want 2", n)
	}
	for i := range 2 {
		if resp := f.do(t, req(wire.OpDel, "c1")); resp.Error != nil {
			t.Fatalf("DEL #%d: %v", i+1, resp.Error)
		}
	}
	if resp := f.do(t, req(wire.OpDel, "never-added")); resp.Error != nil {
		t.Fatalf("DEL of an unknown container: %v", resp.Error)
	}
	if resp := f.do(t, req(wire.OpCheck, "c1")); resp.Error == nil || resp.Error.Code != wire.CodeCheckMismatch {
		t.Fatalf("CHECK after DEL: %+v, want a mismatch", resp.Error)
	}
}

// TestReleasedUnitCoolsBeforeReuse: a unit released by a DEL is not
// handed out before its reuse delay; an ADD that finds nothing else waits
// for it on the node (a hit, no allocator involved) instead of failing,
// and a second ADD, with no further unit to wait for, does not wait.
func TestReleasedUnitCoolsBeforeReuse(t *testing.T) {
	f := newFixture(t, 1)
	first := mustAdd(t, f, "c1")
	if resp := f.do(t, req(wire.OpDel, "c1")); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	served := make(chan *wire.Response, 1)
	go func() { served <- f.do(t, req(wire.OpAdd, "c2")) }()
	waiting := func() int {
		f.agent.mu.Lock()
		defer f.agent.mu.Unlock()
		return f.agent.coolWaiters["dual"]
	}
	for waiting() != 1 {
		time.Sleep(time.Millisecond)
	}
	// One cooling unit, one ADD waiting for it: a third finds nothing.
	if resp := f.do(t, req(wire.OpAdd, "c3")); resp.Error == nil || resp.Error.Code != wire.CodeMissTimeout {
		t.Fatalf("ADD with the only unit cooling and promised: %+v", resp)
	}
	f.clock.Advance(DefaultReuseDelay - time.Millisecond)
	f.agent.Recycle(f.clock.Now())
	if f.agent.WarmCount("dual") != 0 {
		t.Fatal("re-warmed before the reuse delay")
	}
	select {
	case resp := <-served:
		t.Fatalf("ADD served before the reuse delay: %+v", resp)
	case <-time.After(50 * time.Millisecond):
	}
	f.clock.Advance(time.Millisecond)
	resp := <-served
	if resp.Error != nil {
		t.Fatal(resp.Error)
	}
	if fmt.Sprint(resp.Result.IPs) != fmt.Sprint(first.IPs) || !resp.Result.Hit {
		t.Fatalf("after cooling got %v (hit %v), want the recycled %v as a hit", resp.Result.IPs, resp.Result.Hit, first.IPs)
	}
	if n := testutil.ToFloat64(f.agent.metrics.coolingWaits.WithLabelValues("dual")); n != 1 {
		t.Errorf("%v cooling waits counted, want 1", n)
	}
}

// Recycle says when the next cooling unit is due, so that the recycler
// sleeps until then rather than ticking.
func TestRecycleSaysWhenTheNextUnitIsDue(t *testing.T) {
	f := newFixture(t, 3)
	mustAdd(t, f, "c1")
	mustAdd(t, f, "c2")
	if next := f.agent.Recycle(f.clock.Now()); !next.IsZero() {
		t.Fatalf("nothing cooling, next due %v; want none", next)
	}
	released := f.clock.Now()
	if resp := f.do(t, req(wire.OpDel, "c1")); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	f.clock.Advance(400 * time.Millisecond)
	if resp := f.do(t, req(wire.OpDel, "c2")); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	if next, want := f.agent.Recycle(f.clock.Now()), released.Add(DefaultReuseDelay); !next.Equal(want) {
		t.Fatalf("two cooling, next due %v; want the first's, %v", next, want)
	}
	f.clock.Advance(DefaultReuseDelay - 400*time.Millisecond)
	if next, want := f.agent.Recycle(f.clock.Now()), released.Add(400*time.Millisecond+DefaultReuseDelay); !next.Equal(want) || f.agent.WarmCount("dual") != 2 {
		t.Fatalf("first recycled: next due %v, %d warm; want the second's, %v, and 2 warm", next, f.agent.WarmCount("dual"), want)
	}
	f.clock.Advance(400 * time.Millisecond)
	if next := f.agent.Recycle(f.clock.Now()); !next.IsZero() || f.agent.WarmCount("dual") != 3 {
		t.Fatalf("both recycled: next due %v, %d warm; want none and 3 warm", next, f.agent.WarmCount("dual"))
	}
}

// The recycler, asleep with nothing cooling, is woken by a release and
// warms the unit when its delay is over.
func TestRecyclerWakesOnARelease(t *testing.T) {
	f := newFixture(t, 1)
	f.agent.cfg.ReuseDelay = 20 * time.Millisecond
	mustAdd(t, f, "c1")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.agent.RunRecycler(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if resp := f.do(t, req(wire.OpDel, "c1")); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	f.clock.Advance(20 * time.Millisecond)
	err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return f.agent.WarmCount("dual") == 1, nil
	})
	if err != nil {
		t.Fatalf("released unit not recycled by the running recycler: %d warm (%v)", f.agent.WarmCount("dual"), err)
	}
}

// A report or sync tells the allocator the pods with an address, not the
// node's whole cache: it goes out after every ADD and DEL.
func TestAddressedListsTheAssignedUnitsOnly(t *testing.T) {
	f := newFixture(t, 3)
	if got := f.agent.Addressed(); len(got) != 0 {
		t.Fatalf("nothing assigned, Addressed() = %+v; want none", got)
	}
	mustAdd(t, f, "c1")
	mustAdd(t, f, "c2")
	if resp := f.do(t, req(wire.OpDel, "c2")); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	// A second attachment of the same pod (Multus) is a second unit, not
	// a second pod.
	r := req(wire.OpAdd, "c1")
	r.IfName = "net1"
	if resp := f.do(t, r); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	got := f.agent.Addressed()
	want := map[string]broker.Addressed{"dual": {Assigned: 2, Pods: []string{"uid-c1"}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("two assigned to one pod, one cooling: Addressed() = %+v; want %+v (no IDs, addresses or attachments)", got, want)
	}
}

func TestRestartKeepsEverything(t *testing.T) {
	f := newFixture(t, 3)
	a1 := mustAdd(t, f, "c1")
	mustAdd(t, f, "c2")
	if resp := f.do(t, req(wire.OpDel, "c2")); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	f.reopen(t)
	// The retried ADD of c1 (its answer was lost in the crash) gets the same pair.
	if got := mustAdd(t, f, "c1"); fmt.Sprint(got.IPs) != fmt.Sprint(a1.IPs) {
		t.Fatalf("ADD after restart gave %v, want %v", got.IPs, a1.IPs)
	}
	if n := f.agent.WarmCount("dual"); n != 1 {
		t.Fatalf("warm after restart = %d, want 1 (one assigned, one cooling)", n)
	}
	f.clock.Advance(DefaultReuseDelay)
	f.agent.Recycle(f.clock.Now())
	if n := f.agent.WarmCount("dual"); n != 2 {
		t.Fatalf("warm after the cooling unit recycled = %d, want 2", n)
	}
}

// A unit whose reuse delay is over is warm by the clock, not by a write:
// after a restart its record still says cooling, since the DEL, and the
// agent serves it at once.
func TestRewarmingWritesNothing(t *testing.T) {
	f := newFixture(t, 2)
	mustAdd(t, f, "c1")
	if resp := f.do(t, req(wire.OpDel, "c1")); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	f.clock.Advance(DefaultReuseDelay)
	f.agent.Recycle(f.clock.Now())
	if n := f.agent.WarmCount("dual"); n != 2 {
		t.Fatalf("warm after the reuse delay = %d, want 2", n)
	}
	snap, err := f.agent.store.Load()
	if err != nil {
		t.Fatal(err)
	}
	cooling := 0
	for _, u := range snap.Units {
		if u.State == store.Cooling {
			cooling++
		}
	}
	if cooling != 1 {
		t.Fatalf("%d units cooling in the record, want 1: re-warming is not written", cooling)
	}
	f.reopen(t)
	mustAdd(t, f, "c2")
	mustAdd(t, f, "c3") // the unit released by c1, its delay over before the restart
}

func TestGCFreesWhatIsNotValid(t *testing.T) {
	f := newFixture(t, 3)
	for _, c := range []string{"c1", "c2", "c3"} {
		mustAdd(t, f, c)
	}
	other := req(wire.OpAdd, "c4")
	other.Network = "another"
	if err := f.agent.Grant(dualPool, dualUnits(4), 0); err != nil {
		t.Fatal(err)
	}
	if resp := f.do(t, other); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	gc := &wire.Request{Op: wire.OpGC, Network: "underlay", Valid: []wire.Attachment{{ContainerID: "c2", IfName: "eth0"}}}
	if resp := f.do(t, gc); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	for c, held := range map[string]bool{"c1": false, "c2": true, "c3": false, "c4": true} {
		r := req(wire.OpCheck, c)
		if resp := f.do(t, r); (resp.Error == nil) != held {
			t.Errorf("after GC, %s held = %v, want %v", c, resp.Error == nil, held)
		}
	}
}

func TestStatus(t *testing.T) {
	f := newFixture(t, 1)
	st := &wire.Request{Op: wire.OpStatus, Pool: "dual"}
	if resp := f.do(t, st); resp.Error != nil {
		t.Fatalf("STATUS with a warm unit: %v", resp.Error)
	}
	mustAdd(t, f, "c1")
	if resp := f.do(t, st); resp.Error == nil || resp.Error.Code != wire.CodeNotAvailable {
		t.Fatalf("STATUS with nothing warm and no allocator: %+v", resp.Error)
	}
}

func TestBadRequests(t *testing.T) {
	f := newFixture(t, 1)
	for name, tc := range map[string]struct {
		r    *wire.Request
		code uint
	}{
		"unknown op":    {&wire.Request{Op: "FROB"}, wire.CodeInvalidConfig},
		"no container":  {&wire.Request{Op: wire.OpAdd, Attachment: wire.Attachment{IfName: "eth0"}}, wire.CodeInvalidEnv},
		"unknown pool":  {func() *wire.Request { r := req(wire.OpAdd, "c1"); r.Pool = "nope"; return r }(), wire.CodeUnknownPool},
		"empty to miss": {func() *wire.Request { f.do(t, req(wire.OpAdd, "x")); return req(wire.OpAdd, "c2") }(), wire.CodeMissTimeout},
	} {
		if resp := f.do(t, tc.r); resp.Error == nil || resp.Error.Code != tc.code {
			t.Errorf("%s: got %+v, want code %d", name, resp.Error, tc.code)
		}
	}
}

// TestConcurrentAddsGetDistinctUnits: 50 concurrent ADDs against 100 units.
func TestConcurrentAddsGetDistinctUnits(t *testing.T) {
	f := newFixture(t, 100)
	var wg sync.WaitGroup
	results := make([]*wire.Result, 50)
	for i := range results {
		wg.Go(func() {
			resp := f.do(t, req(wire.OpAdd, fmt.Sprintf("c%d", i)))
			if resp.Error != nil {
				t.Errorf("ADD c%d: %v", i, resp.Error)
				return
			}
			results[i] = resp.Result
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, r := range results {
		for _, ip := range r.IPs {
			if seen[ip.CIDR] {
				t.Fatalf("%s handed out twice", ip.CIDR)
			}
			seen[ip.CIDR] = true
		}
	}
	if len(seen) != 100 {
		t.Fatalf("%d distinct addresses, want 100 (50 pairs)", len(seen))
	}
	if f.agent.locks.Held() != 0 {
		t.Fatalf("%d attachment locks left behind", f.agent.locks.Held())
	}
}

// TestAddDelRaceEndsConsistent races ADD and DEL of one attachment: the end
// state is either assigned and recorded, or released, in memory and in the
// store alike.
func TestAddDelRaceEndsConsistent(t *testing.T) {
	f := newFixture(t, 4)
	for round := range 50 {
		ctr := fmt.Sprintf("race%d", round)
		var wg sync.WaitGroup
		wg.Go(func() { f.do(t, req(wire.OpAdd, ctr)) })
		wg.Go(func() { f.do(t, req(wire.OpDel, ctr)) })
		wg.Wait()
		snap, err := f.store.Load()
		if err != nil {
			t.Fatal(err)
		}
		key := ctr + "/eth0"
		stored, inStore := snap.Assignments[key]
		f.agent.mu.Lock()
		mem, inMem := f.agent.assignments[key]
		f.agent.mu.Unlock()
		if inStore != inMem || inStore && stored.UnitID != mem.UnitID {
			t.Fatalf("round %d: store has %v (%+v), memory has %v (%+v)", round, inStore, stored, inMem, mem)
		}
		if inStore && snap.Units[store.Key{Pool: stored.Pool, ID: stored.UnitID}].Attachment != key {
			t.Fatalf("round %d: unit record does not point back at %s", round, key)
		}
		// Clean up for the next round and let the unit cool down.
		f.do(t, req(wire.OpDel, ctr))
		f.clock.Advance(DefaultReuseDelay)
		f.agent.Recycle(f.clock.Now())
	}
}

// TestStaleListingsCannotResurrectARevokedUnit: a sync reply or grant built
// before a revoke (at a generation not newer than the revoke's) must not
// bring the unit back: the allocator may already have granted it to
// another node. A grant at a newer generation may.
func TestStaleListingsCannotResurrectARevokedUnit(t *testing.T) {
	f := newFixture(t, 0)
	us := dualUnits(2)
	if err := f.agent.Grant(dualPool, us, 5); err != nil {
		t.Fatal(err)
	}
	if got, err := f.agent.Revoke("dual", []string{us[0].ID}, 1, 5); err != nil || len(got) != 1 {
		t.Fatalf("revoke: %v %v", got, err)
	}
	stale := []broker.Lease{{Pool: broker.PoolInfo{Name: "dual", Prefix4: 24, Prefix6: 64}, Gen: 5,
		Units: []broker.Unit{{ID: us[0].ID, IPv4: us[0].IPv4, IPv6: us[0].IPv6}, {ID: us[1].ID, IPv4: us[1].IPv4, IPv6: us[1].IPv6}}}}
	if err := f.agent.Reconcile(stale); err != nil {
		t.Fatal(err)
	}
	if err := f.agent.Grant(dualPool, us[:1], 5); err != nil {
		t.Fatal(err)
	}
	snap, _ := f.store.Load()
	if _, back := snap.Units[us[0].Key()]; back || f.agent.WarmCount("dual") != 1 {
		t.Fatalf("a stale listing brought the revoked unit back (store %v, warm %d)", snap.Units, f.agent.WarmCount("dual"))
	}
	if err := f.agent.Grant(dualPool, us[:1], 7); err != nil {
		t.Fatal(err)
	}
	if f.agent.WarmCount("dual") != 2 {
		t.Fatalf("a grant at a newer generation was refused: warm %d", f.agent.WarmCount("dual"))
	}
}

// TestWhatWasGivenBackIsSaidUntilListedAnew: a unit dropped for a revoke
// at generation 5 is in the agent's sync (GaveBack) while the allocator
// may not have had the answer: also after a listing at 5 that still names
// it (refused: the answer was lost). A listing at a newer generation
// means the lease was written since, and it is said no more.
func TestWhatWasGivenBackIsSaidUntilListedAnew(t *testing.T) {
	f := newFixture(t, 0)
	us := dualUnits(2)
	if err := f.agent.Grant(dualPool, us, 5); err != nil {
		t.Fatal(err)
	}
	if got := f.agent.GaveBack(); len(got) != 0 {
		t.Fatalf("nothing given back yet, the sync says %v", got)
	}
	if got, err := f.agent.Revoke("dual", []string{us[0].ID}, 1, 5); err != nil || len(got) != 1 {
		t.Fatalf("revoke: %v %v", got, err)
	}
	want := []broker.GaveBack{{Pool: "dual", ID: us[0].ID, Gen: 5}}
	if got := f.agent.GaveBack(); !slices.Equal(got, want) {
		t.Fatalf("after the revoke, the sync says %v given back, want %v", got, want)
	}
	if err := f.agent.Reconcile(dualListing(5, us[0], us[1])); err != nil {
		t.Fatal(err)
	}
	if got := f.agent.GaveBack(); !slices.Equal(got, want) || f.agent.WarmCount("dual") != 1 {
		t.Fatalf("after a listing at the revoke's generation (the answer lost): given back %v, warm %d; want %v and 1", got, f.agent.WarmCount("dual"), want)
	}
	if err := f.agent.Reconcile(dualListing(6, us[1])); err != nil {
		t.Fatal(err)
	}
	if got := f.agent.GaveBack(); len(got) != 0 {
		t.Fatalf("after a listing at a newer generation, the sync still says %v given back", got)
	}
}

// TestAPushThatCrossedARevokeAndARestartIsRefused: a unit given back on
// a revoke (at generation 5) is pushed again by a grant built before the
// revoke, which arrives after the agent restarted (forgetting what it
// gave back) and synced at the generation the revoke's write made. The
// sync reply did not list it; the push, not newer than the reply, is
// refused.
func TestAPushThatCrossedARevokeAndARestartIsRefused(t *testing.T) {
	f := newFixture(t, 0)
	us := dualUnits(2)
	if err := f.agent.Grant(dualPool, us, 5); err != nil {
		t.Fatal(err)
	}
	if got, err := f.agent.Revoke("dual", []string{us[0].ID}, 1, 5); err != nil || len(got) != 1 {
		t.Fatalf("revoke: %v %v", got, err)
	}
	f.reopen(t)
	if err := f.agent.Reconcile(dualListing(6, us[1])); err != nil {
		t.Fatal(err)
	}
	if err := f.agent.Grant(dualPool, us[:1], 5); err != nil {
		t.Fatal(err)
	}
	if got := f.agent.WarmCount("dual"); got != 1 {
		t.Fatalf("warm %d after the stale push, want 1: the unit given back came back", got)
	}
	if err := f.agent.Grant(dualPool, us[:1], 7); err != nil {
		t.Fatal(err)
	}
	if got := f.agent.WarmCount("dual"); got != 2 {
		t.Fatalf("warm %d after a grant newer than the reply, want 2", got)
	}
}

// TestReconcileKeepsWhatCrossedTheReply: a unit granted at a newer
// generation than a sync reply is not dropped for being absent from it.
func TestReconcileKeepsWhatCrossedTheReply(t *testing.T) {
	f := newFixture(t, 0)
	us := dualUnits(2)
	if err := f.agent.Grant(dualPool, us[:1], 3); err != nil {
		t.Fatal(err)
	}
	if err := f.agent.Grant(dualPool, us[1:], 4); err != nil { // crossed the reply below
		t.Fatal(err)
	}
	reply := []broker.Lease{{Pool: broker.PoolInfo{Name: "dual", Prefix4: 24, Prefix6: 64}, Gen: 3,
		Units: []broker.Unit{{ID: us[0].ID, IPv4: us[0].IPv4, IPv6: us[0].IPv6}}}}
	if err := f.agent.Reconcile(reply); err != nil {
		t.Fatal(err)
	}
	if f.agent.WarmCount("dual") != 2 {
		t.Fatalf("warm %d, want 2: the newer grant was dropped", f.agent.WarmCount("dual"))
	}
	// A reply at generation 4 that does not list it does drop it.
	reply[0].Gen = 4
	if err := f.agent.Reconcile(reply); err != nil {
		t.Fatal(err)
	}
	if f.agent.WarmCount("dual") != 1 {
		t.Fatalf("warm %d, want 1", f.agent.WarmCount("dual"))
	}
}

// TestReconcileKeepsTheAssignedUnitsItLists: a sync reply lists every unit
// the node holds, assigned ones included; a unit released since the state
// was sent stays, cooling.
func TestReconcileKeepsTheAssignedUnitsItLists(t *testing.T) {
	f := newFixture(t, 0)
	us := dualUnits(2)
	if err := f.agent.Grant(dualPool, us, 3); err != nil {
		t.Fatal(err)
	}
	f.do(t, req(wire.OpAdd, "c1"))
	f.do(t, req(wire.OpAdd, "c2"))
	f.do(t, req(wire.OpDel, "c2"))
	if err := f.agent.Reconcile(dualListing(3, us...)); err != nil {
		t.Fatal(err)
	}
	snap, _ := f.store.Load()
	if len(snap.Units) != 2 || len(snap.Assignments) != 1 {
		t.Fatalf("record after a reply listing both units: %v %v, want both kept, one assigned", snap.Units, snap.Assignments)
	}
}

// TestReconcileVoidsWhatItDoesNotList: units the reply does not list leave
// the cache and the record, assigned ones with their assignment (counted
// as voided); a later DEL of that attachment succeeds, and the unit is
// never warm here again. Units granted at a newer generation than the
// reply crossed it and are kept (found by the fault suite: an agent back
// from a lost node still held a unit assigned on another node).
func TestReconcileVoidsWhatItDoesNotList(t *testing.T) {
	f := newFixture(t, 0)
	us := dualUnits(3)
	if err := f.agent.Grant(dualPool, us[:2], 3); err != nil {
		t.Fatal(err)
	}
	f.do(t, req(wire.OpAdd, "c1"))
	// Granted at generation 4 after a reply at 3: crossed it, kept.
	if err := f.agent.Grant(dualPool, us[2:], 4); err != nil {
		t.Fatal(err)
	}
	if err := f.agent.Reconcile(dualListing(3)); err != nil {
		t.Fatal(err)
	}
	held := f.agent.Held()
	if len(held) != 1 || held[0].Unit.ID != us[2].ID {
		t.Fatalf("held after the reply: %+v, want only %s (granted after the reply)", held, us[2].ID)
	}
	if got := testutil.ToFloat64(f.agent.metrics.voided.WithLabelValues("dual")); got != 1 {
		t.Fatalf("voided %v, want 1", got)
	}
	if err := f.agent.Reconcile(dualListing(4)); err != nil {
		t.Fatal(err)
	}
	if snap, _ := f.store.Load(); len(snap.Units) != 0 || len(snap.Assignments) != 0 {
		t.Fatalf("record after the replies: %v %v, want empty", snap.Units, snap.Assignments)
	}
	if f.agent.WarmCount("dual") != 0 || len(f.agent.Held()) != 0 {
		t.Fatalf("cache after the replies: warm %d, held %v", f.agent.WarmCount("dual"), f.agent.Held())
	}
	if resp := f.do(t, req(wire.OpDel, "c1")); resp.Error != nil {
		t.Fatalf("DEL of the voided attachment: %+v", resp.Error)
	}
}

// dualLease is a sync reply listing units of the dual pool at gen.
func dualListing(gen int64, us ...store.Unit) []broker.Lease {
	l := broker.Lease{Pool: broker.PoolInfo{Name: "dual", Prefix4: 24, Prefix6: 64}, Gen: gen}
	for _, u := range us {
		l.Units = append(l.Units, broker.Unit{ID: u.ID, IPv4: u.IPv4, IPv6: u.IPv6})
	}
	return []broker.Lease{l}
}

// countingAllocator grants count units per miss, after release is closed,
// and counts the requests.
type countingAllocator struct {
	mu       sync.Mutex
	requests []int
	next     int
	release  chan struct{}
}

func (c *countingAllocator) Miss(ctx context.Context, pool string, count int) ([]store.Unit, store.Pool, int64, error) {
	select {
	case <-c.release:
	case <-ctx.Done():
		return nil, store.Pool{}, 0, ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requests = append(c.requests, count)
	all := dualUnits(c.next + count)
	units := all[c.next:]
	c.next += count
	return units, dualPool, 0, nil
}

func (c *countingAllocator) CanServe(string) bool { return true }
func (c *countingAllocator) Fenced() error        { return nil }

// TestConcurrentMissesShareARequest: 20 ADDs miss on an empty node at
// once; they share requests to the allocator (one in flight at a time,
// asking for as many units as ADDs wait), and each gets a distinct unit.
func TestConcurrentMissesShareARequest(t *testing.T) {
	f := newFixture(t, 0)
	alloc := &countingAllocator{release: make(chan struct{})}
	f.agent.cfg.Allocator = alloc
	f.agent.cfg.MissTimeout = 10 * time.Second
	var wg sync.WaitGroup
	got := make(chan string, 20)
	for i := range 20 {
		wg.Go(func() {
			resp := f.do(t, req(wire.OpAdd, fmt.Sprintf("m%d", i)))
			if resp.Error != nil {
				t.Errorf("ADD m%d: %v", i, resp.Error)
				return
			}
			got <- resp.Result.IPs[0].CIDR
		})
	}
	for {
		f.agent.mu.Lock()
		waiting := f.agent.missing["dual"]
		f.agent.mu.Unlock()
		if waiting == 20 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(alloc.release)
	wg.Wait()
	close(got)
	seen := map[string]bool{}
	for ip := range got {
		if seen[ip] {
			t.Errorf("%s given twice", ip)
		}
		seen[ip] = true
	}
	if len(seen) != 20 || len(alloc.requests) > 2 {
		t.Fatalf("%d distinct addresses from requests for %v units; want 20 from at most 2 requests", len(seen), alloc.requests)
	}
	t.Logf("20 concurrent misses: requests for %v units", alloc.requests)
}
