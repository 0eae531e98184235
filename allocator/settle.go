package allocator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warmpool/warmpool/api/v1alpha1"
)

// Lease writes whose outcome is unknown. A write that timed out or lost
// its connection may have landed, or may still land later (the apiserver
// or etcd still applying it): one read cannot tell "did not land" from
// "not yet". Sending the same object again at the same resourceVersion
// can: if it succeeds, the write is done and the delayed one can no longer
// land; if it conflicts (or the object exists, for a create), the first
// one landed or something else did, and a read is then definitive. Until
// that is known the write's units stay reserved (neither free nor held),
// and the lease takes no other write.

var (
	// errUnsettled: a write's outcome is still unknown (the API is
	// unreachable); its units stay reserved, and the lease is settled
	// before its next write.
	errUnsettled = errors.New("lease write outcome unknown")
	// errReloaded: settling an earlier write changed the ledger's lease;
	// the caller's change was computed from the old one and must be
	// recomputed.
	errReloaded = errors.New("lease reloaded after an unsettled write")
)

// unsettledWrite is a lease write whose outcome is unknown.
type unsettledWrite struct {
	obj *v1alpha1.NodeLease // exactly what was sent
	idx []int               // the units it reserved, kept reserved
}

type settleOutcome int

const (
	outcomeLanded settleOutcome = iota
	outcomeNotLanded
	outcomeReloaded
	outcomeStillUnknown
)

// settle resolves a write that failed with an unknown outcome, at once if
// the API answers. The caller holds the lease's lock.
func (a *Allocator) settle(ctx context.Context, pool, node string, nl *v1alpha1.NodeLease, werr error) (string, int64, error) {
	out, cur := a.resend(ctx, pool, node, nl)
	switch out {
	case outcomeLanded:
		a.log.Info("lease write answer lost, but it landed", "lease", nl.Name, "pool", pool, "node", node, "err", werr)
		return cur.ResourceVersion, cur.Generation, nil
	case outcomeNotLanded:
		return "", 0, fmt.Errorf("write lease %s: %w (it did not land)", nl.Name, werr)
	case outcomeReloaded:
		return "", 0, fmt.Errorf("write lease %s: %w (%w)", nl.Name, werr, errReloaded)
	}
	a.mu.Lock()
	a.unsettled[poolNode{pool, node}] = &unsettledWrite{obj: nl.DeepCopy()}
	a.mu.Unlock()
	a.log.Warn("lease write outcome unknown; its units stay reserved until it is settled", "lease", nl.Name, "pool", pool, "node", node, "err", werr)
	return "", 0, fmt.Errorf("write lease %s: %w: %w", nl.Name, werr, errUnsettled)
}

// keepReservedLocked records units reserved for an unsettled write.
func (a *Allocator) keepReservedLocked(pool, node string, idx []int) {
	if u := a.unsettled[poolNode{pool, node}]; u != nil {
		u.idx = append(u.idx, idx...)
	}
}

// settleHeld settles the lease's unsettled write, if any: nil when there
// is none or it did not land, errReloaded when the ledger's lease changed,
// errUnsettled when the API still does not say. The caller holds the
// lease's lock.
func (a *Allocator) settleHeld(ctx context.Context, pool, node string) error {
	key := poolNode{pool, node}
	a.mu.Lock()
	u := a.unsettled[key]
	a.mu.Unlock()
	if u == nil {
		return nil
	}
	out, stored := a.resend(ctx, pool, node, u.obj)
	if out == outcomeStillUnknown {
		return fmt.Errorf("lease %s: an earlier write: %w", u.obj.Name, errUnsettled)
	}
	if out == outcomeLanded {
		a.reload(stored) // the ledger never committed it
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.unsettled, key)
	if ps := a.ledger.pools[pool]; ps != nil {
		ps.unreserveLocked(u.idx)
	}
	if out == outcomeNotLanded {
		return nil
	}
	return fmt.Errorf("lease %s: %w", u.obj.Name, errReloaded)
}

// settleAll settles every unsettled write; each round starts with it. It
// reports whether none is left.
func (a *Allocator) settleAll(ctx context.Context) bool {
	a.mu.Lock()
	keys := slices.Collect(maps.Keys(a.unsettled))
	a.mu.Unlock()
	done := true
	for _, k := range keys {
		unlock := a.lockLease(k.pool, k.node)
		err := a.settleHeld(ctx, k.pool, k.node)
		unlock()
		if errors.Is(err, errUnsettled) {
			done = false
		}
	}
	return done
}

// resend sends nl again, at the resourceVersion it was first sent at, and
// tells what became of it, with the stored lease when it landed (the
// caller takes that into the ledger).
func (a *Allocator) resend(ctx context.Context, pool, node string, nl *v1alpha1.NodeLease) (settleOutcome, *v1alpha1.NodeLease) {
	leases := a.cfg.Leases
	wctx, cancel := context.WithTimeout(ctx, a.cfg.WriteTimeout)
	defer cancel()
	var out *v1alpha1.NodeLease
	var err error
	if nl.ResourceVersion == "" {
		out, err = leases.Create(wctx, nl.DeepCopy(), metav1.CreateOptions{})
	} else {
		out, err = leases.Update(wctx, nl.DeepCopy(), metav1.UpdateOptions{})
	}
	switch {
	case err == nil:
		return outcomeLanded, out
	case !(apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)):
		return outcomeStillUnknown, nil
	}
	// The resourceVersion moved on (or the object exists): the first
	// sending can no longer land, and what is stored is final.
	cur, err := leases.Get(wctx, nl.Name, metav1.GetOptions{})
	switch {
	case err != nil:
		return outcomeStillUnknown, nil
	case uint64(cur.Spec.Epoch) == a.cfg.Epoch && sameUnitsAndPods(cur.Spec.Units, nl.Spec.Units):
		return outcomeLanded, cur
	case sameUnitsAndPods(cur.Spec.Units, a.committedUnits(pool, node)):
		return outcomeNotLanded, nil
	}
	a.reload(cur)
	return outcomeReloaded, nil
}

// sameUnitsAndPods compares two unit lists: IDs, states and pods.
func sameUnitsAndPods(x, y []v1alpha1.LeasedUnit) bool {
	if !sameUnits(x, y) {
		return false
	}
	pods := map[string]*v1alpha1.PodRef{}
	for _, u := range x {
		pods[u.ID()] = u.Pod
	}
	for _, u := range y {
		p, q := pods[u.ID()], u.Pod
		if (p == nil) != (q == nil) || p != nil && *p != *q {
			return false
		}
	}
	return true
}
