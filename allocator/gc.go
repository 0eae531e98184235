package allocator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/warmpool/warmpool/internal/logkey"
)

// The lost-node GC. A lost node has one rule (returnLost): once it is
// lost, all its units return, in one write per lease, when no pod bound to
// it before its agent's fence is left. Until then none of them moves.
// Leaked assignments of live nodes (their pods gone without a DEL) are
// their agents' to collect (agent.CollectLeaks).

// runGC collects every GCInterval.
func (a *Allocator) runGC(ctx context.Context) {
	defer a.wg.Done()
	t := a.cfg.Clock.NewTicker(a.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			if err := a.collect(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("lost-node GC", "err", err)
			}
		}
	}
}

// collect is one GC pass: it returns the units of the lost nodes whose
// pods are gone.
func (a *Allocator) collect(ctx context.Context) error {
	now := a.cfg.Clock.Now()
	a.mu.Lock()
	holding := map[string]bool{}
	for _, ps := range a.ledger.pools {
		for node := range ps.leases {
			holding[node] = true
		}
	}
	a.mu.Unlock()
	a.watch.forgetGone(holding, now.Add(-2*a.cfg.NodeLossGrace))
	lost := a.lostNodes(now)
	var errs []error
	for _, node := range lost {
		errs = append(errs, a.returnLost(ctx, node))
	}
	if len(lost) > 0 {
		a.kick()
	}
	return errors.Join(errs...)
}

// finished pods have had their sandbox torn down by the kubelet.
func finished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// lost reports whether a node is gone for good: deleted or NotReady for
// the grace period, and its agent silent for the grace period too (a
// silent agent is one that may be dead; one that talks is asked instead).
// The grace period applies to deletions as well: an agent stops using its
// warm units only a warm TTL (half the grace) after anything last vouched
// for its node, a Ready Node read included.
func (a *Allocator) lost(node string, now time.Time) bool {
	if a.watch == nil {
		return false
	}
	a.mu.Lock()
	last := a.lastContact[node]
	a.mu.Unlock()
	if last.Before(a.started) {
		last = a.started // not heard from since this allocator started
	}
	if now.Sub(last) < a.cfg.NodeLossGrace {
		return false
	}
	if n, err := a.watch.nodes.Get(node); err == nil && ready(n) {
		return false
	} else if err != nil && !apierrors.IsNotFound(err) {
		return false
	}
	a.watch.mu.Lock()
	since, ok := a.watch.notReadySince[node]
	a.watch.mu.Unlock()
	if !ok || since.Before(a.started) {
		since = a.started // gone before this allocator started
	}
	return now.Sub(since) >= a.cfg.NodeLossGrace
}

// lostNodes lists the lost nodes whose leases list units (stored, wanted
// or in flight).
func (a *Allocator) lostNodes(now time.Time) []string {
	a.mu.Lock()
	var held []string
	for _, ps := range a.ledger.pools {
		for node, ls := range ps.leases {
			if len(ls.union()) > 0 {
				held = append(held, node)
			}
		}
	}
	a.mu.Unlock()
	slices.Sort(held)
	return slices.DeleteFunc(slices.Compact(held), func(node string) bool { return !a.lost(node, now) })
}

// returnLost returns every unit of a lost node, warm and assigned, once no pod bound to it before its agent's fence is left:
// each such pod may hold any of them (the agent owns the assignments, and
// what it last reported may be lost), and no later pod holds one (the
// agent used none past its fence). It does nothing while such a pod is
// left, deleting or not, so a lost node whose pods are stuck Terminating
// keeps its units (at most its warm units besides its pods' addresses)
// until they are deleted or the node is.
func (a *Allocator) returnLost(ctx context.Context, node string) error {
	// The node's order lock first, as a sync takes it: a sync either
	// finished its contact before (and the node is not lost), or waits
	// until the return is committed and lists what is left.
	unlockOrder := a.lockOrder(node)
	defer unlockOrder()
	// Again under the lock: a sync that arrived since the first look made
	// the node alive, and may list these units to it.
	now := a.cfg.Clock.Now()
	if !a.lost(node, now) {
		return nil
	}
	fence := a.fenceOf(node)
	pods, err := a.podsBoundBefore(ctx, node, fence)
	if err != nil {
		return fmt.Errorf("lost node %s's units kept: %w", node, err)
	}
	if len(pods) > 0 {
		a.log.Info("lost node's units kept: pods bound to it before its agent's fence are left, and may hold any of them",
			"node", node, "fence", fence, "pods", len(pods), "pod", pods[0])
		return nil
	}
	a.mu.Lock()
	var pools []string
	for name, ps := range a.ledger.pools {
		if ps.leases[node] != nil {
			pools = append(pools, name)
		}
	}
	a.mu.Unlock()
	var errs []error
	for _, pool := range pools {
		unlock := a.lockLease(pool, node)
		if !a.lost(node, a.cfg.Clock.Now()) {
			// A miss took its contact since (it takes no order lock) and
			// may be granting to the node: it is alive again.
			unlock()
			break
		}
		a.mu.Lock()
		ps := a.ledger.pools[pool]
		ls := ps.leases[node]
		let := slices.Collect(maps.Keys(ls.desired))
		ps.unclaimLocked(node, let)
		a.mu.Unlock()
		_, err := a.syncLeaseHeld(ctx, pool, node, causeNodeLost)
		a.mu.Lock()
		returned := 0
		for _, i := range let {
			if ps.owner[i] == "" {
				returned++
			}
		}
		a.mu.Unlock()
		unlock()
		if returned > 0 {
			a.metrics.reclaimed.WithLabelValues(pool, "node-lost").Add(float64(returned))
			a.log.Info("lost node's units returned", "pool", pool, "node", node, "units", returned, "fence", fence)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("return lost node %s's units of pool %s: %w", node, pool, err))
		}
	}
	return errors.Join(errs...)
}

// fenceOf is, by this allocator's clock, a time by which the node's agent
// had stopped using units: a warm TTL (half the grace, as sync replies
// give it) after the later of its last request to this allocator, the
// time this allocator first saw the node not Ready (the agent also
// vouches for itself by reading its Node Ready, which it read before
// that), and this allocator's start (it knows nothing of earlier
// contacts). Each of these is no earlier than the agent's own view.
func (a *Allocator) fenceOf(node string) time.Time {
	a.mu.Lock()
	last := a.lastContact[node]
	a.mu.Unlock()
	a.watch.mu.Lock()
	notReady := a.watch.notReadySince[node]
	a.watch.mu.Unlock()
	latest := a.started
	for _, t := range []time.Time{last, notReady} {
		if t.After(latest) {
			latest = t
		}
	}
	return latest.Add(a.cfg.NodeLossGrace / 2)
}

// podsBoundBefore names the pods on node, finished ones and host-network
// ones aside, created before fence: the pods that may hold a unit of the
// node. Terminating ones count (their sandboxes live until their DEL).
// Creation comes before binding, so this counts all pods bound before
// the fence, and some bound after. The informer is asked first; when it
// has none, a live LIST of the node's pods confirms it (an informer that
// lags must not give a pod's address away).
func (a *Allocator) podsBoundBefore(ctx context.Context, node string, fence time.Time) ([]string, error) {
	var names []string
	holds := func(p *corev1.Pod) {
		if p.Spec.NodeName == node && !p.Spec.HostNetwork && !finished(p) && p.CreationTimestamp.Time.Before(fence) {
			names = append(names, logkey.Pod(p.Namespace, p.Name))
		}
	}
	cached, err := a.watch.podLister.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	for _, p := range cached {
		holds(p)
	}
	if len(names) == 0 && a.cfg.Kube != nil {
		live, err := a.cfg.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String()})
		if err != nil {
			return nil, fmt.Errorf("live list of node %s's pods: %w", node, err)
		}
		for i := range live.Items {
			holds(&live.Items[i])
		}
	}
	slices.Sort(names)
	return names, nil
}
