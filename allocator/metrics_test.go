package allocator

import (
	"log/slog"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/internal/rig/metricsdoc"
)

// TestMetricsAreDocumented: docs/metrics.md's Allocator table lists
// exactly the metrics an allocator registers, with their types and label
// names.
func TestMetricsAreDocumented(t *testing.T) {
	doc, err := metricsdoc.ReadDoc()
	if err != nil {
		t.Fatal(err)
	}
	a := newAllocator(Config{Epoch: 1, Logger: slog.New(slog.DiscardHandler)})
	// A pool, so that the pool collector reports.
	pool := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/29"}}}
	a.mu.Lock()
	err = a.ledger.upsertPoolLocked(pool)
	a.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	m := a.metrics
	reg, err := metricsdoc.Registered(a.Registry(), m.writes, m.requests, m.refused, m.reclaimed, m.adds)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range metricsdoc.Compare(doc, []string{metricsdoc.SectionAllocator}, reg) {
		t.Error(err)
	}
	if err := metricsdoc.Runtime(reg); err != nil {
		t.Error(err)
	}
}
