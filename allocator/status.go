package allocator

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
)

// countServedLocked adds to the pools' hit and miss counts what a node's
// agent run served since the last message of the run this allocator
// applied, and returns the counts to remember for the run. The counts are
// the agent's, cumulative over its run (broker.Served), so a message that
// is lost, retried or overtaken neither loses nor repeats one. prev is the
// run's counts as last applied, nil for a run not heard of before: from
// zero if this is the run's first message, else (a run that began under
// an earlier leader, whose status holds what it counted) its counts so far
// are taken as counted: what it served between its last message to that
// leader and its first to this one is lost, never counted twice.
func (a *Allocator) countServedLocked(node string, prev map[string]broker.Served, seq uint64, served map[string]broker.Served) map[string]broker.Served {
	if prev == nil && seq > 1 {
		return served
	}
	seen := maps.Clone(prev)
	if seen == nil {
		seen = map[string]broker.Served{}
	}
	for pool, now := range served {
		was := seen[pool]
		hits, misses := max(now.Hits-was.Hits, 0), max(now.Misses-was.Misses, 0)
		seen[pool] = broker.Served{Hits: was.Hits + hits, Misses: was.Misses + misses}
		if ps := a.ledger.pools[pool]; ps != nil {
			ps.hits += hits
			ps.misses += misses
		}
		a.metrics.adds.WithLabelValues(pool, node, "hit").Add(float64(hits))
		a.metrics.adds.WithLabelValues(pool, node, "miss").Add(float64(misses))
	}
	return seen
}

// runStatus writes each pool's status every StatusInterval when it
// changed.
func (a *Allocator) runStatus(ctx context.Context) {
	defer a.wg.Done()
	t := a.cfg.Clock.NewTicker(a.cfg.StatusInterval)
	defer t.Stop()
	written := map[string]v1alpha1.IPPoolStatus{}
	for {
		if err := a.writeStatus(ctx, written); err != nil && ctx.Err() == nil {
			a.log.Warn("pool status", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// writeStatus writes the status of every pool whose counts changed since
// the last write.
func (a *Allocator) writeStatus(ctx context.Context, written map[string]v1alpha1.IPPoolStatus) error {
	type entry struct {
		name   string
		status v1alpha1.IPPoolStatus
	}
	var todo []entry
	a.mu.Lock()
	for name, ps := range a.ledger.pools {
		free, warm, assigned := ps.countsLocked()
		st := v1alpha1.IPPoolStatus{Total: ps.total, Free: free, Warm: warm, Assigned: assigned,
			Pending: int64(ps.pending), Hits: ps.hits, Misses: ps.misses}
		if old, ok := written[name]; ok && sameCounts(old, st) {
			continue
		}
		todo = append(todo, entry{name, st})
	}
	a.mu.Unlock()
	var errs []error
	for _, e := range todo {
		p, err := a.cfg.Pools.Get(ctx, e.name, metav1.GetOptions{})
		if err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %w", e.name, err))
			continue
		}
		conds := p.Status.Conditions
		p.Status = e.status
		p.Status.ObservedGeneration = p.Generation
		p.Status.Conditions = conds
		meta.SetStatusCondition(&p.Status.Conditions, metav1.Condition{Type: v1alpha1.PoolReady, Status: metav1.ConditionTrue,
			Reason: "Serving", Message: fmt.Sprintf("allocator epoch %d serves the pool", a.cfg.Epoch), ObservedGeneration: p.Generation})
		exhausted := metav1.Condition{Type: v1alpha1.PoolExhausted, Status: metav1.ConditionFalse, Reason: "UnitsAvailable",
			Message: "free or warm units remain", ObservedGeneration: p.Generation}
		if e.status.Free == 0 && e.status.Warm == 0 {
			exhausted.Status, exhausted.Reason = metav1.ConditionTrue, "AllAssigned"
			exhausted.Message = fmt.Sprintf("all %d units are assigned to pods; %d pods wait", e.status.Total, e.status.Pending)
		}
		meta.SetStatusCondition(&p.Status.Conditions, exhausted)
		if _, err := a.cfg.Pools.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %w", e.name, err))
			continue
		}
		written[e.name] = e.status
	}
	return errors.Join(errs...)
}

func sameCounts(x, y v1alpha1.IPPoolStatus) bool {
	return x.Total == y.Total && x.Free == y.Free && x.Warm == y.Warm && x.Assigned == y.Assigned &&
		x.Pending == y.Pending && x.Hits == y.Hits && x.Misses == y.Misses
}
