package inspect

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
)

// What comes from outside the CLI's own process (an agent's answers, a
// pod's annotation, the command line) is parsed here, refusing what it
// cannot read rather than guessing. FuzzParseState, FuzzParseMetrics and
// FuzzParseNetworkStatus feed these arbitrary bytes.

// MaxBody bounds what the CLI reads of one agent answer. A full record is
// a few MiB at most (4096 units per pool and node, ~200 bytes each, plus
// their assignments).
const MaxBody = 32 << 20

// ErrBadAddress is returned for an address the CLI cannot read.
var ErrBadAddress = errors.New("not an IP address")

// ParseAddress reads an IPv4 or IPv6 address, as an operator writes it:
// "10.20.0.5", "fd00:20::5", "[fd00:20::5]", "10.20.0.5/24" (the prefix is
// ignored: CNI results and `ip addr` print addresses that way), or
// "::ffff:10.20.0.5" (taken as the IPv4 address). A zone is refused: pool
// addresses have none.
func ParseAddress(s string) (netip.Addr, error) {
	in := strings.TrimSpace(s)
	if strings.HasPrefix(in, "[") && strings.HasSuffix(in, "]") {
		in = in[1 : len(in)-1]
	}
	if p, err := netip.ParsePrefix(in); err == nil {
		in = p.Addr().String()
	}
	a, err := netip.ParseAddr(in)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q: %w (write one like 10.20.0.5 or fd00:20::5)", s, ErrBadAddress)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q: %w: pool addresses have no zone", s, ErrBadAddress)
	}
	return a.Unmap(), nil
}

// sameAddr reports whether the text s is the address a (a record written
// in a non-canonical form still matches).
func sameAddr(s string, a netip.Addr) bool {
	if s == "" {
		return false
	}
	b, err := netip.ParseAddr(s)
	return err == nil && b.Unmap() == a
}

// compareAddr orders addresses numerically (10.0.0.9 before 10.0.0.10),
// IPv4 before IPv6; text that is not an address sorts after, as text.
func compareAddr(x, y string) int {
	a, errA := netip.ParseAddr(x)
	b, errB := netip.ParseAddr(y)
	switch {
	case errA == nil && errB == nil:
		if c := a.Compare(b); c != 0 {
			return c
		}
		return strings.Compare(x, y)
	case errA == nil:
		return -1
	case errB == nil:
		return 1
	}
	return strings.Compare(x, y)
}

// ParseState reads an agent's /state answer. It refuses a record that is
// not JSON, names another node than the one asked (an --agent flag
// pointing at the wrong agent), or holds a unit without a pool, an address
// or a known state.
func ParseState(body []byte, node string) (*agent.State, error) {
	if len(body) > MaxBody {
		return nil, fmt.Errorf("record of %d bytes exceeds %d", len(body), MaxBody)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var st agent.State
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("not an agent record: %w", err)
	}
	if dec.More() {
		return nil, errors.New("not an agent record: data after the JSON object")
	}
	if st.Node == "" {
		return nil, errors.New("not an agent record: no node")
	}
	if node != "" && st.Node != node {
		return nil, fmt.Errorf("the record is node %s's, not %s's", st.Node, node)
	}
	for i, u := range st.Units {
		if u.Pool == "" || u.ID == "" {
			return nil, fmt.Errorf("unit %d: no pool or id", i)
		}
		switch u.State {
		case store.Warm, store.Assigned, store.Cooling:
		default:
			return nil, fmt.Errorf("unit %s/%s: unknown state %q", u.Pool, u.ID, u.State)
		}
	}
	for i, as := range st.Assignments {
		if as.Attachment == "" || as.UnitID == "" {
			return nil, fmt.Errorf("assignment %d: no attachment or unit", i)
		}
	}
	return &st, nil
}

// Metric names the CLI reads from an agent (docs/metrics.md).
const (
	metricHits   = "warmpool_agent_cache_hits_total"
	metricMisses = "warmpool_agent_cache_misses_total"
	metricUnits  = "warmpool_agent_units"
)

// ParseMetrics reads the figures the CLI shows from an agent's /metrics
// answer in Prometheus' text format; other metrics are ignored.
func ParseMetrics(body []byte) (*AgentMetrics, error) {
	if len(body) > MaxBody {
		return nil, fmt.Errorf("metrics of %d bytes exceed %d", len(body), MaxBody)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("not Prometheus text: %w", err)
	}
	m := &AgentMetrics{Hits: map[string]float64{}, Misses: map[string]float64{}, Units: map[string]map[string]float64{}}
	if _, ok := fams[metricUnits]; !ok {
		return nil, fmt.Errorf("no %s: not a warmpool agent's metrics", metricUnits)
	}
	for _, f := range []string{metricHits, metricMisses, metricUnits} {
		fam := fams[f]
		if fam == nil {
			continue
		}
		for _, s := range fam.GetMetric() {
			pool, state := label(s, "pool"), label(s, "state")
			v := value(s)
			switch f {
			case metricHits:
				m.Hits[pool] += v
			case metricMisses:
				m.Misses[pool] += v
			case metricUnits:
				if m.Units[pool] == nil {
					m.Units[pool] = map[string]float64{}
				}
				m.Units[pool][state] += v
			}
		}
	}
	return m, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetUntyped() != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}

// NetworkStatusAnnotation is where Multus writes the addresses of a pod's
// every interface; warmpool's is on a secondary one, so it is here and not
// in status.podIPs.
const NetworkStatusAnnotation = "k8s.v1.cni.cncf.io/network-status"

// NetworkStatus is one entry of the network-status annotation (the fields
// the CLI uses of the Network Plumbing WG's format).
type NetworkStatus struct {
	Name      string   `json:"name"`
	Interface string   `json:"interface,omitempty"`
	IPs       []string `json:"ips,omitempty"`
	Default   bool     `json:"default,omitempty"`
}

// ParseNetworkStatus reads a network-status annotation. Anyone who may
// edit the pod may write it, so it is untrusted: malformed JSON is an
// error, an entry's unparsable address is dropped.
func ParseNetworkStatus(v string) ([]NetworkStatus, error) {
	if len(v) > MaxBody {
		return nil, fmt.Errorf("annotation of %d bytes exceeds %d", len(v), MaxBody)
	}
	var out []NetworkStatus
	if err := json.Unmarshal([]byte(v), &out); err != nil {
		return nil, fmt.Errorf("%s: %w", NetworkStatusAnnotation, err)
	}
	for i := range out {
		ips := out[i].IPs[:0]
		for _, ip := range out[i].IPs {
			if a, err := ParseAddress(ip); err == nil {
				ips = append(ips, a.String())
			}
		}
		out[i].IPs = ips
	}
	return out, nil
}
