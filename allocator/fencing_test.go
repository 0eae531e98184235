package allocator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	kubefake "k8s.io/client-go/kubernetes/fake"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// TestDeposedAllocatorCannotOverwrite: allocator 1 grants to a node; its
// successor (epoch 2) rewrites the node's lease; allocator 1, unaware,
// grants again: its write conflicts, it sees epoch 2 on the lease, and it
// stops with ErrDeposed instead of overwriting its successor's record.
func TestDeposedAllocatorCannotOverwrite(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leases := newMemLeases()
	old, net := memAllocatorOn(t, ctx, leases, "10.0.0.0/24", Config{Epoch: 1})
	if _, _, _, err := old.grant(ctx, "p", "node-1", 2); err != nil {
		t.Fatal(err)
	}
	successor := memAllocatorOnNet(t, ctx, leases, net, "10.0.0.0/24", Config{Epoch: 2})
	if _, _, _, err := successor.grant(ctx, "p", "node-1", 1); err != nil {
		t.Fatal(err)
	}
	_, _, _, err := old.grant(ctx, "p", "node-1", 1)
	if !errors.Is(err, ErrDeposed) {
		t.Fatalf("the deposed allocator's grant: %v, want ErrDeposed", err)
	}
	nl, err := leases.Get(ctx, v1alpha1.NodeLeaseName("p", "node-1"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nl.Spec.Epoch != 2 || len(nl.Spec.Units) != 3 {
		t.Fatalf("lease after the deposed write: epoch %d, %d units; want the successor's epoch 2 and 3 units", nl.Spec.Epoch, len(nl.Spec.Units))
	}
}

// TestSuccessorFencesLeasesItHasNotWritten: the successor has not written
// node-1's lease yet when the deposed allocator, paused past its term,
// writes it. Without the fencing at takeover the write landed, over a
// lease the successor had loaded and planned from: a unit in two nodes'
// leases (found by the fault suite). Now it conflicts and deposes its
// author.
//
// The one takeover test on a real apiserver: the fencing rests on the
// apiserver refusing a write at a resourceVersion it has moved past, which
// memLeases only imitates (the other takeover tests run on memLeases,
// held to those rules by TestMemLeasesKeepsTheAPIServersRules and its
// twin on the apiserver, TestLeaseWritesOnTheAPIServer).
func TestSuccessorFencesLeasesItHasNotWritten(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs := apiServerWithPool(t, ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/24"}}})
	quiet := slog.New(slog.DiscardHandler)
	net := broker.NewNetwork() // the bus carries nothing here
	old, err := New(ctx, Config{Client: cs, Bus: net.Endpoint("allocator-1"), Epoch: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := old.grant(ctx, "p", "node-1", 2); err != nil {
		t.Fatal(err)
	}
	if _, err := New(ctx, Config{Client: cs, Bus: net.Endpoint("allocator-2"), Epoch: 2, Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := old.grant(ctx, "p", "node-1", 1); !errors.Is(err, ErrDeposed) {
		t.Fatalf("the deposed allocator's grant: %v, want ErrDeposed", err)
	}
	select {
	case <-old.Deposed():
	default:
		t.Fatal("the deposed allocator did not step down")
	}
	nl, err := cs.NodeLeases().Get(ctx, v1alpha1.NodeLeaseName("p", "node-1"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nl.Spec.Epoch != 2 || len(nl.Spec.Units) != 2 {
		t.Fatalf("lease after the deposed write: epoch %d, %d units; want the fence's epoch 2 and the 2 units it loaded", nl.Spec.Epoch, len(nl.Spec.Units))
	}
}

// apiServerWithPool starts an apiserver with the CRDs, creates pool, and
// returns a client: for the tests of what only the real API can tell.
func apiServerWithPool(t *testing.T, ctx context.Context, pool *v1alpha1.IPPool) *client.Clientset {
	t.Helper()
	cs, err := client.New(testenv.APIServerWithCRDs(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.IPPools().Create(ctx, pool, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return cs
}

// TestAgentIgnoresADeposedLeadersGrant: leader 1 grants a unit to node A;
// leader 2 takes over and moves that unit to node B (A gives it up on
// leader 2's revoke); leader 1, unaware, pushes its grant of the unit to
// A again. A refuses it: the unit stays only on B.
func TestAgentIgnoresADeposedLeadersGrant(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leases := newMemLeases()
	old, net := memAllocatorOn(t, ctx, leases, "10.0.0.0/24", Config{Epoch: 1})
	agents := startAgents(t, ctx, net, "p", "node-a", "node-b")
	units, _, gen, err := old.grant(ctx, "p", "node-a", 1)
	if err != nil {
		t.Fatal(err)
	}
	old.push(ctx, "node-a", "p", gen, units)
	if agents["node-a"].WarmCount("p") != 1 {
		t.Fatal("node A did not take leader 1's grant")
	}

	successor := memAllocatorOnNet(t, ctx, leases, net, "10.0.0.0/24", Config{Epoch: 2})
	moved, _, newGen, err := successor.steal(ctx, "p", "node-b", 1)
	if err != nil || len(moved) != 1 || moved[0].ID != units[0].ID {
		t.Fatalf("leader 2 moving the unit to B: %v, %v", moved, err)
	}
	successor.push(ctx, "node-b", "p", newGen, moved)

	old.push(ctx, "node-a", "p", gen+5, units) // deposed, and with a generation that looks new
	for node, want := range map[string]int{"node-a": 0, "node-b": 1} {
		if got := agents[node].WarmCount("p"); got != want {
			t.Errorf("%s holds %d warm units, want %d", node, got, want)
		}
	}
	for _, h := range agents["node-a"].Held() {
		if h.Unit.ID == units[0].ID {
			t.Fatalf("node A holds %s again after the deposed leader's grant", h.Unit.ID)
		}
	}
}

// startAgents runs an in-process agent for each node, its bus on the
// node's endpoint of net, knowing pool, and waits until each has
// subscribed to its grants and revokes.
func startAgents(t *testing.T, ctx context.Context, net *broker.Network, pool string, nodes ...string) map[string]*agent.Agent {
	t.Helper()
	agents := map[string]*agent.Agent{}
	var endpoints []*subscribing
	for _, node := range nodes {
		s, err := store.Open(filepath.Join(t.TempDir(), "agent.db"), store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		ag, err := agent.New(agent.Config{Node: node, Store: s, Logger: slog.New(slog.DiscardHandler), Resolver: agent.StaticResolver{Known: map[string]bool{pool: true}}})
		if err != nil {
			t.Fatal(err)
		}
		ep := &subscribing{Transport: net.Endpoint(node), node: node, done: make(chan struct{}),
			want: map[string]bool{broker.SubjectGrant(node): true, broker.SubjectRevoke(node): true}}
		endpoints = append(endpoints, ep)
		bus := agent.NewBus(ag, ep, time.Second)
		bctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- bus.Run(bctx) }()
		t.Cleanup(func() { stop(); <-done })
		agents[node] = ag
	}
	for _, ep := range endpoints {
		select {
		case <-ep.done:
		case <-ctx.Done():
			t.Fatalf("agent of %s never subscribed to its grants and revokes", ep.node)
		}
	}
	return agents
}

// subscribing is an agent's bus endpoint that closes done once the agent
// has subscribed to every subject in want: a request sent after that
// reaches it (the Network delivers to a subscription from the moment
// Handle returns).
type subscribing struct {
	broker.Transport
	node string
	done chan struct{}

	mu   sync.Mutex
	want map[string]bool
}

func (s *subscribing) Handle(subject string, h func(broker.Msg)) (broker.Subscription, error) {
	sub, err := s.Transport.Handle(subject, h)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.want[subject] {
		delete(s.want, subject)
		if len(s.want) == 0 {
			close(s.done)
		}
	}
	return sub, nil
}

// TestDonorLeaseWriteFailureIsRetried: a donor gives units back on a
// revoke, but the write of its lease without them fails. They must not be
// lost (listed in the donor's lease, held by no agent) nor handed out
// while the lease lists them: the next round rewrites the lease and they
// are free.
func TestDonorLeaseWriteFailureIsRetried(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, leases, ag, ps := donorOfTheWholePool(t, ctx)

	leases.setFault(every(writeRefused))
	if freed, err := a.takeFrom(ctx, ps, "node-a", 2); err == nil || freed != 0 {
		t.Fatalf("takeFrom with failing writes: %d freed, %v; want an error and nothing freed", freed, err)
	}
	if got := ag.WarmCount("p"); got != 4 {
		t.Fatalf("node A holds %d warm units after the revoke, want 4", got)
	}
	if _, _, _, err := a.grant(ctx, "p", "node-b", 1); !errors.Is(err, errExhausted) {
		t.Fatalf("a grant while the donor's lease still lists the units: %v, want exhausted", err)
	}
	a.mu.Lock()
	listed := len(ps.leases["node-a"].listed())
	a.mu.Unlock()
	if listed != 4 {
		t.Fatalf("node A's sync would list %d units, want the 4 its agent holds (not the 2 it gave back)", listed)
	}
	if a.syncDirty(ctx) {
		t.Fatal("syncDirty reported success with failing writes")
	}

	leases.setFault(nil)
	if !a.syncDirty(ctx) {
		t.Fatal("syncDirty failed with working writes")
	}
	if n := unitsInLeases(t, ctx, leases); n != 4 {
		t.Fatalf("the leases list %d units, want the donor's 4", n)
	}
	got, _, _, err := a.grant(ctx, "p", "node-b", 2)
	if err != nil || len(got) != 2 {
		t.Fatalf("grant of the freed units: %v, %v", got, err)
	}
}

// TestGivenBackUnitsAreNeverListedBack: units a donor gave back, whose
// lease rewrite failed, must not reach the donor again through a sync
// before they are freed and granted elsewhere; the units it assigned are
// listed, so that its agent keeps them.
func TestGivenBackUnitsAreNeverListedBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, leases, ag, ps := donorOfTheWholePool(t, ctx)
	leases.setFault(every(writeRefused))
	if _, err := a.takeFrom(ctx, ps, "node-a", 2); err == nil {
		t.Fatal("takeFrom with refused writes succeeded")
	}
	leases.setFault(nil)
	held := ag.Held()
	held[0].Assigned, held[0].Attachment, held[0].Pod = true, "ctr/eth0", wire.Pod{Namespace: "d", Name: "x", UID: "u"}
	m := broker.Msg{Subject: broker.SubjectSyncFrom("node-a"), Data: broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: "node-a", Run: "r", Seq: 1, Pools: addressed(held...)})}
	reply := a.handleSync(ctx, m).(*broker.SyncReply)
	if reply.Error != "" {
		t.Fatal(reply.Error)
	}
	if err := ag.Reconcile(reply.Leases); err != nil {
		t.Fatal(err)
	}
	for _, l := range reply.Leases {
		if len(l.Units) != 4 {
			t.Errorf("sync listed %d units, want the 4 the agent kept (not the 2 it gave back)", len(l.Units))
		}
	}
	if !a.syncDirty(ctx) {
		t.Fatal("the donor's lease was not written")
	}
	got, _, _, err := a.grant(ctx, "p", "node-b", 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range got {
		for _, h := range ag.Held() {
			if h.Unit.ID == g.ID {
				t.Errorf("unit %s granted to node-b is on node-a too", g.ID)
			}
		}
	}
}

// TestLostWriteAnswerKeepsTheUnits: a lease write lands but its answer is
// lost. The allocator reads the lease back and counts the write as done:
// the units are the node's, not free for another node while that lease
// lists them.
func TestLostWriteAnswerKeepsTheUnits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, leases, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1})
	var lose atomic.Int32
	leases.fault = func(string, string) writeFault {
		if lose.Add(-1) >= 0 {
			return writeLost
		}
		return writeOK
	}
	for i, node := range []string{"node-a", "node-a", "node-b"} {
		lose.Store(1)
		units, _, _, err := a.grant(ctx, "p", node, 2)
		if err != nil || len(units) != 2 {
			t.Fatalf("grant %d to %s with its answer lost: %v, %v; want it settled as done", i, node, units, err)
		}
	}
	if n := unitsInLeases(t, ctx, leases); n != 6 {
		t.Errorf("%d units in leases, want all 6", n)
	}
}

// TestLateLandingWriteIsSettled: a create fails at the client while the
// apiserver still applies it. A read at that moment would say "not
// created"; the allocator sends the write again instead, so the late one
// can only be a duplicate, and the units are never in two leases.
func TestLateLandingWriteIsSettled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, leases, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1})
	var late atomic.Bool
	late.Store(true)
	leases.fault = func(string, string) writeFault {
		if late.Swap(false) {
			return writeLate
		}
		return writeOK
	}
	if _, _, _, err := a.grant(ctx, "p", "n1", 6); err != nil {
		t.Fatalf("grant whose first sending is delayed: %v, want it settled by the second", err)
	}
	if _, _, _, err := a.grant(ctx, "p", "n2", 6); !errors.Is(err, errExhausted) {
		t.Fatalf("grant to n2: %v, want exhausted (all 6 are n1's)", err)
	}
	leases.landLate()
	if n := unitsInLeases(t, ctx, leases); n != 6 {
		t.Errorf("%d units in leases, want all 6 (n1's)", n)
	}
}

// TestAPIDownDoesNotStarveTheBus: while lease writes cannot complete, a
// node's miss fails fast (asked to try again; the units it claimed stay
// out of the free set), its syncs and every other node's are answered
// (they write nothing), and once the API is back the round writes the
// lease as wanted.
func TestAPIDownDoesNotStarveTheBus(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, leases, net := memAllocator(t, ctx, "10.0.0.0/28", Config{Epoch: 1, Handlers: 4, WriteTimeout: 500 * time.Millisecond, PlanInterval: time.Hour})
	request := func(node string, req any) ([]byte, error) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return net.Endpoint(node).Request(rctx, broker.SubjectSyncFrom(node), broker.Encode(req))
	}
	// A cluster without Node objects, as on an apiserver of its own: the
	// planner plans for no node, and gives up on node-a once its agent
	// does not answer the revoke of its warm units, so that the lease is
	// what the grants wanted.
	watchCluster(t, a, nil)
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	units, _, _, err := a.grant(ctx, "p", "node-a", 2)
	if err != nil {
		t.Fatal(err)
	}
	leases.setFault(every(writeDown))
	if _, _, _, err := a.grant(ctx, "p", "node-a", 1); !errors.Is(err, errUnknownOutcome) {
		t.Fatalf("grant with the API down: %v, want errUnknownOutcome", err)
	}
	held := []agent.HeldUnit{{Pool: "p", Unit: units[0]}, {Pool: "p", Unit: units[1], Assigned: true, Attachment: "c/eth0", Pod: wire.Pod{Namespace: "d", Name: "x", UID: "u"}}}
	for seq := uint64(1); seq <= 6; seq++ {
		var r broker.SyncReply
		resp, err := request("node-a", &broker.SyncRequest{V: broker.ProtocolVersion, Node: "node-a", Run: "r", Seq: seq, Pools: addressed(held...)})
		if err != nil {
			t.Fatalf("node-a sync %d not answered: %v", seq, err)
		}
		if err := broker.Decode(resp, &r); err != nil || r.Error != "" || len(r.Leases) != 1 || len(r.Leases[0].Units) != 2 {
			t.Fatalf("node-a sync %d with the API down: %+v %v, want its 2 stored units listed", seq, r, err)
		}
	}
	if _, err := request("node-b", &broker.SyncRequest{V: broker.ProtocolVersion, Node: "node-b", Run: "r", Seq: 1}); err != nil {
		t.Fatalf("node-b is not served: %v", err)
	}
	leases.setFault(nil)
	a.Stop() // no planning round writing while we look
	if !a.syncDirty(ctx) {
		t.Fatal("the lease was not written with the API back")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	ps := a.ledger.pools["p"]
	if ls := ps.leases["node-a"]; len(ps.dirty) != 0 || !ls.settled() || len(ls.observed) != 3 {
		t.Fatalf("after the API came back: dirty %v, node-a's lease %+v; want it settled with 3 units", ps.dirty, ls)
	}
}

// TestSyncCannotCrossADropOfALostNode: the GC is dropping a lost node's
// warm units (its write held in flight) when the node's agent syncs. The
// sync waits for the drop and lists nothing of what was dropped, so no
// unit is both listed to it and granted elsewhere.
func TestSyncCannotCrossADropOfALostNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	clk := clocktesting.NewFakeClock(time.Now())
	a, leases, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1, Clock: clk, NodeLossGrace: time.Minute})
	withKube(a)
	watchLostNode(t, a, clk, "n1")
	if _, _, _, err := a.grant(ctx, "p", "n1", 3); err != nil {
		t.Fatal(err)
	}
	clk.Step(2 * time.Minute)
	arrived, release := make(chan struct{}, 10), make(chan struct{})
	leases.setHold(func(string, string) { arrived <- struct{}{}; <-release })
	dropped := make(chan error)
	go func() { dropped <- a.returnLost(ctx, "n1") }()
	<-arrived // the drop re-checked loss and is writing
	synced := make(chan *broker.SyncReply)
	go func() {
		synced <- a.handleSync(ctx, broker.Msg{Subject: broker.SubjectSyncFrom("n1"), Data: broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: "n1", Run: "r", Seq: 1})}).(*broker.SyncReply)
	}()
	// The write goes on only once the sync has had its chance to cross
	// the drop: it waits for one of the allocator's keyed locks (the
	// node's order lock, which the drop holds), or it has answered.
	var reply *broker.SyncReply
	for reply == nil && !waitsForKeyedLock("(*Allocator).handleSync") {
		select {
		case reply = <-synced:
		case <-ctx.Done():
			t.Fatal("the sync neither answered nor waited for the drop")
		default:
			runtime.Gosched()
		}
	}
	leases.setHold(nil)
	close(release)
	if err := <-dropped; err != nil {
		t.Fatal(err)
	}
	if reply == nil {
		reply = <-synced
	}
	got, _, _, err := a.grant(ctx, "p", "n2", 6)
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, l := range reply.Leases {
		for _, u := range l.Units {
			listed[u.ID] = true
		}
	}
	for _, u := range got {
		if listed[u.ID] {
			t.Errorf("unit %s listed warm to n1 by the sync reply and granted to n2", u.ID)
		}
	}
}

// waitsForKeyedLock reports whether a goroutine with fn on its stack is
// parked on a mutex in keyed.(*Mutex).Lock.
func waitsForKeyedLock(fn string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "[sync.Mutex.Lock") && strings.Contains(g, "keyed.(*Mutex).Lock") && strings.Contains(g, fn) {
			return true
		}
	}
	return false
}

// unitsInLeases counts the units in every NodeLease, failing the test on
// one in two leases.
func unitsInLeases(t *testing.T, ctx context.Context, leases Leases) int {
	t.Helper()
	list, err := leases.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	holder := map[string]string{}
	for _, l := range list.Items {
		for _, u := range l.Spec.Units {
			if h, ok := holder[u.IPv4]; ok {
				t.Errorf("%s in the leases of %s and %s", u.IPv4, h, l.Spec.Node)
			}
			holder[u.IPv4] = l.Spec.Node
		}
	}
	return len(holder)
}

// withKube gives a (not started) a fake API of pods and nodes for its
// live reads, not the informers: tests that need those set a.watch by
// hand (watchLostNode).
func withKube(a *Allocator) *kubefake.Clientset {
	kube := kubefake.NewClientset()
	a.cfg.Kube = kube
	return kube
}

// donorOfTheWholePool: an allocator of a 6-unit pool "p", on in-memory
// leases whose writes a test can make fail, has granted and pushed all 6
// to node-a's agent.
func donorOfTheWholePool(t *testing.T, ctx context.Context) (*Allocator, *memLeases, *agent.Agent, *poolState) {
	t.Helper()
	a, leases, net := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1})
	agents := startAgents(t, ctx, net, "p", "node-a")
	units, _, gen, err := a.grant(ctx, "p", "node-a", 6)
	if err != nil {
		t.Fatal(err)
	}
	a.push(ctx, "node-a", "p", gen, units)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a, leases, agents["node-a"], a.ledger.pools["p"]
}

// TestReportsAndSyncsNeverWriteTheLease: an agent's state (what it
// assigned, to which pods) is its own: reporting it and syncing cost no
// API write, and a sync lists the assigned units with the warm ones.
func TestReportsAndSyncsNeverWriteTheLease(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, leases, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1})
	units, _, _, err := a.grant(ctx, "p", "node-a", 3)
	if err != nil {
		t.Fatal(err)
	}
	writes := leases.writes
	held := []agent.HeldUnit{{Pool: "p", Unit: units[0], Assigned: true, Attachment: "c/eth0", Pod: wire.Pod{Namespace: "d", Name: "x", UID: "u"}},
		{Pool: "p", Unit: units[1]}, {Pool: "p", Unit: units[2]}}
	if r := a.handleReport(ctx, broker.Msg{Subject: broker.SubjectReportFrom("node-a"), Data: broker.Encode(&broker.Report{V: broker.ProtocolVersion, Node: "node-a", Run: "r", Seq: 1, Pools: addressed(held...)})}).(*broker.ReportReply); r.Error != "" {
		t.Fatal(r.Error)
	}
	reply := a.handleSync(ctx, broker.Msg{Subject: broker.SubjectSyncFrom("node-a"), Data: broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: "node-a", Run: "r", Seq: 2, Pools: addressed(held...)})}).(*broker.SyncReply)
	if reply.Error != "" || len(reply.Leases) != 1 || len(reply.Leases[0].Units) != 3 {
		t.Fatalf("sync reply %+v, want the 3 units, the assigned one included", reply)
	}
	if leases.writes != writes {
		t.Fatalf("a report and a sync wrote %d leases, want none", leases.writes-writes)
	}
	a.mu.Lock()
	free, warm, assigned := a.countsLocked(a.ledger.pools["p"])
	a.mu.Unlock()
	if free != 3 || warm != 2 || assigned != 1 {
		t.Fatalf("counts free %d warm %d assigned %d, want 3, 2 and 1 from the agent's state", free, warm, assigned)
	}
}

// TestLostNodeReturnsEverythingOnceItsPodsAreGone: a lost node's units,
// warm and assigned, stay while any pod bound to it before its agent's
// fence is left (any of them may hold any unit: its agent may have
// assigned warm units whose reports never arrived, found by the fault
// suite as a unit on two live pods), whether or not it has an address on
// record. Host-network pods, finished pods and pods created after the
// fence hold none. Once the last is gone, every unit returns at once.
func TestLostNodeReturnsEverythingOnceItsPodsAreGone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	clk := clocktesting.NewFakeClock(time.Now())
	// An hour's grace: the fence is half an hour after the start, so a pod
	// created at the start is before it.
	start := clk.Now()
	a, leases, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1, Clock: clk, NodeLossGrace: time.Hour})
	withKube(a)
	bound := func(name string, mutate func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name), CreationTimestamp: metav1.NewTime(clk.Now())},
			Spec: corev1.PodSpec{NodeName: "n1"}}
		if mutate != nil {
			mutate(p)
		}
		return p
	}
	web, other := bound("web", nil), bound("other", nil)
	pods := watchLostNode(t, a, clk, "n1", web, other,
		bound("host", func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		bound("done", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }))
	got, _, _, err := a.grant(ctx, "p", "n1", 4)
	if err != nil {
		t.Fatal(err)
	}
	held := agent.HeldUnit{Pool: "p", Unit: got[0], Assigned: true, Attachment: "c1/eth0", Pod: wire.Pod{Namespace: "default", Name: "web", UID: "uid-web"}}
	m := broker.Msg{Subject: broker.SubjectReportFrom("n1"), Data: broker.Encode(&broker.Report{V: broker.ProtocolVersion, Node: "n1", Run: "r", Seq: 1, Pools: addressed(held)})}
	if r := a.handleReport(ctx, m).(*broker.ReportReply); r.Error != "" {
		t.Fatal(r.Error)
	}
	clk.Step(2 * time.Hour)
	returned := func(step string, want int) {
		t.Helper()
		if err := a.returnLost(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
		if n := unitsInLeases(t, ctx, leases); n != want {
			t.Fatalf("%s: %d units leased, want %d", step, n, want)
		}
	}
	returned("web (an address on record) and other (none) left", 4)
	if err := pods.Delete(web); err != nil {
		t.Fatal(err)
	}
	returned("web gone, other left", 4)
	if err := pods.Delete(other); err != nil {
		t.Fatal(err)
	}
	if err := pods.Add(bound("late", nil)); err != nil { // created after the fence
		t.Fatal(err)
	}
	// A pod the informer has not delivered (it lags), created before the
	// fence: the live read of the node's pods finds it.
	kube := a.cfg.Kube.CoreV1().Pods("default")
	if _, err := kube.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "unseen", CreationTimestamp: metav1.NewTime(start)},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	returned("a pod only the API has left", 4)
	if err := kube.Delete(ctx, "unseen", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	returned("every pod bound before the fence gone", 0)
	if got, _, _, err := a.grant(ctx, "p", "n2", 6); err != nil || len(got) != 6 {
		t.Fatalf("grant of the whole pool to n2: %d units, %v", len(got), err)
	}
}

// watchLostNode gives a the informers of a cluster in which node went
// NotReady at clk's now, with pods bound, in namespace default.
func watchLostNode(t *testing.T, a *Allocator, clk *clocktesting.FakeClock, node string, pods ...*corev1.Pod) cache.Indexer {
	t.Helper()
	a.started = clk.Now()
	return watchCluster(t, a, map[string]time.Time{node: clk.Now()}, pods...)
}

// watchCluster gives a (not started: Start keeps it, without Kube) the
// informers of a cluster with no Node objects and namespace default, with
// pods bound, in which nodes went NotReady when notReadySince says.
func watchCluster(t *testing.T, a *Allocator, notReadySince map[string]time.Time, pods ...*corev1.Pod) cache.Indexer {
	t.Helper()
	if notReadySince == nil {
		notReadySince = map[string]time.Time{}
	}
	podIndex := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	namespaces := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	if err := namespaces.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if err := podIndex.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	a.watch = &watcher{nodes: listerscorev1.NewNodeLister(cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})),
		podLister: listerscorev1.NewPodLister(podIndex), namespaces: listerscorev1.NewNamespaceLister(namespaces),
		factory:       informers.NewSharedInformerFactory(nil, 0), // for Stop's shutdown: never started, it needs no client
		notReadySince: notReadySince}
	return podIndex
}

// TestSyncListsOnlyTheNodesUnits: a node back from being lost syncs a
// record that still holds units the allocator gave to another node since
// (its pods gone, its units returned), one granted and one whose grant is
// still being written. The reply lists neither: the agent voids them
// instead of keeping them where a DEL would re-warm one that is live
// elsewhere (found by the fault suite; seed 34 was the one in flight).
func TestSyncListsOnlyTheNodesUnits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, _, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1})
	got, _, _, err := a.grant(ctx, "p", "node-b", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := a.grant(ctx, "p", "node-a", 1); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	ps := a.ledger.pools["p"]
	inFlight := ps.brokerUnits(ps.claimLocked("node-b", 1)) // its write not sent yet
	a.mu.Unlock()
	held := []agent.HeldUnit{
		{Pool: "p", Unit: got[0], Assigned: true, Attachment: "old/eth0", Pod: wire.Pod{Namespace: "d", Name: "gone", UID: "u0"}},
		{Pool: "p", Unit: inFlight[0], Assigned: true, Attachment: "old/eth1", Pod: wire.Pod{Namespace: "d", Name: "gone", UID: "u0"}},
	}
	m := broker.Msg{Subject: broker.SubjectSyncFrom("node-a"), Data: broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: "node-a", Run: "r", Seq: 1, Pools: addressed(held...)})}
	reply := a.handleSync(ctx, m).(*broker.SyncReply)
	if reply.Error != "" || len(reply.Leases) != 1 || len(reply.Leases[0].Units) != 1 {
		t.Fatalf("reply %+v, want node-a's one unit listed", reply)
	}
	if id := reply.Leases[0].Units[0].ID; id == got[0].ID || id == inFlight[0].ID {
		t.Fatalf("node-a's sync lists %s, node-b's", id)
	}
}

// TestSuccessorClaimsLeasesOfNodesWithoutOne: node-2 has no lease yet
// when the successor takes over; the deposed allocator's first grant to
// it would create one the successor never loaded. The successor creates
// it at takeover, so that create fails and deposes its author.
func TestSuccessorClaimsLeasesOfNodesWithoutOne(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leases := newMemLeases()
	old, net := memAllocatorOn(t, ctx, leases, "10.0.0.0/24", Config{Epoch: 1})
	kube := kubefake.NewClientset()
	if err := controlplane.RegisterNode(ctx, kube, "node-2", nil); err != nil {
		t.Fatal(err)
	}
	memAllocatorOnNet(t, ctx, leases, net, "10.0.0.0/24", Config{Kube: kube, Epoch: 2})
	if _, _, _, err := old.grant(ctx, "p", "node-2", 1); !errors.Is(err, ErrDeposed) {
		t.Fatalf("the deposed allocator's first grant to node-2: %v, want ErrDeposed", err)
	}
	nl, err := leases.Get(ctx, v1alpha1.NodeLeaseName("p", "node-2"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nl.Spec.Epoch != 2 || len(nl.Spec.Units) != 0 {
		t.Fatalf("node-2's lease: epoch %d, %d units; want the successor's empty claim at epoch 2", nl.Spec.Epoch, len(nl.Spec.Units))
	}
}

// TestTakeoverMeetingANewerEpochFailsAtOnce: two allocators believed they
// led at once (renewals hung in a slow API), and the one with the higher
// epoch fenced a lease first. The other's takeover must fail with
// ErrDeposed at once, so that its process exits and gives the Lease up;
// it retried the fence as a transient error instead, leading without
// serving (found by the fault suite, seed 91: no allocator answered for a
// minute).
func TestTakeoverMeetingANewerEpochFailsAtOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leases := newMemLeases()
	first, net := memAllocatorOn(t, ctx, leases, "10.0.0.0/24", Config{Epoch: 1})
	if _, _, _, err := first.grant(ctx, "p", "node-1", 1); err != nil {
		t.Fatal(err)
	}
	memAllocatorOnNet(t, ctx, leases, net, "10.0.0.0/24", Config{Epoch: 5})
	start := time.Now()
	a := newAllocator(Config{Leases: leases, Bus: net.Endpoint("allocator-4"), Epoch: 4, Logger: slog.New(slog.DiscardHandler)})
	list, err := leases.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.fence(ctx, list.Items); !errors.Is(err, ErrDeposed) {
		t.Fatalf("fence at epoch 4 over a lease at epoch 5: %v, want ErrDeposed", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("the fence took %s to give up", waited)
	}
}

// TestNoSyncIsRefused: 1b934d1 refused a sync whose record held a unit
// reserved without a holder, and a review found three ways in which that
// kept a node fenced for good: (a) a unit kept for a lost node that never
// returns it, held in another node's record; (b) two live nodes, each
// holding a unit the other's lease lists; (c) a node whose own grant's
// write has an unknown outcome. A sync is never refused now (only one
// overtaken by a newer message of the same agent): it lists the units
// stored and wanted for the node, and the agent voids the rest of its
// record. Each case is one sync below, answered.
func TestNoSyncIsRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, leases, _ := memAllocator(t, ctx, "10.0.0.0/28", Config{Epoch: 1})
	grant := func(node string) broker.Unit {
		t.Helper()
		got, _, _, err := a.grant(ctx, "p", node, 1)
		if err != nil || len(got) != 1 {
			t.Fatalf("grant to %s: %v, %v", node, got, err)
		}
		return got[0]
	}
	seq := uint64(0)
	sync := func(node string, held ...broker.Unit) []string {
		t.Helper()
		seq++
		var units []agent.HeldUnit
		for i, u := range held {
			units = append(units, agent.HeldUnit{Pool: "p", Unit: u, Assigned: true, Attachment: fmt.Sprintf("sb%d/eth0", i),
				Pod: wire.Pod{Namespace: "d", Name: fmt.Sprintf("pod-%d", i), UID: fmt.Sprintf("u%d", i)}})
		}
		m := broker.Msg{Subject: broker.SubjectSyncFrom(node), Data: broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: node, Run: "r-" + node, Seq: seq, Pools: addressed(units...)})}
		reply := a.handleSync(ctx, m).(*broker.SyncReply)
		if reply.Error != "" {
			t.Fatalf("sync of %s refused: %s", node, reply.Error)
		}
		var ids []string
		for _, l := range reply.Leases {
			for _, u := range l.Units {
				ids = append(ids, u.ID)
			}
		}
		return ids
	}
	lost, ofA, ofB := grant("node-lost"), grant("node-a"), grant("node-b")

	// (a) node-lost never syncs again and keeps its unit; node-a's record
	// holds it with its own.
	if got := sync("node-a", lost, ofA); !slices.Equal(got, []string{ofA.ID}) {
		t.Fatalf("(a) node-a's sync lists %v, want only %s", got, ofA.ID)
	}
	// (b) node-a and node-b each hold the other's unit.
	if got := sync("node-a", ofB); !slices.Equal(got, []string{ofA.ID}) {
		t.Fatalf("(b) node-a's sync lists %v, want %s", got, ofA.ID)
	}
	if got := sync("node-b", ofA); !slices.Equal(got, []string{ofB.ID}) {
		t.Fatalf("(b) node-b's sync lists %v, want %s", got, ofB.ID)
	}
	// (c) node-a's next grant is written, but no answer comes: its units
	// are in flight, neither listed nor free, and node-a's sync is
	// answered with what is stored.
	leases.setFault(every(writeLate))
	if _, _, _, err := a.grant(ctx, "p", "node-a", 2); !errors.Is(err, errUnknownOutcome) {
		t.Fatalf("grant with its writes held back: %v, want %v", err, errUnknownOutcome)
	}
	if got := sync("node-a", ofA); !slices.Equal(got, []string{ofA.ID}) {
		t.Fatalf("(c) node-a's sync during its grant's write lists %v, want %s", got, ofA.ID)
	}
	// Once the write lands and is read, the next sync lists it.
	leases.setFault(every(writeOK))
	leases.landLate()
	if !a.syncDirty(ctx) {
		t.Fatal("the lease in flight did not settle")
	}
	if got := sync("node-a", ofA); len(got) != 3 || !slices.Contains(got, ofA.ID) {
		t.Fatalf("(c) node-a's sync after its grant landed lists %v, want %s and the 2 granted", got, ofA.ID)
	}
}

// TestAGiveBackWhoseAnswerWasLostLeavesTheLease: node-a's agent dropped a
// unit for a revoke whose answer never arrived (lost, or past the
// allocator's timeout; the fault suite's seed 1046 left it listed to a
// node that refused it, for good). Its next sync says so, and the next
// round takes the unit out of node-a's lease: free again. The same report
// at an older generation than the lease's (the lease written since, and
// listed to the agent anew) changes nothing.
func TestAGiveBackWhoseAnswerWasLostLeavesTheLease(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, leases, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1, PlanInterval: time.Hour})
	got, _, gen, err := a.grant(ctx, "p", "node-a", 2)
	if err != nil || len(got) != 2 {
		t.Fatalf("grant: %v %v", got, err)
	}
	sync := func(seq uint64, gaveBack []broker.GaveBack) {
		t.Helper()
		held := []agent.HeldUnit{{Pool: "p", Unit: got[1]}}
		m := broker.Msg{Subject: broker.SubjectSyncFrom("node-a"), Data: broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: "node-a", Run: "r", Seq: seq, Pools: addressed(held...), GaveBack: gaveBack})}
		if reply := a.handleSync(ctx, m).(*broker.SyncReply); reply.Error != "" {
			t.Fatal(reply.Error)
		}
		// A round's first steps: no planning, whose grants would write
		// the lease at a newer generation.
		a.applyGaveBack()
		a.syncDirty(ctx)
	}
	listed := func() []string {
		t.Helper()
		nl, err := leases.Get(ctx, v1alpha1.NodeLeaseName("p", "node-a"), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, u := range nl.Spec.Units {
			ids = append(ids, u.ID())
		}
		return ids
	}

	sync(1, []broker.GaveBack{{Pool: "p", ID: got[0].ID, Gen: gen - 1}})
	if ids := listed(); !slices.Contains(ids, got[0].ID) {
		t.Fatalf("a give-back older than the lease took %s out of it: %v", got[0].ID, ids)
	}
	sync(2, []broker.GaveBack{{Pool: "p", ID: got[0].ID, Gen: gen}})
	if ids := listed(); slices.Contains(ids, got[0].ID) || !slices.Contains(ids, got[1].ID) {
		t.Fatalf("node-a's lease lists %v after its agent said it gave %s back; want only %s", ids, got[0].ID, got[1].ID)
	}
	a.mu.Lock()
	ps := a.ledger.pools["p"]
	owner := ps.owner[ps.byID[got[0].ID]]
	a.mu.Unlock()
	if owner != "" {
		t.Fatalf("the unit given back is %q's, want free", owner)
	}
}

// addressed is what an agent holding these units reports of them: per
// pool, the assigned ones and their pods.
func addressed(held ...agent.HeldUnit) map[string]broker.Addressed {
	out := map[string]broker.Addressed{}
	for _, h := range held {
		if !h.Assigned {
			continue
		}
		p := out[h.Pool]
		p.Assigned++
		if key := broker.PodKey(h.Pod.Namespace, h.Pod.Name, h.Pod.UID); !slices.Contains(p.Pods, key) {
			p.Pods = append(p.Pods, key)
		}
		out[h.Pool] = p
	}
	return out
}
