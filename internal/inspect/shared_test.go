package inspect

import (
	"reflect"
	"testing"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

func TestSharedLeaseUnits(t *testing.T) {
	ls := []v1alpha1.NodeLease{
		lease("dual", "n1", 1, warmUnit("10.20.0.10"), warmUnit("10.20.0.11")),
		lease("dual", "n2", 1, warmUnit("10.20.0.12")),
	}
	if got := SharedLeaseUnits(ls); len(got) != 0 {
		t.Fatalf("shared %v", got)
	}
	ls = append(ls, lease("dual", "n3", 1, warmUnit("10.20.0.11"), warmUnit("10.20.0.10")))
	got := SharedLeaseUnits(ls)
	if len(got) != 2 || got[0].Unit != "10.20.0.10" || got[1].Unit != "10.20.0.11" ||
		got[0].Leases[0].Node != "n1" || got[0].Leases[1].Node != "n3" {
		t.Errorf("shared %+v", got)
	}
	// IPv6-only units are keyed by their IPv6 address.
	v6 := []v1alpha1.NodeLease{
		lease("v6", "n1", 1, v1alpha1.LeasedUnit{IPv6: "fd00::10", State: v1alpha1.UnitWarm}),
		lease("v6", "n2", 1, v1alpha1.LeasedUnit{IPv6: "fd00::11", State: v1alpha1.UnitWarm}),
	}
	if got := SharedLeaseUnits(v6); len(got) != 0 {
		t.Errorf("distinct IPv6 units shared: %+v", got)
	}
}

func TestSharedAgentUnits(t *testing.T) {
	states := map[string]*agent.State{
		"n2": {Node: "n2", Units: []store.Unit{agentUnit("10.20.0.10", store.Warm, ""), agentUnit("10.20.0.12", store.Warm, "")}},
		"n1": {Node: "n1", Units: []store.Unit{agentUnit("10.20.0.10", store.Assigned, "c/net1")}},
		"n3": {Node: "n3"},
	}
	got := SharedAgentUnits(states)
	if want := map[string][]string{"10.20.0.10": {"n1", "n2"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("shared %v, want %v", got, want)
	}
}

func TestCompareHoldings(t *testing.T) {
	leases := []v1alpha1.NodeLease{lease("dual", "n1", 1, warmUnit("10.20.0.10"), assignedUnit("10.20.0.11", "default", "a", "u", "c"),
		warmUnit("10.20.0.14"), warmUnit("10.20.0.12"))}
	st := &agent.State{Node: "n1", Units: []store.Unit{
		agentUnit("10.20.0.10", store.Cooling, ""),  // warm in the lease: agrees
		agentUnit("10.20.0.11", store.Warm, ""),     // assigned in the lease
		agentUnit("10.20.0.13", store.Assigned, ""), // not leased
	}}
	got := CompareHoldings(leases, st)
	var kinds []string
	for _, m := range got {
		kinds = append(kinds, string(m.Kind)+" "+m.Unit)
	}
	want := []string{"state-differs 10.20.0.11", "not-leased 10.20.0.13", "not-held 10.20.0.12", "not-held 10.20.0.14"}
	if !reflect.DeepEqual(kinds, want) {
		t.Errorf("mismatches %v, want %v", kinds, want)
	}
	if got[0].Agent == nil || got[0].Lease == nil || got[1].Agent.ID != "10.20.0.13" || got[2].Lease.IPv4 != "10.20.0.12" {
		t.Errorf("mismatch details %+v", got)
	}
	// A unit of another pool with the same address is another unit.
	other := &agent.State{Node: "n1", Units: []store.Unit{{Pool: "other", ID: "10.20.0.10", State: store.Warm}}}
	if got := CompareHoldings(leases[:1], other); got[0].Kind != NotLeased {
		t.Errorf("another pool's unit: %+v", got[0])
	}
}
