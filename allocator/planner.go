package allocator

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
)

// kick asks for a planning round. Kicks coalesce: a burst of pod events
// costs one round, plus one for what arrived while it ran.
func (a *Allocator) kick() {
	select {
	case a.kicks <- struct{}{}:
	default:
	}
}

// runPlanner plans on every kick, every PlanInterval, and again soon after
// a round that could not do all it planned (an agent busy with those
// units, a write that failed), backing off up to PlanInterval; never two
// rounds' starts closer than RoundGap.
func (a *Allocator) runPlanner(ctx context.Context) {
	defer a.wg.Done()
	resync := a.cfg.Clock.NewTicker(a.cfg.PlanInterval)
	defer resync.Stop()
	var retry <-chan time.Time
	backoff := a.cfg.RetryInterval
	var start time.Time // of the last round
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kicks:
		case <-resync.C():
		case <-retry:
		}
		if wait := a.cfg.RoundGap - a.cfg.Clock.Since(start); wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-a.cfg.Clock.After(wait):
			}
		}
		start = a.cfg.Clock.Now()
		complete := a.round(ctx)
		a.metrics.roundTime.Observe(a.cfg.Clock.Since(start).Seconds())
		if complete {
			retry, backoff = nil, a.cfg.RetryInterval
			continue
		}
		retry = a.cfg.Clock.After(backoff)
		backoff = min(2*backoff, a.cfg.PlanInterval)
	}
}

// round plans every pool once and carries the plans out. It reports
// whether everything planned was done.
func (a *Allocator) round(ctx context.Context) bool {
	a.applyGaveBack()
	complete := a.syncDirty(ctx)
	for pool, d := range a.demand() {
		steps := plan(d)
		if a.log.Enabled(ctx, slog.LevelDebug) {
			for i, st := range steps {
				if st.grant > 0 || st.revoke > 0 {
					n := d.nodes[i]
					a.log.Debug("plan step", "pool", pool, "node", st.node, "grant", st.grant, "revoke", st.revoke,
						"share", st.share, "target", st.target, "warm", n.warm, "bound", n.bound, "recent", n.recent, "free", d.free, "unbound", d.unbound)
				}
			}
		}
		if !a.execute(ctx, pool, steps) {
			complete = false
		}
	}
	return complete
}

// demand builds each pool's planning input from the ledger and the
// informers.
func (a *Allocator) demand() map[string]poolDemand {
	now := a.cfg.Clock.Now()
	var pods []*podInfo
	notReady := map[string]time.Time{}
	nodes := map[string]*corev1.Node{}
	// A pod's pool is chosen again only when something it depends on
	// changed: the pod (a new podInfo), a namespace, a node, a pool. Read
	// before the pods, so a change after it is seen next round.
	var key selectionKey
	if w := a.watch; w != nil {
		key.watched = w.selection.Load()
		w.mu.Lock()
		pods = make([]*podInfo, 0, len(w.pods))
		for _, p := range w.pods {
			pods = append(pods, p)
		}
		for n, t := range w.notReadySince {
			notReady[n] = t
		}
		w.mu.Unlock()
		list, _ := w.nodes.List(labels.Everything())
		for _, n := range list {
			nodes[n.Name] = n
		}
	}

	a.mu.Lock()
	key.pools = a.ledger.upserts
	out := make(map[string]poolDemand, len(a.ledger.pools))
	pools := make([]*v1alpha1.IPPool, 0, len(a.ledger.pools))
	// The agents' reported pods with an address, by pool and node: a pod
	// has its address on its own node. The sets are the reports' own,
	// never changed once made, so they are read after the lock is let go.
	addressed := map[poolNode]map[string]bool{}
	warm, recent := map[poolNode]int{}, map[poolNode]int{}
	candidates := map[string]map[string]bool{} // pool -> nodes to plan for
	for name, ps := range a.ledger.pools {
		pools = append(pools, &v1alpha1.IPPool{Spec: ps.spec})
		pools[len(pools)-1].Name = name
		out[name] = poolDemand{knobs: ps.spec.Warm.Resolved(), free: ps.freeLocked()}
		candidates[name] = make(map[string]bool, len(ps.leases))
		for node := range ps.leases {
			candidates[name][node] = true
			warm[poolNode{name, node}] = a.warmLocked(ps, node)
			recent[poolNode{name, node}] = a.recentLocked(name, node, now)
			if st := a.agents[node][name]; st != nil {
				addressed[poolNode{name, node}] = st.pods
			}
		}
	}
	synced := make([]string, 0, len(a.lastSeq))
	for node := range a.lastSeq {
		synced = append(synced, node)
	}
	unreachable := map[string]bool{}
	for node, until := range a.unreachableUntil {
		if now.Before(until) {
			unreachable[node] = true
		}
	}
	a.mu.Unlock()

	bound := make(map[poolNode]int, len(nodes))
	unbound := map[string]int{}
	selectors := v1alpha1.CompileSelectors(pools)
	for _, p := range pods {
		if !p.chosen || p.chosenAt != key {
			p.pool = a.choosePool(p, selectors, nodes)
			p.chosen, p.chosenAt = true, key
		}
		if candidates[p.pool] == nil {
			continue
		}
		if p.node == "" {
			unbound[p.pool]++
			continue
		}
		k := poolNode{p.pool, p.node}
		if has := addressed[k]; has[string(p.uid)] || has[broker.PodKey(p.namespace, p.name, "")] {
			continue
		}
		bound[k]++
	}

	pending := map[string]int{}
	for k, n := range bound {
		pending[k.pool] += n
	}
	a.mu.Lock()
	for name, ps := range a.ledger.pools {
		ps.pending = pending[name] + unbound[name]
	}
	a.mu.Unlock()
	for i, pool := range pools {
		d := out[pool.Name]
		d.unbound = unbound[pool.Name]
		cand := candidates[pool.Name]
		if a.watch == nil {
			for _, n := range synced {
				cand[n] = true
			}
		}
		for n := range nodes {
			cand[n] = true
		}
		names := make([]string, 0, len(cand))
		for n := range cand {
			names = append(names, n)
		}
		slices.Sort(names) // plans are deterministic
		for _, n := range names {
			if unreachable[n] {
				// Its agent did not answer a revoke: plan around it until
				// it answers again (or the node is declared lost).
				continue
			}
			st := nodeEligible
			if a.watch != nil {
				st = a.nodeStatus(nodes[n], notReady, selectors[i].Node, now)
			}
			k := poolNode{pool.Name, n}
			nd := nodeDemand{node: n, status: st, warm: warm[k], bound: bound[k], recent: recent[k]}
			if st != nodeEligible && nd.warm == 0 {
				continue
			}
			d.nodes = append(d.nodes, nd)
		}
		out[pool.Name] = d
	}
	return out
}

// choosePool is the pool a pod's network gets by the selectors (its or
// its namespace's annotation, the pools' selectors): "" for none, an
// ambiguous choice, or a namespace not known yet.
func (a *Allocator) choosePool(p *podInfo, selectors v1alpha1.Selectors, nodes map[string]*corev1.Node) string {
	ns, err := a.watch.namespaces.Get(p.namespace)
	if err != nil {
		return ""
	}
	var nodeLabels map[string]string
	if p.node != "" {
		nodeLabels = map[string]string{}
		if n := nodes[p.node]; n != nil {
			nodeLabels = n.Labels
		}
	}
	choice, err := selectors.Select(p.annotations, p.labels, ns.Annotations, ns.Labels, nodeLabels, p.namespace)
	if err != nil {
		return ""
	}
	return choice.Name
}

// nodeStatus classifies a node for a pool.
func (a *Allocator) nodeStatus(n *corev1.Node, notReady map[string]time.Time, sel labels.Selector, now time.Time) nodeStatus {
	if n == nil || !sel.Matches(labels.Set(n.Labels)) {
		return nodeExcluded
	}
	if !ready(n) {
		if since, ok := notReady[n.Name]; ok && now.Sub(since) >= a.cfg.NodeLossGrace {
			return nodeExcluded
		}
		return nodePaused
	}
	return nodeEligible
}

// execute carries out one pool's steps: the revokes first, in parallel,
// each one bus round trip to the donor and one write of its lease; then
// the grants, in parallel, each one write of the taker's lease (free
// units, the revoked ones among them) and a push. It reports whether
// every step did all it planned.
func (a *Allocator) execute(ctx context.Context, pool string, steps []nodeStep) bool {
	a.mu.Lock()
	ps := a.ledger.pools[pool]
	a.mu.Unlock()
	if ps == nil {
		return true
	}
	var (
		mu       sync.Mutex
		moved    int
		complete = true
		wg       sync.WaitGroup
	)
	incomplete := func() {
		mu.Lock()
		complete = false
		mu.Unlock()
	}
	for _, s := range steps {
		if s.revoke == 0 {
			continue
		}
		wg.Add(1)
		a.writers <- struct{}{}
		go func() {
			defer func() { <-a.writers; wg.Done() }()
			freed, err := a.takeFrom(ctx, ps, s.node, s.revoke)
			mu.Lock()
			moved += freed
			mu.Unlock()
			if err != nil || freed < s.revoke {
				incomplete()
			}
			if err != nil {
				a.log.Warn("revoke", "pool", pool, "node", s.node, "asked", s.revoke, "got", freed, "err", err)
				if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrNoResponders) {
					a.markUnreachable(s.node)
				}
			}
		}()
	}
	wg.Wait()
	if moved > 0 {
		a.metrics.moved.Add(float64(moved))
	}
	for _, s := range steps {
		if s.grant == 0 {
			continue
		}
		wg.Add(1)
		a.writers <- struct{}{}
		go func() {
			defer func() { <-a.writers; wg.Done() }()
			unlock := a.lockLease(pool, s.node)
			a.mu.Lock()
			claimed := ps.claimLocked(s.node, s.grant)
			a.mu.Unlock()
			gained, err := a.syncLeaseHeld(ctx, pool, s.node, causeGrant)
			a.mu.Lock()
			if err != nil && !errors.Is(err, errUnknownOutcome) {
				ps.unclaimLocked(s.node, ps.leases[s.node].unstored(claimed))
			}
			units, gen := ps.brokerUnits(gained), ps.leases[s.node].gen
			a.mu.Unlock()
			unlock()
			if len(claimed) < s.grant || err != nil {
				incomplete()
			}
			if err != nil {
				a.log.Warn("grant", "pool", pool, "node", s.node, "units", len(claimed), "err", err)
			}
			if len(units) > 0 {
				a.pushLater(ctx, s.node, pool, gen, units)
			}
		}()
	}
	wg.Wait()
	return complete
}

// syncDirty writes the leases that are not as wanted (a write that failed
// or whose outcome is unknown, units a donor gave back), Writers at a
// time, and pushes what they gained. It reports whether all are settled.
func (a *Allocator) syncDirty(ctx context.Context) bool {
	a.mu.Lock()
	var todo []poolNode
	for name, ps := range a.ledger.pools {
		for node := range ps.dirty {
			todo = append(todo, poolNode{name, node})
		}
	}
	a.mu.Unlock()
	var wg sync.WaitGroup
	var failed atomic.Bool
	for _, k := range todo {
		wg.Add(1)
		a.writers <- struct{}{}
		go func() {
			defer func() { <-a.writers; wg.Done() }()
			unlock := a.lockLease(k.pool, k.node)
			gained, err := a.syncLeaseHeld(ctx, k.pool, k.node, causeRetry)
			a.mu.Lock()
			ps := a.ledger.pools[k.pool]
			units, gen := ps.brokerUnits(gained), ps.leases[k.node].gen
			a.mu.Unlock()
			unlock()
			if err != nil {
				failed.Store(true)
				a.log.Warn("lease not yet as wanted", "pool", k.pool, "node", k.node, "err", err)
			}
			if len(units) > 0 {
				a.pushLater(ctx, k.node, k.pool, gen, units)
			}
		}()
	}
	wg.Wait()
	return !failed.Load()
}

// markUnreachable leaves a node out of planning for a while after its
// agent failed to answer, so that rounds do not wait on it each time.
func (a *Allocator) markUnreachable(node string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.unreachableUntil[node] = a.cfg.Clock.Now().Add(a.cfg.UnreachableBackoff)
}

// pushLater sends a grant without holding up the round: a lost push is
// not lost units, they are in the node's lease and its next sync returns
// them.
func (a *Allocator) pushLater(ctx context.Context, node, pool string, gen int64, units []broker.Unit) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.push(ctx, node, pool, gen, units)
	}()
}
