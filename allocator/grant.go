// Units moving: grants (persisted before the push), and revokes from
// other nodes under scarcity.

package allocator

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
)

// push sends a grant to the node's agent. A lost push is not lost units:
// they are in the node's lease, and the agent's next sync returns them.
func (a *Allocator) push(ctx context.Context, node, pool string, gen int64, units []broker.Unit) {
	a.mu.Lock()
	info := a.ledger.pools[pool].info
	a.mu.Unlock()
	msg := broker.Encode(&broker.Grant{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch, Node: node, Gen: gen, Pool: info, Units: units})
	rctx, cancel := context.WithTimeout(ctx, a.cfg.PushTimeout)
	defer cancel()
	resp, err := a.cfg.Bus.Request(rctx, broker.SubjectGrant(node), msg)
	if err != nil {
		a.log.Warn("push grant", "node", node, "pool", pool, "units", len(units), "err", err)
		return
	}
	var ack broker.Ack
	if err := broker.Decode(resp, &ack); err != nil || ack.Error != "" {
		a.log.Warn("grant refused", "node", node, "pool", pool, "err", err, "reason", ack.Error)
	}
}

// grant reserves up to n free units of pool for node and grants them.
func (a *Allocator) grant(ctx context.Context, pool, node string, n int) ([]broker.Unit, broker.PoolInfo, int64, error) {
	if err := a.ensurePool(ctx, pool); err != nil {
		return nil, broker.PoolInfo{}, 0, err
	}
	unlock := a.lockLease(pool, node)
	defer unlock()
	a.mu.Lock()
	ps := a.ledger.pools[pool]
	info := ps.info
	idx := ps.reserveLocked(n)
	a.mu.Unlock()
	if len(idx) == 0 {
		return nil, info, 0, fmt.Errorf("pool %s: %w", pool, errExhausted)
	}
	return a.grantReservedHeld(ctx, pool, node, idx)
}

func (a *Allocator) ensurePool(ctx context.Context, pool string) error {
	a.mu.Lock()
	_, ok := a.ledger.pools[pool]
	a.mu.Unlock()
	if ok {
		return nil
	}
	return a.loadPool(ctx, pool)
}

// grantReservedHeld persists reserved units (by index) in the node's
// lease, and only then commits them to the ledger and returns them with
// the lease's new generation. The units are unreserved either way. The
// caller holds the node's lease lock.
func (a *Allocator) grantReservedHeld(ctx context.Context, pool, node string, idx []int) ([]broker.Unit, broker.PoolInfo, int64, error) {
	a.mu.Lock()
	ps := a.ledger.pools[pool]
	info := ps.info
	next, name, rv := a.leaseCopyLocked(ps, node)
	var units []broker.Unit
	for _, i := range idx {
		lu := leasedUnit(ps.units[i])
		next[lu.ID()] = lu
		units = append(units, brokerUnit(ps.units[i]))
	}
	a.mu.Unlock()

	newRV, gen, err := a.writeLease(ctx, pool, node, name, rv, next)
	a.mu.Lock()
	defer a.mu.Unlock()
	if errors.Is(err, errUnsettled) {
		a.keepReservedLocked(pool, node, idx)
		return nil, info, 0, err
	}
	ps.unreserveLocked(idx)
	if err != nil {
		return nil, info, 0, err
	}
	for _, i := range idx {
		ps.holder[i] = node
	}
	a.commitLeaseLocked(ps, node, &leaseState{name: name, resourceVersion: newRV, generation: gen, units: next})
	return units, info, gen, nil
}

// steal serves a miss on an exhausted pool from other nodes' surplus: the
// nodes holding the most warm units, in turn, give back what they still
// hold warm of what is asked (each agent drops them from cache and record
// before it answers), their leases are rewritten without them, and the
// units are granted to node. It fails with errExhausted when no other node
// holds a warm unit, and errBusy when some do but none could be taken now.
func (a *Allocator) steal(ctx context.Context, pool, node string, n int) ([]broker.Unit, broker.PoolInfo, int64, error) {
	a.mu.Lock()
	ps, ok := a.ledger.pools[pool]
	if !ok {
		a.mu.Unlock()
		return nil, broker.PoolInfo{}, 0, fmt.Errorf("pool %s: %w", pool, errUnknownPool)
	}
	info := ps.info
	type donor struct {
		node string
		warm int
	}
	var donors []donor
	for other, ls := range ps.leases {
		if warm := a.warmHeldLocked(ps, other, ls); other != node && warm > 0 {
			donors = append(donors, donor{other, warm})
		}
	}
	// Units on their way (reserved for a grant in flight, or already in
	// this node's lease but not yet pushed to its agent) mean "ask again",
	// not "exhausted".
	inFlight := slices.Contains(ps.reserved, true) || a.warmHeldLocked(ps, node, ps.leases[node]) > 0
	a.mu.Unlock()
	if len(donors) == 0 {
		if inFlight {
			return nil, info, 0, fmt.Errorf("pool %s: %w", pool, errBusy)
		}
		return nil, info, 0, fmt.Errorf("pool %s: %w", pool, errExhausted)
	}
	slices.SortFunc(donors, func(x, y donor) int { return y.warm - x.warm })
	var idx []int
	for _, d := range donors {
		if len(idx) == n {
			break
		}
		taken, err := a.takeFrom(ctx, ps, d.node, n-len(idx))
		if err != nil {
			a.log.Warn("revoke for a miss", "pool", pool, "node", d.node, "for_node", node, "err", err)
		}
		idx = append(idx, taken...)
	}
	if len(idx) == 0 {
		return nil, info, 0, fmt.Errorf("pool %s: %w", pool, errBusy)
	}
	a.log.Info("units moved under scarcity", "pool", pool, "node", node, "units", len(idx))
	a.metrics.moved.Add(float64(len(idx)))
	unlock := a.lockLease(pool, node)
	defer unlock()
	return a.grantReservedHeld(ctx, pool, node, idx)
}

// takeFrom revokes up to n warm units from donor and rewrites its lease
// without those it gave back. They are returned reserved (by index), for
// the caller to grant. A donor that does not answer in time keeps its
// units.
func (a *Allocator) takeFrom(ctx context.Context, ps *poolState, donor string, n int) ([]int, error) {
	unlock := a.lockLease(ps.name, donor)
	defer unlock()
	a.mu.Lock()
	var ids []string
	var gen int64
	if ls := ps.leases[donor]; ls != nil {
		gen = ls.generation
		orphans := a.orphans[poolNode{ps.name, donor}]
		for id, u := range ls.units {
			if u.State == v1alpha1.UnitWarm && len(ids) < n && !slices.Contains(orphans, id) {
				ids = append(ids, id)
			}
		}
	}
	a.mu.Unlock()
	if len(ids) == 0 {
		return nil, nil
	}
	released, err := a.revoke(ctx, donor, ps.name, gen, ids)
	if len(released) == 0 {
		return nil, err
	}
	a.mu.Lock()
	next, name, rv := a.leaseCopyLocked(ps, donor)
	var idx []int
	for _, id := range released {
		if i, ok := ps.byID[id]; ok && ps.holder[i] == donor {
			delete(next, id)
			idx = append(idx, i)
			ps.reserved[i] = true // kept for the taker while the donor's lease is rewritten
		}
	}
	a.mu.Unlock()
	newRV, newGen, werr := a.writeLease(ctx, ps.name, donor, name, rv, next)
	a.mu.Lock()
	defer a.mu.Unlock()
	if werr != nil {
		// The donor's agent dropped them for good (it refuses listings up
		// to gen), but its lease still lists them. They stay out of every
		// grant (held by the donor in the ledger) until a later round
		// rewrites the lease without them.
		ps.unreserveLocked(idx)
		for _, i := range idx {
			a.orphanLocked(ps.name, donor, ps.units[i].ID())
		}
		return nil, werr
	}
	for _, i := range idx {
		ps.holder[i] = ""
	}
	a.commitLeaseLocked(ps, donor, &leaseState{name: name, resourceVersion: newRV, generation: newGen, units: next})
	return idx, err
}

// revoke asks a node's agent to give back warm units and returns those it
// gave back.
func (a *Allocator) revoke(ctx context.Context, node, pool string, gen int64, ids []string) ([]string, error) {
	msg := broker.Encode(&broker.Revoke{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch, Pool: pool, Gen: gen, IDs: ids})
	rctx, cancel := context.WithTimeout(ctx, a.cfg.PushTimeout)
	defer cancel()
	resp, err := a.cfg.Bus.Request(rctx, broker.SubjectRevoke(node), msg)
	if err != nil {
		return nil, fmt.Errorf("revoke from %s: %w", node, err)
	}
	var r broker.Revoked
	if err := broker.Decode(resp, &r); err != nil {
		return nil, err
	}
	if r.Error != "" {
		return r.IDs, fmt.Errorf("revoke from %s: %s", node, r.Error)
	}
	return r.IDs, nil
}
