package allocator

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

var defaultKnobs = (*v1alpha1.Warm)(nil).Resolved() // 2 / 4 / 64

func nodesOf(n int, f func(i int) nodeDemand) []nodeDemand {
	out := make([]nodeDemand, n)
	for i := range out {
		out[i] = f(i)
		out[i].node = fmt.Sprintf("node-%02d", i)
	}
	return out
}

func byNode(steps []nodeStep) map[string]nodeStep {
	m := map[string]nodeStep{}
	for _, s := range steps {
		m[s.node] = s
	}
	return m
}

func TestPlanWarmsIdleNodesToTheirTarget(t *testing.T) {
	steps := plan(poolDemand{knobs: defaultKnobs, free: 100, nodes: nodesOf(3, func(i int) nodeDemand { return nodeDemand{warm: i} })})
	for i, s := range steps {
		if s.target != 4 || s.grant != 4-i || s.revoke != 0 {
			t.Errorf("node %d: %+v, want target 4, grant %d", i, s, 4-i)
		}
	}
}

// A burst bound to nodes raises their targets; free units cover it.
func TestPlanBoundPodsAreDemandNow(t *testing.T) {
	steps := plan(poolDemand{knobs: defaultKnobs, free: 500, nodes: nodesOf(2, func(i int) nodeDemand {
		return nodeDemand{warm: 4, bound: []int{20, 100}[i]}
	})})
	if steps[0].grant != 20 || steps[1].grant != 60 { // 24-4, and 64 (maxWarm) - 4
		t.Fatalf("steps %+v: want grants 20 and 60", steps)
	}
}

// A node's recent ADDs raise its headroom above warmTarget, capped by
// maxWarm.
func TestPlanRecentADDsAreHeadroom(t *testing.T) {
	steps := plan(poolDemand{knobs: defaultKnobs, free: 500, nodes: nodesOf(3, func(i int) nodeDemand {
		return nodeDemand{bound: 5, recent: []int{2, 30, 100}[i]}
	})})
	if got := [3]int{steps[0].target, steps[1].target, steps[2].target}; got != [3]int{9, 35, 64} {
		t.Fatalf("targets %v, want [9 35 64]: 5 bound + max(warmTarget 4, recent), capped by maxWarm", got)
	}
	// A pool that cannot afford every node's recent ADDs keeps warmTarget
	// on each: 60 spare units, 4 nodes that each served 25.
	nodes := nodesOf(4, func(int) nodeDemand { return nodeDemand{warm: 4, recent: 25} })
	steps = plan(poolDemand{knobs: defaultKnobs, free: 44, nodes: nodes})
	for _, s := range steps {
		if s.target != 4 || s.grant != 0 {
			t.Fatalf("steps %+v: want targets of warmTarget 4 and nothing granted", steps)
		}
	}
}

// Unbound pods spread over the eligible nodes only.
func TestPlanSpreadsUnboundPods(t *testing.T) {
	nodes := nodesOf(4, func(int) nodeDemand { return nodeDemand{} })
	nodes[3].status = nodePaused
	steps := plan(poolDemand{knobs: defaultKnobs, free: 1000, unbound: 31, nodes: nodes})
	sum := 0
	for _, s := range steps[:3] {
		sum += s.target - 4
	}
	if sum != 31 || steps[3].grant != 0 {
		t.Fatalf("steps %+v: want 31 spread over the three eligible nodes, none to the paused one", steps)
	}
}

// 1:1 scarcity at re-creation: every unit is warm on the nodes whose pods
// were deleted, the new pods are bound elsewhere; the idle nodes give all
// theirs up and the busy ones get exactly their pods' worth.
func TestPlanScarcityMovesSurplusToBoundPods(t *testing.T) {
	nodes := nodesOf(10, func(i int) nodeDemand {
		if i < 5 {
			return nodeDemand{warm: 20}
		}
		return nodeDemand{bound: 20}
	})
	steps := plan(poolDemand{knobs: defaultKnobs, free: 0, nodes: nodes})
	for i, s := range steps {
		want := nodeStep{node: s.node, target: 4, revoke: 20}
		if i >= 5 {
			want = nodeStep{node: s.node, target: 24, share: 20, grant: 20}
		}
		if s != want {
			t.Errorf("node %d: %+v, want %+v", i, s, want)
		}
	}
}

// Scarcity without enough for every bound pod: shares are max-min fair.
func TestPlanFairShare(t *testing.T) {
	nodes := nodesOf(3, func(i int) nodeDemand { return nodeDemand{bound: []int{2, 30, 30}[i]} })
	steps := plan(poolDemand{knobs: defaultKnobs, free: 20, nodes: nodes})
	if got := [3]int{steps[0].grant, steps[1].grant, steps[2].grant}; got != [3]int{2, 9, 9} {
		t.Fatalf("grants %v, want [2 9 9]", got)
	}
}

func TestPlanExcludedNodeGivesEverythingBack(t *testing.T) {
	nodes := nodesOf(2, func(i int) nodeDemand { return nodeDemand{warm: 10} })
	nodes[0].status = nodeExcluded
	nodes[1].status = nodePaused
	s := byNode(plan(poolDemand{knobs: defaultKnobs, free: 50, nodes: nodes}))
	if s["node-00"].revoke != 10 || s["node-01"].revoke != 0 {
		t.Fatalf("steps %+v: the excluded node returns all 10, the paused one keeps its units while nobody needs them", s)
	}
}

// A node tops up in batches: a grant is a lease write.
func TestPlanTopsUpInBatches(t *testing.T) {
	for _, c := range []struct {
		name        string
		warm, bound int
		want        int
	}{
		{"above half its share: waits", 40, 0, 0},
		{"down to half: gets all it lacks", 32, 0, 32},
		{"pods bound beyond what it holds: gets all it lacks", 40, 50, 24},
		{"its bound pods covered: waits", 40, 35, 0},
		{"more pods bound than its share holds: streams, by half shares", 40, 100, 0},
		{"more pods bound than its share holds, down to half: gets all it lacks", 32, 100, 32},
		{"pods bound within its share, more known with the unbound: gets all it lacks", 40, 50, 24},
	} {
		t.Run(c.name, func(t *testing.T) {
			unbound := 0
			if strings.Contains(c.name, "unbound") {
				unbound = 20
			}
			s := plan(poolDemand{knobs: defaultKnobs, free: 1000, unbound: unbound, nodes: nodesOf(1, func(int) nodeDemand {
				return nodeDemand{warm: c.warm, bound: c.bound, recent: 100}
			})})
			if s[0].share != 64 || s[0].grant != c.want {
				t.Fatalf("step %+v: want share 64 (maxWarm), grant %d", s[0], c.want)
			}
		})
	}
	// Unbound pods are known demand too: 30 spread over 3 nodes, 10 each
	// on top of warmTarget 4; a node holding 8 of its 14 gets 6.
	nodes := nodesOf(3, func(i int) nodeDemand { return nodeDemand{warm: []int{8, 10, 14}[i]} })
	if s := plan(poolDemand{knobs: defaultKnobs, free: 100, unbound: 30, nodes: nodes}); s[0].grant != 6 || s[1].grant != 0 || s[2].grant != 0 {
		t.Fatalf("steps %+v: want 6 to the node holding 8 of its 14, nothing to the node covering its 10 pods", s)
	}
	// Below minWarm a node is topped up whatever its share.
	knobs := v1alpha1.WarmKnobs{MinWarm: 2, WarmTarget: 0, MaxWarm: 64}
	if s := plan(poolDemand{knobs: knobs, free: 10, nodes: nodesOf(1, func(int) nodeDemand { return nodeDemand{warm: 1} })}); s[0].grant != 1 {
		t.Fatalf("step %+v: want 1 granted (minWarm 2, 1 warm)", s[0])
	}
	// Under scarcity the same: 30 units for 60 pods bound, 15 each; the
	// node holding 10 streams, the one holding none gets its 15.
	nodes = nodesOf(2, func(i int) nodeDemand { return nodeDemand{warm: []int{10, 0}[i], bound: []int{30, 30}[i]} })
	if s := plan(poolDemand{knobs: defaultKnobs, free: 20, nodes: nodes}); s[0].share != 15 || s[0].grant != 0 || s[1].grant != 15 {
		t.Fatalf("steps %+v: want shares of 15, grants 0 and 15", s)
	}
}

func TestPlanAboveMaxWarmReturnsTheExcess(t *testing.T) {
	s := plan(poolDemand{knobs: defaultKnobs, free: 0, nodes: nodesOf(1, func(int) nodeDemand { return nodeDemand{warm: 100} })})
	if s[0].revoke != 52 {
		t.Fatalf("step %+v: want 52 back (100 held, maxWarm 64: down to 48, so that the next DELs do not cost a revoke each)", s[0])
	}
	s = plan(poolDemand{knobs: defaultKnobs, free: 0, unbound: 100, nodes: nodesOf(1, func(int) nodeDemand { return nodeDemand{warm: 100} })})
	if s[0].revoke != 36 {
		t.Fatalf("step %+v: want 36 back (100 held, maxWarm 64, 100 pods known there)", s[0])
	}
	// A share of maxWarm from recent ADDs alone (a node whose pods are
	// being deleted after a burst) does not hold the node at the cap: at
	// the cap each round of DELs would cost a revoke.
	s = plan(poolDemand{knobs: defaultKnobs, free: 0, nodes: nodesOf(1, func(int) nodeDemand { return nodeDemand{warm: 65, recent: 200} })})
	if s[0].share != 64 || s[0].revoke != 17 {
		t.Fatalf("step %+v: want share 64 and 17 back (65 held, down to 48)", s[0])
	}
}

// Under scarcity, units move for pods bound now, not for headroom: while
// every node's pods are being deleted (a Deployment scaled to 0), nodes
// whose pods go first do not feed the others' warmTarget, which their
// own DELs are about to fill.
func TestPlanSpeculationTakesNoUnitFromAnotherNode(t *testing.T) {
	nodes := nodesOf(4, func(i int) nodeDemand { return nodeDemand{warm: []int{30, 20, 0, 0}[i], recent: 100} })
	for _, s := range plan(poolDemand{knobs: defaultKnobs, free: 0, nodes: nodes}) {
		if s.grant != 0 || s.revoke != 0 {
			t.Fatalf("step %+v: want no move with no pod bound and nothing free", s)
		}
	}
	// Free units still go to speculation: 6 free for shares of 4 and 4
	// (tier 2, max-min fair), all of the 6 granted, 3 each.
	nodes = nodesOf(4, func(i int) nodeDemand { return nodeDemand{warm: []int{30, 20, 0, 0}[i]} })
	s := plan(poolDemand{knobs: defaultKnobs, free: 6, nodes: nodes})
	if s[2].grant+s[3].grant != 6 || s[0].revoke+s[1].revoke != 0 {
		t.Fatalf("steps %+v: want the 6 free units granted to the empty nodes, nothing revoked", s)
	}
	// A pod bound on an empty node takes a unit from the fullest.
	nodes[3].bound = 5
	s = plan(poolDemand{knobs: defaultKnobs, free: 0, nodes: nodes})
	if s[3].grant < 5 || s[0].revoke < 5 || s[2].grant != 0 {
		t.Fatalf("steps %+v: want at least 5 from node-00 to node-03 for its bound pods, none to node-02", s)
	}
}

// The plan's invariants over random inputs: shares never exceed the
// supply, a node gets or gives but not both, grants are covered by free
// and revoked units, and when the supply covers the pods bound now (each
// capped by maxWarm), every one of them is within its node's share and
// every node can serve: no deadlock where the pool is spread as buffers
// while pods wait.
func TestPlanInvariantsRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 5000 {
		knobs := v1alpha1.WarmKnobs{MinWarm: int32(r.IntN(4)), WarmTarget: int32(r.IntN(8))}
		knobs.MaxWarm = knobs.MinWarm + int32(r.IntN(64))
		p := poolDemand{knobs: knobs, free: r.IntN(50), unbound: r.IntN(40)}
		p.nodes = nodesOf(1+r.IntN(12), func(int) nodeDemand {
			return nodeDemand{status: nodeStatus(r.IntN(3)), warm: r.IntN(30), bound: r.IntN(30), recent: r.IntN(80)}
		})
		steps := plan(p)
		supply, shares, grants, revokes, boundNeed := p.free, 0, 0, 0, 0
		waiting := false // a bound pod somewhere without a warm unit
		for i, s := range steps {
			n := p.nodes[i]
			supply += n.warm
			shares += s.share
			grants += s.grant
			revokes += s.revoke
			if s.grant > 0 && s.revoke > 0 {
				t.Fatalf("iter %d node %s gets and gives: %+v", iter, s.node, s)
			}
			if n.status != nodeEligible && s.grant > 0 {
				t.Fatalf("iter %d: node %s (%d) granted: %+v", iter, s.node, n.status, s)
			}
			if n.warm-s.revoke+s.grant > max(s.share, n.warm-s.revoke) {
				t.Fatalf("iter %d: node %s ends above its share: %+v %+v", iter, s.node, n, s)
			}
			if n.status == nodeEligible {
				boundNeed += min(n.bound, int(knobs.MaxWarm))
				waiting = waiting || n.bound > n.warm
			}
		}
		if !waiting {
			// Nobody's bound pods lack a unit: a unit leaves a node only
			// when it must (excluded, or above maxWarm), never for
			// another node's speculation.
			for i, s := range steps {
				if n := p.nodes[i]; s.revoke > 0 && n.status != nodeExcluded && n.warm <= int(knobs.MaxWarm) {
					t.Fatalf("iter %d: node %s gives %d back with no pod waiting anywhere: %+v %+v", iter, s.node, s.revoke, n, s)
				}
			}
		}
		if shares > supply || grants > p.free+revokes {
			t.Fatalf("iter %d: shares %d, grants %d for supply %d (free %d, revoked %d)", iter, shares, grants, supply, p.free, revokes)
		}
		if boundNeed <= supply {
			// Every bound pod is within its node's share, and covered
			// when the share holds them all; a node with more bound
			// than its share holds streams: it ends with at least half
			// its share, so a node with pods waiting can serve them.
			for i, s := range steps {
				n := p.nodes[i]
				need, end := min(n.bound, int(knobs.MaxWarm)), n.warm-s.revoke+s.grant
				if n.status != nodeEligible {
					continue
				}
				if s.share < need || n.bound <= s.share && end < n.bound || n.bound > s.share && 2*end < s.share {
					t.Fatalf("iter %d: node %s has %d bound pods, held %d and ends with %d (supply %d covers %d): %+v", iter, s.node, n.bound, n.warm, end, supply, boundNeed, s)
				}
			}
		}
	}
}

// TestNodeStatus: Ready and selected is eligible; NotReady is paused, then
// excluded once the grace period has passed since the allocator saw it
// NotReady; a node the selector does not match, or one deleted, is
// excluded at once.
func TestNodeStatus(t *testing.T) {
	a := newAllocator(Config{Epoch: 1, NodeLossGrace: time.Minute})
	now := time.Unix(1000, 0)
	node := func(ready bool, labels map[string]string) *corev1.Node {
		st := corev1.ConditionFalse
		if ready {
			st = corev1.ConditionTrue
		}
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: labels},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}}}}
	}
	sel := v1alpha1.CompileSelectors([]*v1alpha1.IPPool{{Spec: v1alpha1.IPPoolSpec{
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"vlan": "20"}}}}})[0].Node
	for name, tc := range map[string]struct {
		n        *corev1.Node
		notReady map[string]time.Time
		want     nodeStatus
	}{
		"ready, selected":         {node(true, map[string]string{"vlan": "20"}), nil, nodeEligible},
		"ready, not selected":     {node(true, nil), nil, nodeExcluded},
		"deleted":                 {nil, nil, nodeExcluded},
		"not ready 30s":           {node(false, map[string]string{"vlan": "20"}), map[string]time.Time{"n": now.Add(-30 * time.Second)}, nodePaused},
		"not ready past grace":    {node(false, map[string]string{"vlan": "20"}), map[string]time.Time{"n": now.Add(-time.Minute)}, nodeExcluded},
		"not ready, not seen yet": {node(false, map[string]string{"vlan": "20"}), nil, nodePaused},
	} {
		if got := a.nodeStatus(tc.n, tc.notReady, sel, now); got != tc.want {
			t.Errorf("%s: %d, want %d", name, got, tc.want)
		}
	}
}

// TestLost: a node is lost only once it has been deleted or NotReady for
// the grace period and its agent silent as long; contact resets it.
func TestLost(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	a := newAllocator(Config{Epoch: 1, NodeLossGrace: time.Minute, Clock: clk})
	a.started = clk.Now()
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	a.watch = &watcher{nodes: listerscorev1.NewNodeLister(nodes), notReadySince: map[string]time.Time{}}
	_ = nodes.Add(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "ready"},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}})
	clk.Step(2 * time.Minute) // every agent silent since start, two graces ago
	a.watch.notReadySince["deleted"] = clk.Now().Add(-30 * time.Second)
	a.watch.notReadySince["deleted-long-ago"] = clk.Now().Add(-2 * time.Minute)
	now := clk.Now()
	for node, want := range map[string]bool{
		"ready":            false, // the API shows it Ready
		"deleted":          false, // deleted 30 s ago: its agent may still be vouched for
		"deleted-long-ago": true,
		"never-seen":       true, // absent since this allocator started, two graces ago
	} {
		if got := a.lost(node, now); got != want {
			t.Errorf("lost(%s) = %v, want %v", node, got, want)
		}
	}
	a.mu.Lock()
	a.heardFromLocked("deleted-long-ago")
	a.mu.Unlock()
	if a.lost("deleted-long-ago", now) {
		t.Error("a node whose agent just talked is lost")
	}
}

// TestKicksWithinTheRoundGapCoalesce: a burst of kicks (a pod bound, a
// report, each kicks) costs a round per RoundGap, not one per kick.
func TestKicksWithinTheRoundGapCoalesce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	a, _, _ := memAllocator(t, ctx, "10.0.0.0/24", Config{Epoch: 1, Clock: clk, RoundGap: time.Second, PlanInterval: time.Hour})
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	rounds := func() uint64 {
		m := &dto.Metric{}
		if err := a.metrics.roundTime.Write(m); err != nil {
			t.Fatal(err)
		}
		return m.GetHistogram().GetSampleCount()
	}
	waitRounds := func(want uint64) {
		t.Helper()
		for rounds() < want {
			if ctx.Err() != nil {
				t.Fatalf("%d rounds, want %d", rounds(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitRounds(1) // Start's own kick
	for range 50 {
		a.kick()
		time.Sleep(100 * time.Microsecond)
	}
	// The planner waits out the gap on the fake clock: no round yet.
	time.Sleep(50 * time.Millisecond)
	if n := rounds(); n != 1 {
		t.Fatalf("%d rounds before the gap was over, want 1", n)
	}
	clk.Step(time.Second)
	waitRounds(2)
	time.Sleep(50 * time.Millisecond)
	if n := rounds(); n != 2 {
		t.Fatalf("50 kicks within the gap: %d rounds, want 2", n)
	}
}

// A pod's pool is chosen once, and again only after a namespace, a node
// or a pool changed: demand runs up to 20 times a second over every pod.
// The informers' handlers count those changes; a namespace relabelled
// (the handler's count) moves the pod into the pool's demand, and a pool
// whose selector no longer matches (a ledger upsert) moves it out.
func TestDemandChoosesAPodsPoolAgainWhenWhatItDependsOnChanges(t *testing.T) {
	kube := fake.NewClientset()
	wp, err := client.New(&rest.Config{Host: "http://127.0.0.1:1"}) // never started: pools go to the ledger directly
	if err != nil {
		t.Fatal(err)
	}
	a := newAllocator(Config{Epoch: 1, Logger: slog.New(slog.DiscardHandler)})
	a.watch = newWatcher(kube, wp, time.Now, func(*v1alpha1.IPPool) {}, func() {})
	ctx, cancel := context.WithCancel(context.Background())
	a.watch.factory.Start(ctx.Done())
	defer func() {
		cancel() // the informers stop, then Shutdown returns
		a.watch.factory.Shutdown()
	}()
	pool := func(team string) *v1alpha1.IPPool {
		return &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{
			IPv4:              &v1alpha1.Subnet{CIDR: "10.0.0.0/24", Ranges: []v1alpha1.IPRange{{Start: "10.0.0.1", End: "10.0.0.9"}}},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": team}}}}
	}
	a.mu.Lock()
	if err := a.ledger.upsertPoolLocked(pool("a")); err != nil {
		t.Fatal(err)
	}
	a.mu.Unlock()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "web"}}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "w", Namespace: "web", UID: "u1"}, Spec: corev1.PodSpec{NodeName: "n1"}}
	for _, create := range []func() error{
		func() error { _, err := kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); return err },
		func() error { _, err := kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); return err },
		func() error { _, err := kube.CoreV1().Pods("web").Create(ctx, pod, metav1.CreateOptions{}); return err },
	} {
		if err := create(); err != nil {
			t.Fatal(err)
		}
	}
	bound := func() int {
		for _, n := range a.demand()["p"].nodes {
			if n.node == "n1" {
				return n.bound
			}
		}
		return 0
	}
	waitFor := func(what string, want int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for bound() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: n1's bound pods of pool p %d, want %d", what, bound(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Every object in the informers before the first choice: a pod seen
	// later would be chosen afresh, whatever the counts.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		a.watch.mu.Lock()
		seen := a.watch.pods["u1"] != nil
		a.watch.mu.Unlock()
		_, nsErr := a.watch.namespaces.Get("web")
		_, nodeErr := a.watch.nodes.Get("n1")
		if seen && nsErr == nil && nodeErr == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the informers did not see the namespace, node and pod")
		}
	}
	if got := bound(); got != 0 {
		t.Fatalf("namespace without the pool's label: n1's bound pods of pool p %d, want 0", got)
	}
	ns.Labels = map[string]string{"team": "a"}
	if _, err := kube.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("namespace relabelled to match the pool", 1)
	a.mu.Lock()
	if err := a.ledger.upsertPoolLocked(pool("b")); err != nil {
		t.Fatal(err)
	}
	a.mu.Unlock()
	if got := bound(); got != 0 {
		t.Fatalf("pool's selector changed to team=b: n1's bound pods of pool p %d, want 0", got)
	}
}
