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
		lease("dual", "n1", 1, leasedUnit("10.20.0.10"), leasedUnit("10.20.0.11")),
		lease("dual", "n2", 1, leasedUnit("10.20.0.12")),
	}
	if got := SharedLeaseUnits(ls); len(got) != 0 {
		t.Fatalf("shared %v", got)
	}
	ls = append(ls, lease("dual", "n3", 1, leasedUnit("10.20.0.11"), leasedUnit("10.20.0.10")))
	got := SharedLeaseUnits(ls)
	if len(got) != 2 || got[0].Unit != "10.20.0.10" || got[1].Unit != "10.20.0.11" ||
		got[0].Leases[0].Node != "n1" || got[0].Leases[1].Node != "n3" {
		t.Errorf("shared %+v", got)
	}
	// IPv6-only units are keyed by their IPv6 address.
	v6 := []v1alpha1.NodeLease{
		lease("v6", "n1", 1, v1alpha1.LeasedUnit{IPv6: "fd00::10"}),
		lease("v6", "n2", 1, v1alpha1.LeasedUnit{IPv6: "fd00::11"}),
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

// TestCompareHoldings: units only. Whatever state the agent's record
// gives a leased unit (warm, cooling, assigned), it is held; what
// differs is a unit in one record and not the other.
func TestCompareHoldings(t *testing.T) {
	leases := []v1alpha1.NodeLease{lease("dual", "n1", 1, leasedUnit("10.20.0.10"), leasedUnit("10.20.0.11"),
		leasedUnit("10.20.0.14"), leasedUnit("10.20.0.12"), leasedUnit("10.20.0.15"))}
	st := &agent.State{Node: "n1", Units: []store.Unit{
		agentUnit("10.20.0.10", store.Cooling, ""),         // leased: agrees
		agentUnit("10.20.0.11", store.Assigned, "c1/net1"), // leased: agrees
		agentUnit("10.20.0.15", store.Warm, ""),            // leased: agrees
		agentUnit("10.20.0.13", store.Assigned, "c3/net1"), // not leased
	}}
	got := CompareHoldings(leases, st)
	var kinds []string
	for _, m := range got {
		kinds = append(kinds, string(m.Kind)+" "+m.Unit)
	}
	want := []string{"not-leased 10.20.0.13", "not-held 10.20.0.12", "not-held 10.20.0.14"}
	if !reflect.DeepEqual(kinds, want) {
		t.Fatalf("mismatches %v, want %v", kinds, want)
	}
	if got[0].Agent == nil || got[0].Agent.ID != "10.20.0.13" || got[0].Agent.State != store.Assigned || got[0].Lease != nil ||
		got[1].Lease == nil || got[1].Lease.IPv4 != "10.20.0.12" || got[1].Lease.IPv6 != pair("10.20.0.12") || got[1].Agent != nil {
		t.Errorf("mismatch details %+v", got)
	}
	// A unit of another pool with the same address is another unit.
	other := &agent.State{Node: "n1", Units: []store.Unit{{Pool: "other", ID: "10.20.0.10", State: store.Warm}}}
	if got := CompareHoldings(leases[:1], other); got[0].Kind != NotLeased {
		t.Errorf("another pool's unit: %+v", got[0])
	}
	// The same units, in any state: nothing to report.
	same := &agent.State{Node: "n1"}
	for _, u := range leases[0].Spec.Units {
		same.Units = append(same.Units, agentUnit(u.IPv4, store.Assigned, "c/"+u.IPv4))
	}
	if got := CompareHoldings(leases, same); len(got) != 0 {
		t.Errorf("the same units, all assigned in the agent: %+v", got)
	}
}
