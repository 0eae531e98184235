package inspect

import (
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

func kindsOf(r DoctorReport) []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, f.Kind)
	}
	return out
}

func TestDoctorFindsNothingInAConsistentCluster(t *testing.T) {
	r := Doctor(clean())
	if len(r.Findings) != 0 || r.Errors+r.Warnings != 0 {
		t.Fatalf("findings in a consistent cluster: %+v", r.Findings)
	}
	c := r.Checked
	if c.Pools != 1 || c.Leases != 2 || c.LeasedUnits != 4 || c.Agents != 2 || c.AgentsRead != 2 || c.Pods != 1 || c.PodAddresses != 2 {
		t.Errorf("checked %+v", c)
	}
}

func TestDoctorOnAnEmptyCluster(t *testing.T) {
	s := &Snapshot{Now: now, ElectionRef: "kube-system/warmpool-allocator", Pods: []corev1.Pod{}, Agents: []AgentReading{}, GCInterval: 30 * time.Second}
	r := Doctor(s)
	if got := kindsOf(r); !slices.Equal(got, []string{KindLeaderMissing}) {
		t.Fatalf("empty cluster without an allocator: %v, want only %s", got, KindLeaderMissing)
	}
	if r.Errors != 1 {
		t.Errorf("errors %d, want 1", r.Errors)
	}
	s.Election = clean().Election
	if r := Doctor(s); len(r.Findings) != 0 {
		t.Errorf("empty cluster with a leader: %v", kindsOf(r))
	}
}

// TestDoctorFindsEachDiscrepancy breaks the consistent cluster one way at
// a time and wants the doctor to name it, with its severity.
func TestDoctorFindsEachDiscrepancy(t *testing.T) {
	leaseOf := func(s *Snapshot, n string) *v1alpha1.NodeLease {
		for i := range s.Leases {
			if s.Leases[i].Spec.Node == n {
				return &s.Leases[i]
			}
		}
		t.Fatalf("no lease of %s", n)
		return nil
	}
	stateOf := func(s *Snapshot, n string) *agent.State { return s.agentOf(n).State }
	cases := []struct {
		name   string
		breakF func(s *Snapshot)
		kind   string
		sev    Severity
	}{
		{"unit in two leases", func(s *Snapshot) {
			l := leaseOf(s, "n2")
			l.Spec.Units = append(l.Spec.Units, leasedUnit("10.20.0.10"))
		}, KindUnitInTwoLeases, Error},
		{"unit held by two agents", func(s *Snapshot) {
			st := stateOf(s, "n2")
			st.Units = append(st.Units, agentUnit("10.20.0.10", store.Warm, ""))
		}, KindUnitInTwoAgents, Error},
		{"address outside the pool", func(s *Snapshot) {
			l := leaseOf(s, "n1")
			l.Spec.Units = append(l.Spec.Units, v1alpha1.LeasedUnit{IPv4: "10.20.1.5", IPv6: "fd00:20::99"})
		}, KindOutsidePool, Error},
		{"excluded address", func(s *Snapshot) {
			l := leaseOf(s, "n1")
			l.Spec.Units = append(l.Spec.Units, v1alpha1.LeasedUnit{IPv4: "10.20.0.20"})
		}, KindOutsidePool, Error},
		{"pair the pool does not make", func(s *Snapshot) {
			l := leaseOf(s, "n1")
			l.Spec.Units[0].IPv6 = pair("10.20.0.14")
		}, KindOutsidePool, Error},
		{"lease of a deleted pool", func(s *Snapshot) {
			s.Leases = append(s.Leases, lease("gone", "n1", 1, leasedUnit("10.20.0.15")))
		}, KindUnknownPool, Warning},
		{"lease of a deleted node", func(s *Snapshot) {
			s.Nodes = s.Nodes[:1]
		}, KindLeaseOfMissingNode, Warning},
		{"lease epoch ahead of the leader", func(s *Snapshot) { leaseOf(s, "n2").Spec.Epoch = 5 }, KindLeaseEpochAhead, Warning},
		{"status counts more held units than the leases list", func(s *Snapshot) { s.Pools[0].Status.Warm = 7 }, KindStatusDisagrees, Warning},
		{"status splits the held units otherwise than the agents", func(s *Snapshot) {
			s.Pools[0].Status.Warm, s.Pools[0].Status.Assigned = 2, 2
		}, KindStatusDisagrees, Warning},
		{"agent unreachable", func(s *Snapshot) {
			a := s.agentOf("n2")
			a.State, a.StateError = nil, "GET /state: 500 Internal Server Error"
		}, KindAgentUnreachable, Error},
		{"agent fenced", func(s *Snapshot) { stateOf(s, "n2").Fenced = "no sync yet" }, KindAgentFenced, Warning},
		{"no agent on a node with units", func(s *Snapshot) { s.Agents = s.Agents[:1] }, KindAgentMissing, Warning},
		{"agent holds what its lease does not list", func(s *Snapshot) {
			st := stateOf(s, "n1")
			st.Units = append(st.Units, agentUnit("10.20.0.14", store.Warm, ""))
		}, KindAgentUnitNotLeased, Error},
		{"lease lists what the agent does not hold", func(s *Snapshot) {
			l := leaseOf(s, "n1")
			l.Spec.Units = append(l.Spec.Units, leasedUnit("10.20.0.14"))
		}, KindLeaseUnitNotHeld, Warning},
		{"pod gone (leak)", func(s *Snapshot) { s.Pods = []corev1.Pod{} }, KindLeakPodGone, Warning},
		{"pod re-created (leak)", func(s *Snapshot) { s.Pods[0].UID = "uid-a2" }, KindLeakPodReplaced, Warning},
		{"pod finished (leak)", func(s *Snapshot) { s.Pods[0].Status.Phase = corev1.PodFailed }, KindLeakPodFinished, Warning},
		{"pod on another node", func(s *Snapshot) { s.Pods[0].Spec.NodeName = "n2" }, KindPodOnOtherNode, Error},
		{"pod reports an unrecorded address", func(s *Snapshot) {
			s.Pods = append(s.Pods, pod("default", "c", "uid-c", "n2", "10.20.0.12"))
		}, KindUnrecordedPodAddress, Error},
		{"pod reports another pod's address", func(s *Snapshot) {
			s.Pods = append(s.Pods, pod("default", "c", "uid-c", "n1", "10.20.0.11"))
		}, KindAddressOfOtherPod, Error},
		{"two live pods report one address", func(s *Snapshot) {
			s.Pods = append(s.Pods, pod("default", "c", "uid-c", "n1", "10.20.0.11"))
		}, KindAddressOnTwoPods, Error},
		{"malformed network-status", func(s *Snapshot) {
			s.Pods[0].Annotations = map[string]string{NetworkStatusAnnotation: "[{"}
		}, KindBadNetworkStatus, Warning},
		{"no election Lease", func(s *Snapshot) { s.Election = nil }, KindLeaderMissing, Error},
		{"election Lease released", func(s *Snapshot) { s.Election.Spec.HolderIdentity = new(string) }, KindLeaderStale, Error},
		{"election Lease not renewed", func(s *Snapshot) { s.Now = now.Add(time.Minute) }, KindLeaderStale, Error},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := clean()
			c.breakF(s)
			s.Normalize()
			r := Doctor(s)
			i := slices.IndexFunc(r.Findings, func(f Finding) bool { return f.Kind == c.kind })
			if i < 0 {
				t.Fatalf("no %s among %v", c.kind, kindsOf(r))
			}
			f := r.Findings[i]
			if f.Severity != c.sev {
				t.Errorf("%s is %s, want %s", c.kind, f.Severity, c.sev)
			}
			if f.Message == "" || f.Meaning == "" || f.Action == "" {
				t.Errorf("%s lacks a message, meaning or action: %+v", c.kind, f)
			}
			if c.sev == Error && r.Errors == 0 || r.Errors+r.Warnings != len(r.Findings) {
				t.Errorf("errors %d warnings %d for %v", r.Errors, r.Warnings, kindsOf(r))
			}
			t.Logf("%s: %s", f.Kind, f.Message)
		})
	}
}

// TestDoctorAndWhereAgree: one situation of the assigned unit .11, and
// what each command must make of it. Both take the assignment from the
// agent's record (a lease lists units only), match pods as the agent does
// (by UID when both have one, else by namespace and name), and follow the
// agent's leak GC on what is a leak.
func TestDoctorAndWhereAgree(t *testing.T) {
	held := func(s *Snapshot) *store.Pod { return &s.agentOf("n1").State.Assignments[0].Pod }
	deleting := metav1.NewTime(now)
	cases := []struct {
		name   string
		breakF func(s *Snapshot)
		// kinds the doctor finds; where's disagreements, one string in
		// each.
		kinds []string
		where []string
	}{
		{"the agent has no UID", func(s *Snapshot) { held(s).UID = "" }, nil, nil},
		{"no UID, another pod's name", func(s *Snapshot) { held(s).UID, held(s).Name = "", "b" },
			[]string{KindAddressOfOtherPod, KindAddressOfOtherPod, KindLeakPodGone}, // pod a reports both addresses of the unit
			[]string{"pod default/a reports it, but no agent's record assigns it to that pod", "node n1's agent assigns it to pod default/b, which is gone: a leak"}},
		{"a pod being deleted, still running", func(s *Snapshot) { s.Pods[0].DeletionTimestamp = &deleting }, nil, nil},
		{"a finished pod", func(s *Snapshot) { s.Pods[0].Status.Phase = corev1.PodSucceeded },
			[]string{KindLeakPodFinished}, []string{"node n1's agent assigns it to pod default/a, which has Succeeded: a leak"}},
		{"a finished pod being deleted", func(s *Snapshot) {
			s.Pods[0].Status.Phase, s.Pods[0].DeletionTimestamp = corev1.PodFailed, &deleting
		}, []string{KindLeakPodFinished}, []string{"node n1's agent assigns it to pod default/a, which has Failed and is being deleted: a leak"}},
		{"no UID, the pod re-created on another node", func(s *Snapshot) {
			held(s).UID = ""
			s.Pods[0].UID, s.Pods[0].Spec.NodeName, s.Pods[0].Status.PodIPs = "uid-a2", "n2", nil
		}, []string{KindLeakPodReplaced}, []string{"node n1's agent assigns it to pod default/a, which is bound to node \"n2\""}},
		{"with its UID, the pod on another node", func(s *Snapshot) {
			s.Pods[0].Spec.NodeName, s.Pods[0].Status.PodIPs = "n2", nil
		}, []string{KindPodOnOtherNode}, nil},
		{"with its UID, the pod on another node, reporting it", func(s *Snapshot) { s.Pods[0].Spec.NodeName = "n2" },
			[]string{KindPodOnOtherNode}, []string{"pod default/a is on node n2, the agent assigning it is node n1's"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := clean()
			c.breakF(s)
			s.Normalize()
			if got := kindsOf(Doctor(s)); !slices.Equal(got, c.kinds) {
				t.Errorf("doctor finds %v, want %v", got, c.kinds)
			}
			loc := where(t, s, "10.20.0.11")
			if !slices.EqualFunc(loc.Disagreements, c.where, strings.Contains) {
				t.Errorf("where's disagreements:\n%s\nwant one with each of %q", strings.Join(loc.Disagreements, "\n"), c.where)
			}
		})
	}
}

func TestLeakActionSaysWhenTheGCReclaimsIt(t *testing.T) {
	s := clean()
	s.Pods = []corev1.Pod{}
	s.GCInterval = 45 * time.Second
	r := Doctor(s)
	i := slices.IndexFunc(r.Findings, func(f Finding) bool { return f.Kind == KindLeakPodGone })
	if i < 0 {
		t.Fatalf("no leak among %v", kindsOf(r))
	}
	if a := r.Findings[i].Action; !strings.Contains(a, "1m30s") || !strings.Contains(a, "45s") {
		t.Errorf("action %q does not give the window (2 × 45s)", a)
	}
	// One assignment is one leak.
	n := 0
	for _, f := range r.Findings {
		if f.Kind == KindLeakPodGone {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d leak findings for one assignment, want 1", n)
	}
}

func TestMultusAddressesAreChecked(t *testing.T) {
	s := clean()
	s.Pods[0].Status.PodIPs = []corev1.PodIP{{IP: "10.244.0.7"}}
	s.Pods[0].Annotations = map[string]string{NetworkStatusAnnotation: `[{"name":"cbr0","interface":"eth0","ips":["10.244.0.7"],"default":true},` +
		`{"name":"default/underlay","interface":"net1","ips":["10.20.0.11","` + pair("10.20.0.11") + `"]}]`}
	if r := Doctor(s); len(r.Findings) != 0 {
		t.Fatalf("findings: %v", kindsOf(r))
	}
	// Another pod claiming the address through its annotation is seen.
	b := pod("default", "b", "uid-b", "n2")
	b.Annotations = map[string]string{NetworkStatusAnnotation: `[{"name":"default/underlay","interface":"net1","ips":["10.20.0.11"]}]`}
	s.Pods = append(s.Pods, b)
	s.Normalize()
	if r := Doctor(s); !slices.Contains(kindsOf(r), KindAddressOfOtherPod) {
		t.Fatalf("findings %v, want %s", kindsOf(r), KindAddressOfOtherPod)
	}
}

func TestDoctorDoesNotCheckWhatWasNotRead(t *testing.T) {
	s := clean()
	s.Agents, s.Pods = nil, nil
	s.Leases = append(s.Leases, lease("dual", "n1", 1, leasedUnit("10.20.0.14")))
	r := Doctor(s)
	for _, f := range r.Findings {
		if strings.HasPrefix(f.Kind, "agent-") || strings.HasPrefix(f.Kind, "leak-") {
			t.Errorf("%s reported without agents or pods read", f.Kind)
		}
	}
}

func TestConfirmKeepsWhatBothReadingsFound(t *testing.T) {
	s1 := clean()
	s1.Pods = []corev1.Pod{}                                                            // a leak, in both
	s1.Leases[0].Spec.Units = append(s1.Leases[0].Spec.Units, leasedUnit("10.20.0.14")) // a grant in flight, first only
	s1.Normalize()
	s2 := clean()
	s2.Pods = []corev1.Pod{}
	r := Confirm(Doctor(s1), Doctor(s2))
	if got := kindsOf(r); !slices.Equal(got, []string{KindLeakPodGone}) {
		t.Fatalf("confirmed %v, want only the leak", got)
	}
	if r.Transient != 2 { // the grant in flight: not-held, and the status disagreeing
		t.Errorf("transient %d, want 2", r.Transient)
	}
}

func TestLeasesReport(t *testing.T) {
	s := clean()
	s.Leases[1].Spec.Epoch = 3
	s.Leases = append(s.Leases, lease("dual", "n9", 1))
	s.Normalize()
	r := Leases(s)
	e := r.Election
	if !e.Found || e.Holder != "alloc-1" || e.DerivedEpoch != 1 || e.ServedEpoch != 1 || e.Expired {
		t.Errorf("election %+v", e)
	}
	flags := map[string][]string{}
	for _, l := range r.NodeLeases {
		flags[l.Node] = l.Flags
	}
	if !slices.Equal(flags["n2"], []string{"epoch-ahead"}) || !slices.Equal(flags["n9"], []string{"node-gone"}) || flags["n1"] != nil {
		t.Errorf("flags %v", flags)
	}
	// The allocator raised its epoch above the leases' (election Lease
	// recreated): the pools' Ready condition says so, and epoch 3 is the
	// leader's, not ahead of it.
	s.Pools[0].Status.Conditions[0].Message = "allocator epoch 3 serves the pool"
	for _, l := range Leases(s).NodeLeases {
		if slices.Contains(l.Flags, "epoch-ahead") {
			t.Errorf("%s flagged ahead of a leader serving epoch 3", l.Name)
		}
	}
}

func TestPoolsAndNodes(t *testing.T) {
	s := clean()
	rows := Pools(s)
	if len(rows) != 1 {
		t.Fatalf("rows %v", rows)
	}
	p := rows[0]
	if p.Total != 20 || p.Free != 16 || p.Leased != 4 || p.LeaseNodes != 2 || p.Ready != "True" || p.Exhausted != "False" ||
		FormatRate(p.HitRate) != "90.0%" {
		t.Errorf("pool row %+v", p)
	}
	var wide strings.Builder
	if err := RenderPools(&wide, Pools(s), true); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(wide.String(), "\n"); !strings.Contains(lines[0], "LEASED") || !strings.Contains(lines[1], "epoch") {
		t.Errorf("pools -o wide:\n%s", wide.String())
	}
	s.agentOf("n2").State.Fenced = "no sync yet"
	s.Nodes[1].Status.Conditions[0].Status = corev1.ConditionUnknown
	// The split is the record's, not the metrics' gauge.
	s.agentOf("n1").Metrics.Units["dual"]["warm"] = 5
	nodes := Nodes(s, "")
	if len(nodes) != 2 {
		t.Fatalf("node rows %+v", nodes)
	}
	n1, n2 := nodes[0], nodes[1]
	if n1.Node != "n1" || n1.Leased == nil || *n1.Leased != 2 || *n1.Agent != (AgentCounts{Warm: 1, Assigned: 1}) ||
		FormatRate(n1.HitRate) != "90.0%" || n1.AgentStatus != "ok" || n1.NodeReady != "True" {
		t.Errorf("n1 %+v", n1)
	}
	if *n2.Agent != (AgentCounts{Warm: 2}) || n2.AgentStatus != "fenced" || n2.NodeReady != "Unknown" || n2.HitRate != nil {
		t.Errorf("n2 %+v", n2)
	}
	if got := Nodes(s, "other"); len(got) != 0 {
		t.Errorf("--pool other: %+v", got)
	}
}

// TestNodesDoNotInventASplit: a node whose agent was not read shows the
// units its lease lists and no warm / assigned split, which only the
// agent's record has.
func TestNodesDoNotInventASplit(t *testing.T) {
	s := clean()
	a := s.agentOf("n1")
	a.State, a.Metrics, a.StateError = nil, nil, "GET /state: timeout"
	rows := Nodes(s, "")
	n1 := rows[0]
	if n1.Node != "n1" || n1.Leased == nil || *n1.Leased != 2 || n1.Agent != nil || n1.AgentStatus != "unreachable" {
		t.Fatalf("n1 %+v", n1)
	}
	var out strings.Builder
	if err := RenderNodes(&out, rows, false); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	if h := strings.Fields(lines[0]); !slices.Equal(h[:6], []string{"NODE", "POOL", "LEASED", "WARM", "ASSIGNED", "COOLING"}) {
		t.Fatalf("header %v", h)
	}
	if f := strings.Fields(lines[1]); !slices.Equal(f[:6], []string{"n1", "dual", "2", "?", "?", "?"}) {
		t.Errorf("n1's row %v, want 2 leased and an unknown split", f)
	}
	if f := strings.Fields(lines[2]); !slices.Equal(f[:6], []string{"n2", "dual", "2", "2", "0", "0"}) {
		t.Errorf("n2's row %v", f)
	}
}

// TestStatusIsComparedWithTheAgentsSplit: the pool's warm / assigned
// split is compared with the agents' records when every holder's agent
// was read, and not judged when one was not.
func TestStatusIsComparedWithTheAgentsSplit(t *testing.T) {
	s := clean()
	s.Pools[0].Status.Warm, s.Pools[0].Status.Assigned = 2, 2 // 4 held, as the leases list
	r := Doctor(s)
	i := slices.IndexFunc(r.Findings, func(f Finding) bool { return f.Kind == KindStatusDisagrees })
	if i < 0 {
		t.Fatalf("no %s among %v", KindStatusDisagrees, kindsOf(r))
	}
	if m := r.Findings[i].Message; !strings.Contains(m, "its NodeLeases list 4 units (free 16); its agents' records: warm 3 (0 cooling), assigned 1") {
		t.Errorf("message %q", m)
	}
	// Cooling units are warm for the status.
	s = clean()
	u := &s.agentOf("n2").State.Units[0]
	u.State, u.Since = store.Cooling, now
	if r := Doctor(s); len(r.Findings) != 0 {
		t.Errorf("a cooling unit: %v", kindsOf(r))
	}
	// n2's agent unread: its part of the split is unknown, so only the
	// held count is judged.
	s = clean()
	s.Pools[0].Status.Warm, s.Pools[0].Status.Assigned = 2, 2
	a := s.agentOf("n2")
	a.State, a.StateError = nil, "GET /state: timeout"
	if got := kindsOf(Doctor(s)); !slices.Equal(got, []string{KindAgentUnreachable}) {
		t.Errorf("with n2's agent unread: %v, want only %s", got, KindAgentUnreachable)
	}
}

// TestLeaseOfMissingNodeSaysTheAgentsSplit: the lease gives the count,
// the agent's record (when read) the split.
func TestLeaseOfMissingNodeSaysTheAgentsSplit(t *testing.T) {
	for _, c := range []struct {
		name   string
		unread bool
		want   string
	}{
		{"agent read", false, "it lists 2 units, its agent's record: 2 warm, 0 cooling, 0 assigned"},
		{"agent unread", true, "it lists 2 units, which of them are assigned is unknown (its agent was not read)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := clean()
			s.Nodes = s.Nodes[:1]
			if c.unread {
				a := s.agentOf("n2")
				a.State, a.StateError = nil, "no route"
			}
			r := Doctor(s)
			i := slices.IndexFunc(r.Findings, func(f Finding) bool { return f.Kind == KindLeaseOfMissingNode })
			if i < 0 {
				t.Fatalf("no %s among %v", KindLeaseOfMissingNode, kindsOf(r))
			}
			if m := r.Findings[i].Message; !strings.Contains(m, c.want) {
				t.Errorf("message %q, want %q", m, c.want)
			}
		})
	}
}

// TestUnrecordedAddressOnAnUnreadNode: the agents are the only record of
// assignments, so an address a pod reports on a node whose agent was not
// read is not judged (its record may have it): the agent-unreachable
// finding says how many were left unchecked. On a node whose agent was
// read, it is an error.
func TestUnrecordedAddressOnAnUnreadNode(t *testing.T) {
	s := clean()
	s.Pods = append(s.Pods, pod("default", "c", "uid-c", "n2", "10.20.0.25"))
	s.Normalize()
	if got := kindsOf(Doctor(s)); !slices.Equal(got, []string{KindUnrecordedPodAddress}) {
		t.Fatalf("agent read: %v, want %s", got, KindUnrecordedPodAddress)
	}
	a := s.agentOf("n2")
	a.State, a.StateError = nil, "no route"
	r := Doctor(s)
	if got := kindsOf(r); !slices.Equal(got, []string{KindAgentUnreachable}) {
		t.Fatalf("agent unread: %v, want only %s", got, KindAgentUnreachable)
	}
	if m := r.Findings[0].Message; !strings.HasSuffix(m, "; the addresses its pods report are not checked (1), its record being the only one of their assignments") {
		t.Errorf("message %q", m)
	}
	// Pod a's addresses, on n1 whose agent was read, are still checked.
	if r.Checked.PodAddresses != 3 {
		t.Errorf("checked %d pod addresses, want 3", r.Checked.PodAddresses)
	}
}

func TestElectionWithoutRenewal(t *testing.T) {
	s := clean()
	s.Election.Spec.RenewTime = nil
	if e := Election(s); !e.Expired {
		t.Errorf("a Lease never renewed is not expired: %+v", e)
	}
	s.Election.Spec.RenewTime = &metav1.MicroTime{Time: now.Add(-10 * time.Second)}
	if e := Election(s); e.Expired || e.SinceRenew == nil || *e.SinceRenew != 10*time.Second {
		t.Errorf("renewed 10 s ago with a 15 s term: %+v", e)
	}
}

// hostPod is a host-network pod: its podIPs are its node's addresses,
// which warmpool never gives out.
func hostPod(ns, name, uid, nodeName string, ips ...string) corev1.Pod {
	p := pod(ns, name, uid, nodeName, ips...)
	p.Spec.HostNetwork = true
	return p
}

// TestDoctorIgnoresAddressesWarmpoolNeverHandsOut: the shipped config
// puts the pool on the node's own segment, with the nodes' addresses
// excluded. Host-network pods (kube-proxy, Multus, the agent) report the
// node's address; a pod with a static address in the subnet that the
// pool excludes, or the gateway, or one outside the ranges, got it from
// elsewhere. None is warmpool's to check.
func TestDoctorIgnoresAddressesWarmpoolNeverHandsOut(t *testing.T) {
	cases := map[string][]corev1.Pod{
		"host-network pods on the node's excluded address": {
			hostPod("kube-system", "kube-proxy-n1", "uid-kp", "n1", "10.20.0.20"),
			hostPod("kube-system", "warmpool-agent-n1", "uid-ag", "n1", "10.20.0.20"),
			hostPod("kube-system", "kube-multus-n1", "uid-mu", "n1", "10.20.0.20", "fd00:20::20"),
		},
		"a pod with an excluded address":   {pod("default", "static", "uid-st", "n2", "10.20.0.20")},
		"a pod with the gateway's address": {pod("default", "gw", "uid-gw", "n2", "10.20.0.1")},
		"pods with an address outside the ranges": {
			pod("default", "r1", "uid-r1", "n1", "10.20.0.200"),
			pod("default", "r2", "uid-r2", "n2", "10.20.0.200"),
		},
	}
	for name, pods := range cases {
		t.Run(name, func(t *testing.T) {
			s := clean()
			s.Pods = append(s.Pods, pods...)
			s.Normalize()
			if r := Doctor(s); len(r.Findings) != 0 {
				for _, f := range r.Findings {
					t.Logf("%s: %s", f.Kind, f.Message)
				}
				t.Fatalf("findings %v, want none", kindsOf(r))
			}
		})
	}
}

// TestDoctorChecksRecordedAddressesOutsideTheUnits: an address a record
// assigns is checked even when it is not one of the pool's units (a
// NodeLease edited by hand): warmpool did hand it out.
func TestDoctorChecksRecordedAddressesOutsideTheUnits(t *testing.T) {
	s := clean()
	s.Leases[0].Spec.Units = append(s.Leases[0].Spec.Units, v1alpha1.LeasedUnit{IPv4: "10.20.0.20"})
	st := s.agentOf("n1").State
	st.Units = append(st.Units, store.Unit{Pool: "dual", ID: "10.20.0.20", IPv4: "10.20.0.20", State: store.Assigned, Attachment: "ctr-x/net1"})
	st.Assignments = append(st.Assignments, store.Assignment{Attachment: "ctr-x/net1", Pool: "dual", UnitID: "10.20.0.20",
		Pod: store.Pod{Namespace: "default", Name: "x", UID: "uid-x"}, At: now})
	s.Pods = append(s.Pods, pod("default", "x", "uid-x", "n1", "10.20.0.20"), pod("default", "c", "uid-c", "n2", "10.20.0.20"))
	s.Normalize()
	r := Doctor(s)
	if got := kindsOf(r); !slices.Contains(got, KindOutsidePool) || !slices.Contains(got, KindAddressOfOtherPod) || !slices.Contains(got, KindAddressOnTwoPods) {
		t.Fatalf("findings %v, want %s, %s and %s", got, KindOutsidePool, KindAddressOfOtherPod, KindAddressOnTwoPods)
	}
}

// TestConfirmJudgesTheLeaderByItsRenewals: with two readings the leader
// is stale only if the election Lease was not renewed between them, so
// that neither the operator's clock (ahead of or behind the allocator's)
// nor how long a reading took decides it.
func TestConfirmJudgesTheLeaderByItsRenewals(t *testing.T) {
	reading := func(clock, renewed time.Time, holder string) DoctorReport {
		s := clean()
		s.Now = clock
		s.Election.Spec.HolderIdentity = &holder
		s.Election.Spec.RenewTime = &metav1.MicroTime{Time: renewed}
		return Doctor(s)
	}
	stale := func(r DoctorReport) bool { return slices.Contains(kindsOf(r), KindLeaderStale) }
	ahead, behind := now.Add(time.Minute), now.Add(-time.Minute) // the operator's clock
	t.Run("renewed between, the operator's clock ahead", func(t *testing.T) {
		first := reading(ahead, now.Add(-time.Second), "alloc-1")
		second := reading(ahead.Add(4*time.Second), now.Add(3*time.Second), "alloc-1")
		if !stale(first) || !stale(second) {
			t.Fatalf("each reading alone should say stale: %v, %v", kindsOf(first), kindsOf(second))
		}
		r := Confirm(first, second)
		if stale(r) || r.Transient != 2 {
			t.Errorf("confirmed %v, transient %d: a Lease renewed between the readings has a leader", kindsOf(r), r.Transient)
		}
	})
	t.Run("taken over between", func(t *testing.T) {
		r := Confirm(reading(ahead, now.Add(-time.Second), "alloc-1"), reading(ahead.Add(4*time.Second), now.Add(3*time.Second), "alloc-2"))
		if stale(r) {
			t.Errorf("confirmed %v", kindsOf(r))
		}
	})
	t.Run("not renewed between, stale in both", func(t *testing.T) {
		r := Confirm(reading(now, now.Add(-time.Minute), "alloc-1"), reading(now.Add(4*time.Second), now.Add(-time.Minute), "alloc-1"))
		if !stale(r) || r.Errors != 1 {
			t.Errorf("confirmed %v", kindsOf(r))
		}
	})
	t.Run("not renewed across 20 s, the operator's clock behind", func(t *testing.T) {
		first := reading(behind, now.Add(-time.Second), "alloc-1")
		second := reading(behind.Add(20*time.Second), now.Add(-time.Second), "alloc-1")
		if stale(first) || stale(second) {
			t.Fatalf("each reading alone should say fresh: %v, %v", kindsOf(first), kindsOf(second))
		}
		r := Confirm(first, second)
		if !stale(r) {
			t.Fatalf("confirmed %v: a Lease not renewed for longer than its term has no leader", kindsOf(r))
		}
		i := slices.IndexFunc(r.Findings, func(f Finding) bool { return f.Kind == KindLeaderStale })
		if f := r.Findings[i]; f.Severity != Error || !strings.Contains(f.Message, "not renewed between two readings 20s apart") || f.Action == "" {
			t.Errorf("finding %+v", f)
		}
	})
	t.Run("released in both", func(t *testing.T) {
		r := Confirm(reading(now, now.Add(-time.Second), ""), reading(now.Add(4*time.Second), now.Add(-time.Second), ""))
		if !stale(r) {
			t.Errorf("confirmed %v", kindsOf(r))
		}
	})
}
