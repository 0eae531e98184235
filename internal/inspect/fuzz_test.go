package inspect

import (
	"testing"
)

// The agents' answers and the pods' annotations come from outside the
// CLI: whatever the bytes, the parsers return a value or an error, never
// panic, and what they return is what the CLI may rely on.

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"node":"n1","epoch":3,"units":[{"pool":"dual","id":"10.20.0.10","state":"warm"}],"assignments":[]}`), "n1")
	f.Add([]byte(`{"node":"n1","units":[{"pool":"dual","id":"10.20.0.11","state":"assigned","attachment":"c/net1"}],"assignments":[{"attachment":"c/net1","pool":"dual","unitID":"10.20.0.11","pod":{"namespace":"d","name":"a"}}]}`), "")
	f.Add([]byte(`<html>502</html>`), "n1")
	f.Add([]byte(`{"node":"n2"}{}`), "n1")
	f.Fuzz(func(t *testing.T, body []byte, node string) {
		st, err := ParseState(body, node)
		if err != nil {
			return
		}
		if st.Node == "" || (node != "" && st.Node != node) {
			t.Fatalf("accepted a record of node %q asked for %q", st.Node, node)
		}
		for _, u := range st.Units {
			if u.Pool == "" || u.ID == "" {
				t.Fatalf("accepted a unit without pool or id: %+v", u)
			}
		}
		// What is accepted can be shown and checked.
		s := clean()
		s.Agents[0].State = st
		s.Agents[0].Node = st.Node
		s.Normalize()
		_ = Doctor(s)
		_ = Nodes(s, "")
	})
}

func FuzzParseMetrics(f *testing.F) {
	f.Add([]byte("# TYPE warmpool_agent_units gauge\nwarmpool_agent_units{pool=\"dual\",state=\"warm\"} 4\nwarmpool_agent_cache_hits_total{pool=\"dual\"} 9\n"))
	f.Add([]byte("warmpool_agent_units 1\n"))
	f.Add([]byte("warmpool_agent_units{pool=\"\\\"\"} NaN\n"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := ParseMetrics(body)
		if err != nil {
			return
		}
		if m.Hits == nil || m.Misses == nil || m.Units == nil {
			t.Fatalf("accepted metrics with nil maps: %+v", m)
		}
	})
}

func FuzzParseNetworkStatus(f *testing.F) {
	f.Add(`[{"name":"cbr0","interface":"eth0","ips":["10.244.0.7"],"default":true},{"name":"u","interface":"net1","ips":["10.20.0.11","fd00:20::11"]}]`)
	f.Add(`[{"ips":["fe80::1%eth0","::ffff:1.2.3.4","junk"]}]`)
	f.Add(`null`)
	f.Fuzz(func(t *testing.T, v string) {
		st, err := ParseNetworkStatus(v)
		if err != nil {
			return
		}
		for _, n := range st {
			for _, ip := range n.IPs {
				if a, err := ParseAddress(ip); err != nil || a.String() != ip {
					t.Fatalf("kept %q, not a canonical address", ip)
				}
			}
		}
		// A pod carrying it can be checked.
		s := clean()
		s.Pods[0].Annotations = map[string]string{NetworkStatusAnnotation: v}
		_ = Doctor(s)
	})
}
