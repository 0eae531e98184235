package inspect

import (
	"cmp"
	"slices"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

// Snapshot is what the commands look at: the API's objects and the
// agents' readings, read once (Gather). The readings are not one instant:
// the pure functions that compare them say where a difference may be a
// change in flight rather than a fault.
type Snapshot struct {
	// Now is when the reading ended.
	Now    time.Time
	Pools  []v1alpha1.IPPool
	Leases []v1alpha1.NodeLease
	Nodes  []corev1.Node
	// Pods are every pod of the cluster; nil when not read (then nothing
	// is said about pods).
	Pods []corev1.Pod
	// Election is the allocator's leader-election Lease, nil when it does
	// not exist; ElectionRef names it either way.
	Election    *coordinationv1.Lease
	ElectionRef string
	// ElectionAt is when the election Lease was read (right after its
	// GET), from which the leader's term is judged; zero: use Now.
	ElectionAt time.Time
	// Agents are the readings of the agents, one per node found, sorted by
	// node; nil when not read.
	Agents []AgentReading
	// GCInterval is the agents' leak-GC period, to say how soon a leak is
	// released (agent.DefaultGCInterval unless told otherwise).
	GCInterval time.Duration
}

// AgentReading is what one agent said, or why it said nothing.
type AgentReading struct {
	Node string `json:"node"`
	// Source is where it was read: "pod kube-system/warmpool-agent-x:9420"
	// through the apiserver's proxy, or a URL given with --agent.
	Source string `json:"source"`
	// State is its record (nil if it could not be read: StateError says
	// why).
	State      *agent.State `json:"state,omitempty"`
	StateError string       `json:"stateError,omitempty"`
	// Metrics are its cache counters (nil if not read or unreadable:
	// MetricsError says why).
	Metrics      *AgentMetrics `json:"metrics,omitempty"`
	MetricsError string        `json:"metricsError,omitempty"`
}

// AgentMetrics are the figures of an agent's /metrics the CLI shows.
type AgentMetrics struct {
	// Hits and Misses are warmpool_agent_cache_{hits,misses}_total, by
	// pool: since the agent's process started.
	Hits   map[string]float64 `json:"hits"`
	Misses map[string]float64 `json:"misses"`
	// Units is warmpool_agent_units, by pool and state (warm, assigned,
	// cooling).
	Units map[string]map[string]float64 `json:"units"`
}

// agentOf returns the reading of node's agent, or nil.
func (s *Snapshot) agentOf(node string) *AgentReading {
	i, ok := slices.BinarySearchFunc(s.Agents, node, func(r AgentReading, n string) int { return cmp.Compare(r.Node, n) })
	if !ok {
		return nil
	}
	return &s.Agents[i]
}

// agentUnread reports whether the record of node's agent, the only one
// of the assignments of the node's pods, is missing from the snapshot
// although the agent exists: found but not read, or the agents not read
// at all. A node with no agent found is not unread: nothing there can
// have assigned an address.
func (s *Snapshot) agentUnread(node string) bool {
	if s.Agents == nil {
		return true
	}
	r := s.agentOf(node)
	return r != nil && r.State == nil
}

// node returns the named Node, or nil when it does not exist.
func (s *Snapshot) node(name string) *corev1.Node {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i]
		}
	}
	return nil
}

// Normalize puts every list in a stable order, so that every output is;
// Gather returns snapshots already normalized, tests that build one call
// it.
func (s *Snapshot) Normalize() {
	slices.SortFunc(s.Pools, func(a, b v1alpha1.IPPool) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(s.Leases, func(a, b v1alpha1.NodeLease) int {
		return cmp.Or(cmp.Compare(a.Spec.Pool, b.Spec.Pool), cmp.Compare(a.Spec.Node, b.Spec.Node), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(s.Nodes, func(a, b corev1.Node) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(s.Pods, func(a, b corev1.Pod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
	})
	slices.SortFunc(s.Agents, func(a, b AgentReading) int { return cmp.Compare(a.Node, b.Node) })
}

// leasesOf returns the NodeLeases of one node.
func (s *Snapshot) leasesOf(node string) []v1alpha1.NodeLease {
	var out []v1alpha1.NodeLease
	for _, l := range s.Leases {
		if l.Spec.Node == node {
			out = append(out, l)
		}
	}
	return out
}

// nodeReady returns the node's Ready condition status ("True", "False",
// "Unknown"), or "Gone" when the Node does not exist.
func (s *Snapshot) nodeReady(name string) string {
	n := s.node(name)
	if n == nil {
		return "Gone"
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return string(c.Status)
		}
	}
	return "Unknown"
}
