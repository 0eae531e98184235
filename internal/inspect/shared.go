package inspect

import (
	"cmp"
	"slices"
	"sort"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

// The cross-checks shared with the fault suite's checker
// (internal/rig/faults/checker.go): the same rules whether a test or an
// operator asks. They are pure; callers read the records.

// LeaseRef names a NodeLease.
type LeaseRef struct {
	Name string `json:"name"`
	Pool string `json:"pool"`
	Node string `json:"node"`
}

// SharedUnit is a unit found in more than one NodeLease.
type SharedUnit struct {
	Unit string `json:"unit"`
	// Leases list it, in the order of the list read.
	Leases []LeaseRef `json:"leases"`
}

// SharedLeaseUnits returns the units listed in more than one NodeLease
// (invariant 2: a unit is in at most one), sorted by unit. Units are
// keyed by address across pools: two pools' leases listing one address
// would hand it to two pods just the same. One LIST of the leases is one
// instant of etcd's history, so anything found is a violation, not a
// unit in motion.
func SharedLeaseUnits(leases []v1alpha1.NodeLease) []SharedUnit {
	holders := map[string][]LeaseRef{}
	var order []string
	for _, l := range leases {
		ref := LeaseRef{Name: l.Name, Pool: l.Spec.Pool, Node: l.Spec.Node}
		for _, u := range l.Spec.Units {
			id := u.ID()
			if _, ok := holders[id]; !ok {
				order = append(order, id)
			}
			holders[id] = append(holders[id], ref)
		}
	}
	var out []SharedUnit
	for _, id := range order {
		if len(holders[id]) > 1 {
			out = append(out, SharedUnit{Unit: id, Leases: holders[id]})
		}
	}
	slices.SortFunc(out, func(a, b SharedUnit) int { return compareAddr(a.Unit, b.Unit) })
	return out
}

// SharedAgentUnits returns, by unit, the nodes (sorted) of the agents
// whose records hold it, for the units more than one record holds. The
// records are read one after the other, not at one instant: a unit moving
// between nodes (revoked from one, granted to the other) can be found in
// both, so a caller confirms a suspect with a second reading.
func SharedAgentUnits(states map[string]*agent.State) map[string][]string {
	holders := map[string][]string{}
	for node, st := range states {
		for _, u := range st.Units {
			holders[u.ID] = append(holders[u.ID], node)
		}
	}
	for id, nodes := range holders {
		if len(nodes) < 2 {
			delete(holders, id)
		} else {
			sort.Strings(nodes)
		}
	}
	return holders
}

// MismatchKind says how a node's lease and its agent's record differ about
// a unit.
type MismatchKind string

// Kinds of mismatch. There is no kind for "assigned in one, warm in the
// other": a lease lists units only, whether one is assigned (and to
// which pod) is the agent's record alone.
const (
	// NotLeased: the agent holds a unit its node's lease does not list.
	NotLeased MismatchKind = "not-leased"
	// NotHeld: the lease lists a unit the agent does not hold.
	NotHeld MismatchKind = "not-held"
)

// Mismatch is one unit on which a node's leases and its agent disagree.
type Mismatch struct {
	Kind MismatchKind `json:"kind"`
	Pool string       `json:"pool"`
	Unit string       `json:"unit"`
	// Agent is the agent's unit (NotLeased), with its state and
	// attachment; Lease the lease's (NotHeld), its addresses only.
	Agent *store.Unit          `json:"agent,omitempty"`
	Lease *v1alpha1.LeasedUnit `json:"lease,omitempty"`
}

// CompareHoldings compares what one node's NodeLeases list with what its
// agent's record holds, unit by unit: every unit in one must be in the
// other, whatever its state in the agent (warm, cooling and assigned are
// all held). It returns the agent's units first, in the record's order,
// then the lease's units the agent lacks, sorted by pool and unit.
func CompareHoldings(leases []v1alpha1.NodeLease, st *agent.State) []Mismatch {
	leased := map[store.Key]v1alpha1.LeasedUnit{}
	for _, l := range leases {
		for _, u := range l.Spec.Units {
			leased[store.Key{Pool: l.Spec.Pool, ID: u.ID()}] = u
		}
	}
	var out []Mismatch
	held := map[store.Key]bool{}
	for _, u := range st.Units {
		k := store.Key{Pool: u.Pool, ID: u.ID}
		held[k] = true
		if _, ok := leased[k]; !ok {
			out = append(out, Mismatch{Kind: NotLeased, Pool: u.Pool, Unit: u.ID, Agent: &u})
		}
	}
	var missing []Mismatch
	for k, e := range leased {
		if !held[k] {
			missing = append(missing, Mismatch{Kind: NotHeld, Pool: k.Pool, Unit: k.ID, Lease: &e})
		}
	}
	slices.SortFunc(missing, func(a, b Mismatch) int { return cmp.Or(cmp.Compare(a.Pool, b.Pool), compareAddr(a.Unit, b.Unit)) })
	return append(out, missing...)
}
