// Taking over: fencing every lease at this leader's epoch, and claiming
// the leases of nodes that have none.

package allocator

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fence rewrites every lease at this leader's epoch before it loads them:
// a write of an older leader still in flight (a process paused past its
// term, a request held up in the network) then fails on its
// resourceVersion instead of landing over what this leader loaded, and
// its author re-reads, finds the newer epoch and steps down. A lease that
// changed since the list is fenced as it now is: nothing has been decided
// on it yet. It costs one write per lease at each takeover, Writers at a
// time.
func (a *Allocator) fence(ctx context.Context, leases []v1alpha1.NodeLease) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(a.cfg.Writers)
	for i := range leases {
		g.Go(func() error { return a.fenceOne(gctx, leases[i].Name, leases[i].DeepCopy()) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	a.log.Info("leases fenced at this epoch", "leases", len(leases))
	return nil
}

// fenceOne writes this leader's epoch into lease name (nl: as last read,
// nil to read it), re-reading it on a conflict; errors that may pass (a
// timeout, the API throttling or restarting) are retried until ctx ends.
func (a *Allocator) fenceOne(ctx context.Context, name string, nl *v1alpha1.NodeLease) error {
	api := a.cfg.Leases
	return retryTransient(ctx, func() error {
		if nl == nil {
			cur, err := api.Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return nil // deleted (its node went): nothing to fence
			}
			if err != nil {
				return err
			}
			nl = cur
		}
		switch e := uint64(nl.Spec.Epoch); {
		case e > a.cfg.Epoch:
			return fmt.Errorf("fence lease %s: %w: it was written at epoch %d, this allocator's is %d", name, ErrDeposed, e, a.cfg.Epoch)
		case e == a.cfg.Epoch:
			return nil
		}
		next := nl.DeepCopy()
		next.Spec.Epoch = int64(a.cfg.Epoch)
		_, err := api.Update(ctx, next, metav1.UpdateOptions{})
		a.countWrite(causeTakeover, err)
		if err != nil {
			nl = nil // re-read before trying again
		}
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return errRetryNow
		}
		return err
	})
}

// errRetryNow asks retryTransient for another attempt at once.
var errRetryNow = errors.New("retry now")

// retryTransient runs op until it succeeds, fails for good, or ctx ends,
// waiting between attempts that failed for reasons that pass.
func retryTransient(ctx context.Context, op func() error) error {
	backoff := 100 * time.Millisecond
	for {
		err := op()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errRetryNow):
			continue
		case errors.Is(err, ErrDeposed):
			// Not the API's error but our verdict: stop at once (outcomeUnknown
			// would call any error that is not the API's a transport one).
			return err
		case !(outcomeUnknown(err) || apierrors.IsTooManyRequests(err) || apierrors.IsServiceUnavailable(err)):
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// claim creates, empty and at this leader's epoch, the lease of every
// node a pool may grant to that has none yet: a deposed leader's create of
// one (held up in the network past the takeover) then fails as one that
// exists, and its author steps down on the epoch it finds. Nodes that
// register later get theirs from this leader only.
func (a *Allocator) claim(ctx context.Context, pools []v1alpha1.IPPool, leases []v1alpha1.NodeLease) error {
	if a.cfg.Kube == nil {
		return nil
	}
	nodes, err := a.cfg.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	have := map[string]bool{}
	for _, nl := range leases {
		have[nl.Name] = true
	}
	var created atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(a.cfg.Writers)
	for _, p := range pools {
		for _, n := range nodes.Items {
			name := v1alpha1.NodeLeaseName(p.Name, n.Name)
			if have[name] || !v1alpha1.Selects(p.Spec.NodeSelector, n.Labels) {
				continue
			}
			nl := &v1alpha1.NodeLease{ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: v1alpha1.NodeLeaseSpec{Pool: p.Name, Node: n.Name, Epoch: int64(a.cfg.Epoch)}}
			g.Go(func() error {
				err := retryTransient(gctx, func() error {
					_, err := a.cfg.Leases.Create(gctx, nl, metav1.CreateOptions{})
					a.countWrite(causeTakeover, err)
					if apierrors.IsAlreadyExists(err) {
						// Created since the list (by a deposed leader, or by
						// our own create whose answer was lost): fence it.
						return a.fenceOne(gctx, name, nil)
					}
					return err
				})
				if err == nil {
					created.Add(1)
				}
				return err
			})
		}
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("claim leases: %w", err)
	}
	if n := created.Load(); n > 0 {
		a.log.Info("leases claimed for nodes that had none", "leases", n)
	}
	return nil
}
