package inspect

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

func TestParseAddress(t *testing.T) {
	good := map[string]string{
		"10.20.0.5":        "10.20.0.5",
		" 10.20.0.5 ":      "10.20.0.5",
		"10.20.0.5/24":     "10.20.0.5",
		"fd00:20::5":       "fd00:20::5",
		"FD00:20:0::5":     "fd00:20::5",
		"[fd00:20::5]":     "fd00:20::5",
		"fd00:20::5/64":    "fd00:20::5",
		"::ffff:10.20.0.5": "10.20.0.5",
		"0000:0000::1":     "::1",
	}
	for in, want := range good {
		a, err := ParseAddress(in)
		if err != nil || a.String() != want {
			t.Errorf("ParseAddress(%q) = %v, %v; want %s", in, a, err, want)
		}
	}
	for _, in := range []string{"", "10.20.0", "10.20.0.256", "web-0", "fe80::1%eth0", "10.20.0.5:80", "[10.20.0.5", "http://10.20.0.5"} {
		if a, err := ParseAddress(in); !errors.Is(err, ErrBadAddress) {
			t.Errorf("ParseAddress(%q) = %v, %v; want ErrBadAddress", in, a, err)
		}
	}
}

func TestParseState(t *testing.T) {
	ok := `{"node":"n1","epoch":3,"units":[{"pool":"dual","id":"10.20.0.10","ipv4":"10.20.0.10","state":"warm"}],` +
		`"assignments":[{"attachment":"c/net1","pool":"dual","unitID":"10.20.0.11","pod":{"namespace":"default","name":"a"},"at":"2026-11-25T10:00:00Z"}],"future":1}`
	st, err := ParseState([]byte(ok), "n1")
	if err != nil || st.Node != "n1" || st.Epoch != 3 || len(st.Units) != 1 || len(st.Assignments) != 1 {
		t.Fatalf("ParseState = %+v, %v", st, err)
	}
	bad := map[string]string{
		"not JSON":          `<html>502 Bad Gateway</html>`,
		"empty":             ``,
		"truncated":         `{"node":"n1","units":[`,
		"two objects":       `{"node":"n1"}{"node":"n2"}`,
		"array":             `[]`,
		"no node":           `{"units":[]}`,
		"another node":      `{"node":"n2"}`,
		"unit without id":   `{"node":"n1","units":[{"pool":"dual","state":"warm"}]}`,
		"unknown state":     `{"node":"n1","units":[{"pool":"dual","id":"10.20.0.10","state":"revoking"}]}`,
		"assignment no id":  `{"node":"n1","assignments":[{"attachment":"c/net1","pool":"dual"}]}`,
		"wrong field types": `{"node":1}`,
		"negative epoch":    `{"node":"n1","epoch":-1}`,
	}
	for name, body := range bad {
		if st, err := ParseState([]byte(body), "n1"); err == nil {
			t.Errorf("%s: ParseState accepted %q: %+v", name, body, st)
		}
	}
	if _, err := ParseState([]byte(strings.Repeat(" ", MaxBody+1)), "n1"); err == nil {
		t.Error("a record over MaxBody was accepted")
	}
}

// TestParseMetricsOfARealRegistry parses what client_golang writes for
// the agent's metric families.
func TestParseMetricsOfARealRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	hits := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricHits, Help: "h"}, []string{"pool"})
	misses := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricMisses, Help: "m"}, []string{"pool"})
	units := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: metricUnits, Help: "u"}, []string{"pool", "state"})
	other := prometheus.NewCounter(prometheus.CounterOpts{Name: "warmpool_agent_other_total", Help: "o"})
	reg.MustRegister(hits, misses, units, other)
	hits.WithLabelValues("dual").Add(41)
	misses.WithLabelValues("dual").Add(2)
	hits.WithLabelValues("v4").Add(3)
	units.WithLabelValues("dual", "warm").Set(7)
	units.WithLabelValues("dual", "assigned").Set(40)
	units.WithLabelValues("dual", "cooling").Set(1)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	m, err := ParseMetrics([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if m.Hits["dual"] != 41 || m.Misses["dual"] != 2 || m.Hits["v4"] != 3 || m.Units["dual"]["warm"] != 7 || m.Units["dual"]["assigned"] != 40 || m.Units["dual"]["cooling"] != 1 {
		t.Errorf("metrics %+v", m)
	}
}

func TestParseMetricsRefusesWhatIsNotAnAgents(t *testing.T) {
	for name, body := range map[string]string{
		"garbage":            "{not: prometheus}\n",
		"html":               "<html><body>404</body></html>",
		"no units":           "# TYPE up gauge\nup 1\n",
		"bad value":          "warmpool_agent_units{pool=\"dual\",state=\"warm\"} many\n",
		"TYPE after samples": "warmpool_agent_units{pool=\"d\",state=\"w\"} 1\nwarmpool_agent_units{pool=\"d\",state=\"w\"} 1\n# TYPE warmpool_agent_units gauge\n",
	} {
		if m, err := ParseMetrics([]byte(body)); err == nil {
			t.Errorf("%s: parsed %+v", name, m)
		}
	}
}

func TestParseNetworkStatus(t *testing.T) {
	st, err := ParseNetworkStatus(`[{"name":"cbr0","interface":"eth0","ips":["10.244.0.7"],"default":true},{"name":"u","interface":"net1","ips":["10.20.0.11","junk","FD00:20::11"]}]`)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || strings.Join(st[1].IPs, ",") != "10.20.0.11,fd00:20::11" || !st[0].Default {
		t.Errorf("network-status %+v", st)
	}
	for _, bad := range []string{"", "{", `{"name":"x"}`, `[{"ips":"10.0.0.1"}]`} {
		if _, err := ParseNetworkStatus(bad); err == nil {
			t.Errorf("ParseNetworkStatus(%q) accepted", bad)
		}
	}
}
