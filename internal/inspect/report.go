package inspect

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

// PoolRow is one line of `kubectl warmpool pools`.
type PoolRow struct {
	Name string `json:"name"`
	IPv4 string `json:"ipv4,omitempty"`
	IPv6 string `json:"ipv6,omitempty"`
	VLAN *int32 `json:"vlan,omitempty"`
	// The pool's status, as the allocator last wrote it (every 5 s when a
	// count changed).
	Total    int64 `json:"total"`
	Free     int64 `json:"free"`
	Warm     int64 `json:"warm"`
	Assigned int64 `json:"assigned"`
	Pending  int64 `json:"pending"`
	Hits     int64 `json:"hits"`
	Misses   int64 `json:"misses"`
	// HitRate is hits / (hits + misses), nil before the first ADD.
	HitRate   *float64 `json:"hitRate,omitempty"`
	Ready     string   `json:"ready"`
	Exhausted string   `json:"exhausted"`
	// ReadyMessage says which allocator epoch serves the pool.
	ReadyMessage string `json:"readyMessage,omitempty"`
	// Leased is how many units the pool's NodeLeases list, to compare
	// with the status's Warm + Assigned (wide output). A lease says only
	// which node holds a unit: the split into warm and assigned is the
	// agents' (Nodes).
	Leased int64 `json:"leased"`
	// LeaseNodes is how many nodes hold units of the pool.
	LeaseNodes int `json:"leaseNodes"`
}

func rate(hits, misses float64) *float64 {
	if hits+misses == 0 {
		return nil
	}
	r := hits / (hits + misses)
	return &r
}

func condition(p *v1alpha1.IPPool, t string) (status, message string) {
	c := meta.FindStatusCondition(p.Status.Conditions, t)
	if c == nil {
		return "-", ""
	}
	return string(c.Status), c.Message
}

// Pools lists every pool with its status and its leases' counts.
func Pools(s *Snapshot) []PoolRow {
	out := []PoolRow{}
	for i := range s.Pools {
		p := &s.Pools[i]
		st := p.Status
		row := PoolRow{Name: p.Name, VLAN: p.Spec.VLAN, Total: st.Total, Free: st.Free, Warm: st.Warm, Assigned: st.Assigned,
			Pending: st.Pending, Hits: st.Hits, Misses: st.Misses, HitRate: rate(float64(st.Hits), float64(st.Misses))}
		if p.Spec.IPv4 != nil {
			row.IPv4 = p.Spec.IPv4.CIDR
		}
		if p.Spec.IPv6 != nil {
			row.IPv6 = p.Spec.IPv6.CIDR
		}
		row.Ready, row.ReadyMessage = condition(p, v1alpha1.PoolReady)
		row.Exhausted, _ = condition(p, v1alpha1.PoolExhausted)
		for _, l := range s.Leases {
			if l.Spec.Pool != p.Name {
				continue
			}
			row.Leased += int64(len(l.Spec.Units))
			if len(l.Spec.Units) > 0 {
				row.LeaseNodes++
			}
		}
		out = append(out, row)
	}
	return out
}

// NodeRow is one line of `kubectl warmpool nodes`: one node and one pool.
type NodeRow struct {
	Node string `json:"node"`
	Pool string `json:"pool"`
	// Leased is how many units the node's NodeLease of the pool lists
	// (the allocator's record: that the node holds them, not whether
	// they are warm or assigned); absent when it has none.
	Leased *int64 `json:"leased,omitempty"`
	Epoch  int64  `json:"epoch,omitempty"`
	// Agent splits the node's units of the pool by the agent's record
	// (its /state), the only record of which are assigned; nil when the
	// agent was not read, and the split is then unknown.
	Agent *AgentCounts `json:"agent,omitempty"`
	// Hits and Misses are the agent's since its process started.
	Hits    float64  `json:"hits"`
	Misses  float64  `json:"misses"`
	HitRate *float64 `json:"hitRate,omitempty"`
	// AgentStatus is "ok", "fenced", "unreachable" or "none" (no agent
	// found for the node); AgentDetail says why.
	AgentStatus string `json:"agentStatus"`
	AgentDetail string `json:"agentDetail,omitempty"`
	AgentSource string `json:"agentSource,omitempty"`
	// NodeReady is the Node's Ready condition, or Gone.
	NodeReady string `json:"nodeReady"`
}

// AgentCounts counts an agent's units by its own states.
type AgentCounts struct {
	Warm     int64 `json:"warm"`
	Assigned int64 `json:"assigned"`
	Cooling  int64 `json:"cooling"`
}

// countAgent counts the units of pool in an agent's record.
func countAgent(st *agent.State, pool string) AgentCounts {
	var c AgentCounts
	for _, u := range st.Units {
		if u.Pool != pool {
			continue
		}
		switch u.State {
		case store.Warm:
			c.Warm++
		case store.Assigned:
			c.Assigned++
		case store.Cooling:
			c.Cooling++
		}
	}
	return c
}

// Nodes lists, per node and pool (only pool when it is not empty), how
// many units the node's lease lists, how its agent's record splits them
// (unknown when the agent was not read), the agent's hit rate and
// whether it is fenced. A node appears when a lease or its agent
// mentions it.
func Nodes(s *Snapshot, pool string) []NodeRow {
	type key struct{ node, pool string }
	rows := map[key]*NodeRow{}
	var keys []key
	get := func(node, p string) *NodeRow {
		k := key{node, p}
		if r, ok := rows[k]; ok {
			return r
		}
		r := &NodeRow{Node: node, Pool: p, NodeReady: s.nodeReady(node), AgentStatus: "none"}
		rows[k] = r
		keys = append(keys, k)
		return r
	}
	for _, l := range s.Leases {
		if pool != "" && l.Spec.Pool != pool {
			continue
		}
		r := get(l.Spec.Node, l.Spec.Pool)
		n := int64(len(l.Spec.Units))
		r.Leased, r.Epoch = &n, l.Spec.Epoch
	}
	for _, a := range s.Agents {
		pools := map[string]bool{}
		if a.State != nil {
			for _, u := range a.State.Units {
				pools[u.Pool] = true
			}
		}
		if a.Metrics != nil {
			for p := range a.Metrics.Units {
				pools[p] = true
			}
		}
		for p := range pools {
			if pool == "" || p == pool {
				get(a.Node, p)
			}
		}
	}
	out := make([]NodeRow, 0, len(keys))
	for _, k := range keys {
		r := rows[k]
		if a := s.agentOf(k.node); a != nil {
			fillAgent(r, a)
		}
		out = append(out, *r)
	}
	slices.SortStableFunc(out, func(a, b NodeRow) int { return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.Pool, b.Pool)) })
	return out
}

func fillAgent(r *NodeRow, a *AgentReading) {
	r.AgentSource = a.Source
	switch {
	case a.State == nil:
		r.AgentStatus, r.AgentDetail = "unreachable", a.StateError
	case a.State.Fenced != "":
		r.AgentStatus, r.AgentDetail = "fenced", a.State.Fenced
	default:
		r.AgentStatus = "ok"
	}
	// The split comes from the record, not the metrics' unit gauge: it
	// is what doctor and where compare with the leases, so the columns
	// of one row add up the way CompareHoldings judges them.
	if a.State != nil {
		c := countAgent(a.State, r.Pool)
		r.Agent = &c
	}
	if m := a.Metrics; m != nil {
		r.Hits, r.Misses = m.Hits[r.Pool], m.Misses[r.Pool]
		r.HitRate = rate(r.Hits, r.Misses)
	}
	if a.MetricsError != "" && r.AgentDetail == "" {
		r.AgentDetail = "metrics: " + a.MetricsError
	}
}

// ElectionReport describes the allocator's leader-election Lease.
type ElectionReport struct {
	Lease  string `json:"lease"`
	Found  bool   `json:"found"`
	Holder string `json:"holder,omitempty"`
	// AcquireTime and RenewTime as the Lease records them.
	AcquireTime   *time.Time `json:"acquireTime,omitempty"`
	RenewTime     *time.Time `json:"renewTime,omitempty"`
	LeaseDuration int32      `json:"leaseDurationSeconds,omitempty"`
	Transitions   int32      `json:"leaseTransitions"`
	// DerivedEpoch is leaseTransitions + 1: the epoch the holder took at
	// its takeover (allocator.RunLeader), if no transition happened since.
	DerivedEpoch int64 `json:"derivedEpoch"`
	// ServedEpoch is the highest epoch the pools' Ready conditions name
	// ("allocator epoch N serves the pool"): the allocator raises its
	// epoch above every NodeLease's at start-up (allocator.New), so the
	// epoch it serves with can exceed DerivedEpoch. 0 when no pool says.
	ServedEpoch int64 `json:"servedEpoch,omitempty"`
	// Expired: the holder has not renewed for longer than the lease
	// duration, or there is no holder: no allocator leads.
	Expired bool `json:"expired"`
	// Age is how long since the last renewal.
	SinceRenew *time.Duration `json:"sinceRenew,omitempty"`
	// at is when the Lease was read, by the operator's clock: Confirm
	// compares two readings' renewals over the time between them.
	at time.Time
}

// LeaderEpoch is the epoch the current leader serves with, as well as
// the records say: the larger of DerivedEpoch and ServedEpoch.
func (e ElectionReport) LeaderEpoch() int64 { return max(e.DerivedEpoch, e.ServedEpoch) }

// NodeLeaseRow is one NodeLease in `kubectl warmpool leases`.
type NodeLeaseRow struct {
	Name  string `json:"name"`
	Pool  string `json:"pool"`
	Node  string `json:"node"`
	Epoch int64  `json:"epoch"`
	// Units is how many units it lists: all a lease says of them.
	Units int `json:"units"`
	// Generation is the lease's metadata.generation (grants carry it).
	Generation int64 `json:"generation"`
	// Flags: "epoch-ahead" (written at an epoch above the leader's),
	// "node-gone" (its Node does not exist).
	Flags []string `json:"flags,omitempty"`
}

// LeasesReport is `kubectl warmpool leases`.
type LeasesReport struct {
	Election   ElectionReport `json:"election"`
	NodeLeases []NodeLeaseRow `json:"nodeLeases"`
}

var servedEpochRE = regexp.MustCompile(`allocator epoch (\d+) serves`)

// Election reads the leader-election Lease and the pools' Ready
// conditions.
func Election(s *Snapshot) ElectionReport {
	e := ElectionReport{Lease: s.ElectionRef}
	for i := range s.Pools {
		if _, msg := condition(&s.Pools[i], v1alpha1.PoolReady); msg != "" {
			if m := servedEpochRE.FindStringSubmatch(msg); m != nil {
				if n, err := strconv.ParseInt(m[1], 10, 64); err == nil && n > e.ServedEpoch {
					e.ServedEpoch = n
				}
			}
		}
	}
	// The Lease's reading time, not the end of the gather that read it
	// (Snapshot.ElectionAt).
	e.at = s.ElectionAt
	if e.at.IsZero() {
		e.at = s.Now
	}
	l := s.Election
	if l == nil {
		e.Expired = true
		return e
	}
	e.Found = true
	if l.Spec.HolderIdentity != nil {
		e.Holder = *l.Spec.HolderIdentity
	}
	if l.Spec.LeaseTransitions != nil {
		e.Transitions = *l.Spec.LeaseTransitions
	}
	e.DerivedEpoch = int64(e.Transitions) + 1
	if l.Spec.AcquireTime != nil {
		t := l.Spec.AcquireTime.Time
		e.AcquireTime = &t
	}
	if l.Spec.LeaseDurationSeconds != nil {
		e.LeaseDuration = *l.Spec.LeaseDurationSeconds
	}
	if l.Spec.RenewTime != nil {
		t := l.Spec.RenewTime.Time
		e.RenewTime = &t
		d := e.at.Sub(t)
		e.SinceRenew = &d
	}
	// One reading can only compare renewTime, the holder's clock, with
	// the operator's: a skew between them shows here. Confirm, with two
	// readings, does not depend on it.
	e.Expired = e.Holder == "" || e.RenewTime == nil ||
		e.at.Sub(*e.RenewTime) > time.Duration(e.LeaseDuration)*time.Second
	return e
}

// Leases reports the election Lease and every NodeLease, flagging a lease
// written at an epoch above the leader's (a deposed or not-yet-deposed
// allocator wrote it after the one the Lease names took over, or the
// records of the epoch are stale) and a lease whose node is gone.
func Leases(s *Snapshot) LeasesReport {
	r := LeasesReport{Election: Election(s), NodeLeases: []NodeLeaseRow{}}
	leader := r.Election.LeaderEpoch()
	for _, l := range s.Leases {
		row := NodeLeaseRow{Name: l.Name, Pool: l.Spec.Pool, Node: l.Spec.Node, Epoch: l.Spec.Epoch, Units: len(l.Spec.Units), Generation: l.Generation}
		if r.Election.Found && l.Spec.Epoch > leader {
			row.Flags = append(row.Flags, "epoch-ahead")
		}
		if s.node(l.Spec.Node) == nil {
			row.Flags = append(row.Flags, "node-gone")
		}
		r.NodeLeases = append(r.NodeLeases, row)
	}
	return r
}

// FormatRate prints a hit rate: "97.5%", or "-" before any ADD.
func FormatRate(r *float64) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", *r*100)
}
