// NodeLease writes: one node's lease of one pool at a time, under its
// lease lock, at the resourceVersion last written, and the ledger's
// record of what landed.

package allocator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/logkey"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// lockLease serialises the writes of one NodeLease.
func (a *Allocator) lockLease(pool, node string) (unlock func()) {
	return a.leaseLocks.Lock(leaseKey(pool, node))
}

// applyEvents records assignments and releases of a node's units of one
// pool in its lease. An assigned unit the node does not hold is adopted if
// free (the agent assigned it, so it is in use there); if another node
// holds it, the conflict is logged and the event skipped: that is an
// invariant violation no event may paper over.
func (a *Allocator) applyEvents(ctx context.Context, pool, node string, events []broker.Event) (foreign, inFlight []string, err error) {
	unlock := a.lockLease(pool, node)
	defer unlock()
	a.mu.Lock()
	ps, ok := a.ledger.pools[pool]
	if !ok {
		a.mu.Unlock()
		return nil, nil, fmt.Errorf("pool %s: %w", pool, errUnknownPool)
	}
	next, name, rv := a.leaseCopyLocked(ps, node)
	var adopt []int
	changed := false
	for _, e := range events {
		i, known := ps.byID[e.UnitID]
		if !known {
			a.log.Error("event for a unit not in the pool", "node", node, "pool", pool, "address", e.UnitID,
				"pod", logkey.Pod(e.Pod.Namespace, e.Pod.Name), "attachment", e.Attachment, "event", e.Kind)
			continue
		}
		u, held := next[e.UnitID]
		if !held && ps.unconfirmed[i] == node {
			// Taken off this node's lease by a reload, and kept reserved
			// for it: its agent holds it, in whatever state the event
			// says, so it is the node's again. (A unit without a holder
			// but reserved may be a grant in flight to another node: only
			// an unconfirmed one is known to be this node's.)
			u = leasedUnit(ps.units[i])
			adopt = append(adopt, i)
		} else if !held {
			if h := ps.holder[i]; h != "" || ps.reserved[i] {
				// Held by another node: the agent is told to forget it. A
				// reservation without a holder is not settled yet: the
				// caller decides.
				switch {
				case h != "" && h != node:
					foreign = append(foreign, e.UnitID)
				case h == "":
					inFlight = append(inFlight, e.UnitID)
				}
				a.log.Error("unit held by another node", "node", node, "holder", h, "pool", pool, "address", ps.units[i].address(),
					"pod", logkey.Pod(e.Pod.Namespace, e.Pod.Name), "attachment", e.Attachment, "event", e.Kind)
				a.metrics.conflicts.Inc()
				continue
			}
			if e.Kind != broker.EventAssigned {
				continue // a release of what the node no longer holds
			}
			u = leasedUnit(ps.units[i])
			adopt = append(adopt, i)
		}
		switch e.Kind {
		case broker.EventAssigned:
			ctr, ifname := broker.SplitAttachment(e.Attachment)
			u.State = v1alpha1.UnitAssigned
			u.Pod = &v1alpha1.PodRef{Namespace: e.Pod.Namespace, Name: e.Pod.Name, UID: e.Pod.UID, ContainerID: ctr, Interface: ifname}
		case broker.EventReleased:
			u.State, u.Pod = v1alpha1.UnitWarm, nil
		}
		if old, ok := next[e.UnitID]; !ok || old.State != u.State || (old.Pod == nil) != (u.Pod == nil) || old.Pod != nil && *old.Pod != *u.Pod {
			changed = true
		}
		next[e.UnitID] = u
	}
	for _, i := range adopt {
		ps.reserved[i] = true
	}
	a.mu.Unlock()
	if !changed {
		return foreign, inFlight, nil
	}
	newRV, gen, err := a.writeLease(ctx, pool, node, name, rv, next)
	a.mu.Lock()
	defer a.mu.Unlock()
	if errors.Is(err, errUnsettled) {
		a.keepReservedLocked(pool, node, adopt)
		return foreign, inFlight, err
	}
	ps.unreserveLocked(adopt) // unconfirmed ones stay reserved if the write failed
	if err != nil {
		return foreign, inFlight, err
	}
	for _, i := range adopt {
		ps.holdLocked(i, node)
	}
	a.commitLeaseLocked(ps, node, &leaseState{name: name, resourceVersion: newRV, generation: gen, units: next})
	return foreign, inFlight, nil
}

// leaseCopyLocked returns a copy of a node's lease units to modify, with
// the lease's name and resourceVersion. Orphans (units the node gave back
// whose removal has not been written yet) are left out: every write of the
// lease removes them.
func (a *Allocator) leaseCopyLocked(ps *poolState, node string) (map[string]v1alpha1.LeasedUnit, string, string) {
	next := map[string]v1alpha1.LeasedUnit{}
	name, rv := v1alpha1.NodeLeaseName(ps.name, node), ""
	if ls := ps.leases[node]; ls != nil {
		name, rv = ls.name, ls.resourceVersion
		orphans := a.orphans[poolNode{ps.name, node}]
		for id, u := range ls.units {
			if !slices.Contains(orphans, id) {
				next[id] = *u.DeepCopy()
			}
		}
	}
	return next, name, rv
}

// warmHeldLocked counts the warm units a node's lease lists that its agent
// still holds: orphans (given back, removal not yet written) are not.
func (a *Allocator) warmHeldLocked(ps *poolState, node string, ls *leaseState) int {
	if ls == nil {
		return 0
	}
	n := ls.warmCount()
	for _, id := range a.orphans[poolNode{ps.name, node}] {
		if u, ok := ls.units[id]; ok && u.State == v1alpha1.UnitWarm {
			n--
		}
	}
	return n
}

// commitLeaseLocked records a written lease in the ledger. Orphans of the
// node that the write left out are free from now on.
func (a *Allocator) commitLeaseLocked(ps *poolState, node string, ls *leaseState) {
	ps.leases[node] = ls
	for _, id := range a.orphans[poolNode{ps.name, node}] {
		if _, listed := ls.units[id]; listed {
			continue
		}
		if i, ok := ps.byID[id]; ok && ps.holder[i] == node {
			ps.holder[i] = ""
		}
	}
	delete(a.orphans, poolNode{ps.name, node})
}

// writeLease persists a node's lease of a pool: create it, or update it at
// the resourceVersion we last wrote. The leader is the only writer, so a
// conflict means our resourceVersion is stale (our own write's answer was
// lost): re-read it and write again, once.
func (a *Allocator) writeLease(ctx context.Context, pool, node, name, rv string, units map[string]v1alpha1.LeasedUnit) (string, int64, error) {
	nl := &v1alpha1.NodeLease{
		ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: rv},
		Spec:       v1alpha1.NodeLeaseSpec{Pool: pool, Node: node, Epoch: int64(a.cfg.Epoch), Units: leaseUnits(units)},
	}
	leases := a.cfg.Leases
	// A new write on top of one whose outcome is unknown would be built on
	// the wrong state: settle that one first.
	if err := a.settleHeld(ctx, pool, node); err != nil {
		return "", 0, err
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, a.cfg.WriteTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		var out *v1alpha1.NodeLease
		var err error
		start := time.Now()
		if nl.ResourceVersion == "" {
			out, err = leases.Create(ctx, nl, metav1.CreateOptions{})
		} else {
			out, err = leases.Update(ctx, nl, metav1.UpdateOptions{})
		}
		a.metrics.writeTime.Observe(time.Since(start).Seconds())
		if err == nil {
			a.metrics.writes.WithLabelValues("ok").Inc()
			return out.ResourceVersion, out.Generation, nil
		}
		a.metrics.writes.WithLabelValues("error").Inc()
		if outcomeUnknown(err) {
			// The write may have landed with its answer lost, or may still
			// land: find out by sending it again (below).
			return a.settle(parent, pool, node, nl, err)
		}
		if attempt > 0 || !(apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)) {
			return "", 0, fmt.Errorf("write lease %s: %w", name, err)
		}
		cur, gerr := leases.Get(ctx, name, metav1.GetOptions{})
		if gerr != nil {
			return "", 0, fmt.Errorf("write lease %s: %w (re-read: %w)", name, err, gerr)
		}
		if uint64(cur.Spec.Epoch) > a.cfg.Epoch {
			// A newer leader wrote it: this allocator is deposed and must
			// not overwrite its successor's record.
			a.depose(cur.Spec.Epoch)
			return "", 0, fmt.Errorf("write lease %s: %w: it was written at epoch %d, this allocator's is %d", name, ErrDeposed, cur.Spec.Epoch, a.cfg.Epoch)
		}
		if !sameUnits(cur.Spec.Units, a.committedUnits(pool, node)) {
			// The lease holds something the ledger does not (a write whose
			// answer was lost, or a predecessor's after we loaded):
			// writing our map would lose it. Take the lease as it is into
			// the ledger and fail this change; its caller's next trigger
			// recomputes from the truth.
			a.reload(cur)
			return "", 0, fmt.Errorf("write lease %s: it changed behind this allocator, reloaded (conflict %w)", name, err)
		}
		nl.ResourceVersion = cur.ResourceVersion
	}
}

// outcomeUnknown tells a failed write that may have been applied from one
// the apiserver refused.
func outcomeUnknown(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return true // transport error, our own timeout
	}
	return apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) || apierrors.IsInternalError(err) || apierrors.IsUnexpectedServerError(err)
}

// committedUnits returns the units the ledger has committed for a node's
// lease, as the API object lists them.
func (a *Allocator) committedUnits(pool, node string) []v1alpha1.LeasedUnit {
	a.mu.Lock()
	defer a.mu.Unlock()
	ps := a.ledger.pools[pool]
	if ps == nil || ps.leases[node] == nil {
		return nil
	}
	return leaseUnits(ps.leases[node].units)
}

func sameUnits(x, y []v1alpha1.LeasedUnit) bool {
	if len(x) != len(y) {
		return false
	}
	seen := map[string]v1alpha1.LeasedUnit{}
	for _, u := range x {
		seen[u.ID()] = u
	}
	for _, u := range y {
		v, ok := seen[u.ID()]
		if !ok || v.State != u.State {
			return false
		}
	}
	return true
}

// reload replaces the ledger's record of a node's lease with the stored
// object. Units the ledger's record listed that the stored lease lacks are
// not freed: they become unconfirmed for the node (reserved) until its
// sync says whether its agent holds them. The stored lease may be a drop
// whose answer was lost, and a sync applied while that write was
// unsettled was answered from the ledger's record, listing them to the
// agent, which uses them (fault-suite seed 93: freed here, then granted
// to another node while the first one's agent held them).
func (a *Allocator) reload(cur *v1alpha1.NodeLease) {
	if uint64(cur.Spec.Epoch) > a.cfg.Epoch {
		a.depose(cur.Spec.Epoch) // written by a newer leader: not ours to load
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	ps := a.ledger.pools[cur.Spec.Pool]
	if ps == nil {
		return
	}
	node := cur.Spec.Node
	stored := make(map[string]bool, len(cur.Spec.Units))
	for _, u := range cur.Spec.Units {
		stored[u.ID()] = true
	}
	var taken []int
	if old := ps.leases[node]; old != nil {
		for id := range old.units {
			if i, ok := ps.byID[id]; ok && ps.holder[i] == node {
				ps.holder[i] = ""
				if !stored[id] {
					ps.reserved[i] = true
					ps.unconfirmed[i] = node
					taken = append(taken, i)
				}
			}
		}
	}
	delete(ps.leases, node)
	for _, err := range a.ledger.loadLeaseLocked(cur) {
		a.log.Error("inconsistent lease on reload", "lease", cur.Name, "pool", cur.Spec.Pool, "node", node, "err", err)
		a.metrics.conflicts.Inc()
	}
	slices.Sort(taken)
	for _, i := range taken {
		a.log.Warn("the stored lease lacks a unit the node held; it stays reserved for the node until its agent's sync says whether it holds it",
			"lease", cur.Name, "pool", cur.Spec.Pool, "node", node, "address", ps.units[i].address())
	}
}
