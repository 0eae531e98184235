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

// agentState is a node agent's last report, per pool: soft state for
// planning (a pod with an address is not demand), the pools' status and
// metrics, never written to the API. It lags the agent by a report.
type agentState map[string]*heldByAgent

type heldByAgent struct {
	assigned int
	// pods are the broker.PodKey of the pods with an address of the pool.
	pods map[string]bool
}

// agentStateOf summarises what a report or sync says of each pool.
func agentStateOf(pools map[string]broker.Addressed) agentState {
	st := make(agentState, len(pools))
	for pool, p := range pools {
		h := &heldByAgent{assigned: p.Assigned, pods: make(map[string]bool, len(p.Pods))}
		for _, key := range p.Pods {
			h.pods[key] = true
		}
		st[pool] = h
	}
	return st
}

// warmLocked estimates node's warm units of the pool: what its lease is
// to list, less what its agent last reported assigned (a report may lag
// an ADD; a revoke's answer says what the agent really gives back).
func (a *Allocator) warmLocked(ps *poolState, node string) int {
	ls := ps.leases[node]
	if ls == nil {
		return 0
	}
	n := len(ls.desired)
	if st := a.agents[node][ps.name]; st != nil {
		n -= st.assigned
	}
	return max(n, 0)
}

// countsLocked returns the pool's free, warm and assigned units: the
// units on leases (or on their way) are not free; the agents' reports
// split them into assigned and warm.
func (a *Allocator) countsLocked(ps *poolState) (free, warm, assigned int64) {
	leased := int64(len(ps.owner)) - int64(ps.freeLocked())
	for node := range ps.leases {
		if st := a.agents[node][ps.name]; st != nil {
			assigned += int64(st.assigned)
		}
	}
	assigned = min(assigned, leased)
	return ps.total - leased, leased - assigned, assigned
}

// countServedLocked adds to the pools' hit and miss counts what a node's
// agent run served since the last message of the run this allocator
// applied, and returns the counts to remember for the run. The counts are
// the agent's, cumulative over its run (broker.Served), so a message that
// is lost, retried or overtaken neither loses nor repeats one. prev is the
// run's counts as last applied, nil for a run not heard of before: from
// zero if this is the run's first message, else (a run that began under
// an earlier leader, whose status holds what it counted) its counts so far
// are taken as counted: what it served between its last message to that
// leader and its first to this one is lost, never counted twice. The
// result is never nil, since nil means a run not heard of: a run first
// heard of before it served anything would otherwise lose its first
// ADDs.
func (a *Allocator) countServedLocked(node string, prev map[string]broker.Served, seq uint64, served map[string]broker.Served) map[string]broker.Served {
	if prev == nil && seq > 1 {
		seen := map[string]broker.Served{}
		maps.Copy(seen, served)
		return seen
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
			if ps.leases[node] != nil { // its pace is read, and forgotten, with its lease
				a.addPaceLocked(pool, node, int(hits+misses))
			}
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
		free, warm, assigned := a.countsLocked(ps)
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
