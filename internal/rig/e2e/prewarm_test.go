package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

// watchdog checks the records continuously while a test runs: no unit in
// two NodeLeases of one List (a consistent snapshot of the allocator's
// persisted record), and no unit held by two agents in two consecutive
// passes over the agents (held at both reads by each, so both held it at
// the moment between).
type watchdog struct {
	c     *cluster
	nodes []*node
	stop  chan struct{}
	done  chan struct{}

	mu         sync.Mutex
	violations []string
	passes     int
}

func (c *cluster) watch(nodes []*node) *watchdog {
	w := &watchdog{c: c, nodes: nodes, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

// agentHolders reads each agent's record in turn and returns the units
// found in more than one, with their holders.
func (w *watchdog) agentHolders() (map[string]string, error) {
	holder, twice := map[string]string{}, map[string]string{}
	for _, n := range w.nodes {
		snap, err := n.store.Load()
		if err != nil {
			return nil, err
		}
		for k := range snap.Units {
			if h, ok := holder[k.ID]; ok {
				twice[k.ID] = h + " and " + n.name
			}
			holder[k.ID] = n.name
		}
	}
	return twice, nil
}

func (w *watchdog) run() {
	defer close(w.done)
	var prev map[string]string
	for {
		select {
		case <-w.stop:
			return
		case <-time.After(25 * time.Millisecond):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var problems []string
		if leases, err := w.c.leases(ctx); err == nil {
			seen := map[string]string{}
			for node, l := range leases {
				for _, u := range l.Spec.Units {
					if h, ok := seen[u.IPv4]; ok {
						problems = append(problems, fmt.Sprintf("unit %s in the leases of %s and %s", u.IPv4, h, node))
					}
					seen[u.IPv4] = node
				}
			}
		}
		cancel()
		// One pass is not atomic: a unit moving from one agent to the
		// next can be read in both. Held by the same two in two passes
		// in a row is a violation.
		twice, err := w.agentHolders()
		if err != nil {
			problems = append(problems, err.Error())
		}
		for id, pair := range twice {
			if prev[id] == pair {
				problems = append(problems, fmt.Sprintf("unit %s in the records of %s in two passes", id, pair))
			}
		}
		prev = twice
		w.mu.Lock()
		w.passes++
		w.violations = append(w.violations, problems...)
		w.mu.Unlock()
	}
}

// finish stops the watchdog and fails the test on any violation seen.
func (w *watchdog) finish(t *testing.T) {
	t.Helper()
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	t.Logf("watchdog: %d passes over %d agents' records and the leases", w.passes, len(w.nodes))
	if w.passes < 5 {
		t.Errorf("watchdog ran only %d passes", w.passes)
	}
	for i, v := range w.violations {
		if i == 10 {
			t.Errorf("... and %d more", len(w.violations)-10)
			break
		}
		t.Errorf("invariant violated: %s", v)
	}
}

// waitStatus waits until the pool's status satisfies ok and returns it.
func (c *cluster) waitStatus(t *testing.T, ok func(v1alpha1.IPPoolStatus) bool) v1alpha1.IPPoolStatus {
	t.Helper()
	var st v1alpha1.IPPoolStatus
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := c.client.IPPools().Get(ctx, "dual", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		st = p.Status
		return ok(st), nil
	})
	if err != nil {
		t.Fatalf("pool status never as expected; last %+v", st)
	}
	return st
}

// hits sums the nodes' cache hits and misses.
func hits(t *testing.T, nodes []*node) (float64, float64) {
	var h, m float64
	for _, n := range nodes {
		h += metric(t, n.agent.Registry(), "warmpool_agent_cache_hits_total", nil)
		m += metric(t, n.agent.Registry(), "warmpool_agent_cache_misses_total", nil)
	}
	return h, m
}

// sandboxDelay stands for the kubelet's work between seeing a pod bound
// and calling CNI ADD (pulling nothing, creating the sandbox): the time
// event-driven pre-warming has to get the address onto the node.
const sandboxDelay = 300 * time.Millisecond

// burst creates pods bound to the nodes given by place(i) and runs each
// one's ADD sandboxDelay after its creation, as a kubelet would. It
// returns the pods and their addresses.
func (c *cluster) burst(t *testing.T, ctx context.Context, prefix string, count int, place func(i int) *node) ([]*corev1.Pod, map[netip.Addr]string) {
	t.Helper()
	var mu sync.Mutex
	var retried atomic.Int64
	owner := map[netip.Addr]string{}
	pods := make([]*corev1.Pod, count)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	for i := range count {
		n := place(i)
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			p, err := c.kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", prefix, i), Namespace: "default"},
				Spec:       corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/c:1"}}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Errorf("create pod: %v", err)
				return
			}
			pods[i] = p
			time.Sleep(sandboxDelay)
			var res *types100.Result
			tries, err := asRuntime(ctx, func() (err error) {
				res, err = n.addPod(ctx, p)
				return err
			}, nil)
			retried.Add(int64(tries))
			if err != nil {
				t.Errorf("ADD %s on %s: %v", p.Name, n.name, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			own(t, owner, res, p.Name)
		})
	}
	wg.Wait()
	if n := retried.Load(); n > 0 {
		t.Logf("burst %s: %d ADDs tried again by the runtime (codes %d, %d)", prefix, n, wire.CodeTryAgainLater, wire.CodeMissTimeout)
	}
	return pods, owner
}

// TestBurstUnderOneToOneScarcity: 10 nodes, a dual-stack pool of exactly
// 200 pairs, 200 pods bound across the nodes at once: every pod gets a
// distinct pair. Then all 200 are deleted at once and 200 new ones bound
// to a different spread (half the nodes, unevenly): all get addresses,
// with units revoked from the idle nodes. A watchdog checks the leases
// and the agents' records throughout.
func TestBurstUnderOneToOneScarcity(t *testing.T) {
	const N, nodesN = 200, 10
	c := newCluster(t, dualPool(N, nil)) // default knobs: 2 / 4 / 64
	var nodes []*node
	for i := range nodesN {
		nodes = append(nodes, c.addNode(fmt.Sprintf("node-%02d", i)))
	}
	for _, n := range nodes {
		n.waitWarm(t, 4)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dog := c.watch(nodes)

	h0, m0 := hits(t, nodes)
	start := time.Now()
	pods, owner := c.burst(t, ctx, "a", N, func(i int) *node { return nodes[i%nodesN] })
	took := time.Since(start)
	h1, m1 := hits(t, nodes)
	if len(owner) != 2*N {
		t.Fatalf("creation: %d distinct addresses, want %d", len(owner), 2*N)
	}
	t.Logf("creation: %d pods on %d nodes in %s (sandbox delay %s), hit rate %.0f%% (%v hits, %v misses)",
		N, nodesN, took.Round(time.Millisecond), sandboxDelay, 100*(h1-h0)/(h1-h0+m1-m0), h1-h0, m1-m0)
	c.waitAgree(t, nodes...)
	st := c.waitStatus(t, func(st v1alpha1.IPPoolStatus) bool { return st.Hits+st.Misses == N && st.Assigned == N })
	t.Logf("IPPool status after creation: total %d free %d warm %d assigned %d pending %d, hits %d misses %d",
		st.Total, st.Free, st.Warm, st.Assigned, st.Pending, st.Hits, st.Misses)

	// Re-creation: DEL and delete every pod at once, then bind the new
	// ones to nodes 0-4 only, 80/60/30/20/10.
	start = time.Now()
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() {
			if err := nodes[i%nodesN].delPod(ctx, p); err != nil {
				t.Errorf("DEL %s: %v", p.Name, err)
			}
			if err := c.kube.CoreV1().Pods("default").Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
				t.Errorf("delete %s: %v", p.Name, err)
			}
		})
	}
	wg.Wait()
	spread := []int{80, 60, 30, 20, 10}
	place := func(i int) *node {
		for n, k := range spread {
			if i < k {
				return nodes[n]
			}
			i -= k
		}
		panic("spread does not add up to N")
	}
	_, owner = c.burst(t, ctx, "b", N, place)
	took = time.Since(start)
	h2, m2 := hits(t, nodes)
	if len(owner) != 2*N {
		t.Fatalf("re-creation: %d distinct addresses, want %d", len(owner), 2*N)
	}
	t.Logf("re-creation: %d pods deleted and %d bound to 5 nodes (80/60/30/20/10) in %s, hit rate %.0f%% (%v hits, %v misses), %v units moved",
		N, N, took.Round(time.Millisecond), 100*(h2-h1)/(h2-h1+m2-m1), h2-h1, m2-m1,
		metric(t, c.alloc.Registry(), "warmpool_allocator_units_moved_total", nil))
	c.waitAgree(t, nodes...)
	// Pending is the last round's, which may have run before the last
	// reports: wait for it too.
	st = c.waitStatus(t, func(st v1alpha1.IPPoolStatus) bool {
		return st.Hits+st.Misses == 2*N && st.Assigned == N && st.Pending == 0
	})
	if st.Free != 0 || st.Warm != 0 || st.Pending != 0 || !meta.IsStatusConditionTrue(st.Conditions, v1alpha1.PoolExhausted) {
		t.Errorf("status after re-creation: %+v; want every unit assigned, none pending, Exhausted", st)
	}
	dog.finish(t)
	for _, n := range nodes {
		snap, err := n.store.Load()
		if err != nil {
			t.Fatal(err)
		}
		assigned := 0
		for _, u := range snap.Units {
			if u.State == store.Assigned {
				assigned++
			}
		}
		want := 0
		for j, k := range spread {
			if nodes[j] == n {
				want = k
			}
		}
		if assigned != want {
			t.Errorf("node %s: %d assigned, want %d", n.name, assigned, want)
		}
	}
}

// TestUnboundPodsWarmEligibleNodes: pending pods not bound yet are
// cluster demand, spread over the eligible nodes; once the scheduler (here
// the Binding API) places them, their ADDs are hits.
func TestUnboundPodsWarmEligibleNodes(t *testing.T) {
	c := newCluster(t, dualPool(100, nil))
	nodes := []*node{c.addNode("node-a"), c.addNode("node-b"), c.addNode("node-c")}
	for _, n := range nodes {
		n.waitWarm(t, 4)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var pods []*corev1.Pod
	for i := range 30 {
		p, err := c.kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pending-%d", i), Namespace: "default"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/c:1"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	for _, n := range nodes {
		// Target 14 (warmTarget 4 + 30 unbound / 3 nodes): the 10 pods
		// are warm, the headroom above them is topped up in batches.
		n.waitWarmAtLeast(t, 10)
	}
	h0, m0 := hits(t, nodes)
	var wg sync.WaitGroup
	for i, p := range pods {
		n := nodes[i%len(nodes)]
		wg.Go(func() {
			if err := c.kube.CoreV1().Pods(p.Namespace).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID},
				Target: corev1.ObjectReference{Kind: "Node", Name: n.name}}, metav1.CreateOptions{}); err != nil {
				t.Errorf("bind %s: %v", p.Name, err)
				return
			}
			if _, err := n.addPod(ctx, p); err != nil {
				t.Errorf("ADD %s: %v", p.Name, err)
			}
		})
	}
	wg.Wait()
	h1, m1 := hits(t, nodes)
	if h1-h0 != 30 || m1-m0 != 0 {
		t.Errorf("%v hits, %v misses; want 30 hits: the unbound pods' addresses were warm before they were bound", h1-h0, m1-m0)
	}
	c.waitAgree(t, nodes...)
}
