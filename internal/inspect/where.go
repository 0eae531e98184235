package inspect

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/warmpool/warmpool/agent/store"
)

// Location is what every record says about one address
// (`kubectl warmpool where ADDRESS`).
type Location struct {
	Address string `json:"address"`
	// Pools are the pools whose subnets contain it.
	Pools []PoolPlace `json:"pools"`
	// Leases are the NodeLeases that list its unit (more than one is an
	// invariant violation): which node holds it, nothing more.
	Leases []LeasePlace `json:"leases"`
	// Agents are the agents' records that hold its unit: whether it is
	// warm, cooling or assigned, and to which pod, is theirs alone.
	Agents []AgentPlace `json:"agents"`
	// Pods are the pods that report it; not host-network pods, whose
	// addresses are their node's (the summary names the node).
	Pods []PodPlace `json:"pods"`
	// Unreachable are the nodes whose agent could not be read: what they
	// hold is unknown.
	Unreachable []string `json:"unreachable,omitempty"`
	// Summary says where the address is, one sentence per record;
	// Disagreements where the records differ.
	Summary       []string `json:"summary"`
	Disagreements []string `json:"disagreements"`
}

// PoolPlace is a pool whose subnet contains the address.
type PoolPlace struct {
	Pool string `json:"pool"`
	// Allocatable: one of the pool's units; Unit is that unit (its IPv4/
	// IPv6 pair in a dual-stack pool); Why says why not otherwise.
	Allocatable bool   `json:"allocatable"`
	Unit        string `json:"unit,omitempty"`
	Why         string `json:"why,omitempty"`
}

// LeasePlace is a NodeLease entry of the address's unit: the node it is
// leased to. The lease says nothing of its state or pod (the holder's
// AgentPlace does).
type LeasePlace struct {
	Lease string `json:"lease"`
	Pool  string `json:"pool"`
	Node  string `json:"node"`
	Epoch int64  `json:"epoch"`
}

// AgentPlace is an agent's unit of the address, with its assignment.
type AgentPlace struct {
	Node       string      `json:"node"`
	Pool       string      `json:"pool"`
	State      store.State `json:"state"`
	Attachment string      `json:"attachment,omitempty"`
	Since      *time.Time  `json:"since,omitempty"`
	Pod        *store.Pod  `json:"pod,omitempty"`
	Fenced     string      `json:"fenced,omitempty"`
}

// PodPlace is a pod that reports the address.
type PodPlace struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	Node      string `json:"node"`
	Phase     string `json:"phase"`
	Deleting  bool   `json:"deleting,omitempty"`
	Source    string `json:"source"`
}

func (pp PodPlace) pod() store.Pod {
	return store.Pod{Namespace: pp.Namespace, Name: pp.Name, UID: pp.UID}
}

// Where finds an address in every record and says where they disagree.
func Where(s *Snapshot, a netip.Addr) Location {
	loc := Location{Address: a.String(), Pools: []PoolPlace{}, Leases: []LeasePlace{}, Agents: []AgentPlace{}, Pods: []PodPlace{},
		Summary: []string{}, Disagreements: []string{}}
	say := func(f string, args ...any) { loc.Summary = append(loc.Summary, fmt.Sprintf(f, args...)) }
	differ := func(f string, args ...any) { loc.Disagreements = append(loc.Disagreements, fmt.Sprintf(f, args...)) }

	ix := indexPools(s.Pools)
	for _, p := range ix.containing(a) {
		pp := PoolPlace{Pool: p.name}
		if u, ok := p.unitOf(a); ok {
			pp.Allocatable, pp.Unit = true, unitString(addrString(u.IPv4), addrString(u.IPv6))
		} else {
			pp.Why = p.whyNot(a)
		}
		loc.Pools = append(loc.Pools, pp)
	}
	switch {
	case len(loc.Pools) == 0:
		say("%s is outside every pool's subnet", a)
	default:
		for _, p := range loc.Pools {
			if p.Allocatable {
				say("%s is unit %s of pool %s", a, p.Unit, p.Pool)
			} else {
				say("%s is in pool %s's subnet but not one of its units: %s", a, p.Pool, p.Why)
			}
		}
	}

	for _, l := range s.Leases {
		for _, u := range l.Spec.Units {
			if !sameAddr(u.IPv4, a) && !sameAddr(u.IPv6, a) {
				continue
			}
			loc.Leases = append(loc.Leases, LeasePlace{Lease: l.Name, Pool: l.Spec.Pool, Node: l.Spec.Node, Epoch: l.Spec.Epoch})
			say("the allocator's record (NodeLease %s): leased to node %s", l.Name, l.Spec.Node)
		}
	}
	if len(loc.Leases) == 0 {
		for _, p := range loc.Pools {
			if p.Allocatable {
				say("the allocator's record: free in pool %s (in no NodeLease)", p.Pool)
			}
		}
	}
	if len(loc.Leases) > 1 {
		differ("%d NodeLeases list it: a unit is in at most one (invariant 2)", len(loc.Leases))
	}

	for i := range s.Agents {
		r := &s.Agents[i]
		if r.State == nil {
			loc.Unreachable = append(loc.Unreachable, r.Node)
			continue
		}
		for _, u := range r.State.Units {
			if !sameAddr(u.IPv4, a) && !sameAddr(u.IPv6, a) && !sameAddr(u.ID, a) {
				continue
			}
			ap := AgentPlace{Node: r.Node, Pool: u.Pool, State: u.State, Attachment: u.Attachment, Fenced: r.State.Fenced}
			if !u.Since.IsZero() {
				t := u.Since
				ap.Since = &t
			}
			for _, as := range r.State.Assignments {
				if as.Pool == u.Pool && as.UnitID == u.ID {
					pod := as.Pod
					ap.Pod = &pod
					if ap.Attachment == "" {
						ap.Attachment = as.Attachment
					}
				}
			}
			loc.Agents = append(loc.Agents, ap)
			switch u.State {
			case store.Assigned:
				say("node %s's agent: assigned to attachment %s (pod %s)", r.Node, ap.Attachment, storePodString(ap.Pod))
			case store.Cooling:
				say("node %s's agent: cooling since %s (released by a DEL; warm again after the reuse delay)", r.Node, ap.Since.UTC().Format(time.RFC3339))
			default:
				say("node %s's agent: warm", r.Node)
			}
			if r.State.Fenced != "" {
				say("node %s's agent is fenced (%s): it uses no warm unit until it syncs", r.Node, r.State.Fenced)
			}
		}
	}
	if len(loc.Agents) > 1 {
		differ("%d agents hold it: a unit is held by at most one node (invariant 2)", len(loc.Agents))
	}
	if s.Agents != nil {
		compareLeaseAndAgents(s, &loc, differ)
		for _, lp := range loc.Leases {
			if s.agentOf(lp.Node) == nil {
				say("no agent was found for node %s: whether it is warm or assigned there, and to which pod, is unknown", lp.Node)
			}
		}
	}
	for _, n := range loc.Unreachable {
		say("node %s's agent could not be read: what it holds is unknown", n)
	}

	hostPods := map[string][]string{} // node -> host-network pods reporting a
	var hostNodes []string
	for i := range s.Pods {
		p := &s.Pods[i]
		if p.Spec.HostNetwork && podIsLive(p) && slices.ContainsFunc(p.Status.PodIPs, func(ip corev1.PodIP) bool { return sameAddr(ip.IP, a) }) {
			if hostPods[p.Spec.NodeName] == nil {
				hostNodes = append(hostNodes, p.Spec.NodeName)
			}
			hostPods[p.Spec.NodeName] = append(hostPods[p.Spec.NodeName], p.Namespace+"/"+p.Name)
		}
		addrs, _ := podAddresses(p)
		for _, pa := range addrs {
			if pa.Addr != a {
				continue
			}
			pp := PodPlace{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), Node: p.Spec.NodeName, Phase: string(p.Status.Phase),
				Deleting: p.DeletionTimestamp != nil, Source: pa.Source}
			loc.Pods = append(loc.Pods, pp)
			say("reported by pod %s/%s (uid %s) on node %s, %s, in %s", pp.Namespace, pp.Name, pp.UID, pp.Node, pp.Phase, pp.Source)
		}
	}
	for _, n := range hostNodes {
		say("node %s's own address (host-network pods report it: %s): warmpool gives no host-network pod an address", n, strings.Join(hostPods[n], ", "))
	}
	if s.Pods != nil {
		// Pods are compared with the records only for an address warmpool
		// may have handed out: one of a pool's units, or one a record
		// lists. Another (a gateway, an excluded or out-of-range static
		// address, another network's) the pods got elsewhere.
		handedOut := len(loc.Leases) > 0 || len(loc.Agents) > 0 || slices.ContainsFunc(loc.Pools, func(p PoolPlace) bool { return p.Allocatable })
		switch {
		case handedOut:
			comparePods(s, &loc, say, differ)
		case len(loc.Pods) > 0:
			say("no pool hands it out: the pods that report it did not get it from warmpool")
		}
		assignedToGonePods(s, &loc, differ)
	}
	return loc
}

// assignedToGonePods: the agents' assignments their leak GC reclaims
// (the doctor's leak-* findings).
func assignedToGonePods(s *Snapshot, loc *Location, differ func(string, ...any)) {
	for _, ap := range loc.Agents {
		if ap.Pod == nil {
			continue
		}
		ref := *ap.Pod
		var p *corev1.Pod
		if i := slices.IndexFunc(s.Pods, func(x corev1.Pod) bool { return x.Namespace == ref.Namespace && x.Name == ref.Name }); i >= 0 {
			p = &s.Pods[i]
		}
		if kind, why := leakOf(p, ref, ap.Node); kind != "" {
			differ("node %s's agent assigns it to pod %s/%s, which %s: a leak the agent's GC reclaims", ap.Node, ref.Namespace, ref.Name, why)
		}
	}
}

// compareLeaseAndAgents: the nodes whose leases list the unit and the
// nodes whose agents hold it must be the same, CompareHoldings' rule for
// one unit. A lease says nothing of the unit's state or pod, so that is
// all there is to compare; a node whose agent was not read (unreachable,
// or none found) is not judged.
func compareLeaseAndAgents(s *Snapshot, loc *Location, differ func(string, ...any)) {
	for _, lp := range loc.Leases {
		held := slices.ContainsFunc(loc.Agents, func(ap AgentPlace) bool { return ap.Node == lp.Node })
		if r := s.agentOf(lp.Node); !held && r != nil && r.State != nil {
			differ("NodeLease %s lists it on node %s, whose agent does not hold it", lp.Lease, lp.Node)
		}
	}
	for _, ap := range loc.Agents {
		if !slices.ContainsFunc(loc.Leases, func(lp LeasePlace) bool { return lp.Node == ap.Node }) {
			differ("node %s's agent holds it (%s) but node %s's NodeLease does not list it", ap.Node, ap.State, ap.Node)
		}
	}
}

// comparePods: a live pod reporting the address must be the one an
// agent's record assigns it to, on that agent's node; an assignment's
// pod must report it (when pods report addresses at all: with Multus, in
// network-status). The agents are the only record of assignments, so a
// pod on a node whose agent was not read is not judged: its record may
// well have it.
func comparePods(s *Snapshot, loc *Location, say, differ func(string, ...any)) {
	live := 0
	for _, pp := range loc.Pods {
		if pp.Deleting || pp.Phase == "Succeeded" || pp.Phase == "Failed" {
			continue
		}
		live++
		assigned := false
		for _, ap := range loc.Agents {
			if ap.Pod == nil || !ap.Pod.Same(pp.pod()) {
				continue
			}
			assigned = true
			if ap.Node != pp.Node {
				differ("pod %s/%s is on node %s, the agent assigning it is node %s's", pp.Namespace, pp.Name, pp.Node, ap.Node)
			}
		}
		switch {
		case assigned:
		case s.agentUnread(pp.Node):
			say("node %s's agent, which would record pod %s/%s's assignment, was not read", pp.Node, pp.Namespace, pp.Name)
		default:
			differ("pod %s/%s reports it, but no agent's record assigns it to that pod", pp.Namespace, pp.Name)
		}
	}
	if live > 1 {
		differ("%d live pods report it: an address is never assigned to two live pods (invariant 1)", live)
	}
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func storePodString(p *store.Pod) string {
	if p == nil {
		return "(unknown)"
	}
	return fmt.Sprintf("%s/%s (uid %s)", p.Namespace, p.Name, p.UID)
}
