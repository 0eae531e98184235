// The agents' requests on the bus: misses, reports and syncs, applied in
// each agent run's order.

package allocator

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/logkey"
)

func (a *Allocator) handleMiss(ctx context.Context, m broker.Msg) any {
	var req broker.MissRequest
	reply := &broker.MissReply{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch}
	if err := broker.Decode(m.Data, &req); err != nil {
		reply.Error = err.Error()
		return reply
	}
	a.mu.Lock()
	a.heardFromLocked(req.Node)
	a.mu.Unlock()
	units, info, gen, err := a.grant(ctx, req.Pool, req.Node, max(req.Count, 1))
	if errors.Is(err, errExhausted) {
		units, info, gen, err = a.steal(ctx, req.Pool, req.Node, max(req.Count, 1))
	}
	reply.Pool, reply.Units, reply.Gen = info, units, gen
	switch {
	case errors.Is(err, errBusy):
		reply.Retry = true
	case errors.Is(err, errExhausted):
		reply.Exhausted = true
	case err != nil:
		reply.Error = err.Error()
	default:
		a.log.Debug("miss served", "node", req.Node, "pool", req.Pool, "units", len(units))
		// The miss drained the node's cache: refill it in the background.
		a.kick()
	}
	return reply
}

func (a *Allocator) handleReport(ctx context.Context, m broker.Msg) any {
	var r broker.Report
	reply := &broker.ReportReply{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch}
	if err := broker.Decode(m.Data, &r); err != nil {
		reply.Error = err.Error()
		return reply
	}
	reply.Seq = r.Seq
	unlock, fresh := a.inOrder(r.Node, r.Run, r.Seq, r.Served)
	defer unlock()
	if !fresh {
		a.log.Debug("report overtaken", "node", r.Node, "run", r.Run, "seq", r.Seq, "events", len(r.Events))
		return reply // overtaken by a newer report or sync: what it said is applied
	}
	// Events of units in flight are skipped: the agent's next sync settles
	// them.
	_, _, err := a.applyByPool(ctx, r.Node, r.Events)
	a.log.Debug("report applied", "node", r.Node, "run", r.Run, "seq", r.Seq, "events", len(r.Events), "err", err)
	if err != nil {
		reply.Error = err.Error()
		return reply
	}
	a.kick()
	return reply
}

// inOrder serialises a node's reports and syncs and tells whether one is
// newer than every one applied from the same agent run: a request retried
// after a timeout may arrive after the later request that superseded it.
// A new run (an agent restart) starts afresh.
// The counts of what the run served are taken from a fresh one.
func (a *Allocator) inOrder(node, run string, seq uint64, served map[string]broker.Served) (unlock func(), fresh bool) {
	unlock = a.lockOrder(node)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.heardFromLocked(node)
	last, ok := a.lastSeq[node]
	if ok && last.run == run && seq <= last.seq {
		return unlock, false
	}
	var prev map[string]broker.Served
	if ok && last.run == run {
		prev = last.served
	} else if ok {
		prev = map[string]broker.Served{} // a restart this allocator saw: the new run counts from zero
	}
	a.lastSeq[node] = runSeq{run, seq, a.countServedLocked(node, prev, seq, served)}
	return unlock, true
}

// heardFromLocked records that a node's agent is alive: it is planned for
// again, and its units are not reclaimed as a lost node's.
func (a *Allocator) heardFromLocked(node string) {
	delete(a.unreachableUntil, node)
	a.lastContact[node] = a.cfg.Clock.Now()
}

// lockOrder serialises a node's reports and syncs (and what must not
// cross them); taken before any of the node's lease locks.
func (a *Allocator) lockOrder(node string) (unlock func()) {
	return a.leaseLocks.Lock(orderKey(node))
}

// leaseKey and orderKey name the locks of leaseLocks: a pool may be
// called "order", and neither name may contain a NUL.
func leaseKey(pool, node string) string { return "lease\x00" + pool + "\x00" + node }
func orderKey(node string) string       { return "order\x00" + node }

type runSeq struct {
	run    string
	seq    uint64
	served map[string]broker.Served // the run's counts as last applied
}

// applyByPool applies a node's events, one lease write per pool, and
// returns the units the events named that another node holds now, and
// those reserved without a holder (being granted, or unconfirmed for
// another node). Events of a pool that no longer exists are logged and
// skipped: they must not block the node's other pools.
func (a *Allocator) applyByPool(ctx context.Context, node string, events []broker.Event) (foreign, inFlight []broker.ForeignUnit, _ error) {
	byPool := map[string][]broker.Event{}
	var pools []string
	for _, e := range events {
		if _, ok := byPool[e.Pool]; !ok {
			pools = append(pools, e.Pool)
		}
		byPool[e.Pool] = append(byPool[e.Pool], e)
	}
	for _, pool := range pools {
		ids, reserved, err := a.applyEvents(ctx, pool, node, byPool[pool])
		if errors.Is(err, errUnknownPool) {
			a.log.Warn("events for a pool that does not exist", "node", node, "pool", pool, "events", len(byPool[pool]))
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		for _, id := range ids {
			foreign = append(foreign, broker.ForeignUnit{Pool: pool, ID: id})
		}
		for _, id := range reserved {
			inFlight = append(inFlight, broker.ForeignUnit{Pool: pool, ID: id})
		}
	}
	return foreign, inFlight, nil
}

func (a *Allocator) handleSync(ctx context.Context, m broker.Msg) any {
	var req broker.SyncRequest
	// Half the grace period: the agent stops using warm units well before
	// this allocator may reclaim them from a silent node.
	reply := &broker.SyncReply{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch, WarmTTLMillis: (a.cfg.NodeLossGrace / 2).Milliseconds()}
	if err := broker.Decode(m.Data, &req); err != nil {
		reply.Error = err.Error()
		return reply
	}
	unlock, fresh := a.inOrder(req.Node, req.Run, req.Seq, req.Served)
	if !fresh {
		unlock()
		reply.Error = "stale sync: a newer report or sync of this agent was applied"
		return reply
	}
	// The agent's record says which of its units are assigned: it made the
	// assignments, and reports of them may have been lost.
	events := make([]broker.Event, 0, len(req.Units))
	for _, h := range req.Units {
		kind := broker.EventReleased
		if h.Assigned {
			kind = broker.EventAssigned
		}
		events = append(events, broker.Event{Kind: kind, Pool: h.Pool, UnitID: h.Unit.ID, Attachment: h.Attachment, Pod: h.Pod})
	}
	foreign, inFlight, err := a.applyByPool(ctx, req.Node, events)
	if err == nil && len(inFlight) > 0 {
		// The agent's record holds a unit reserved without a holder: a
		// grant to another node in flight (after this node was lost), or
		// one a reload keeps for another node until its sync. Neither can
		// be named foreign yet, nor left with this agent: it would hold
		// it alongside the next holder. It syncs again once the
		// reservation has ended (fault-suite seed 34).
		err = fmt.Errorf("%d units the agent holds are being granted to or confirmed for another node (%s of pool %s first): sync again",
			len(inFlight), inFlight[0].ID, inFlight[0].Pool)
	}
	holds := heldByPool(req.Units)
	if err == nil {
		err = a.dropUnheldAssignments(ctx, req.Node, holds)
	}
	if err == nil {
		a.releaseUnconfirmed(req.Node, holds)
	}
	unlock()
	a.log.Debug("sync applied", "node", req.Node, "run", req.Run, "seq", req.Seq, "units", len(req.Units), "err", err)
	if err != nil {
		reply.Error = err.Error()
		return reply
	}
	// Units the agent holds that another node holds now were taken while
	// this node was lost: the agent forgets them.
	reply.Foreign = foreign
	a.mu.Lock()
	defer a.mu.Unlock()
	// Top-ups go out as grants after the reply, not inline: a sync must
	// answer within the agent's timeout.
	a.kick()
	for _, ps := range a.ledger.pools {
		ls, ok := ps.leases[req.Node]
		if !ok {
			continue
		}
		lease := broker.Lease{Pool: ps.info, Gen: ls.generation}
		orphans := a.orphans[poolNode{ps.name, req.Node}]
		for _, u := range leaseUnits(ls.units) {
			// An orphan was given up by this agent: listing it would give
			// it back (the agent's memory of giving it up is lost on a
			// restart) just before the allocator frees it.
			if u.State == v1alpha1.UnitWarm && !slices.Contains(orphans, u.ID()) {
				lease.Units = append(lease.Units, broker.Unit{ID: u.ID(), IPv4: u.IPv4, IPv6: u.IPv6})
			}
		}
		reply.Leases = append(reply.Leases, lease)
	}
	return reply
}

// heldByPool is a sync's units as pool -> unit ID -> held.
func heldByPool(held []broker.HeldUnit) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, h := range held {
		if out[h.Pool] == nil {
			out[h.Pool] = map[string]bool{}
		}
		out[h.Pool][h.Unit.ID] = true
	}
	return out
}

// dropUnheldAssignments frees the units a node's leases list as assigned
// that its agent's sync does not hold in any state. Only the agent makes
// and ends assignments, and a sync is applied only if no newer report of
// the agent was, so such a unit left the node (released and dropped by a
// reconcile, say) with the news lost; kept, it would be asked back by the
// leak GC forever and never used again. The caller holds the node's order
// lock.
func (a *Allocator) dropUnheldAssignments(ctx context.Context, node string, holds map[string]map[string]bool) error {
	a.mu.Lock()
	var pools []string
	for name, ps := range a.ledger.pools {
		if ls := ps.leases[node]; ls != nil {
			for id, u := range ls.units {
				if u.State == v1alpha1.UnitAssigned && !holds[name][id] {
					pools = append(pools, name)
					break
				}
			}
		}
	}
	a.mu.Unlock()
	for _, pool := range pools {
		dropped, err := a.dropFromLease(ctx, pool, node, func(id string, u v1alpha1.LeasedUnit) bool {
			return u.State == v1alpha1.UnitAssigned && !holds[pool][id]
		})
		if err != nil {
			return err
		}
		for _, u := range dropped {
			a.log.Warn("assignment its node no longer holds freed", "pool", pool, "node", node, "address", logkey.Address(u.IPv4, u.IPv6),
				"pod", podName(u.Pod), "pod_uid", podUID(u.Pod))
		}
	}
	return nil
}

// releaseUnconfirmed frees the units unconfirmed for node (taken off its
// lease by a reload) that its sync does not hold: its agent does not have
// them, so no agent does. Those it holds were adopted back by the sync's
// events; one still unconfirmed (taken by a reload since) waits for the
// next sync. The caller holds the node's order lock.
func (a *Allocator) releaseUnconfirmed(node string, holds map[string]map[string]bool) {
	a.mu.Lock()
	var pools []string
	for name, ps := range a.ledger.pools {
		for _, p := range ps.unconfirmed {
			if p == node {
				pools = append(pools, name)
				break
			}
		}
	}
	a.mu.Unlock()
	for _, pool := range pools {
		// Under the lease lock: no reload of this lease while we look.
		unlock := a.lockLease(pool, node)
		a.mu.Lock()
		n := a.ledger.pools[pool].releaseUnconfirmedLocked(node, func(id string) bool { return holds[pool][id] })
		a.mu.Unlock()
		unlock()
		if n > 0 {
			a.log.Info("units taken off a node's lease by a reload freed: its agent's sync does not hold them", "pool", pool, "node", node, "units", n)
		}
	}
}

// podName and podUID are the log's pod and pod_uid of a leased unit's pod.
func podName(p *v1alpha1.PodRef) string {
	if p == nil {
		return ""
	}
	return logkey.Pod(p.Namespace, p.Name)
}

func podUID(p *v1alpha1.PodRef) string {
	if p == nil {
		return ""
	}
	return p.UID
}
