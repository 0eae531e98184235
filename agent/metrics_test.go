package agent

import (
	"testing"

	"github.com/warmpool/warmpool/internal/rig/metricsdoc"
)

// TestMetricsAreDocumented: docs/metrics.md's Agent table lists exactly
// the metrics an agent registers, with their types and label names.
func TestMetricsAreDocumented(t *testing.T) {
	doc, err := metricsdoc.ReadDoc()
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, 1) // a pool, so that the units collector reports
	m := f.agent.metrics
	reg, err := metricsdoc.Registered(f.agent.Registry(), m.add, m.persist, m.hits, m.misses, m.bus, m.reclaimed, m.voided, m.coalesced, m.coolingWaits)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range metricsdoc.Compare(doc, []string{metricsdoc.SectionAgent}, reg) {
		t.Error(err)
	}
	if err := metricsdoc.Runtime(reg); err != nil {
		t.Error(err)
	}
}
