package inspect

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

// Exit codes of the CLI. doctor distinguishes warnings from errors so a
// script can page on one and log the other.
const (
	ExitOK       = 0
	ExitFailed   = 1 // the command could not run (bad flags, API unreachable)
	ExitWarnings = 2 // doctor: warnings only
	ExitErrors   = 3 // doctor: at least one error
)

// Severity grades a finding: an Error is an invariant broken or a
// component down, a Warning a difference that may be a change in flight
// or a leak the allocator repairs by itself.
type Severity string

// Severities.
const (
	Warning Severity = "warning"
	Error   Severity = "error"
)

// Finding is one discrepancy the doctor found, with what it means and
// what to do. Kind is stable (docs/cli.md lists them all).
type Finding struct {
	Severity Severity `json:"severity"`
	Kind     string   `json:"kind"`
	Pool     string   `json:"pool,omitempty"`
	Node     string   `json:"node,omitempty"`
	Unit     string   `json:"unit,omitempty"`
	Pod      string   `json:"pod,omitempty"`
	Message  string   `json:"message"`
	Meaning  string   `json:"meaning"`
	Action   string   `json:"action"`
}

// Key identifies a finding across two readings (Confirm).
func (f Finding) Key() string {
	return f.Kind + "\x00" + f.Pool + "\x00" + f.Node + "\x00" + f.Unit + "\x00" + f.Pod
}

// Kinds of finding, each with its severity, meaning and action.
const (
	KindLeaderMissing        = "leader-missing"
	KindLeaderStale          = "leader-stale"
	KindUnitInTwoLeases      = "unit-in-two-leases"
	KindUnitInTwoAgents      = "unit-held-by-two-agents"
	KindOutsidePool          = "address-outside-pool"
	KindUnknownPool          = "lease-of-unknown-pool"
	KindLeaseOfMissingNode   = "lease-of-missing-node"
	KindLeaseEpochAhead      = "lease-epoch-ahead"
	KindStatusDisagrees      = "status-disagrees"
	KindAgentUnreachable     = "agent-unreachable"
	KindAgentFenced          = "agent-fenced"
	KindAgentMissing         = "agent-missing"
	KindAgentUnitNotLeased   = "agent-unit-not-leased"
	KindLeaseUnitNotHeld     = "lease-unit-not-held"
	KindLeakPodGone          = "leak-pod-gone"
	KindLeakPodReplaced      = "leak-pod-replaced"
	KindLeakPodFinished      = "leak-pod-finished"
	KindPodOnOtherNode       = "pod-on-other-node"
	KindUnrecordedPodAddress = "unrecorded-pod-address"
	KindAddressOfOtherPod    = "address-of-another-pod"
	KindAddressOnTwoPods     = "address-on-two-pods"
	KindBadNetworkStatus     = "bad-network-status"
)

type kindInfo struct {
	severity        Severity
	meaning, action string
}

// kinds says what each finding means and what to do. %[1]s in an
// action (the leaks') is the GC window.
var kinds = map[string]kindInfo{
	KindLeaderMissing: {Error, "no allocator has ever taken the election Lease here (or it was deleted): nothing grants, serves misses or moves units between nodes; agents serve only what they hold",
		"check the warmpool-allocator Deployment's pods and logs; the namespace and name are the allocator's --namespace and --lease-name (this CLI's -n and --election-lease)"},
	KindLeaderStale: {Error, "the election Lease has no holder or was not renewed within its duration: no allocator leads now (a takeover may be under way)",
		"run again in a lease duration; if it stays, check the allocator pods (crash-looping, unable to reach the apiserver) and their logs"},
	KindUnitInTwoLeases: {Error, "invariant 2 is broken: two nodes may hand the same address to two pods",
		"capture both NodeLeases (kubectl get nl -o yaml) and the allocators' logs and file a bug; do not edit the leases by hand while pods use the address; `kubectl warmpool where` shows who uses it"},
	KindUnitInTwoAgents: {Error, "invariant 2 is broken: two agents, both unfenced, hold the same unit at once (read twice)",
		"capture both agents' /state and logs and file a bug; `kubectl warmpool where` shows which pods use the address"},
	KindOutsidePool: {Error, "a NodeLease lists an address that is not one of its pool's units (edited by hand, or a pool's addresses changed under it): a pod could get an address outside the subnet's usable set",
		"find who edited the lease (audit log); `kubectl warmpool where` says which pod holds it; pools' addresses are immutable, so recreate the pod after fixing the lease"},
	KindUnknownPool: {Warning, "a NodeLease names a pool that does not exist (deleted with units still leased): its units are no longer managed",
		"drain the pods using those addresses, then delete the NodeLease; or recreate the pool with the same addresses"},
	KindLeaseOfMissingNode: {Warning, "a NodeLease belongs to a node that no longer exists: its units come back once the node is lost for the allocator's node-loss grace and its pods are gone (which units were assigned is its agent's record, likely gone with it)",
		"wait for the node-loss grace (allocator --node-loss-grace) and for the node's pods to be deleted; if it stays, check the allocator's log"},
	KindLeaseEpochAhead: {Warning, "a NodeLease was written at an epoch above the leader's (as the election Lease and the pools' Ready conditions record it): another allocator wrote after the current one took over, or the current one's records are not written yet",
		"run again in a few seconds; if it stays, check that one allocator leads (warmpool_allocator_epoch on each replica) and the allocators' logs for 'deposed'"},
	KindStatusDisagrees: {Warning, "the pool's status counts differ from its NodeLeases' (units held: warm + assigned) or, when every holder's agent was read, from the agents' records (warm, counting cooling, and assigned): the status is written every 5 s when a count changes, and counts grants in flight as warm",
		"run again in a few seconds; if it stays, check the allocator's log for 'pool status' errors"},
	KindAgentUnreachable: {Error, "the node's agent could not be read: it may be down (the node's ADDs fail with code 11) or only unreachable from here (pod proxy, RBAC, --agent URL); its record is the only one of which units are assigned there, so its units and its pods' addresses are not checked",
		"kubectl -n kube-system get pods -l app.kubernetes.io/name=warmpool-agent -o wide; its logs; that the CLI may get pods/proxy in that namespace"},
	KindAgentFenced: {Warning, "the agent uses none of its warm units until it resynchronises with the allocator (just started, or silent on the bus past its warm TTL): ADDs on the node are misses",
		"normal for a moment after a restart; if it stays, check the agent's bus connection (its log, the allocator's NATS service)"},
	KindAgentMissing: {Warning, "a node holds units in its NodeLease but no agent was found for it",
		"check the warmpool-agent DaemonSet covers the node (tolerations, node selector); for agents outside pods, pass --agent NODE=URL"},
	KindAgentUnitNotLeased: {Error, "an agent holds a unit its node's NodeLease does not list: the allocator may grant it to another node, and two pods could get the address",
		"run again; if it stays, capture the agent's /state and the NodeLease and file a bug; the agent's next sync (every 30 s) should make it drop a warm one"},
	KindLeaseUnitNotHeld: {Warning, "the NodeLease lists a unit its agent does not hold: normal while a grant is in flight (the lease is written before the push); otherwise the unit is lost to the node until the agent's next sync",
		"run again in 30 s (an agent's sync period); if it stays, check the agent's bus connection and log"},
	KindLeakPodGone: {Warning, "a leak: the pod the unit is assigned to is gone without a CNI DEL (force-deleted, or its node died), so the address is unusable until reclaimed",
		"the node's agent's leak GC releases it within about %[1]s; if it stays longer, check the agent's log ('leak GC') and warmpool_agent_reclaimed_total"},
	KindLeakPodReplaced: {Warning, "a leak: a pod of that name exists with another UID, or, when the record has none, on another node (re-created), and the old pod's sandbox got no DEL",
		"the node's agent's leak GC releases it within about %[1]s; if it stays, check the agent's log ('leak GC')"},
	KindLeakPodFinished: {Warning, "a leak: the pod has finished (Succeeded or Failed) and still holds the unit",
		"the node's agent's leak GC releases it within about %[1]s; if it stays, check the agent's log and whether the runtime DELs finished sandboxes"},
	KindPodOnOtherNode: {Error, "an agent's record assigns the unit to a pod that is bound to another node than the agent's: the record and the API disagree about where the pod runs",
		"capture the agent's /state, the NodeLease and the pod; delete the pod so its address is released and reassigned"},
	KindUnrecordedPodAddress: {Error, "a live pod reports one of a pool's units, which no agent's record assigns to it (its node's agent was read): warmpool may hand it to another pod (invariant 1)",
		"check how the pod got it (`kubectl warmpool where`; a static address or another IPAM inside a pool's range?); exclude it from the pool or recreate the pod"},
	KindAddressOfOtherPod: {Error, "a live pod reports an address an agent's record assigns to another pod",
		"`kubectl warmpool where ADDRESS`; recreate the pod that should not have it"},
	KindAddressOnTwoPods: {Error, "invariant 1 is broken: two live pods report the same address",
		"`kubectl warmpool where ADDRESS`; recreate one of the pods; capture both nodes' agents' /state and file a bug"},
	KindBadNetworkStatus: {Warning, "the pod's network-status annotation is not valid JSON: its secondary interfaces' addresses cannot be checked",
		"check the meta-plugin (Multus) version writing it"},
}

// DoctorReport is what `kubectl warmpool doctor` prints.
type DoctorReport struct {
	Findings []Finding `json:"findings"`
	Errors   int       `json:"errors"`
	Warnings int       `json:"warnings"`
	Checked  Checked   `json:"checked"`
	// Transient counts findings of the first reading that the second
	// did not confirm (changes in flight), with Confirm.
	Transient int `json:"transient"`
	// election is the reading of the election Lease the report was made
	// from (nil if not made by Doctor): Confirm judges the leader from
	// two of them.
	election *ElectionReport
}

// Checked counts what the doctor looked at.
type Checked struct {
	Pools        int `json:"pools"`
	Leases       int `json:"leases"`
	LeasedUnits  int `json:"leasedUnits"`
	Agents       int `json:"agents"`
	AgentsRead   int `json:"agentsRead"`
	AgentUnits   int `json:"agentUnits"`
	Pods         int `json:"pods"`
	PodAddresses int `json:"podAddresses"`
}

type doctor struct {
	s        *Snapshot
	ix       *poolIndex
	findings []Finding
	checked  Checked
	e        ElectionReport
}

func (d *doctor) add(kind string, f Finding, format string, args ...any) {
	d.findings = append(d.findings, newFinding(kind, f, d.s.GCInterval, format, args...))
}

// newFinding fills in a finding of kind: its severity, meaning and
// action (a leak's with the GC window of gc), and its message.
func newFinding(kind string, f Finding, gc time.Duration, format string, args ...any) Finding {
	info := kinds[kind]
	f.Kind, f.Severity, f.Meaning = kind, info.severity, info.meaning
	f.Action = info.action
	if strings.Contains(info.action, "%[1]s") {
		f.Action = fmt.Sprintf(info.action, gcWindow(gc))
	}
	f.Message = fmt.Sprintf(format, args...)
	return f
}

func gcWindow(interval time.Duration) string {
	return fmt.Sprintf("%s (2 × the GC interval of %s, agent flag --gc-interval)", 2*interval, interval)
}

// Doctor cross-checks the allocator's records against the agents' and
// the pods, and reports every discrepancy. What was not read (nil Pods,
// nil Agents) is not checked.
func Doctor(s *Snapshot) DoctorReport {
	d := &doctor{s: s, ix: indexPools(s.Pools)}
	d.checked.Pools, d.checked.Leases = len(s.Pools), len(s.Leases)
	d.election()
	d.leases()
	d.status()
	if s.Agents != nil {
		d.agents()
	}
	if s.Pods != nil {
		d.pods()
	}
	r := report(d.findings, d.checked)
	r.election = &d.e
	return r
}

func report(fs []Finding, c Checked) DoctorReport {
	slices.SortStableFunc(fs, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(rank(a.Severity), rank(b.Severity)), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Node, b.Node),
			cmp.Compare(a.Pool, b.Pool), compareAddr(a.Unit, b.Unit), cmp.Compare(a.Pod, b.Pod))
	})
	r := DoctorReport{Findings: fs, Checked: c}
	if r.Findings == nil {
		r.Findings = []Finding{}
	}
	for _, f := range fs {
		if f.Severity == Error {
			r.Errors++
		} else {
			r.Warnings++
		}
	}
	return r
}

func rank(s Severity) int {
	if s == Error {
		return 0
	}
	return 1
}

// Confirm keeps the findings of a second reading that the first also
// had: a difference that is a change in flight (a grant pushed after its
// lease write, a report on its way, a unit between two agents) is gone
// from one of them. A finding present once is counted as transient.
//
// The leader is judged from the two readings of the election Lease
// instead (leaderAcross): one reading can only compare the holder's
// renewTime with the operator's clock, two can see whether it renewed.
func Confirm(first, second DoctorReport) DoctorReport {
	both := first.election != nil && second.election != nil
	seen := map[string]bool{}
	for _, f := range first.Findings {
		seen[f.Key()] = true
	}
	var kept []Finding
	for _, f := range second.Findings {
		if both && f.Kind == KindLeaderStale {
			continue
		}
		if seen[f.Key()] {
			kept = append(kept, f)
		}
	}
	if both {
		if f, ok := leaderAcross(first, second); ok {
			kept = append(kept, f)
		}
	}
	keptKeys := map[string]bool{}
	for _, f := range kept {
		keptKeys[f.Key()] = true
	}
	transient := 0
	for _, fs := range [][]Finding{first.Findings, second.Findings} {
		for _, f := range fs {
			if !keptKeys[f.Key()] {
				transient++
			}
		}
	}
	r := report(kept, second.Checked)
	r.Transient = transient
	r.election = second.election
	return r
}

// leaderAcross returns the leader-stale finding two readings of the
// election Lease confirm, if any. A leader renews every retry period (2 s
// by default, under --recheck's 3 s), so a renewTime that changed between
// the readings, or a new holder, is a live leader whatever either reading
// concluded from the operator's clock. One that did not change is stale
// if the readings are more than a lease duration apart (by the
// operator's clock alone: no skew enters), or if each reading found it
// expired (readings closer than a renewal).
func leaderAcross(first, second DoctorReport) (Finding, bool) {
	a, b := *first.election, *second.election
	if !a.Found || !b.Found {
		return Finding{}, false // leader-missing says it, or the Lease was just created
	}
	i := slices.IndexFunc(second.Findings, func(f Finding) bool { return f.Kind == KindLeaderStale })
	switch {
	case b.Holder == "":
		// Released, and still released a recheck later: no standby
		// took over.
		if i < 0 || a.Holder != "" {
			return Finding{}, false
		}
		return second.Findings[i], true
	case a.Holder != b.Holder || !sameTime(a.RenewTime, b.RenewTime):
		return Finding{}, false
	}
	apart := b.at.Sub(a.at)
	if apart > time.Duration(b.LeaseDuration)*time.Second {
		return newFinding(KindLeaderStale, Finding{}, 0, "the election Lease %s held by %s was not renewed between two readings %s apart (lease duration %ds)",
			b.Lease, b.Holder, apart.Round(100*time.Millisecond), b.LeaseDuration), true
	}
	if a.Expired && i >= 0 {
		f := second.Findings[i]
		f.Message += fmt.Sprintf(", and not between two readings %s apart", apart.Round(100*time.Millisecond))
		return f, true
	}
	return Finding{}, false
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

func (d *doctor) election() {
	e := Election(d.s)
	d.e = e
	switch {
	case !e.Found:
		d.add(KindLeaderMissing, Finding{}, "the election Lease %s does not exist", e.Lease)
	case e.Holder == "":
		d.add(KindLeaderStale, Finding{}, "the election Lease %s has no holder (released; transitions %d)", e.Lease, e.Transitions)
	case e.Expired:
		since := "never renewed"
		if e.SinceRenew != nil {
			since = "last renewed " + e.SinceRenew.Round(time.Second).String() + " ago"
		}
		d.add(KindLeaderStale, Finding{}, "the election Lease %s held by %s was %s (lease duration %ds)", e.Lease, e.Holder, since, e.LeaseDuration)
	}
	if !e.Found {
		return
	}
	leader := e.LeaderEpoch()
	for _, l := range d.s.Leases {
		if l.Spec.Epoch > leader {
			d.add(KindLeaseEpochAhead, Finding{Pool: l.Spec.Pool, Node: l.Spec.Node}, "NodeLease %s was written at epoch %d; the leader's is %d (leaseTransitions+1 = %d, pools' Ready condition: %d)",
				l.Name, l.Spec.Epoch, leader, e.DerivedEpoch, e.ServedEpoch)
		}
	}
}

func (d *doctor) leases() {
	for _, sh := range SharedLeaseUnits(d.s.Leases) {
		names := make([]string, 0, len(sh.Leases))
		for _, l := range sh.Leases {
			names = append(names, l.Name+" (node "+l.Node+")")
		}
		d.add(KindUnitInTwoLeases, Finding{Pool: sh.Leases[0].Pool, Unit: sh.Unit}, "unit %s is in %d NodeLeases: %v", sh.Unit, len(sh.Leases), names)
	}
	for _, l := range d.s.Leases {
		d.checked.LeasedUnits += len(l.Spec.Units)
		f := Finding{Pool: l.Spec.Pool, Node: l.Spec.Node}
		if d.s.node(l.Spec.Node) == nil {
			d.add(KindLeaseOfMissingNode, f, "NodeLease %s is node %s's, which does not exist; it lists %d units, %s", l.Name, l.Spec.Node, len(l.Spec.Units), d.splitOf(l))
		}
		p := d.ix.get(l.Spec.Pool)
		if p == nil {
			if len(l.Spec.Units) > 0 {
				d.add(KindUnknownPool, f, "NodeLease %s lists %d units of pool %s, which does not exist", l.Name, len(l.Spec.Units), l.Spec.Pool)
			}
			continue
		}
		for _, u := range l.Spec.Units {
			if why := p.checkUnit(u); why != "" {
				f := f
				f.Unit = u.ID()
				d.add(KindOutsidePool, f, "NodeLease %s lists %s: %s", l.Name, unitString(u.IPv4, u.IPv6), why)
			}
		}
	}
}

// splitOf says how a lease's units split into warm and assigned, by its
// node's agent's record: the lease cannot say.
func (d *doctor) splitOf(l v1alpha1.NodeLease) string {
	r := d.s.agentOf(l.Spec.Node)
	if r == nil || r.State == nil {
		return "which of them are assigned is unknown (its agent was not read)"
	}
	c := countAgent(r.State, l.Spec.Pool)
	return fmt.Sprintf("its agent's record: %d warm, %d cooling, %d assigned", c.Warm, c.Cooling, c.Assigned)
}

// status compares each pool's status with the records: what it counts
// held (warm + assigned) with its leases' units, and its split into warm
// and assigned with the agents' records when all of them could be read.
func (d *doctor) status() {
	for _, row := range Pools(d.s) {
		if row.Ready == "-" {
			continue // not served yet: no status to compare
		}
		differs := row.Free != row.Total-row.Leased || row.Warm+row.Assigned != row.Leased
		agents, known := d.agentsSplit(row.Name)
		var split string
		switch {
		case known:
			differs = differs || row.Warm != agents.Warm+agents.Cooling || row.Assigned != agents.Assigned
			split = fmt.Sprintf("its agents' records: warm %d (%d cooling), assigned %d", agents.Warm+agents.Cooling, agents.Cooling, agents.Assigned)
		default:
			split = "its agents' split is unknown (not every holder's agent was read)"
		}
		if differs {
			d.add(KindStatusDisagrees, Finding{Pool: row.Name}, "pool %s's status says free %d, warm %d, assigned %d; its NodeLeases list %d units (free %d); %s",
				row.Name, row.Free, row.Warm, row.Assigned, row.Leased, row.Total-row.Leased, split)
		}
	}
}

// agentsSplit sums the pool's units by state over the agents' records;
// false when an agent of a node whose lease lists units of the pool was
// not read (or the agents were not read at all), since its part of the
// split is then unknown.
func (d *doctor) agentsSplit(pool string) (AgentCounts, bool) {
	if d.s.Agents == nil {
		return AgentCounts{}, false
	}
	for _, l := range d.s.Leases {
		if r := d.s.agentOf(l.Spec.Node); l.Spec.Pool == pool && len(l.Spec.Units) > 0 && (r == nil || r.State == nil) {
			return AgentCounts{}, false
		}
	}
	var sum AgentCounts
	for _, r := range d.s.Agents {
		if r.State == nil {
			continue
		}
		c := countAgent(r.State, pool)
		sum.Warm, sum.Assigned, sum.Cooling = sum.Warm+c.Warm, sum.Assigned+c.Assigned, sum.Cooling+c.Cooling
	}
	return sum, true
}

func (d *doctor) agents() {
	read := map[string]*agent.State{}
	for i := range d.s.Agents {
		r := &d.s.Agents[i]
		d.checked.Agents++
		f := Finding{Node: r.Node}
		switch {
		case r.State == nil:
			d.add(KindAgentUnreachable, f, "node %s's agent (%s): %s", r.Node, r.Source, r.StateError)
			continue
		case r.State.Fenced != "":
			d.add(KindAgentFenced, f, "node %s's agent is fenced: %s", r.Node, r.State.Fenced)
		}
		d.checked.AgentsRead++
		d.checked.AgentUnits += len(r.State.Units)
		if r.State.Fenced == "" {
			read[r.Node] = r.State
			d.holdings(r.Node, r.State)
		}
	}
	for _, l := range d.s.Leases {
		if d.s.agentOf(l.Spec.Node) == nil && len(l.Spec.Units) > 0 && d.s.node(l.Spec.Node) != nil {
			d.add(KindAgentMissing, Finding{Node: l.Spec.Node, Pool: l.Spec.Pool}, "node %s's NodeLease lists %d units of pool %s but no agent was found for it", l.Spec.Node, len(l.Spec.Units), l.Spec.Pool)
		}
	}
	shared := SharedAgentUnits(read)
	ids := make([]string, 0, len(shared))
	for id := range shared {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, compareAddr)
	for _, id := range ids {
		d.add(KindUnitInTwoAgents, Finding{Unit: id}, "unit %s is held by the agents of %v: %s", id, shared[id], describeHolders(read, shared[id], id))
	}
}

func describeHolders(states map[string]*agent.State, nodes []string, id string) string {
	var out string
	for _, n := range nodes {
		for _, u := range states[n].Units {
			if u.ID == id {
				if out != "" {
					out += "; "
				}
				out += fmt.Sprintf("%s: %s %s", n, u.State, u.Attachment)
			}
		}
	}
	return out
}

// holdings compares one reachable, unfenced agent with its node's leases:
// units only, since a lease says nothing of a unit's state or pod.
func (d *doctor) holdings(node string, st *agent.State) {
	for _, m := range CompareHoldings(d.s.leasesOf(node), st) {
		f := Finding{Node: node, Pool: m.Pool, Unit: m.Unit}
		switch m.Kind {
		case NotLeased:
			d.add(KindAgentUnitNotLeased, f, "node %s's agent holds %s of pool %s (%s), which the node's NodeLease does not list", node, m.Unit, m.Pool,
				strings.TrimSpace(string(m.Agent.State)+" "+m.Agent.Attachment))
		case NotHeld:
			d.add(KindLeaseUnitNotHeld, f, "node %s's NodeLease lists %s of pool %s, which its agent does not hold", node, m.Unit, m.Pool)
		}
	}
}

// assignment is one agent's record of a unit assigned to a pod: the only
// record of assignments, a NodeLease listing units only.
type assignment struct {
	node string
	store.Assignment
}

func (d *doctor) assignments() []assignment {
	var out []assignment
	for _, r := range d.s.Agents {
		if r.State == nil {
			continue
		}
		for _, as := range r.State.Assignments {
			out = append(out, assignment{node: r.Node, Assignment: as})
		}
	}
	return out
}

func (d *doctor) pods() {
	byName := map[string]*corev1.Pod{}
	for i := range d.s.Pods {
		p := &d.s.Pods[i]
		byName[p.Namespace+"/"+p.Name] = p
	}
	d.checked.Pods = len(d.s.Pods)
	assignments := d.assignments()
	// Each assignment's pod must exist, with that UID, unfinished, on
	// that node.
	for _, a := range assignments {
		f := Finding{Node: a.node, Pool: a.Pool, Unit: a.UnitID, Pod: a.Pod.Namespace + "/" + a.Pod.Name}
		p := byName[a.Pod.Namespace+"/"+a.Pod.Name]
		what := fmt.Sprintf("%s of pool %s on node %s, assigned by the agent to pod %s/%s uid %s, sandbox %s", a.UnitID, a.Pool, a.node, a.Pod.Namespace, a.Pod.Name, a.Pod.UID, a.Attachment)
		if kind, why := leakOf(p, a.Pod, a.node); kind != "" {
			d.add(kind, f, "%s: the pod %s", what, why)
		} else if p.Spec.NodeName != a.node {
			d.add(KindPodOnOtherNode, f, "%s: the pod is bound to node %q", what, p.Spec.NodeName)
		}
	}
	// Each address warmpool may have handed out that a live pod reports
	// must be assigned to it.
	type owner struct {
		node, pool string
		pod        store.Pod
	}
	recorded := map[netip.Addr][]owner{} // address -> pods the agents' records assign it to
	addrsOf := func(pool, unit string) []netip.Addr {
		var out []netip.Addr
		if a, err := netip.ParseAddr(unit); err == nil {
			out = append(out, a.Unmap())
		}
		if p := d.ix.get(pool); p != nil && len(out) == 1 {
			if u, ok := p.unitOf(out[0]); ok {
				for _, x := range []netip.Addr{u.IPv4, u.IPv6} {
					if x.IsValid() && x != out[0] {
						out = append(out, x)
					}
				}
			}
		}
		return out
	}
	for _, a := range assignments {
		for _, x := range addrsOf(a.Pool, a.UnitID) {
			recorded[x] = append(recorded[x], owner{a.node, a.Pool, a.Pod})
		}
	}
	reporters := map[netip.Addr][]string{}
	unchecked := map[string]int{} // node -> its pods' addresses its unread agent may record
	for i := range d.s.Pods {
		p := &d.s.Pods[i]
		addrs, err := podAddresses(p)
		if err != nil {
			d.add(KindBadNetworkStatus, Finding{Pod: p.Namespace + "/" + p.Name, Node: p.Spec.NodeName}, "pod %s/%s: %v", p.Namespace, p.Name, err)
		}
		if !podIsLive(p) {
			continue
		}
		for _, pa := range addrs {
			// Only what warmpool hands out, a pool's unit, or what an
			// agent's record says it handed out (a unit of a lease
			// edited by hand, which address-outside-pool reports too):
			// a pool's subnet also holds its gateway, the nodes' own
			// addresses and others' static ones, excluded or outside
			// its ranges, which no warmpool record can conflict with.
			pools, owners := d.ix.allocating(pa.Addr), recorded[pa.Addr]
			if len(pools) == 0 && len(owners) == 0 {
				continue
			}
			d.checked.PodAddresses++
			reporters[pa.Addr] = append(reporters[pa.Addr], p.Namespace+"/"+p.Name)
			var pool string
			if len(pools) > 0 {
				pool = pools[0].name
			} else {
				pool = owners[0].pool
			}
			f := Finding{Pool: pool, Node: p.Spec.NodeName, Unit: pa.Addr.String(), Pod: p.Namespace + "/" + p.Name}
			mine := slices.ContainsFunc(owners, func(o owner) bool {
				return o.pod.Same(podOf(p))
			})
			switch {
			case mine:
			case len(owners) == 0 && d.s.agentUnread(p.Spec.NodeName):
				// The agents are the only record of assignments: the
				// node's, unread, may well have this one. Said once on
				// the agent's finding, not once per address of its pods.
				unchecked[p.Spec.NodeName]++
			case len(owners) == 0:
				d.add(KindUnrecordedPodAddress, f, "pod %s/%s on node %s reports %s (%s), which no agent's record assigns", p.Namespace, p.Name, p.Spec.NodeName, pa.Addr, pa.Source)
			default:
				d.add(KindAddressOfOtherPod, f, "pod %s/%s on node %s reports %s (%s), which node %s's agent assigns to %s/%s uid %s", p.Namespace, p.Name, p.Spec.NodeName, pa.Addr, pa.Source,
					owners[0].node, owners[0].pod.Namespace, owners[0].pod.Name, owners[0].pod.UID)
			}
		}
	}
	for a, pods := range reporters {
		if len(pods) > 1 {
			slices.Sort(pods)
			d.add(KindAddressOnTwoPods, Finding{Unit: a.String()}, "%s is reported by live pods %v", a, pods)
		}
	}
	d.noteUnchecked(unchecked)
}

// noteUnchecked tells, on each agent-unreachable finding, how many
// addresses the node's pods report that no read record assigns: they
// could not be checked.
func (d *doctor) noteUnchecked(unchecked map[string]int) {
	for i := range d.findings {
		f := &d.findings[i]
		if n := unchecked[f.Node]; n > 0 && f.Kind == KindAgentUnreachable {
			f.Message += fmt.Sprintf("; the addresses its pods report are not checked (%d), its record being the only one of their assignments", n)
		}
	}
}
