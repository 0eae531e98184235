package allocator

import (
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/warmpool/warmpool/api/v1alpha1"
)

// offline builds an allocator whose informers are fed directly, as a
// recorded event stream would: nodes Ready, one namespace, a 1:1 pool of
// pods units, and pods spread round robin over the nodes: half of them
// assigned (in the leases), a quarter bound and waiting, a quarter not
// bound yet. Each node also holds 4 warm units.
func offline(b *testing.B, nodes, pods int) *Allocator {
	b.Helper()
	a := newAllocator(Config{Epoch: 1, Logger: slog.New(slog.DiscardHandler)})
	nodeIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	nsIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	_ = nsIdx.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}})
	names := make([]string, nodes)
	for i := range names {
		names[i] = fmt.Sprintf("node-%04d", i)
		_ = nodeIdx.Add(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: names[i]},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}})
	}
	a.watch = &watcher{nodes: listerscorev1.NewNodeLister(nodeIdx), namespaces: listerscorev1.NewNamespaceLister(nsIdx),
		pods: map[types.UID]*podInfo{}, notReadySince: map[string]time.Time{}}
	first := netip.MustParseAddr("10.0.0.1")
	last := first
	for range pods - 1 {
		last = last.Next()
	}
	pool := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/8",
		Ranges: []v1alpha1.IPRange{{Start: first.String(), End: last.String()}}}}}
	if err := a.ledger.upsertPoolLocked(pool); err != nil {
		b.Fatal(err)
	}
	ps := a.ledger.pools["p"]
	next := 0
	// hold leases the next unit to node; pod, if set, is assigned it
	// (the agent's report says so).
	hold := func(node string, pod *podInfo) {
		ls := ps.leaseLocked(node)
		ps.updateLocked(node, ls, func() { ls.observed[next], ls.desired[next] = true, true })
		if pod != nil {
			st := a.agents[node]
			if st == nil {
				st = agentState{}
				a.agents[node] = st
			}
			if st["p"] == nil {
				st["p"] = &heldByAgent{pods: map[string]bool{}}
			}
			st["p"].assigned++
			st["p"].pods[string(pod.uid)] = true
		}
		next++
	}
	for i := range pods {
		uid := types.UID(fmt.Sprintf("uid-%d", i))
		p := &podInfo{namespace: "default", name: fmt.Sprintf("pod-%d", i), uid: uid}
		if i%4 != 3 {
			p.node = names[i%nodes]
		}
		if i%2 == 0 {
			hold(p.node, p)
		}
		a.watch.pods[uid] = p
	}
	for _, n := range names {
		for range 4 {
			if next < len(ps.units) {
				hold(n, nil)
			}
		}
	}
	return a
}

// BenchmarkPlanRound measures one planning round, demand and plan, over
// every node and pod: what each burst of pod events costs the allocator
// before any lease write. Rounds coalesce events, so a round absorbs every
// bind that arrived while the previous one ran: binds/s is the rate when
// each round absorbs one bind per node (a burst), round/s the rate of
// rounds themselves.
func BenchmarkPlanRound(b *testing.B) {
	for _, tc := range []struct{ nodes, pods int }{
		{10, 1000}, {100, 1000}, {1000, 1000},
		{10, 300}, {100, 3000}, {1000, 30000},
	} {
		b.Run(fmt.Sprintf("nodes=%d/pods=%d", tc.nodes, tc.pods), func(b *testing.B) {
			a := offline(b, tc.nodes, tc.pods)
			for b.Loop() {
				for _, d := range a.demand() {
					_ = plan(d)
				}
			}
			perRound := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(1/perRound, "rounds/s")
			b.ReportMetric(float64(tc.nodes)/perRound, "binds/s")
		})
	}
}

// BenchmarkTrackPod is the informer's share of a bind: one pod event.
func BenchmarkTrackPod(b *testing.B) {
	w := &watcher{pods: map[types.UID]*podInfo{}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", UID: "u", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "node-1"}}
	i := 0
	for b.Loop() {
		pod.UID = types.UID(fmt.Sprint(i % 1000))
		w.trackPod(pod)
		i++
	}
}
