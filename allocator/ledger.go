package allocator

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
)

// ledger is the allocator's record of every pool: its units, and for each
// node's NodeLease three sets of units (leaseState). A unit is free exactly
// when no lease's sets list it; owner caches which node's do. Guarded by
// Allocator.mu; its methods end in Locked. A lease's sets change under its
// lease lock too, so that one writer at a time compares them.
type ledger struct {
	pools map[string]*poolState
	// upserts counts the pools' changes: a pool's selectors may have
	// changed, so demand chooses every pod's pool again.
	upserts uint64
}

type poolState struct {
	name  string
	spec  v1alpha1.IPPoolSpec
	info  broker.PoolInfo
	units []Unit
	byID  map[string]int
	total int64
	// owner is, by unit index, the node whose lease's sets list the unit,
	// "" when it is free.
	owner []string
	// contested: units two leases listed at once (an invariant violation
	// found in the stored leases), whose owner is recomputed from every
	// lease when one lets go.
	contested map[int]bool
	cursor    int // where the next free search starts
	leases    map[string]*leaseState
	// dirty: nodes whose lease differs from what it should be (desired
	// not yet written, or a write in flight): each round syncs them.
	dirty map[string]bool
	// hits and misses: ADDs served from warm caches and not, as the agents
	// count them (continued from the pool's status at load); pending: pods
	// needing an address at the last planning round.
	hits, misses int64
	pending      int
}

// leaseState is what the allocator knows and wants of one NodeLease.
//
//   - observed: the units the stored lease lists, at resourceVersion rv
//     ("" until it exists) and metadata.generation gen;
//   - desired: the units the allocator wants it to list;
//   - inflight: the units of writes whose outcome is unknown, sent at
//     resourceVersion inflightRV. Such a write can still land while the
//     stored lease is at inflightRV, and never once it has moved on: the
//     units stay out of the free set until the lease is seen at another
//     resourceVersion (what is stored then says what landed).
type leaseState struct {
	name       string
	rv         string
	gen        int64
	observed   map[int]bool
	desired    map[int]bool
	inflight   map[int]bool
	inflightRV string
}

func newLedger() *ledger { return &ledger{pools: map[string]*poolState{}} }

// poolNode names one NodeLease: a node's units of a pool.
type poolNode struct{ pool, node string }

// settled reports whether the stored lease is what the allocator wants.
func (ls *leaseState) settled() bool {
	return ls.inflight == nil && maps.Equal(ls.desired, ls.observed)
}

// listed is what a sync reply gives the node: the units both stored and
// still wanted (a unit on its way out is not the node's to use any more,
// one not yet stored not yet), in address order.
func (ls *leaseState) listed() []int {
	var out []int
	for i := range ls.desired {
		if ls.observed[i] {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return out
}

// unstored are the units of idx the stored lease does not list: the ones
// a grant whose write failed may take back. A unit that did land (a
// write whose answer was lost, then a read, before the grant gave up)
// may already be listed or pushed to the node: it stays the node's.
func (ls *leaseState) unstored(idx []int) []int {
	var out []int
	for _, i := range idx {
		if !ls.observed[i] {
			out = append(out, i)
		}
	}
	return out
}

// pendingGrant counts the units wanted on the node and not stored yet.
func (ls *leaseState) pendingGrant() int {
	n := 0
	for i := range ls.desired {
		if !ls.observed[i] {
			n++
		}
	}
	return n
}

// union is every unit the lease's sets list: the units not free because of
// this lease.
func (ls *leaseState) union() map[int]bool {
	out := maps.Clone(ls.observed)
	if out == nil {
		out = map[int]bool{}
	}
	maps.Copy(out, ls.desired)
	maps.Copy(out, ls.inflight)
	return out
}

// poolInfo derives what agents need from a pool's spec.
func poolInfo(name string, spec v1alpha1.IPPoolSpec) broker.PoolInfo {
	info := broker.PoolInfo{Name: name}
	add := func(s *v1alpha1.Subnet, prefix *int, gw *string) {
		if s == nil {
			return
		}
		if p, err := netip.ParsePrefix(s.CIDR); err == nil {
			*prefix = p.Bits()
		}
		*gw = s.Gateway
		for _, r := range s.Routes {
			via := r.Via
			if via == "" {
				via = s.Gateway
			}
			info.Routes = append(info.Routes, broker.Route{Dst: r.Dst, GW: via})
		}
	}
	add(spec.IPv4, &info.Prefix4, &info.Gateway4)
	add(spec.IPv6, &info.Prefix6, &info.Gateway6)
	return info
}

// upsertPoolLocked adds a pool or updates its mutable parts (routes,
// knobs). Its units never change: the API makes them immutable.
func (l *ledger) upsertPoolLocked(p *v1alpha1.IPPool) error {
	l.upserts++
	if cur, ok := l.pools[p.Name]; ok {
		cur.spec = p.Spec
		cur.info = poolInfo(p.Name, p.Spec)
		return nil
	}
	pu, err := Enumerate(p.Spec)
	if err != nil {
		return fmt.Errorf("pool %s: %w", p.Name, err)
	}
	ps := &poolState{
		name: p.Name, spec: p.Spec, info: poolInfo(p.Name, p.Spec),
		units: pu.Units, total: pu.Total, byID: make(map[string]int, len(pu.Units)),
		owner: make([]string, len(pu.Units)), contested: map[int]bool{},
		leases: map[string]*leaseState{}, dirty: map[string]bool{},
		hits: p.Status.Hits, misses: p.Status.Misses,
	}
	for i, u := range pu.Units {
		ps.byID[u.ID()] = i
	}
	l.pools[p.Name] = ps
	return nil
}

// loadLeaseLocked takes a stored NodeLease into the ledger as observed and
// desired. A unit unknown to its pool, or listed by another lease too, is
// an error the caller reports; the second lease is not to keep it (it is
// left out of desired, so the lease is rewritten without it).
func (l *ledger) loadLeaseLocked(nl *v1alpha1.NodeLease) []error {
	ps, ok := l.pools[nl.Spec.Pool]
	if !ok {
		return []error{fmt.Errorf("lease %s: pool %s does not exist", nl.Name, nl.Spec.Pool)}
	}
	ls := ps.leaseLocked(nl.Spec.Node)
	stored, errs := ps.indexesLocked(nl.Name, nl.Spec.Units)
	errs = append(errs, ps.updateLocked(nl.Spec.Node, ls, func() {
		ls.rv, ls.gen, ls.observed = nl.ResourceVersion, nl.Generation, stored
		ls.desired = map[int]bool{}
		for i := range stored {
			if h := ps.owner[i]; h == "" || h == nl.Spec.Node {
				ls.desired[i] = true
			}
		}
	})...)
	if !ls.settled() {
		ps.dirty[nl.Spec.Node] = true
	}
	return errs
}

// indexesLocked maps a stored lease's units to the pool's indexes; units
// the pool does not have are errors.
func (ps *poolState) indexesLocked(lease string, units []v1alpha1.LeasedUnit) (map[int]bool, []error) {
	out := make(map[int]bool, len(units))
	var errs []error
	for _, u := range units {
		i, ok := ps.byID[u.ID()]
		if !ok {
			errs = append(errs, fmt.Errorf("lease %s: unit %s is not in pool %s", lease, u.ID(), ps.name))
			continue
		}
		out[i] = true
	}
	return out, errs
}

// leaseLocked returns node's lease state, empty and not stored if the
// ledger has none.
func (ps *poolState) leaseLocked(node string) *leaseState {
	ls := ps.leases[node]
	if ls == nil {
		ls = &leaseState{name: v1alpha1.NodeLeaseName(ps.name, node), observed: map[int]bool{}, desired: map[int]bool{}}
		ps.leases[node] = ls
	}
	return ls
}

// updateLocked applies change to node's lease sets and keeps owner true:
// the units the sets no longer list are free, the ones they now list are
// the node's. A unit another node's sets list too is an invariant
// violation, returned as an error (it stays that node's).
func (ps *poolState) updateLocked(node string, ls *leaseState, change func()) []error {
	before := ls.union()
	change()
	after := ls.union()
	var errs []error
	for i := range before {
		if !after[i] && ps.owner[i] == node {
			ps.owner[i] = ""
			if ps.contested[i] {
				ps.recomputeOwnerLocked(i)
			}
		}
	}
	for i := range after {
		switch h := ps.owner[i]; h {
		case "":
			ps.owner[i] = node
		case node:
		default:
			if !before[i] {
				ps.contested[i] = true
				errs = append(errs, fmt.Errorf("lease %s: unit %s is also listed for node %s", ls.name, ps.units[i].ID(), h))
			}
		}
	}
	return errs
}

// recomputeOwnerLocked gives a contested unit that its owner let go to
// another lease that still lists it, if any.
func (ps *poolState) recomputeOwnerLocked(i int) {
	for node, ls := range ps.leases {
		if ls.observed[i] || ls.desired[i] || ls.inflight[i] {
			ps.owner[i] = node
			return
		}
	}
	delete(ps.contested, i)
}

// claimLocked adds up to n free units to node's desired set and returns
// them. The caller holds the lease's lock.
func (ps *poolState) claimLocked(node string, n int) []int {
	ls := ps.leaseLocked(node)
	var picked []int
	for scanned := 0; scanned < len(ps.units) && len(picked) < n; scanned++ {
		i := (ps.cursor + scanned) % len(ps.units)
		if ps.owner[i] == "" {
			picked = append(picked, i)
		}
	}
	if len(picked) == 0 {
		return nil
	}
	ps.cursor = (picked[len(picked)-1] + 1) % len(ps.units)
	ps.updateLocked(node, ls, func() {
		for _, i := range picked {
			ls.desired[i] = true
		}
	})
	ps.dirty[node] = true
	return picked
}

// unclaimLocked takes units out of node's desired set: they are free once
// the lease is seen without them and no write in flight lists them.
func (ps *poolState) unclaimLocked(node string, idx []int) {
	ls := ps.leases[node]
	if ls == nil {
		return
	}
	ps.updateLocked(node, ls, func() {
		for _, i := range idx {
			delete(ls.desired, i)
		}
	})
	ps.dirty[node] = true
}

// freeLocked counts the free units.
func (ps *poolState) freeLocked() int {
	n := 0
	for _, h := range ps.owner {
		if h == "" {
			n++
		}
	}
	return n
}

func brokerUnit(u Unit) broker.Unit {
	bu := broker.Unit{ID: u.ID()}
	if u.IPv4.IsValid() {
		bu.IPv4 = u.IPv4.String()
	}
	if u.IPv6.IsValid() {
		bu.IPv6 = u.IPv6.String()
	}
	return bu
}

// brokerUnits returns units by index in the bus's form.
func (ps *poolState) brokerUnits(idx []int) []broker.Unit {
	out := make([]broker.Unit, 0, len(idx))
	for _, i := range idx {
		out = append(out, brokerUnit(ps.units[i]))
	}
	return out
}

// leasedUnits returns units by index as a NodeLease lists them, in address
// order.
func (ps *poolState) leasedUnits(set map[int]bool) []v1alpha1.LeasedUnit {
	idx := slices.Sorted(maps.Keys(set))
	out := make([]v1alpha1.LeasedUnit, 0, len(idx))
	for _, i := range idx {
		bu := brokerUnit(ps.units[i])
		out = append(out, v1alpha1.LeasedUnit{IPv4: bu.IPv4, IPv6: bu.IPv6})
	}
	return out
}
