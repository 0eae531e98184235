package inspect

import (
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/allocator"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

var now = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

// testPool is the dual-stack pool of the fixtures: 20 pairs, 10.20.0.10
// with fd00:20::10 onwards.
func testPool() v1alpha1.IPPool {
	return v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "dual", Generation: 1},
		Spec: v1alpha1.IPPoolSpec{
			IPv4: &v1alpha1.Subnet{CIDR: "10.20.0.0/24", Gateway: "10.20.0.1", Exclude: []string{"10.20.0.20"},
				Ranges: []v1alpha1.IPRange{{Start: "10.20.0.10", End: "10.20.0.30"}}},
			IPv6: &v1alpha1.Subnet{CIDR: "fd00:20::/64", Gateway: "fd00:20::1",
				Ranges: []v1alpha1.IPRange{{Start: "fd00:20::10", End: "fd00:20::ffff"}}},
		},
		Status: v1alpha1.IPPoolStatus{Total: 20, Free: 16, Warm: 3, Assigned: 1, Hits: 9, Misses: 1,
			Conditions: []metav1.Condition{
				{Type: v1alpha1.PoolReady, Status: metav1.ConditionTrue, Reason: "Serving", Message: "allocator epoch 1 serves the pool"},
				{Type: v1alpha1.PoolExhausted, Status: metav1.ConditionFalse, Reason: "UnitsAvailable"},
			}},
	}
}

// pair returns the IPv6 address the pool pairs with an IPv4 one.
func pair(v4 string) string {
	pu, err := allocator.Enumerate(testPool().Spec)
	if err != nil {
		panic(err)
	}
	for _, u := range pu.Units {
		if u.IPv4.String() == v4 {
			return u.IPv6.String()
		}
	}
	panic("no unit " + v4)
}

// leasedUnit is the pool's unit of v4 as a lease lists it: addresses
// only, warm or assigned being the agent's record.
func leasedUnit(v4 string) v1alpha1.LeasedUnit {
	return v1alpha1.LeasedUnit{IPv4: v4, IPv6: pair(v4)}
}

func lease(pool, node string, epoch int64, units ...v1alpha1.LeasedUnit) v1alpha1.NodeLease {
	return v1alpha1.NodeLease{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.NodeLeaseName(pool, node), Generation: 3},
		Spec: v1alpha1.NodeLeaseSpec{Pool: pool, Node: node, Epoch: epoch, Units: units}}
}

func node(name string, ready corev1.ConditionStatus) corev1.Node {
	return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready}}}}
}

func pod(ns, name, uid, nodeName string, ips ...string) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)},
		Spec: corev1.PodSpec{NodeName: nodeName}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return p
}

func agentUnit(v4 string, st store.State, attachment string) store.Unit {
	return store.Unit{Pool: "dual", ID: v4, IPv4: v4, IPv6: pair(v4), State: st, Attachment: attachment}
}

// clean is a consistent cluster: n1's lease lists .10 and .11, its
// agent's record has .10 warm and .11 assigned to pod default/a; n2's
// lease lists .12 and .13, both warm in its agent's record; the pool's
// status counts 3 warm and 1 assigned; the leader is epoch 1.
func clean() *Snapshot {
	holder, transitions, dur := "alloc-1", int32(0), int32(15)
	renew := metav1.NewMicroTime(now.Add(-2 * time.Second))
	s := &Snapshot{
		Now:   now,
		Pools: []v1alpha1.IPPool{testPool()},
		Leases: []v1alpha1.NodeLease{
			lease("dual", "n1", 1, leasedUnit("10.20.0.10"), leasedUnit("10.20.0.11")),
			lease("dual", "n2", 1, leasedUnit("10.20.0.12"), leasedUnit("10.20.0.13")),
		},
		Nodes: []corev1.Node{node("n1", corev1.ConditionTrue), node("n2", corev1.ConditionTrue)},
		Pods:  []corev1.Pod{pod("default", "a", "uid-a", "n1", "10.20.0.11", pair("10.20.0.11"))},
		Election: &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "warmpool-allocator"},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseTransitions: &transitions, LeaseDurationSeconds: &dur,
				AcquireTime: &renew, RenewTime: &renew}},
		ElectionRef: "kube-system/warmpool-allocator",
		Agents: []AgentReading{
			{Node: "n1", Source: "pod kube-system/agent-n1:9420", State: &agent.State{Node: "n1", Epoch: 1,
				Units: []store.Unit{agentUnit("10.20.0.10", store.Warm, ""), agentUnit("10.20.0.11", store.Assigned, "ctr-a/net1")},
				Assignments: []store.Assignment{{Attachment: "ctr-a/net1", Pool: "dual", UnitID: "10.20.0.11",
					Pod: store.Pod{Namespace: "default", Name: "a", UID: "uid-a"}, At: now.Add(-time.Minute)}}},
				Metrics: &AgentMetrics{Hits: map[string]float64{"dual": 9}, Misses: map[string]float64{"dual": 1},
					Units: map[string]map[string]float64{"dual": {"warm": 1, "assigned": 1, "cooling": 0}}}},
			{Node: "n2", Source: "http://192.0.2.2:9420", State: &agent.State{Node: "n2", Epoch: 1,
				Units: []store.Unit{agentUnit("10.20.0.12", store.Warm, ""), agentUnit("10.20.0.13", store.Warm, "")}}},
		},
		GCInterval: 30 * time.Second,
	}
	s.Normalize()
	return s
}
