// NodeLease writes. syncLease is the one way a lease is written: it makes
// the stored lease list the ledger's desired units, under the lease's
// lock, at the resourceVersion last observed.

package allocator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warmpool/warmpool/api/v1alpha1"
)

// annotationSettled is written, with a new value, only to move a lease's
// resourceVersion on when a write that changes nothing must settle one in
// flight.
const annotationSettled = "warmpool.io/settled"

// errUnknownOutcome: a lease write timed out or lost its connection. It
// may have landed, or may still land: its units stay in flight, neither
// free nor the node's to use, until the lease is seen at another
// resourceVersion.
var errUnknownOutcome = errors.New("lease write outcome unknown")

// Why a lease is written: the cause label of the writes metric, so that
// an operator (and the benchmark) can tell the API cost of each.
const (
	causeGrant    = "grant"     // a planning round tops a node up
	causeMiss     = "miss"      // an ADD found the node's cache empty
	causeRevoke   = "revoke"    // a donor's lease without what it gave back
	causeRetry    = "retry"     // a lease left not as wanted by an earlier write
	causeNodeLost = "node-lost" // a lost node's units returned
	causeTakeover = "takeover"  // a new leader fences or creates a lease
)

// LeaseWriteCauses are the values of the writes metric's cause label, in
// the order the benchmark's report shows them.
var LeaseWriteCauses = []string{causeGrant, causeMiss, causeRevoke, causeRetry, causeNodeLost, causeTakeover}

// lockLease serialises the writes of one NodeLease, and the changes of its
// desired set.
func (a *Allocator) lockLease(pool, node string) (unlock func()) {
	return a.leaseLocks.Lock(leaseKey(pool, node))
}

// syncLease is syncLeaseHeld under the lease's lock.
func (a *Allocator) syncLease(ctx context.Context, pool, node, cause string) ([]int, error) {
	unlock := a.lockLease(pool, node)
	defer unlock()
	return a.syncLeaseHeld(ctx, pool, node, cause)
}

// syncLeaseHeld writes node's lease of pool until it lists the desired
// units: at the observed resourceVersion; on a conflict (a write of ours
// whose answer was lost landed, or the lease was deleted or changed
// behind us) it reads the lease and tries again. It returns the units the
// stored lease gained that are wanted there: the caller pushes them to
// the node. A lease that could not be written stays dirty: the next
// round tries again. The caller holds the lease's lock.
func (a *Allocator) syncLeaseHeld(ctx context.Context, pool, node, cause string) ([]int, error) {
	a.mu.Lock()
	ps := a.ledger.pools[pool]
	if ps == nil || ps.leases[node] == nil {
		a.mu.Unlock()
		return nil, nil
	}
	ls := ps.leases[node]
	start := maps.Clone(ls.observed)
	a.mu.Unlock()
	gained := func() []int {
		var out []int
		for _, i := range ls.listed() {
			if !start[i] {
				out = append(out, i)
			}
		}
		return out
	}
	const attempts = 4
	resent, bump := false, false
	for range attempts {
		a.mu.Lock()
		if ls.settled() {
			delete(ps.dirty, node)
			out := gained()
			a.mu.Unlock()
			return out, nil
		}
		sent := maps.Clone(ls.desired)
		nl := &v1alpha1.NodeLease{
			ObjectMeta: metav1.ObjectMeta{Name: ls.name, ResourceVersion: ls.rv},
			Spec:       v1alpha1.NodeLeaseSpec{Pool: pool, Node: node, Epoch: int64(a.cfg.Epoch), Units: ps.leasedUnits(sent)},
		}
		if bump {
			nl.Annotations = map[string]string{annotationSettled: strconv.FormatInt(a.cfg.Clock.Now().UnixNano(), 10)}
		}
		a.mu.Unlock()
		out, err := a.writeLease(ctx, nl, cause)
		a.mu.Lock()
		switch {
		case err == nil && ls.inflight != nil && out.ResourceVersion == ls.inflightRV:
			// The write changed nothing (the apiserver stores nothing for
			// that), so the lease is still at the version the writes in
			// flight were sent at, and they can still land: write again
			// with a new annotation, which moves the version on.
			a.conflictsLocked(pool, node, ps.updateLocked(node, ls, func() { ls.observed, ls.gen = sent, out.Generation }))
			bump = true
			a.mu.Unlock()
			continue
		case err == nil:
			a.conflictsLocked(pool, node, ps.updateLocked(node, ls, func() {
				ls.observed, ls.rv, ls.gen = sent, out.ResourceVersion, out.Generation
				ls.inflight, ls.inflightRV = nil, ""
			}))
			a.mu.Unlock()
			continue
		case outcomeUnknown(err):
			ps.updateLocked(node, ls, func() {
				if ls.inflight == nil || ls.inflightRV != nl.ResourceVersion {
					ls.inflight, ls.inflightRV = map[int]bool{}, nl.ResourceVersion
				}
				maps.Copy(ls.inflight, sent)
			})
			ps.dirty[node] = true
			if !resent {
				// Send it again at the same version: if the first landed,
				// this one conflicts and the read says so; if not, this
				// one lands and the first never can. Either settles it.
				resent = true
				a.mu.Unlock()
				continue
			}
			out := gained()
			a.mu.Unlock()
			a.log.Warn("lease write outcome unknown: its units stay out of the free set until the lease is read at another version",
				"lease", ls.name, "pool", pool, "node", node, "err", err)
			return out, fmt.Errorf("write lease %s: %w: %w", ls.name, errUnknownOutcome, err)
		case conflicted(err):
			a.mu.Unlock()
			if rerr := a.observe(ctx, ps, node, ls); rerr != nil {
				a.markDirty(ps, node)
				return gained(), fmt.Errorf("write lease %s: %w (re-read: %w)", ls.name, err, rerr)
			}
			continue
		default:
			ps.dirty[node] = true
			out := gained()
			a.mu.Unlock()
			return out, fmt.Errorf("write lease %s: %w", ls.name, err)
		}
	}
	a.markDirty(ps, node)
	a.mu.Lock()
	defer a.mu.Unlock()
	return gained(), fmt.Errorf("write lease %s: still conflicting after %d attempts", ls.name, attempts)
}

// markDirty leaves a lease for the next round.
func (a *Allocator) markDirty(ps *poolState, node string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ps.dirty[node] = true
}

// writeLease creates or updates a lease as nl says.
func (a *Allocator) writeLease(ctx context.Context, nl *v1alpha1.NodeLease, cause string) (*v1alpha1.NodeLease, error) {
	wctx, cancel := context.WithTimeout(ctx, a.cfg.WriteTimeout)
	defer cancel()
	start := time.Now()
	var out *v1alpha1.NodeLease
	var err error
	if nl.ResourceVersion == "" {
		out, err = a.cfg.Leases.Create(wctx, nl, metav1.CreateOptions{})
	} else {
		out, err = a.cfg.Leases.Update(wctx, nl, metav1.UpdateOptions{})
	}
	a.metrics.writeTime.Observe(time.Since(start).Seconds())
	a.countWrite(cause, err)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// countWrite counts one lease write. A conflict (the lease was not at the
// version written, or not there, or already there) is the protocol at
// work, a lost answer or a takeover, not a failing API: counted apart.
func (a *Allocator) countWrite(cause string, err error) {
	result := "ok"
	switch {
	case conflicted(err):
		result = "conflict"
	case err != nil:
		result = "error"
	}
	a.metrics.writes.WithLabelValues(cause, result).Inc()
}

// observe reads node's lease and takes what is stored as observed. A lease
// written by a newer leader deposes this allocator. The caller holds the
// lease's lock.
func (a *Allocator) observe(ctx context.Context, ps *poolState, node string, ls *leaseState) error {
	rctx, cancel := context.WithTimeout(ctx, a.cfg.WriteTimeout)
	defer cancel()
	cur, err := a.cfg.Leases.Get(rctx, ls.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cur, err = nil, nil
	}
	if err != nil {
		return err
	}
	if cur != nil && uint64(cur.Spec.Epoch) > a.cfg.Epoch {
		// A newer leader wrote it: this allocator must not overwrite its
		// successor's record.
		a.depose(cur.Spec.Epoch)
		return fmt.Errorf("lease %s: %w: it was written at epoch %d, this allocator's is %d", ls.name, ErrDeposed, cur.Spec.Epoch, a.cfg.Epoch)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	stored, rv, gen := map[int]bool{}, "", int64(0)
	if cur != nil {
		var errs []error
		stored, errs = ps.indexesLocked(ls.name, cur.Spec.Units)
		a.conflictsLocked(ps.name, node, errs)
		rv, gen = cur.ResourceVersion, cur.Generation
	}
	a.conflictsLocked(ps.name, node, ps.updateLocked(node, ls, func() {
		ls.observed, ls.rv, ls.gen = stored, rv, gen
		if ls.inflight != nil && rv != ls.inflightRV {
			// The version the writes in flight were sent at is gone: they
			// landed (and what is stored shows them) or never will.
			ls.inflight, ls.inflightRV = nil, ""
		}
	}))
	return nil
}

// conflictsLocked logs and counts invariant violations found in node's
// lease of pool.
func (a *Allocator) conflictsLocked(pool, node string, errs []error) {
	for _, err := range errs {
		a.log.Error("inconsistent lease", "pool", pool, "node", node, "err", err)
		a.metrics.conflicts.Inc()
	}
}

// conflicted tells a write refused because the lease was not at the
// version written: changed, deleted, or already created.
func conflicted(err error) bool {
	return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err)
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
