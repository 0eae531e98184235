// The agents' requests on the bus: misses, reports (their state) and
// syncs, applied in each agent run's order.

package allocator

import (
	"context"
	"errors"

	"github.com/warmpool/warmpool/broker"
)

func (a *Allocator) handleMiss(ctx context.Context, m broker.Msg) any {
	var req broker.MissRequest
	reply := &broker.MissReply{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch}
	if err := broker.Decode(m.Data, &req); err != nil {
		reply.Error = err.Error()
		return reply
	}
	if refused := a.refuseSender(m.Subject, req.Node); refused != nil {
		return refused
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
	case errors.Is(err, errBusy), errors.Is(err, errUnknownOutcome):
		// Nothing granted now, but units are on their way: ask again.
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
	if refused := a.refuseSender(m.Subject, r.Node); refused != nil {
		return refused
	}
	reply.Seq = r.Seq
	unlock, fresh := a.inOrder(r.Node, r.Run, r.Seq, r.Served, r.Pools)
	unlock()
	if !fresh {
		a.log.Debug("report overtaken", "node", r.Node, "run", r.Run, "seq", r.Seq)
		return reply // overtaken by a newer report or sync: an older state
	}
	a.kick()
	return reply
}

// inOrder serialises a node's reports and syncs and tells whether one is
// newer than every one applied from the same agent run: a request retried
// after a timeout may arrive after the later request that superseded it.
// A new run (an agent restart) starts afresh. A fresh one's state
// (units, what the run served) becomes the node's.
func (a *Allocator) inOrder(node, run string, seq uint64, served map[string]broker.Served, pools map[string]broker.Addressed) (unlock func(), fresh bool) {
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
	a.agents[node] = agentStateOf(pools)
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

func (a *Allocator) handleSync(ctx context.Context, m broker.Msg) any {
	var req broker.SyncRequest
	// Half the grace period: the agent stops using warm units well before
	// this allocator may return them from a silent node.
	reply := &broker.SyncReply{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch, WarmTTLMillis: (a.cfg.NodeLossGrace / 2).Milliseconds()}
	if err := broker.Decode(m.Data, &req); err != nil {
		reply.Error = err.Error()
		return reply
	}
	if refused := a.refuseSender(m.Subject, req.Node); refused != nil {
		return refused
	}
	unlock, fresh := a.inOrder(req.Node, req.Run, req.Seq, req.Served, req.Pools)
	// Under the order lock: a lost node's return (which takes it) is
	// either committed before this listing or not begun.
	defer unlock()
	if !fresh {
		reply.Error = "stale sync: a newer report or sync of this agent was applied"
		return reply
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(req.GaveBack) > 0 {
		a.gaveBack[req.Node] = req.GaveBack
	}
	for _, ps := range a.ledger.pools {
		ls, ok := ps.leases[req.Node]
		if !ok {
			continue
		}
		reply.Leases = append(reply.Leases, broker.Lease{Pool: ps.info, Gen: ls.gen, Units: ps.brokerUnits(ls.listed())})
	}
	a.log.Debug("sync answered", "node", req.Node, "run", req.Run, "seq", req.Seq, "pools", len(req.Pools), "leases", len(reply.Leases))
	// Top-ups go out as grants after the reply, not inline: a sync must
	// answer within the agent's timeout.
	a.kick()
	return reply
}
