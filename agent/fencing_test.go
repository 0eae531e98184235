package agent

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/broker"
)

// TestGrantsOfADeposedLeaderAreRefused: once the agent has seen epoch 2,
// a grant or revoke of epoch 1 is refused and changes nothing, also after
// the agent restarts (the epoch is persisted).
func TestGrantsOfADeposedLeaderAreRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, leader := allocatorSide(t, ctx)
	f := newFixture(t, 0)

	run := func() (stop func()) {
		conn, err := broker.Connect(ctx, srv.ClientURL(), "agent")
		if err != nil {
			t.Fatal(err)
		}
		bus := NewBus(f.agent, broker.NATS(conn), time.Second)
		bctx, bcancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { _ = bus.Run(bctx); close(done) }()
		// Run subscribes before its first sync request; wait for the sync
		// (nobody answers it here) as the sign that grants are heard.
		sub, err := leader.SubscribeSync(broker.SubjectSyncAll)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sub.NextMsg(5 * time.Second); err != nil {
			t.Fatalf("the agent never asked to sync: %v", err)
		}
		_ = sub.Unsubscribe()
		return func() { bcancel(); <-done; conn.Close() }
	}
	grant := func(epoch uint64, id string) broker.Ack {
		t.Helper()
		msg := broker.Encode(&broker.Grant{V: broker.ProtocolVersion, Epoch: epoch, Node: "node-1",
			Pool: broker.PoolInfo{Name: "dual", Prefix4: 24}, Units: []broker.Unit{{ID: id, IPv4: id}}})
		resp, err := leader.RequestWithContext(ctx, broker.SubjectGrant("node-1"), msg)
		if err != nil {
			t.Fatal(err)
		}
		var ack broker.Ack
		if err := broker.Decode(resp.Data, &ack); err != nil {
			t.Fatal(err)
		}
		return ack
	}
	revoke := func(epoch uint64, id string) broker.Revoked {
		t.Helper()
		resp, err := leader.RequestWithContext(ctx, broker.SubjectRevoke("node-1"),
			broker.Encode(&broker.Revoke{V: broker.ProtocolVersion, Epoch: epoch, Pool: "dual", IDs: []string{id}, Count: 1}))
		if err != nil {
			t.Fatal(err)
		}
		var r broker.Revoked
		if err := broker.Decode(resp.Data, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}

	stop := run()
	if ack := grant(2, "10.0.0.2"); ack.Error != "" {
		t.Fatalf("grant of epoch 2: %s", ack.Error)
	}
	if ack := grant(1, "10.0.0.1"); ack.Error == "" {
		t.Fatal("grant of epoch 1 accepted after epoch 2")
	}
	if r := revoke(1, "10.0.0.2"); r.Error == "" || len(r.IDs) != 0 {
		t.Fatalf("revoke of epoch 1 after epoch 2: %+v", r)
	}
	if got := f.agent.WarmCount("dual"); got != 1 {
		t.Fatalf("warm = %d, want only epoch 2's unit", got)
	}
	stop()

	f.reopen(t)
	stop = run()
	defer stop()
	if ack := grant(1, "10.0.0.3"); ack.Error == "" {
		t.Fatal("after a restart, a grant of epoch 1 was accepted")
	}
	if r := revoke(3, "10.0.0.2"); r.Error != "" || len(r.IDs) != 1 {
		t.Fatalf("revoke of a newer epoch 3: %+v", r)
	}
	if got := f.agent.WarmCount("dual"); got != 0 {
		t.Fatalf("warm = %d after the revoke, want 0", got)
	}
}

// TestWarmUnitsFencedAfterSilence: an agent uses its warm units only after
// a sync, and only while the allocator answered within the warm TTL its
// sync reply gave. Past it (the allocator may declare the node lost and
// reclaim them), an ADD fails with "try again later" and the agent asks
// for a sync; once that sync has reconciled the cache, ADDs hit again. A
// live read of the Node showing it Ready keeps the cache usable through a
// bus outage, since the allocator cannot declare a Ready node lost.
func TestWarmUnitsFencedAfterSilence(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, alloc := allocatorSide(t, ctx)
	f := newFixture(t, 0)
	lease := dualLease(3)
	var answering atomic.Bool // whether the allocator answers syncs
	syncs := answerSyncs(t, alloc, lease, &answering)
	var nodeReady atomic.Bool
	bus := runBus(t, ctx, f, srv.ClientURL(), func(b *Bus) {
		b.NodeReady = func(context.Context) error {
			if nodeReady.Load() {
				return nil
			}
			return errors.New("node is not Ready")
		}
		// The periodic sync and probe run on a real ticker (TTL/3 = 3.3 s
		// once synced): on a slow machine one fired between the steps below
		// and vouched for the node after the fake clock had moved past a
		// silence. This test syncs and probes by hand.
		b.syncEvery = time.Hour
	})

	add := func(ctr string) *wire.Error { return f.do(t, req(wire.OpAdd, ctr)).Error }
	waitSynced := func(n int32) { t.Helper(); waitForSync(t, ctx, bus, syncs, n) }
	// Not synced since start: the units it holds are not used.
	if err := f.agent.Grant(dualPool, dualUnits(3), 0); err != nil {
		t.Fatal(err)
	}
	if werr := add("c1"); werr == nil || werr.Code != wire.CodeTryAgainLater {
		t.Fatalf("ADD before any sync: %+v, want code %d", werr, wire.CodeTryAgainLater)
	}
	answering.Store(true)
	bus.Resync()
	waitSynced(1)
	if werr := add("c1"); werr != nil {
		t.Fatalf("ADD after the sync: %v", werr)
	}
	// The allocator goes silent past the TTL.
	answering.Store(false)
	f.clock.Advance(11 * time.Second)
	if werr := add("c2"); werr == nil || werr.Code != wire.CodeTryAgainLater || !strings.Contains(werr.Msg, "no answer from the allocator for 11s") {
		t.Fatalf("ADD after 11 s of silence (TTL 10 s): %+v, want code %d naming the silence", werr, wire.CodeTryAgainLater)
	}
	answering.Store(true)
	waitSynced(2) // the fenced ADD asked for it
	if werr := add("c2"); werr != nil {
		t.Fatalf("ADD after the resync: %v", werr)
	}

	// A bus outage on a node the API shows Ready: a live read of the Node
	// vouches for it, and the cache stays in use past the TTL.
	answering.Store(false)
	nodeReady.Store(true)
	f.clock.Advance(5 * time.Second)
	bus.probeIfSilent(ctx)
	for bus.readyAt.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	f.clock.Advance(6 * time.Second) // 11 s without the allocator
	if werr := add("c3"); werr != nil {
		t.Fatalf("ADD on a node the API shows Ready, allocator silent 11 s: %v", werr)
	}
	// The API no longer vouches for it either.
	nodeReady.Store(false)
	f.clock.Advance(10 * time.Second)
	bus.probeIfSilent(ctx)
	if werr := add("c4"); werr == nil || werr.Code != wire.CodeTryAgainLater {
		t.Fatalf("ADD with neither the allocator nor the API vouching for 16 s: %+v, want code %d", werr, wire.CodeTryAgainLater)
	}
}

// TestALateAnswerDoesNotStretchTheWarmTTL: the allocator counts a node's
// silence from the requests it handles, so the agent counts its warm TTL
// from when it sent the request an answer is to, not from when the answer
// came: a sync answered 4 s after it was sent vouches for the node as of
// the sending.
func TestALateAnswerDoesNotStretchTheWarmTTL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, alloc := allocatorSide(t, ctx)
	f := newFixture(t, 0)
	var syncs atomic.Int32
	var hold atomic.Bool
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	sub, err := alloc.Subscribe(broker.SubjectSyncAll, func(m *nats.Msg) {
		if hold.Load() {
			arrived <- struct{}{}
			<-release
		}
		syncs.Add(1)
		_ = m.Respond(broker.Encode(&broker.SyncReply{V: broker.ProtocolVersion, Epoch: 1, Leases: []broker.Lease{dualLease(3)}, WarmTTLMillis: 10_000}))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	// The periodic sync's real ticker must not answer for the node between
	// the steps (see TestWarmUnitsFencedAfterSilence); the bus timeout
	// leaves the held answer time to come.
	bus := runBus(t, ctx, f, srv.ClientURL(), func(b *Bus) { b.syncEvery, b.timeout = time.Hour, 10*time.Second })
	waitForSync(t, ctx, bus, &syncs, 1)

	hold.Store(true)
	f.clock.Advance(5 * time.Second)
	heard := bus.heard.Load()
	bus.Resync()
	select { // sent 5 s after the first sync's sending
	case <-arrived:
	case <-ctx.Done():
		t.Fatal("the resync was never sent")
	}
	f.clock.Advance(4 * time.Second)
	close(release)
	for bus.heard.Load() == heard {
		if ctx.Err() != nil {
			t.Fatal("the held sync's answer was never taken")
		}
		time.Sleep(time.Millisecond)
	}
	if got, want := time.Unix(0, bus.heard.Load()), f.clock.Now().Add(-4*time.Second); !got.Equal(want) {
		t.Fatalf("the answer vouched for the node as of %s, want %s (when its request was sent)", got, want)
	}
	f.clock.Advance(7 * time.Second) // 11 s after the sending, 7 s after the answer
	if werr := f.do(t, req(wire.OpAdd, "c1")).Error; werr == nil || werr.Code != wire.CodeTryAgainLater || !strings.Contains(werr.Msg, "no answer from the allocator for 11s") {
		t.Fatalf("ADD 11 s after the last answered request was sent (TTL 10 s): %+v, want code %d naming the silence", werr, wire.CodeTryAgainLater)
	}
}

// allocatorSide starts a NATS server and connects to it as the allocator
// would.
func allocatorSide(t *testing.T, ctx context.Context) (*broker.Server, *nats.Conn) {
	t.Helper()
	srv, err := broker.StartServer(broker.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	conn, err := broker.Connect(ctx, srv.ClientURL(), "allocator")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	return srv, conn
}

// TestSilenceWithoutADDsStillFences: silence past the TTL with no ADD
// during it (nothing noticed it), then an answered report: the next ADD
// must not use the warm cache before a sync (the node may have been
// declared lost and its units given away meanwhile).
func TestSilenceWithoutADDsStillFences(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, alloc := allocatorSide(t, ctx)
	f := newFixture(t, 0)
	lease := dualLease(3)
	var syncOn atomic.Bool
	syncOn.Store(true)
	syncs := answerSyncs(t, alloc, lease, &syncOn)
	var reportOn atomic.Bool
	reports := answerReports(t, alloc, &reportOn)
	// No periodic sync (a real ticker) between the steps: see
	// TestWarmUnitsFencedAfterSilence.
	bus := runBus(t, ctx, f, srv.ClientURL(), func(b *Bus) { b.syncEvery = time.Hour })
	waitForSync(t, ctx, bus, syncs, 1)
	if werr := f.do(t, req(wire.OpAdd, "c1")).Error; werr != nil {
		t.Fatal(werr)
	}
	// partition: nothing answered; the DEL's report is pending.
	stopAnswering(syncs, &syncOn)
	f.do(t, req(wire.OpDel, "c1"))
	f.clock.Advance(60 * time.Second) // far past the 10 s TTL; no ADD meanwhile
	// heal: the report goes through first
	heard := bus.heard.Load()
	reportOn.Store(true)
	for reports.Load() < 1 || bus.heard.Load() == heard {
		if ctx.Err() != nil {
			t.Fatal("the report never went through")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if werr := f.do(t, req(wire.OpAdd, "c2")).Error; werr == nil || werr.Code != wire.CodeTryAgainLater {
		t.Fatalf("ADD after 60 s of silence (TTL 10 s) and a report, no sync: %+v, want code %d", werr, wire.CodeTryAgainLater)
	}
	syncOn.Store(true)
	waitForSync(t, ctx, bus, syncs, 2)
	if werr := f.do(t, req(wire.OpAdd, "c2")).Error; werr != nil {
		t.Fatalf("ADD after the resync: %v", werr)
	}
}

// answerReports acknowledges the agent's reports while on is set, and
// counts the answers.
func answerReports(t *testing.T, alloc *nats.Conn, on *atomic.Bool) *atomic.Int32 {
	t.Helper()
	var reports atomic.Int32
	sub, err := alloc.Subscribe(broker.SubjectReportAll, func(m *nats.Msg) {
		if !on.Load() {
			return
		}
		var r broker.Report
		_ = broker.Decode(m.Data, &r)
		reports.Add(1)
		_ = m.Respond(broker.Encode(&broker.ReportReply{V: broker.ProtocolVersion, Epoch: 1, Seq: r.Seq}))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return &reports
}

// onAnsweringBus runs a fixture's agent (miss timeout 300 ms) on a bus whose
// allocator side answers syncs (8 warm units) and reports while the
// switch it returns is on; the agent has synced.
func onAnsweringBus(t *testing.T, ctx context.Context) (*fixture, *Bus, *atomic.Int32, *atomic.Bool) {
	t.Helper()
	srv, alloc := allocatorSide(t, ctx)
	f := newFixture(t, 0)
	f.agent.cfg.MissTimeout = 300 * time.Millisecond
	answering := new(atomic.Bool)
	answering.Store(true)
	syncs := answerSyncs(t, alloc, dualLease(8), answering)
	answerReports(t, alloc, answering)
	bus := runBus(t, ctx, f, srv.ClientURL(), nil)
	waitForSync(t, ctx, bus, syncs, 1)
	return f, bus, syncs, answering
}

// stopAnswering clears on (answerSyncs' switch) such that no sync was
// answered across that instant: a sync answered just as a partition
// begins would land after the test's clock moved and count as fresh, and
// would acknowledge what is pending. It clears on again until no answer
// came within 20 ms of it.
func stopAnswering(syncs *atomic.Int32, on *atomic.Bool) {
	for {
		n := syncs.Load()
		on.Store(false)
		time.Sleep(20 * time.Millisecond)
		if syncs.Load() == n {
			return
		}
		on.Store(true)
	}
}

// dualLease is a sync reply's listing of the first n units of dualUnits.
func dualLease(n int) broker.Lease {
	lease := broker.Lease{Pool: broker.PoolInfo{Name: "dual", Prefix4: 24, Prefix6: 64}}
	for _, u := range dualUnits(n) {
		lease.Units = append(lease.Units, broker.Unit{ID: u.ID, IPv4: u.IPv4, IPv6: u.IPv6})
	}
	return lease
}

// runBus runs f's agent on the bus at url (requests time out after
// 200 ms) until the test ends; configure, if set, is applied first.
func runBus(t *testing.T, ctx context.Context, f *fixture, url string, configure func(*Bus)) *Bus {
	t.Helper()
	conn, err := broker.Connect(ctx, url, "agent")
	if err != nil {
		t.Fatal(err)
	}
	bus := NewBus(f.agent, broker.NATS(conn), 200*time.Millisecond)
	if configure != nil {
		configure(bus)
	}
	bctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = bus.Run(bctx); close(done) }()
	t.Cleanup(func() { stop(); <-done; conn.Close() })
	return bus
}

// waitForSync waits until the allocator side answered n syncs and the
// agent's cache is usable. It asks with Fencing, which has no effect:
// Fenced would queue a sync each time it saw the cache fenced, and that
// sync, sent later, could cross the steps of the test.
func waitForSync(t *testing.T, ctx context.Context, bus *Bus, syncs *atomic.Int32, n int32) {
	t.Helper()
	for syncs.Load() < n || bus.Fencing() != nil {
		if ctx.Err() != nil {
			t.Fatalf("no sync #%d", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// answerSyncs answers the agent's syncs with lease and a 10 s warm TTL
// while on is set, and counts the answers.
func answerSyncs(t *testing.T, alloc *nats.Conn, lease broker.Lease, on *atomic.Bool) *atomic.Int32 {
	t.Helper()
	var syncs atomic.Int32
	sub, err := alloc.Subscribe(broker.SubjectSyncAll, func(m *nats.Msg) {
		if !on.Load() {
			return
		}
		syncs.Add(1)
		_ = m.Respond(broker.Encode(&broker.SyncReply{V: broker.ProtocolVersion, Epoch: 1, Leases: []broker.Lease{lease}, WarmTTLMillis: 10_000}))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return &syncs
}

// TestNoADDWaitsOnTheAllocatorButAMiss: with the allocator unreachable
// (but the node not fenced yet), every ADD that finds a warm unit is
// answered at once: a pod's first address, a restarted sandbox's, a
// second attachment's, one named by a network config, and the retried
// ADD of an attachment after its DEL. The allocator needs none of them on
// record: a lost node's units return only once every pod bound to it
// before its agent's fence is gone, whatever each pod holds.
func TestNoADDWaitsOnTheAllocatorButAMiss(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f, _, syncs, answering := onAnsweringBus(t, ctx)
	podReq := func(op wire.Op, ctr, ifname, pod, pool string) *wire.Request {
		return &wire.Request{Op: op, Network: "underlay", Pool: pool, Attachment: wire.Attachment{ContainerID: ctr, IfName: ifname},
			Pod: wire.Pod{Namespace: "default", Name: pod, UID: "uid-" + pod}}
	}
	if werr := f.do(t, podReq(wire.OpAdd, "s1", "eth0", "p", "")).Error; werr != nil {
		t.Fatal(werr)
	}
	stopAnswering(syncs, answering)
	for _, step := range []struct {
		what string
		req  *wire.Request
	}{
		{"the DEL of p's sandbox", podReq(wire.OpDel, "s1", "eth0", "p", "")},
		{"the ADD of p's restarted sandbox", podReq(wire.OpAdd, "s2", "eth0", "p", "")},
		{"the ADD of p's second attachment", podReq(wire.OpAdd, "s2", "net1", "p", "")},
		{"the ADD of q, its pool named by its network config", podReq(wire.OpAdd, "q1", "net1", "q", "dual")},
		{"the DEL of q's attachment", podReq(wire.OpDel, "q1", "net1", "q", "dual")},
		{"the same attachment ADDed again", podReq(wire.OpAdd, "q1", "net1", "q", "dual")},
	} {
		resp := f.do(t, step.req)
		if resp.Error != nil {
			t.Fatalf("%s, the allocator unreachable: %v", step.what, resp.Error)
		}
		if step.req.Op == wire.OpAdd && (resp.Result == nil || !resp.Result.Hit) {
			t.Errorf("%s: %+v, want a hit", step.what, resp.Result)
		}
	}
}
