package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/internal/rig/netsim"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// TestWarmAddEndToEnd: the allocator warms a new node at its first sync;
// a dual-stack ADD through libcni and macvlan pops a warm pair, the pod's
// interface carries both addresses, the node agent's record holds the
// assignment, and the node's NodeLease lists the unit.
func TestWarmAddEndToEnd(t *testing.T) {
	c := newCluster(t, dualPool(20, &v1alpha1.Warm{MinWarm: i32(2), WarmTarget: i32(4), MaxWarm: i32(16)}))
	n := c.addNode("node-1")
	n.waitWarm(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	res, pod, err := n.add(ctx, "c1")
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if len(res.IPs) != 2 || !strings.HasPrefix(res.IPs[0].Address.String(), "10.20.0.") || !strings.HasPrefix(res.IPs[1].Address.String(), "fd00:20::") {
		t.Fatalf("ADD gave %v, want a pair of the pool", res.IPs)
	}
	if res.IPs[0].Gateway.String() != "10.20.0.1" || len(res.Routes) != 1 || res.Routes[0].GW.String() != "10.20.0.1" {
		t.Errorf("gateway %v routes %v", res.IPs[0].Gateway, res.Routes)
	}
	out, err := exec.Command("ip", "-n", pod.Name, "addr", "show", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), res.IPs[0].Address.String()) || !strings.Contains(string(out), res.IPs[1].Address.String()) {
		t.Fatalf("pod eth0 lacks %v (%v):\n%s", res.IPs, err, out)
	}
	// The headroom is topped up in batches (once down to half the node's
	// share): one ADD leaves 3 of 4.
	n.waitWarm(t, 3)
	c.waitAgree(t, n)
	// Which pod the unit is assigned to is the agent's record; the lease
	// says only that node-1 holds it.
	st, err := n.record()
	if err != nil {
		t.Fatal(err)
	}
	as, ok := assignment(st, "c1/eth0")
	if !ok || as.Pod.Name != "c1" || as.Pod.UID != "uid-c1" || as.UnitID+"/24" != res.IPs[0].Address.String() {
		t.Fatalf("the agent's record does not hold c1's assignment of %s: %+v", res.IPs[0].Address, st.Assignments)
	}
	leases, err := c.leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !lists(leases["node-1"], as.UnitID) {
		t.Fatalf("the NodeLease of node-1 does not list c1's unit %s: %+v", as.UnitID, leases["node-1"])
	}
	if err := n.del(ctx, "c1", pod); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	c.waitAgree(t, n)
	reg := n.agent.Registry()
	if hits, misses := metric(t, reg, "warmpool_agent_cache_hits_total", map[string]string{"pool": "dual"}),
		metric(t, reg, "warmpool_agent_cache_misses_total", nil); hits != 1 || misses != 0 {
		t.Errorf("hits %v misses %v, want 1 and 0", hits, misses)
	}
	if n := metric(t, reg, "warmpool_agent_add_duration_seconds", map[string]string{"result": "hit"}); n != 1 {
		t.Errorf("%v ADDs timed as hits, want 1", n)
	}
	// The 3 left after the ADD (not topped up: batches), plus the unit
	// the DEL gave back.
	if n := metric(t, c.alloc.Registry(), "warmpool_allocator_pool_units", map[string]string{"pool": "dual", "state": "warm"}); n != 4 {
		t.Errorf("allocator counts %v warm units, want 4", n)
	}
	if n := metric(t, c.alloc.Registry(), "warmpool_allocator_pool_units", map[string]string{"pool": "dual", "state": "free"}); n != 16 {
		t.Errorf("allocator counts %v free units, want 16 of 20", n)
	}
	if n := metric(t, c.alloc.Registry(), "warmpool_allocator_conflicts_total", nil); n != 0 {
		t.Errorf("%v conflicts", n)
	}
}

// TestAddAndDelLeaveTheLease: an ADD served from the warm cache, and its
// DEL, do not write the node's NodeLease: which unit is assigned to which
// pod is the agent's record, and the lease changes only when units move
// between nodes. The pool has exactly the node's warm target, so the ADD
// leaves nothing to refill from and the DEL no surplus to return: neither
// moves a unit.
func TestAddAndDelLeaveTheLease(t *testing.T) {
	c := newCluster(t, dualPool(4, &v1alpha1.Warm{MinWarm: i32(2), WarmTarget: i32(4), MaxWarm: i32(16)}))
	n := c.addNode("node-1")
	n.waitWarm(t, 4)
	n.waitSynced(t)
	c.waitAgree(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	version := func() string {
		t.Helper()
		l, err := c.client.NodeLeases().Get(ctx, v1alpha1.NodeLeaseName("dual", "node-1"), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return l.ResourceVersion
	}
	// unchanged waits until the allocator has heard of what the node did
	// (its count of the node's ADDs and of the pool's assigned units, from
	// the agent's reports), then watches the lease a while longer: a
	// planning round the report kicked has had its chance to write.
	unchanged := func(what, before string, adds, assigned float64) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
			return metric(t, c.alloc.Registry(), "warmpool_allocator_adds_total", map[string]string{"pool": "dual", "node": "node-1"}) == adds &&
				metric(t, c.alloc.Registry(), "warmpool_allocator_pool_units", map[string]string{"pool": "dual", "state": "assigned"}) == assigned, nil
		}); err != nil {
			t.Fatalf("%s: the allocator never counted %v ADDs and %v assigned units", what, adds, assigned)
		}
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if v := version(); v != before {
				t.Fatalf("%s wrote the NodeLease: resourceVersion %s, then %s", what, before, v)
			}
		}
	}

	before := version()
	res, pod, err := n.add(ctx, "c1")
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if hits := metric(t, n.agent.Registry(), "warmpool_agent_cache_hits_total", map[string]string{"pool": "dual"}); hits != 1 {
		t.Fatalf("the ADD was not served from the warm cache (%v hits)", hits)
	}
	unchanged("the ADD", before, 1, 1)
	st, err := n.record()
	if err != nil {
		t.Fatal(err)
	}
	if as, ok := assignment(st, "c1/eth0"); !ok || as.UnitID+"/24" != res.IPs[0].Address.String() {
		t.Fatalf("the agent's record does not hold c1's assignment of %s: %+v", res.IPs[0].Address, st.Assignments)
	}

	if err := n.del(ctx, "c1", pod); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	// Back to warm after its reuse delay, on the same node.
	n.waitWarm(t, 4)
	unchanged("the DEL", before, 1, 0)
	c.waitAgree(t, n)
}

// TestMissAndExhaustion: a pool with no warm cache (maxWarm 0) serves
// every ADD as a miss through the allocator, and the ADD after the last
// pair fails with the exhausted code, leaving nothing behind.
func TestMissAndExhaustion(t *testing.T) {
	c := newCluster(t, dualPool(3, &v1alpha1.Warm{MinWarm: i32(0), WarmTarget: i32(0), MaxWarm: i32(0)}))
	n := c.addNode("node-1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alone, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"warmpool","ipam":{"type":"warmpool","pool":"dual","socket":%q}}]}`, n.socket)))
	if err != nil {
		t.Fatal(err)
	}
	status := func() error { return n.host.Do(func() error { return n.cni.GetStatusNetworkList(ctx, alone) }) }
	if err := status(); err != nil {
		t.Fatalf("STATUS with nothing warm but the allocator reachable: %v", err)
	}
	for i := range 3 {
		if _, _, err := n.add(ctx, fmt.Sprintf("c%d", i)); err != nil {
			t.Fatalf("ADD %d (a miss): %v", i, err)
		}
	}
	_, _, err = n.add(ctx, "c3")
	if err == nil || testenv.CNICode(err) != wire.CodePoolExhausted || !strings.Contains(err.Error(), "no free address") {
		t.Fatalf("ADD beyond the pool: %v, want code %d", err, wire.CodePoolExhausted)
	}
	if err := status(); err == nil || testenv.CNICode(err) != wire.CodeNotAvailable {
		t.Fatalf("STATUS with nothing warm and the pool exhausted: %v, want code %d", err, wire.CodeNotAvailable)
	}
	c.waitAgree(t, n)
	if hits, misses := metric(t, n.agent.Registry(), "warmpool_agent_cache_hits_total", nil),
		metric(t, n.agent.Registry(), "warmpool_agent_cache_misses_total", map[string]string{"pool": "dual"}); hits != 0 || misses != 3 {
		t.Errorf("hits %v misses %v, want 0 and 3 (the ADD that got no address is neither)", hits, misses)
	}
	if failed := metric(t, n.agent.Registry(), "warmpool_agent_add_duration_seconds", map[string]string{"result": "error"}); failed != 1 {
		t.Errorf("%v ADDs timed as errors, want the exhausted one", failed)
	}
	if free := metric(t, c.alloc.Registry(), "warmpool_allocator_pool_units", map[string]string{"pool": "dual", "state": "free"}); free != 0 {
		t.Errorf("allocator counts %v free units of an exhausted pool", free)
	}
}

// TestTwoNodesFiftyConcurrentAdds: 2 nodes x 50 concurrent ADDs against a
// 100-pair pool: 100 distinct pairs, none held by both nodes, and the
// persisted leases agree with both agents. At 1:1 the units the two
// nodes' misses over-ask must move back by revoke; on a loaded machine
// that can outlast the miss timeout, and the runtime retries.
func TestTwoNodesFiftyConcurrentAdds(t *testing.T) {
	c := newCluster(t, dualPool(100, &v1alpha1.Warm{MinWarm: i32(2), WarmTarget: i32(8), MaxWarm: i32(16)}))
	nodes := []*node{c.addNode("node-a"), c.addNode("node-b")}
	for _, n := range nodes {
		n.waitWarm(t, 8)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var mu sync.Mutex
	owner := map[netip.Addr]string{}
	var wg sync.WaitGroup
	var retried atomic.Int64
	start := time.Now()
	for _, n := range nodes {
		for i := range 50 {
			wg.Go(func() {
				ctr := fmt.Sprintf("%s-c%d", n.name, i)
				res, tries, err := n.addAsRuntime(ctx, ctr)
				retried.Add(int64(tries))
				if err != nil {
					t.Errorf("ADD %s: %v", ctr, err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				own(t, owner, res, ctr)
			})
		}
	}
	wg.Wait()
	t.Logf("100 ADDs on 2 nodes in %s, %d tried again by the runtime", time.Since(start).Round(time.Millisecond), retried.Load())
	if len(owner) != 200 {
		t.Fatalf("%d distinct addresses, want 200", len(owner))
	}
	c.waitAgree(t, nodes...)
}

// TestNATSDown: with the bus stopped, an agent keeps serving ADD from its
// warm cache and takes DEL; when the bus is back, agent and allocator
// resynchronise and agree.
func TestNATSDown(t *testing.T) {
	c := newCluster(t, dualPool(20, &v1alpha1.Warm{MinWarm: i32(2), WarmTarget: i32(4), MaxWarm: i32(16)}))
	n := c.addNode("node-1")
	n.waitWarm(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, pod0, err := n.add(ctx, "before")
	if err != nil {
		t.Fatal(err)
	}
	n.waitWarm(t, 3) // topped up in batches: not yet
	c.waitAgree(t, n)

	c.nats.Shutdown()
	var pods []*netsim.Pod
	for i := range 3 {
		_, pod, err := n.add(ctx, fmt.Sprintf("during%d", i))
		if err != nil {
			t.Fatalf("ADD %d with NATS down (from the warm cache): %v", i, err)
		}
		pods = append(pods, pod)
	}
	if err := n.del(ctx, "before", pod0); err != nil {
		t.Fatalf("DEL with NATS down: %v", err)
	}
	if err := n.del(ctx, "during0", pods[0]); err != nil {
		t.Fatalf("DEL with NATS down: %v", err)
	}

	c.startNATS(c.port)
	c.waitAgree(t, n)
}

// TestNATSDownEmptyCache: with the bus down and nothing warm, an ADD waits
// out the miss timeout and fails with code 104, recording nothing; once
// the bus is back the same ADD succeeds.
func TestNATSDownEmptyCache(t *testing.T) {
	c := newCluster(t, dualPool(4, &v1alpha1.Warm{MinWarm: i32(0), WarmTarget: i32(0), MaxWarm: i32(0)}))
	n := c.addNode("node-1")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// An agent not yet synced answers 11 whatever its cache holds: the
	// miss path is what this test is about.
	n.waitSynced(t)
	c.nats.Shutdown()
	_, pod, err := n.add(ctx, "c1")
	if err == nil || testenv.CNICode(err) != wire.CodeMissTimeout || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("ADD with the bus down and an empty cache: %v, want code %d", err, wire.CodeMissTimeout)
	}
	if snap, err := n.store.Load(); err != nil || len(snap.Assignments) != 0 || len(snap.Units) != 0 {
		t.Fatalf("a failed ADD left a record: %+v %v", snap, err)
	}
	c.startNATS(c.port)
	// The runtime deletes the failed sandbox's interface, then retries.
	if err := n.del(ctx, "c1", pod); err != nil {
		t.Fatalf("DEL of the failed sandbox: %v", err)
	}
	if err := n.host.RemovePod(pod); err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.add(ctx, "c1"); err != nil {
		t.Fatalf("ADD once the bus is back: %v", err)
	}
	c.waitAgree(t, n)
}

// TestOnlyEligibleNodesAreWarmed: a pool with a nodeSelector warms the
// nodes that match it and not the others.
func TestOnlyEligibleNodesAreWarmed(t *testing.T) {
	pool := dualPool(20, &v1alpha1.Warm{MinWarm: i32(2), WarmTarget: i32(4), MaxWarm: i32(16)})
	pool.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"zone": "a"}}
	c := newCluster(t, pool)
	in := c.addNode("node-in", "zone=a")
	out := c.addNode("node-out", "zone=b")
	in.waitWarm(t, 4)
	c.waitAgree(t, in, out)
	if got := out.agent.WarmCount("dual"); got != 0 {
		t.Fatalf("node-out, outside the pool's nodeSelector, holds %d warm units", got)
	}
}
