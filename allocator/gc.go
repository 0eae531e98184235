package allocator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/logkey"
)

// The leak GC. A unit assigned to a pod that is gone (deleted, re-created
// under a new UID, or finished) without a CNI DEL is a leak. The incumbents'
// worst bug is the opposite, a GC that frees an address still in use, so a
// leak is confirmed three times before anything is freed: the pod is
// absent from the informer at two passes GCInterval apart, and then a live
// GET (namespace/name) finds no pod with that UID, or finds it finished.
// A confirmed leak on a live node is released by its agent (Reclaim: the
// agent checks the assignment is still that one, releases it as a DEL
// would and reports it); on a lost node, whose agent is silent, the
// allocator rewrites the lease without it. A lost node's warm units are
// reclaimed the same way.

type suspectKey struct {
	pool, unit string
	uid        types.UID
	pod        string // namespace/name: UID-less assignments differ by it
}

type leak struct {
	pool, node, unit string
	pod              v1alpha1.PodRef
}

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
				a.log.Warn("leak GC", "err", err)
			}
		}
	}
}

// collect is one GC pass.
func (a *Allocator) collect(ctx context.Context) error {
	now := a.cfg.Clock.Now()
	var candidates []leak
	a.mu.Lock()
	for name, ps := range a.ledger.pools {
		for node, ls := range ps.leases {
			for id, u := range ls.units {
				if u.State == v1alpha1.UnitAssigned && u.Pod != nil {
					candidates = append(candidates, leak{pool: name, node: node, unit: id, pod: *u.Pod})
				}
			}
		}
	}
	a.mu.Unlock()

	var confirmed []leak
	var liveErrs []error
	seen := map[suspectKey]bool{}
	for _, c := range candidates {
		if !a.watch.podGone(c.pod, c.node) {
			continue
		}
		k := suspectKey{c.pool, c.unit, types.UID(c.pod.UID), c.pod.Namespace + "/" + c.pod.Name}
		seen[k] = true
		a.mu.Lock()
		_, second := a.suspects[k]
		if !second {
			a.suspects[k] = now
		}
		a.mu.Unlock()
		if !second {
			continue
		}
		gone, err := a.podGoneLive(ctx, c.pod, c.node)
		if err != nil {
			// Unknown: keep the suspicion, ask again at the next pass; the
			// other candidates and the lost nodes still get their turn.
			liveErrs = append(liveErrs, err)
			continue
		}
		if !gone {
			// The informer lags (a pod created a moment ago): it lives.
			seen[k] = false
			continue
		}
		confirmed = append(confirmed, c)
	}
	a.mu.Lock()
	for k := range a.suspects {
		if !seen[k] {
			delete(a.suspects, k)
		}
	}
	holding := map[string]bool{}
	for _, ps := range a.ledger.pools {
		for node := range ps.leases {
			holding[node] = true
		}
	}
	a.mu.Unlock()
	a.watch.forgetGone(holding, now.Add(-2*a.cfg.NodeLossGrace))

	byNode := map[poolNode][]leak{}
	for _, c := range confirmed {
		byNode[poolNode{c.pool, c.node}] = append(byNode[poolNode{c.pool, c.node}], c)
	}
	// Lost nodes give up their warm units too, leaks or not.
	for _, pn := range a.lostLeases(now) {
		if _, ok := byNode[pn]; !ok {
			byNode[pn] = nil
		}
	}
	errs := liveErrs
	for pn, leaks := range byNode {
		var err error
		if a.lost(pn.node, now) {
			err = a.dropLost(ctx, pn.pool, pn.node, leaks)
		} else {
			err = a.reclaim(ctx, pn.pool, pn.node, leaks)
		}
		errs = append(errs, err)
	}
	if len(byNode) > 0 {
		a.kick()
	}
	return errors.Join(errs...)
}

// podGone reports whether the informer has no pod of that name and UID
// running: absent, re-created under another UID, or finished.
func (w *watcher) podGone(ref v1alpha1.PodRef, node string) bool {
	p, err := w.podLister.Pods(ref.Namespace).Get(ref.Name)
	return err != nil || gone(p, ref, node)
}

// gone reports whether p, the pod named by ref, is not the one ref was
// assigned to on node, or has finished. Without a UID (a runtime that did
// not pass K8S_POD_UID) a pod of that name is taken to be it unless it is
// bound to another node (a StatefulSet pod re-created elsewhere).
func gone(p *corev1.Pod, ref v1alpha1.PodRef, node string) bool {
	if ref.UID != "" && string(p.UID) != ref.UID {
		return true
	}
	if ref.UID == "" && p.Spec.NodeName != "" && p.Spec.NodeName != node {
		return true
	}
	return finished(p)
}

// podGoneLive asks the API, not a cache.
func (a *Allocator) podGoneLive(ctx context.Context, ref v1alpha1.PodRef, node string) (bool, error) {
	p, err := a.cfg.Kube.CoreV1().Pods(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("live GET of pod %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	return gone(p, ref, node), nil
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

// lostLeases lists the leases of lost nodes that still hold warm units,
// or for which units are unconfirmed (taken off their lease by a reload).
func (a *Allocator) lostLeases(now time.Time) []poolNode {
	a.mu.Lock()
	var held []poolNode
	for name, ps := range a.ledger.pools {
		for node, ls := range ps.leases {
			if ls.warmCount() > 0 {
				held = append(held, poolNode{name, node})
			}
		}
		for _, node := range ps.unconfirmed {
			if pn := (poolNode{name, node}); !slices.Contains(held, pn) {
				held = append(held, pn)
			}
		}
	}
	a.mu.Unlock()
	return slices.DeleteFunc(held, func(pn poolNode) bool { return !a.lost(pn.node, now) })
}

// reclaim asks a live node's agent to release leaked assignments.
func (a *Allocator) reclaim(ctx context.Context, pool, node string, leaks []leak) error {
	if len(leaks) == 0 {
		return nil
	}
	items := make([]broker.ReclaimItem, 0, len(leaks))
	for _, l := range leaks {
		items = append(items, broker.ReclaimItem{UnitID: l.unit, Attachment: l.pod.Attachment(), PodUID: l.pod.UID})
		a.log.Info("leaked assignment: its pod is gone; asking its node to release it", "pool", pool, "node", node, "address", a.address(pool, l.unit),
			"pod", logkey.Pod(l.pod.Namespace, l.pod.Name), "pod_uid", l.pod.UID, "attachment", l.pod.Attachment())
	}
	msg := broker.Encode(&broker.Reclaim{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch, Pool: pool, Items: items})
	rctx, cancel := context.WithTimeout(ctx, a.cfg.PushTimeout)
	defer cancel()
	resp, err := a.cfg.Bus.Request(rctx, broker.SubjectReclaim(node), msg)
	if err != nil {
		return fmt.Errorf("reclaim from %s: %w", node, err)
	}
	var r broker.Reclaimed
	if err := broker.Decode(resp, &r); err != nil {
		return fmt.Errorf("reclaim from %s: %w", node, err)
	}
	a.metrics.reclaimed.WithLabelValues(pool, "pod-gone").Add(float64(len(r.IDs)))
	a.log.Info("leaked assignments released by their node", "pool", pool, "node", node, "asked", len(items), "released", len(r.IDs))
	if r.Error != "" {
		return fmt.Errorf("reclaim from %s: %s", node, r.Error)
	}
	return nil
}

// dropLost rewrites a lost node's lease without its warm units and the
// confirmed leaks, which become free. Assignments whose pods still exist
// stay until those pods are gone.
func (a *Allocator) dropLost(ctx context.Context, pool, node string, leaks []leak) error {
	leaked := make(map[string]string, len(leaks)) // unit -> pod UID
	for _, l := range leaks {
		leaked[l.unit] = l.pod.UID
	}
	// The node's order lock first, as a sync takes it: a sync either
	// finished its contact before (and the node is not lost), or waits
	// until the drop is committed and lists what is left.
	unlockOrder := a.lockOrder(node)
	defer unlockOrder()
	unlock := a.lockLease(pool, node)
	defer unlock()
	// Again under the locks: a sync that arrived since the first look
	// made the node alive, and may list these units to it.
	if !a.lost(node, a.cfg.Clock.Now()) {
		return nil
	}
	// Its agent may have assigned warm units to pods without the reports
	// reaching us (the API refusing their writes, say) before it went
	// silent: while a pod bound to the node has no address on record, any
	// warm unit may be that pod's, and given to another node it would be
	// on two live pods.
	unrecorded := a.unrecordedPods(pool, node)
	if unrecorded > 0 {
		a.log.Warn("lost node's warm units kept: pods on it have no address on record, and may hold one of them", "pool", pool, "node", node, "pods", unrecorded)
	} else {
		// Units a reload took off its lease and kept for its sync, which
		// will not come: its agent stopped using warm units a warm TTL
		// after its last answer, and no pod on it lacks an address on
		// record, so none of them is a pod's (one assigned to a live
		// pod would leave that pod without one on record).
		a.mu.Lock()
		n := 0
		if ps := a.ledger.pools[pool]; ps != nil {
			n = ps.releaseUnconfirmedLocked(node, nil)
		}
		a.mu.Unlock()
		if n > 0 {
			a.log.Info("lost node's unconfirmed units freed", "pool", pool, "node", node, "units", n)
		}
	}
	dropped, err := a.dropFromLeaseHeld(ctx, pool, node, func(id string, u v1alpha1.LeasedUnit) bool {
		if u.State != v1alpha1.UnitAssigned {
			return unrecorded == 0
		}
		uid, ok := leaked[id]
		return ok && u.Pod != nil && u.Pod.UID == uid
	})
	if err != nil || len(dropped) == 0 {
		return err
	}
	warm := 0
	for _, u := range dropped {
		if u.State != v1alpha1.UnitAssigned {
			warm++
			continue
		}
		a.log.Info("leaked assignment of a lost node freed: its pod is gone", "pool", pool, "node", node, "address", logkey.Address(u.IPv4, u.IPv6),
			"pod", podName(u.Pod), "pod_uid", podUID(u.Pod))
	}
	a.metrics.reclaimed.WithLabelValues(pool, "node-lost").Add(float64(warm))
	a.metrics.reclaimed.WithLabelValues(pool, "pod-gone").Add(float64(len(dropped) - warm))
	a.log.Info("lost node's units reclaimed", "pool", pool, "node", node, "warm", warm, "leaked", len(dropped)-warm)
	return nil
}

// unrecordedPods counts the pods bound to node, terminating ones included
// (their sandboxes live until their DEL), that would take an address of
// pool and have none recorded in the node's lease. Once network configs
// name the pool for pods its selection does not pick, any pod may take
// one. Pods created after the node's agent was last heard from plus the
// warm TTL are not counted: that agent had stopped using warm units by
// then, so they hold none (without this, a pod bound to a dead node would
// keep its warm units for as long as it exists).
func (a *Allocator) unrecordedPods(pool, node string) int {
	if a.watch == nil || a.watch.podLister == nil {
		return 0
	}
	pods, err := a.watch.podLister.List(labels.Everything())
	if err != nil {
		return 0
	}
	var nodeLabels map[string]string
	if n, err := a.watch.nodes.Get(node); err == nil {
		nodeLabels = n.Labels
	}
	a.mu.Lock()
	ps := a.ledger.pools[pool]
	if ps == nil {
		a.mu.Unlock()
		return 0
	}
	last := a.lastContact[node]
	if last.Before(a.started) {
		last = a.started
	}
	fencedBy := last.Add(a.cfg.NodeLossGrace / 2) // the warm TTL sync replies give
	recorded := map[string]bool{}
	if ls := ps.leases[node]; ls != nil {
		for _, u := range ls.units {
			if u.State == v1alpha1.UnitAssigned && u.Pod != nil {
				recorded[addressedKey(u.Pod.Namespace, u.Pod.Name, u.Pod.UID)] = true
			}
		}
	}
	anyPod := ps.namedByNetworkConfig
	var pools []*v1alpha1.IPPool // to select by, unless any pod counts
	if !anyPod {
		for name, p := range a.ledger.pools {
			pools = append(pools, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: p.spec})
		}
	}
	a.mu.Unlock()
	n := 0
	for _, p := range pods {
		if p.Spec.NodeName != node || p.Spec.HostNetwork || finished(p) || recorded[string(p.UID)] || recorded[addressedKey(p.Namespace, p.Name, "")] ||
			p.CreationTimestamp.Time.After(fencedBy) {
			continue
		}
		if anyPod {
			n++
			continue
		}
		ns, err := a.watch.namespaces.Get(p.Namespace)
		if err != nil {
			continue
		}
		// Several pools selecting the pod leave it to an annotation or a
		// network config to name one: any of them may be its.
		if choice, _ := v1alpha1.SelectPool(p.Annotations, p.Labels, ns.Annotations, ns.Labels, nodeLabels, p.Namespace, pools); choice.Picks(pool) {
			n++
		}
	}
	return n
}
