// Units moving: grants (persisted before the push), and revokes from
// other nodes under scarcity.

package allocator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"

	"github.com/nats-io/nats.go"

	"github.com/warmpool/warmpool/broker"
)

// push sends a grant to the node's agent. A lost push is not lost units:
// they are in the node's lease, and the agent's next sync lists them.
func (a *Allocator) push(ctx context.Context, node, pool string, gen int64, units []broker.Unit) {
	a.mu.Lock()
	info := a.ledger.pools[pool].info
	a.mu.Unlock()
	msg := broker.Encode(&broker.Grant{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch, Node: node, Gen: gen, Pool: info, Units: units})
	rctx, cancel := context.WithTimeout(ctx, a.cfg.PushTimeout)
	defer cancel()
	resp, err := a.cfg.Bus.Request(rctx, broker.SubjectGrant(node), msg)
	if err != nil {
		// No responders: the node's agent is not on the bus (starting, or
		// gone); its sync lists the units when it comes. Not worth a Warn
		// on every grant to a node whose agent starts after the allocator.
		level := slog.LevelWarn
		if errors.Is(err, nats.ErrNoResponders) {
			level = slog.LevelDebug
		}
		a.log.Log(ctx, level, "push grant", "node", node, "pool", pool, "units", len(units), "err", err)
		return
	}
	var ack broker.Ack
	if err := broker.Decode(resp, &ack); err != nil || ack.Error != "" {
		a.log.Warn("grant refused", "node", node, "pool", pool, "err", err, "reason", ack.Error)
	}
}

// grant gives node up to n free units of pool, counting those already on
// their way to it (wanted, not yet stored), and returns the units its
// lease gained, stored before they are returned, with the lease's
// generation. A write that failed for good gives the units it claimed
// back; one whose outcome is unknown keeps them on their way (errBusy
// to a miss: ask again).
func (a *Allocator) grant(ctx context.Context, pool, node string, n int) ([]broker.Unit, broker.PoolInfo, int64, error) {
	if err := a.ensurePool(ctx, pool); err != nil {
		return nil, broker.PoolInfo{}, 0, err
	}
	unlock := a.lockLease(pool, node)
	defer unlock()
	a.mu.Lock()
	ps := a.ledger.pools[pool]
	info := ps.info
	pending := ps.leaseLocked(node).pendingGrant()
	claimed := ps.claimLocked(node, n-pending)
	a.mu.Unlock()
	if pending == 0 && len(claimed) == 0 {
		return nil, info, 0, fmt.Errorf("pool %s: %w", pool, errExhausted)
	}
	gained, err := a.syncLeaseHeld(ctx, pool, node, causeMiss)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil && !errors.Is(err, errUnknownOutcome) {
		ps.unclaimLocked(node, ps.leases[node].unstored(claimed))
	}
	if len(gained) == 0 {
		if err == nil {
			err = fmt.Errorf("pool %s: %w", pool, errBusy)
		}
		return nil, info, 0, err
	}
	return ps.brokerUnits(gained), info, ps.leases[node].gen, nil
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

// steal serves a miss on an exhausted pool from other nodes' surplus: the
// nodes holding the most warm units, in turn, give back what they still
// hold warm of what is asked (each agent drops them from cache and record
// before it answers), their leases are written without them, and free
// units are granted to node. It fails with errExhausted when no other
// node holds a warm unit, and errBusy when some do but none could be
// taken now.
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
	for other := range ps.leases {
		if warm := a.warmLocked(ps, other); other != node && warm > 0 {
			donors = append(donors, donor{other, warm})
		}
	}
	// Units on their way (a lease not yet as wanted, or units just
	// granted to this node) mean "ask again", not "exhausted".
	inFlight := len(ps.dirty) > 0 || a.warmLocked(ps, node) > 0
	a.mu.Unlock()
	if len(donors) == 0 {
		if inFlight {
			return nil, info, 0, fmt.Errorf("pool %s: %w", pool, errBusy)
		}
		return nil, info, 0, fmt.Errorf("pool %s: %w", pool, errExhausted)
	}
	slices.SortFunc(donors, func(x, y donor) int { return y.warm - x.warm })
	freed := 0
	for _, d := range donors {
		if freed >= n {
			break
		}
		got, err := a.takeFrom(ctx, ps, d.node, n-freed)
		if err != nil {
			a.log.Warn("revoke for a miss", "pool", pool, "node", d.node, "for_node", node, "err", err)
		}
		freed += got
	}
	if freed == 0 {
		return nil, info, 0, fmt.Errorf("pool %s: %w", pool, errBusy)
	}
	a.log.Info("units moved under scarcity", "pool", pool, "node", node, "units", freed)
	a.metrics.moved.Add(float64(freed))
	units, info, gen, err := a.grant(ctx, pool, node, n)
	if errors.Is(err, errExhausted) {
		err = fmt.Errorf("pool %s: %w", pool, errBusy) // another node's grant took them first
	}
	return units, info, gen, err
}

// takeFrom revokes up to n warm units from donor and writes its lease
// without those it gave back, and returns how many are free now. A donor
// that does not answer in time keeps its units.
func (a *Allocator) takeFrom(ctx context.Context, ps *poolState, donor string, n int) (int, error) {
	unlock := a.lockLease(ps.name, donor)
	defer unlock()
	a.mu.Lock()
	var ids []string
	var gen int64
	if ls := ps.leases[donor]; ls != nil {
		gen = ls.gen
		for _, i := range ls.listed() {
			ids = append(ids, ps.units[i].ID())
		}
	}
	a.mu.Unlock()
	if len(ids) == 0 {
		return 0, nil
	}
	released, err := a.revoke(ctx, donor, ps.name, gen, ids, n)
	if len(released) == 0 {
		return 0, err
	}
	a.mu.Lock()
	var idx []int
	for _, id := range released {
		if i, ok := ps.byID[id]; ok {
			idx = append(idx, i)
		}
	}
	ps.unclaimLocked(donor, idx)
	a.mu.Unlock()
	// The donor's agent dropped them for good (it refuses listings up to
	// gen): if this write fails they stay out of every grant until a
	// later round writes the lease without them.
	_, werr := a.syncLeaseHeld(ctx, ps.name, donor, causeRevoke)
	a.mu.Lock()
	free := 0
	for _, i := range idx {
		if ps.owner[i] == "" {
			free++
		}
	}
	a.mu.Unlock()
	return free, errors.Join(err, werr)
}

// revoke asks a node's agent to give back up to n warm units among ids and
// returns those it gave back.
func (a *Allocator) revoke(ctx context.Context, node, pool string, gen int64, ids []string, n int) ([]string, error) {
	msg := broker.Encode(&broker.Revoke{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch, Pool: pool, Gen: gen, IDs: ids, Count: n})
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

// applyGaveBack takes out of each node's lease the units its agent's sync
// says it gave back to a revoke, as the revoke's answer would have (takeFrom)
// had it arrived: those its lease still lists at the revoke's generation or
// below. A lease written since has been, or will be, listed to the agent at
// a newer generation, and the agent takes back what that listing holds; so
// a unit is never taken out of a lease twice, nor from a node that holds it.
func (a *Allocator) applyGaveBack() {
	a.mu.Lock()
	pending := a.gaveBack
	a.gaveBack = map[string][]broker.GaveBack{}
	a.mu.Unlock()
	for _, node := range slices.Sorted(maps.Keys(pending)) {
		byPool := map[string][]broker.GaveBack{}
		for _, u := range pending[node] {
			byPool[u.Pool] = append(byPool[u.Pool], u)
		}
		for _, pool := range slices.Sorted(maps.Keys(byPool)) {
			unlock := a.lockLease(pool, node)
			a.mu.Lock()
			var idx []int
			if ps := a.ledger.pools[pool]; ps != nil {
				if ls := ps.leases[node]; ls != nil {
					for _, u := range byPool[pool] {
						if i, ok := ps.byID[u.ID]; ok && ls.desired[i] && ls.gen <= u.Gen {
							idx = append(idx, i)
						}
					}
					if len(idx) > 0 {
						ps.unclaimLocked(node, idx)
					}
				}
			}
			a.mu.Unlock()
			unlock()
			if len(idx) > 0 {
				a.log.Info("units its agent gave back to a revoke whose answer was lost leave the node's lease", "pool", pool, "node", node, "units", len(idx))
			}
		}
	}
}
