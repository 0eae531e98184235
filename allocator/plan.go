package allocator

import (
	"cmp"
	"slices"

	"github.com/warmpool/warmpool/api/v1alpha1"
)

// nodeDemand is what one planning round knows of a node for one pool.
type nodeDemand struct {
	node string
	// status decides whether the node is warmed, kept, or emptied.
	status nodeStatus
	// warm is how many unassigned units the node holds (warm or cooling).
	warm int
	// bound is how many pods bound to the node need an address of the
	// pool and have none yet: demand now.
	bound int
	// recent is about how many ADDs of the pool the node will serve in
	// the next Config.DemandWindow at the rate of its recent ones (see
	// pace): the headroom a stream of them needs.
	recent int
}

type nodeStatus int

const (
	// nodeEligible: exists, Ready, matched by the pool's nodeSelector.
	nodeEligible nodeStatus = iota
	// nodePaused: NotReady for less than the node-loss grace period. It
	// gets nothing, and gives back only what others need.
	nodePaused
	// nodeExcluded: deleted, NotReady past the grace period, or no longer
	// matched by the pool's nodeSelector. Its warm units are reclaimed.
	nodeExcluded
)

// poolDemand is one pool's input to a planning round.
type poolDemand struct {
	knobs v1alpha1.WarmKnobs
	free  int
	// unbound counts pending pods of the pool not bound to a node yet:
	// cluster demand, spread over the eligible nodes.
	unbound int
	nodes   []nodeDemand
}

// nodeStep is what a round does to a node: take back revoke units, grant
// grant units. A node gets one or the other, never both.
type nodeStep struct {
	node   string
	target int // the node's warm target before scarcity
	share  int // what it may hold after the round
	grant  int
	revoke int
}

// plan computes a round: each node's target, its share of the supply
// (free units plus every node's warm units) and the moves that bring each
// node to its share.
//
// A node's target is max(minWarm, bound + headroom + its part of the
// unbound pods), capped by maxWarm, where the headroom is warmTarget or
// the node's recent ADDs if more (while the supply covers every such
// target: the recent ADDs are speculation). When the supply covers every target,
// each node's share is its target. Otherwise the supply is divided in two
// tiers, each max-min fair: first the pods bound now (up to maxWarm per
// node), then the rest of the targets. So no node keeps a speculative
// buffer while another has a pod waiting, and with as many addresses as
// pods every waiting pod is covered.
//
// Moves: a node below its share is topped up in batches (see below).
// Free units fill the deficits; the surplus of nodes above their share
// is revoked (largest surplus first) only for pods bound now that free
// units cannot cover. Surplus that nobody's bound pods need stays where
// it is (the next burst there is a hit), except on excluded nodes, which
// give everything back, and above maxWarm (down to three quarters of it).
func plan(p poolDemand) []nodeStep {
	k := p.knobs
	minWarm, warmTarget, maxWarm := int(k.MinWarm), int(k.WarmTarget), int(k.MaxWarm)
	steps := make([]nodeStep, len(p.nodes))
	var eligible []int
	supply := p.free
	for i, n := range p.nodes {
		steps[i].node = n.node
		supply += n.warm
		if n.status == nodeEligible {
			eligible = append(eligible, i)
		}
	}
	spread := spreadUnbound(p.unbound, eligible, p.nodes)
	need1 := make([]int, len(p.nodes)) // pods bound now
	need2 := make([]int, len(p.nodes)) // the rest of the target
	known := make([]int, len(p.nodes)) // pods that exist: bound, and the node's part of the unbound
	total := 0
	targets := func(paced bool) {
		total = 0
		for j, i := range eligible {
			n := p.nodes[i]
			headroom := warmTarget
			if paced {
				headroom = max(warmTarget, n.recent)
			}
			t := min(max(minWarm, n.bound+headroom+spread[j]), maxWarm)
			known[i] = n.bound + spread[j]
			steps[i].target = t
			need1[i] = min(n.bound, t)
			need2[i] = t - need1[i]
			total += t
		}
	}
	// A headroom of recent ADDs is speculation: only while the pool can
	// afford every node's; else each keeps warmTarget, and the supply is
	// shared as below (a small pool is not parked on the nodes of a
	// burst it cannot afford; what a node was granted while it could
	// stays there until another node needs it, or it is above maxWarm).
	if targets(true); total > supply {
		targets(false)
	}
	// first is the part of each share that serves pods bound now (tier 1).
	first := need1
	// Ties go to the nodes already holding units, so a share moves as few
	// units as it can.
	order := make([]int, len(p.nodes))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(x, y int) int { return cmp.Compare(p.nodes[y].warm, p.nodes[x].warm) })
	if total <= supply {
		for i := range steps {
			steps[i].share = steps[i].target
		}
	} else {
		s1 := waterFill(need1, supply, order)
		left := supply
		for _, v := range s1 {
			left -= v
		}
		s2 := waterFill(need2, left, order)
		for i := range steps {
			steps[i].share = s1[i] + s2[i]
		}
		first = s1
	}

	// Forced returns, which do not wait for a need: an excluded node
	// empties, and a node above maxWarm comes down a quarter below it (not
	// below the pods known there), so that the DELs that follow do not
	// cost a revoke and a write each.
	available := p.free
	for i, n := range p.nodes {
		surplus := n.warm - steps[i].share
		switch {
		case surplus <= 0:
		case n.status == nodeExcluded:
			steps[i].revoke = surplus
		case n.warm > maxWarm:
			steps[i].revoke = n.warm - max(maxWarm-maxWarm/4, min(known[i], steps[i].share))
		}
		available += steps[i].revoke
	}

	// Deficits. A grant is a lease write, so a node is topped up in
	// batches: one that covers the pods that exist for it and minWarm
	// waits until it is down to half its share, then gets all it lacks at
	// once. So known pods are warm before their ADD when the share holds
	// them all (bound pods when the share holds those), and a node with
	// more pods bound than its share holds (a burst above maxWarm,
	// scarcity) or serving a stream costs a write per half share, not one
	// per round.
	//
	// Of a grant, the part for pods bound now is urgent; the rest
	// (minWarm, headroom, the spread of unbound pods) is speculation. A
	// unit is taken from another node (a bus round trip and two writes)
	// only for the urgent parts; speculation gets what free units are
	// left. So under scarcity units do not shuttle between idle nodes, nor
	// towards nodes whose own pods are about to free theirs.
	urgent := 0
	spec := make([]int, len(p.nodes))
	for i, n := range p.nodes {
		d := steps[i].share - n.warm
		uncovered := known[i] <= steps[i].share && n.warm < known[i] || n.bound <= steps[i].share && n.warm < n.bound
		if d > 0 && (uncovered || n.warm < minWarm || 2*d >= steps[i].share) {
			steps[i].grant = d
			u := min(d, max(first[i]-n.warm, 0))
			urgent += u
			spec[i] = d - u
		}
	}
	for i, got := range waterFill(spec, max(available-urgent, 0), order) {
		steps[i].grant -= spec[i] - got
	}
	fromSurplus := max(urgent-available, 0)
	type donor struct{ i, surplus int }
	var donors []donor
	for i, n := range p.nodes {
		if surplus := n.warm - steps[i].share - steps[i].revoke; surplus > 0 {
			donors = append(donors, donor{i, surplus})
		}
	}
	slices.SortStableFunc(donors, func(x, y donor) int { return cmp.Compare(y.surplus, x.surplus) })
	for _, d := range donors {
		if fromSurplus <= 0 {
			break
		}
		take := min(d.surplus, fromSurplus)
		steps[d.i].revoke += take
		fromSurplus -= take
	}
	return steps
}

// spreadUnbound divides the unbound pods evenly over the eligible nodes;
// the remainder goes to the nodes with the fewest bound pods.
func spreadUnbound(unbound int, eligible []int, nodes []nodeDemand) []int {
	out := make([]int, len(eligible))
	if unbound == 0 || len(eligible) == 0 {
		return out
	}
	base, rest := unbound/len(eligible), unbound%len(eligible)
	order := make([]int, len(eligible))
	for j := range order {
		order[j] = j
		out[j] = base
	}
	slices.SortStableFunc(order, func(x, y int) int { return cmp.Compare(nodes[eligible[x]].bound, nodes[eligible[y]].bound) })
	for _, j := range order[:rest] {
		out[j]++
	}
	return out
}

// waterFill divides supply over needs max-min fairly: every need gets the
// same level, capped by the need, and the units left by rounding go one
// each, in the given order of preference, to the needs above the level.
func waterFill(needs []int, supply int, prefer []int) []int {
	out := make([]int, len(needs))
	sum := 0
	for _, n := range needs {
		sum += n
	}
	if sum <= supply {
		copy(out, needs)
		return out
	}
	asc := make([]int, 0, len(needs))
	for i, n := range needs {
		if n > 0 {
			asc = append(asc, i)
		}
	}
	slices.SortStableFunc(asc, func(x, y int) int { return cmp.Compare(needs[x], needs[y]) })
	left := supply
	level := 0
	for j, i := range asc {
		fair := left / (len(asc) - j)
		if needs[i] > fair {
			level = fair
			break
		}
		out[i] = needs[i]
		left -= needs[i]
		level = needs[i]
	}
	for _, i := range asc {
		if needs[i] > out[i] {
			out[i] = level
			left -= level
		}
	}
	for _, i := range prefer {
		if left == 0 {
			break
		}
		if needs[i] > out[i] {
			out[i]++
			left--
		}
	}
	return out
}
