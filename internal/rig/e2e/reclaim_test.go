package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/warmpool/warmpool/allocator"
)

// TestLeakedAssignmentsAreReclaimed: pods removed from the API without a
// CNI DEL leave their addresses assigned on the node; the node's agent's
// leak GC finds them gone twice in its informer, confirms by a live GET,
// and releases them, within two GC intervals. A pod still in the API
// keeps its address.
func TestLeakedAssignmentsAreReclaimed(t *testing.T) {
	const gc = time.Second
	c := newCluster(t, dualPool(40, nil), func(cfg *allocator.Config) { cfg.GCInterval = gc })
	n := c.addNode("node-leak")
	n.waitWarm(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pods, _ := c.burst(t, ctx, "leak", 11, func(int) *node { return n })
	c.waitAgree(t, n)
	start := time.Now()
	for _, p := range pods[:10] {
		if err := c.kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
	}
	// The agent's record is where assignments are kept (the lease only
	// lists the node's units, and an ADD or a release does not change it).
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, assigned, err := n.recordCounts()
		return err == nil && assigned == 1 && len(n.agent.Held()) > 0 && assignedOn(n) == 1, nil
	})
	if err != nil {
		_, assigned, _ := n.recordCounts()
		t.Fatalf("leaks not reclaimed: the agent's record has %d assigned (its memory %d); want 1", assigned, assignedOn(n))
	}
	took := time.Since(start)
	t.Logf("10 leaked assignments reclaimed in %s (GC interval %s)", took.Round(time.Millisecond), gc)
	if took > 3*gc+2*time.Second {
		t.Errorf("reclaim took %s, beyond the GC window (2 intervals of %s, plus a report)", took, gc)
	}
	if got := metric(t, n.agent.Registry(), "warmpool_agent_reclaimed_total", map[string]string{"pool": "dual"}); got != 10 {
		t.Errorf("warmpool_agent_reclaimed_total = %v, want 10", got)
	}
	c.waitAgree(t, n)
}

func assignedOn(n *node) int {
	k := 0
	for _, h := range n.agent.Held() {
		if h.Assigned {
			k++
		}
	}
	return k
}

// TestNodeLoss: a node dies (its agent stops) and is deleted, or turns
// NotReady, holding warm units and three assigned ones. None of them moves
// while its pods exist, past the grace; all come back at once when the
// pods are deleted; the replacement pods bound to the surviving node get
// addresses from its warm cache.
func TestNodeLoss(t *testing.T) {
	t.Run("deleted", func(t *testing.T) {
		testNodeLoss(t, func(ctx context.Context, c *cluster, name string) error {
			return c.kube.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
		})
	})
	t.Run("not-ready", func(t *testing.T) {
		testNodeLoss(t, func(ctx context.Context, c *cluster, name string) error {
			n, err := c.kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			for i := range n.Status.Conditions {
				if n.Status.Conditions[i].Type == corev1.NodeReady {
					n.Status.Conditions[i].Status = corev1.ConditionUnknown
					n.Status.Conditions[i].Reason = "NodeStatusUnknown"
				}
			}
			_, err = c.kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
			return err
		})
	})
}

func testNodeLoss(t *testing.T, lose func(ctx context.Context, c *cluster, node string) error) {
	const grace = 2 * time.Second
	c := newCluster(t, dualPool(12, nil), func(cfg *allocator.Config) {
		cfg.NodeLossGrace, cfg.GCInterval, cfg.UnreachableBackoff, cfg.PushTimeout = grace, 500*time.Millisecond, time.Second, 500*time.Millisecond
	})
	dying, survivor := c.addNode("node-dying"), c.addNode("node-survivor")
	dying.waitWarm(t, 4)
	survivor.waitWarm(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pods, _ := c.burst(t, ctx, "old", 3, func(int) *node { return dying })
	c.waitAgree(t, dying, survivor)
	// The node is topped up to its share again before it dies: a top-up
	// decided after the snapshot below (the planner grants to a Ready node
	// whether or not its agent answers) would change the lease the test
	// says must not change.
	dying.waitWarm(t, 4)
	// Which of its units are warm and which assigned is its agent's
	// record; its lease lists them all. The top-up's write and its push
	// land apart: read both until they agree.
	var warm, assigned int
	var leased []string
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		if warm, assigned, err = dying.recordCounts(); err != nil {
			return false, err
		}
		if leased, err = c.leasedIDs(ctx, dying.name); err != nil {
			return false, err
		}
		return len(leased) == warm+assigned, nil
	})
	if err != nil || assigned != 3 || warm != 4 {
		t.Fatalf("before the loss: %d warm, %d assigned, the lease lists %v (%v); want 4 warm and 3 assigned, all listed", warm, assigned, leased, err)
	}

	dying.stop()
	start := time.Now()
	if err := lose(ctx, c, dying.name); err != nil {
		t.Fatal(err)
	}
	// Its pods still exist, and any of them may hold any of its units:
	// none moves, past the grace and several GC passes. (Its agent is
	// gone: the lease is what says the units are still the node's.)
	time.Sleep(3 * grace)
	if ids, err := c.leasedIDs(ctx, dying.name); err != nil || !slices.Equal(ids, leased) {
		t.Fatalf("lost node with its pods left: lease lists %v (%v); want %v, untouched", ids, err, leased)
	}
	// The pods are deleted (the taint manager would evict them); the
	// replacements go to the survivor.
	for _, p := range pods {
		if err := c.kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
	}
	start = time.Now()
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		ids, err := c.leasedIDs(ctx, dying.name)
		return err == nil && len(ids) == 0, nil
	}); err != nil {
		ids, _ := c.leasedIDs(ctx, dying.name)
		t.Fatalf("all units returned: lease of the lost node still lists %v after %s", ids, 10*time.Second)
	}
	t.Logf("lost node's %d warm and 3 assigned units returned %s after its pods were deleted", warm, time.Since(start).Round(time.Millisecond))
	h0, m0 := hits(t, []*node{survivor})
	_, owner := c.burst(t, ctx, "new", 3, func(int) *node { return survivor })
	h1, m1 := hits(t, []*node{survivor})
	if len(owner) != 6 {
		t.Fatalf("replacements: %d addresses, want 6", len(owner))
	}
	t.Logf("replacements on the survivor: %v hits, %v misses", h1-h0, m1-m0)
	c.waitAgree(t, survivor)
	if got := metric(t, c.alloc.Registry(), "warmpool_allocator_reclaimed_total", map[string]string{"reason": "node-lost"}); got != float64(warm+3) {
		t.Errorf("reclaimed_total{reason=node-lost} = %v, want %d (its warm and assigned units)", got, warm+3)
	}
}
