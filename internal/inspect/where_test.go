package inspect

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/warmpool/warmpool/agent/store"
)

func where(t *testing.T, s *Snapshot, addr string) Location {
	t.Helper()
	a, err := ParseAddress(addr)
	if err != nil {
		t.Fatal(err)
	}
	return Where(s, a)
}

func saysAll(t *testing.T, loc Location, want ...string) {
	t.Helper()
	all := strings.Join(loc.Summary, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("summary lacks %q:\n%s", w, all)
		}
	}
}

func TestWhere(t *testing.T) {
	s := clean()
	t.Run("outside every pool", func(t *testing.T) {
		loc := where(t, s, "192.168.1.1")
		saysAll(t, loc, "outside every pool's subnet")
		if len(loc.Pools)+len(loc.Leases)+len(loc.Agents)+len(loc.Pods) != 0 || len(loc.Disagreements) != 0 {
			t.Errorf("%+v", loc)
		}
	})
	t.Run("free", func(t *testing.T) {
		loc := where(t, s, "10.20.0.25")
		saysAll(t, loc, "unit 10.20.0.25/"+pair("10.20.0.25")+" of pool dual", "free in pool dual")
		if len(loc.Disagreements) != 0 {
			t.Errorf("disagreements %v", loc.Disagreements)
		}
	})
	t.Run("gateway", func(t *testing.T) {
		saysAll(t, where(t, s, "10.20.0.1"), "not one of its units: the pool's gateway")
	})
	t.Run("excluded", func(t *testing.T) {
		saysAll(t, where(t, s, "10.20.0.20"), "excluded by 10.20.0.20")
	})
	t.Run("outside the ranges", func(t *testing.T) {
		saysAll(t, where(t, s, "10.20.0.200"), "outside the pool's ranges")
	})
	t.Run("warm", func(t *testing.T) {
		loc := where(t, s, "10.20.0.10")
		saysAll(t, loc, "(NodeLease "+s.Leases[0].Name+"): leased to node n1", "node n1's agent: warm")
		if len(loc.Disagreements) != 0 {
			t.Errorf("disagreements %v", loc.Disagreements)
		}
	})
	t.Run("assigned, by its IPv6 address", func(t *testing.T) {
		loc := where(t, s, pair("10.20.0.11"))
		saysAll(t, loc, "leased to node n1",
			"node n1's agent: assigned to attachment ctr-a/net1 (pod default/a (uid uid-a))",
			"reported by pod default/a (uid uid-a) on node n1, Running, in status.podIPs")
		if len(loc.Disagreements) != 0 || len(loc.Pods) != 1 || len(loc.Leases) != 1 || loc.Leases[0].Node != "n1" ||
			len(loc.Agents) != 1 || loc.Agents[0].Pod == nil || loc.Agents[0].Pod.Name != "a" {
			t.Errorf("%+v", loc)
		}
	})
	t.Run("cooling", func(t *testing.T) {
		s := clean()
		u := &s.agentOf("n1").State.Units[0]
		u.State, u.Since = store.Cooling, now
		saysAll(t, where(t, s, "10.20.0.10"), "cooling since 2026-11-25T10:00:00Z")
	})
	t.Run("the records disagree", func(t *testing.T) {
		s := clean()
		s.agentOf("n1").State.Units = s.agentOf("n1").State.Units[1:] // n1's agent lost .10
		st := s.agentOf("n2").State
		st.Units = append(st.Units, agentUnit("10.20.0.10", store.Warm, ""))
		loc := where(t, s, "10.20.0.10")
		got := strings.Join(loc.Disagreements, "\n")
		for _, w := range []string{"lists it on node n1, whose agent does not hold it", "node n2's agent holds it (warm) but node n2's NodeLease does not list it"} {
			if !strings.Contains(got, w) {
				t.Errorf("disagreements lack %q:\n%s", w, got)
			}
		}
	})
	t.Run("the agent's state is not compared with the lease", func(t *testing.T) {
		s := clean()
		u := &s.agentOf("n2").State.Units[0]
		u.State, u.Attachment = store.Assigned, "ctr-x/net1"
		loc := where(t, s, "10.20.0.12")
		saysAll(t, loc, "leased to node n2", "node n2's agent: assigned to attachment ctr-x/net1")
		if len(loc.Disagreements) != 0 {
			t.Errorf("disagreements %v", loc.Disagreements)
		}
	})
	t.Run("an unreachable agent", func(t *testing.T) {
		s := clean()
		a := s.agentOf("n1")
		a.State, a.StateError = nil, "timeout"
		for _, addr := range []string{"10.20.0.10", "10.20.0.11"} {
			loc := where(t, s, addr)
			saysAll(t, loc, "leased to node n1", "node n1's agent could not be read")
			if len(loc.Disagreements) != 0 {
				t.Errorf("%s: an unread agent is not a disagreement: %v", addr, loc.Disagreements)
			}
		}
		// Pod a reports .11: the record that would assign it is unread.
		saysAll(t, where(t, s, "10.20.0.11"), "node n1's agent, which would record pod default/a's assignment, was not read")
	})
	t.Run("no agent found for the holder", func(t *testing.T) {
		s := clean()
		s.Agents = s.Agents[1:]
		loc := where(t, s, "10.20.0.10")
		saysAll(t, loc, "no agent was found for node n1: whether it is warm or assigned there, and to which pod, is unknown")
		if len(loc.Disagreements) != 0 {
			t.Errorf("an agent not found is not a disagreement: %v", loc.Disagreements)
		}
	})
	t.Run("assigned to a pod that is gone", func(t *testing.T) {
		s := clean()
		s.Pods = []corev1.Pod{}
		loc := where(t, s, "10.20.0.11")
		if len(loc.Disagreements) != 1 || !strings.Contains(loc.Disagreements[0], "node n1's agent assigns it to pod default/a, which is gone: a leak") {
			t.Errorf("disagreements %v", loc.Disagreements)
		}
	})
	t.Run("the pod on another node than the agent assigning it", func(t *testing.T) {
		s := clean()
		s.Pods[0].Spec.NodeName = "n2"
		loc := where(t, s, "10.20.0.11")
		if len(loc.Disagreements) != 1 || !strings.Contains(loc.Disagreements[0], "pod default/a is on node n2, the agent assigning it is node n1's") {
			t.Errorf("disagreements %v", loc.Disagreements)
		}
	})
	t.Run("a pod with no record", func(t *testing.T) {
		s := clean()
		p := pod("default", "stray", "uid-s", "n2")
		p.Annotations = map[string]string{NetworkStatusAnnotation: `[{"name":"default/underlay","interface":"net1","ips":["10.20.0.25"]}]`}
		s.Pods = append(s.Pods, p, pod("default", "done", "uid-d", "n2", "10.20.0.25"))
		s.Pods[len(s.Pods)-1].Status.Phase = corev1.PodSucceeded
		s.Normalize()
		loc := where(t, s, "10.20.0.25")
		saysAll(t, loc, "in network-status default/underlay net1")
		if len(loc.Disagreements) != 1 || !strings.Contains(loc.Disagreements[0], "pod default/stray reports it, but no agent's record assigns it") {
			t.Errorf("disagreements %v", loc.Disagreements)
		}
	})
}

// TestWhereNodeAddress: `where` on a node's address, which the pool
// excludes and host-network pods report, says why it is not a unit and
// finds nothing to disagree about; so for a cluster-network address
// outside every pool.
func TestWhereNodeAddress(t *testing.T) {
	s := clean()
	s.Pods = append(s.Pods,
		hostPod("kube-system", "kube-proxy-n1", "uid-kp", "n1", "10.20.0.20"),
		hostPod("kube-system", "warmpool-agent-n1", "uid-ag", "n1", "10.20.0.20"),
		pod("default", "static", "uid-st", "n2", "10.20.0.20"),
		pod("default", "web", "uid-w", "n2", "10.244.0.7"))
	s.Normalize()
	loc := where(t, s, "10.20.0.20")
	saysAll(t, loc, "in pool dual's subnet but not one of its units: excluded by 10.20.0.20",
		"node n1's own address (host-network pods", "reported by pod default/static")
	if len(loc.Disagreements) != 0 {
		t.Errorf("disagreements %v", loc.Disagreements)
	}
	for _, p := range loc.Pods {
		if p.Namespace == "kube-system" {
			t.Errorf("host-network pod %s listed as reporting the address", p.Name)
		}
	}
	loc = where(t, s, "10.244.0.7")
	saysAll(t, loc, "outside every pool's subnet", "reported by pod default/web")
	if len(loc.Disagreements) != 0 {
		t.Errorf("disagreements %v", loc.Disagreements)
	}
}
