package allocator

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
)

// ledger is the allocator's in-memory record of every pool: its units, and
// which node holds each one in which state. It mirrors the NodeLeases: a
// change is made to a copy, persisted, and only then committed here.
// Guarded by Allocator.mu; its methods end in Locked.
type ledger struct {
	pools map[string]*poolState
}

type poolState struct {
	name   string
	spec   v1alpha1.IPPoolSpec
	info   broker.PoolInfo
	units  []Unit
	byID   map[string]int
	total  int64
	holder []string // node holding each unit ("" = free), by index
	// reserved marks units picked for a grant whose lease write is in
	// flight: not free, not yet held.
	reserved []bool
	// unconfirmed: units a reload took off a node's lease (the stored lease
	// lacks what the ledger recorded for that node), by index, with that
	// node. Its agent may still hold them (a sync reply listed them while
	// the write that dropped them was unsettled), so they stay reserved,
	// free for no other node, until the node's sync says whether it holds
	// them (it re-adopts those it does), or the node is lost.
	unconfirmed map[int]string
	cursor      int // where the next free search starts
	leases      map[string]*leaseState
	// hits and misses: ADDs served from warm caches and not, as reported
	// (continued from the pool's status at load); pending: pods needing
	// an address at the last planning round.
	hits, misses int64
	pending      int
}

// leaseState mirrors one NodeLease.
type leaseState struct {
	name            string
	resourceVersion string // "" until created
	generation      int64  // metadata.generation of the last write
	units           map[string]v1alpha1.LeasedUnit
}

func newLedger() *ledger { return &ledger{pools: map[string]*poolState{}} }

// poolNode names one NodeLease: a node's units of a pool.
type poolNode struct{ pool, node string }

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
		holder: make([]string, len(pu.Units)), reserved: make([]bool, len(pu.Units)),
		unconfirmed: map[int]string{}, leases: map[string]*leaseState{},
		hits: p.Status.Hits, misses: p.Status.Misses,
	}
	for i, u := range pu.Units {
		ps.byID[u.ID()] = i
	}
	l.pools[p.Name] = ps
	return nil
}

// loadLeaseLocked takes a persisted NodeLease into the ledger. A unit held
// by two leases, or unknown to its pool, is an error the caller reports: it
// is left with the first holder.
func (l *ledger) loadLeaseLocked(nl *v1alpha1.NodeLease) []error {
	ps, ok := l.pools[nl.Spec.Pool]
	if !ok {
		return []error{fmt.Errorf("lease %s: pool %s does not exist", nl.Name, nl.Spec.Pool)}
	}
	ls := &leaseState{name: nl.Name, resourceVersion: nl.ResourceVersion, generation: nl.Generation, units: map[string]v1alpha1.LeasedUnit{}}
	var errs []error
	for _, u := range nl.Spec.Units {
		id := u.ID()
		i, ok := ps.byID[id]
		if !ok {
			errs = append(errs, fmt.Errorf("lease %s: unit %s is not in pool %s", nl.Name, id, ps.name))
			continue
		}
		if h := ps.holder[i]; h != "" && h != nl.Spec.Node {
			errs = append(errs, fmt.Errorf("lease %s: unit %s is also held by node %s", nl.Name, id, h))
			continue
		}
		ps.holdLocked(i, nl.Spec.Node)
		ls.units[id] = u
	}
	ps.leases[nl.Spec.Node] = ls
	return errs
}

// holdLocked records unit i as node's. One unconfirmed for node (taken
// off its lease by a reload) is back in its lease: confirmed, no longer
// reserved for it.
func (ps *poolState) holdLocked(i int, node string) {
	ps.holder[i] = node
	if ps.unconfirmed[i] == node {
		delete(ps.unconfirmed, i)
		ps.reserved[i] = false
	}
}

// reserveLocked picks up to n free units of the pool for node and marks
// them reserved. It returns their indexes.
func (ps *poolState) reserveLocked(n int) []int {
	var picked []int
	for scanned := 0; scanned < len(ps.units) && len(picked) < n; scanned++ {
		i := (ps.cursor + scanned) % len(ps.units)
		if ps.holder[i] == "" && !ps.reserved[i] {
			ps.reserved[i] = true
			picked = append(picked, i)
		}
	}
	if len(picked) > 0 {
		ps.cursor = (picked[len(picked)-1] + 1) % len(ps.units)
	}
	return picked
}

// unreserveLocked ends reservations for grants and writes. An unconfirmed
// unit (reserved for its node until that node's sync) stays reserved: only
// releaseUnconfirmedLocked and the node's lease taking it back end that.
func (ps *poolState) unreserveLocked(idx []int) {
	for _, i := range idx {
		if _, unconfirmed := ps.unconfirmed[i]; !unconfirmed {
			ps.reserved[i] = false
		}
	}
}

// releaseUnconfirmedLocked frees the units unconfirmed for node that keep
// does not select (nil selects none), and returns how many it freed.
func (ps *poolState) releaseUnconfirmedLocked(node string, keep func(id string) bool) int {
	n := 0
	for i, p := range ps.unconfirmed {
		if p != node || keep != nil && keep(ps.units[i].ID()) {
			continue
		}
		delete(ps.unconfirmed, i)
		ps.reserved[i] = false
		n++
	}
	return n
}

// countsLocked returns the free, warm and assigned units of the pool; a
// unit reserved for a grant in flight counts as warm.
func (ps *poolState) countsLocked() (free, warm, assigned int64) {
	for _, ls := range ps.leases {
		for _, u := range ls.units {
			if u.State == v1alpha1.UnitAssigned {
				assigned++
			} else {
				warm++
			}
		}
	}
	for _, r := range ps.reserved {
		if r {
			warm++
		}
	}
	return ps.total - warm - assigned, warm, assigned
}

// warmCount returns how many of a lease's units are warm; a nil lease
// (the node holds nothing of the pool) has none.
func (ls *leaseState) warmCount() int {
	if ls == nil {
		return 0
	}
	n := 0
	for _, u := range ls.units {
		if u.State == v1alpha1.UnitWarm {
			n++
		}
	}
	return n
}

// leaseUnits returns a lease's units in address order, for writes. Each
// address is parsed once, not at every comparison.
func leaseUnits(units map[string]v1alpha1.LeasedUnit) []v1alpha1.LeasedUnit {
	type keyed struct {
		addr netip.Addr
		unit v1alpha1.LeasedUnit
	}
	sorted := make([]keyed, 0, len(units))
	for id, u := range units {
		a, _ := netip.ParseAddr(id)
		sorted = append(sorted, keyed{a, u})
	}
	slices.SortFunc(sorted, func(x, y keyed) int { return x.addr.Compare(y.addr) })
	out := make([]v1alpha1.LeasedUnit, len(sorted))
	for i, k := range sorted {
		out[i] = k.unit
	}
	return out
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

func leasedUnit(u Unit) v1alpha1.LeasedUnit {
	bu := brokerUnit(u)
	return v1alpha1.LeasedUnit{IPv4: bu.IPv4, IPv6: bu.IPv6, State: v1alpha1.UnitWarm}
}
