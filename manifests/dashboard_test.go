package manifests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/warmpool/warmpool/internal/rig/metricsdoc"
)

// TestDashboardReadsDocumentedMetrics: the dashboard parses, every panel
// reads from the data source variable, and every metric and label name in
// its queries is one docs/metrics.md lists for that metric (histograms
// through _bucket under histogram_quantile by le). The components' own
// tests (agent, allocator, internal/metrics TestMetricsAreDocumented,
// TestKubeRequestsIsDocumented) hold docs/metrics.md to what they
// register, so what the dashboard graphs exists.
func TestDashboardReadsDocumentedMetrics(t *testing.T) {
	doc, dashboards := readDashboards(t)
	js, ok := dashboards["warmpool.json"]
	if !ok {
		t.Fatalf("no dashboards/warmpool.json among %d dashboards", len(dashboards))
	}
	for name, js := range dashboards {
		for _, err := range doc.CheckDashboard(js) {
			t.Errorf("%s: %v", name, err)
		}
	}

	// What an operator looks for first, and the alerts' figures.
	var db metricsdoc.Dashboard
	if err := json.Unmarshal(js, &db); err != nil {
		t.Fatal(err)
	}
	exprs := map[string]bool{}
	for _, p := range db.Graphs() {
		for _, tg := range p.Targets {
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				exprs[m] = true
			}
		}
	}
	for name, m := range doc {
		if !strings.HasPrefix(name, "warmpool_") {
			continue
		}
		if m.Type == "histogram" {
			name += "_bucket"
		}
		if !exprs[name] {
			t.Errorf("the dashboard graphs nothing of %s", name)
		}
	}
}

// TestDashboardCheckCatchesABrokenPanel: a copy of the dashboard with a
// misspelt metric, a label the metric lacks, or a histogram read without
// its buckets fails the check.
func TestDashboardCheckCatchesABrokenPanel(t *testing.T) {
	doc, dashboards := readDashboards(t)
	js := dashboards["warmpool.json"]
	for _, c := range []struct{ old, new, want string }{
		{"warmpool_allocator_adds_total{result=", "warmpool_allocator_add_total{result=", "warmpool_allocator_add_total is not a metric"},
		{"warmpool_agent_units{pool=", "warmpool_agent_units{node=", "warmpool_agent_units has no label node"},
		{"warmpool_agent_del_duration_seconds_bucket", "warmpool_agent_del_duration_seconds", "is a histogram"},
		{"sum by (pool, state) (warmpool_allocator_pool_units", "sum by (pool, phase) (warmpool_allocator_pool_units", "grouping by phase"},
	} {
		broken := bytes.Replace(js, []byte(c.old), []byte(c.new), 1)
		if bytes.Equal(broken, js) {
			t.Fatalf("the dashboard has no %q to break", c.old)
		}
		if errs := fmt.Sprint(doc.CheckDashboard(broken)); !strings.Contains(errs, c.want) {
			t.Errorf("%s -> %s: want %q, got %s", c.old, c.new, c.want, errs)
		}
	}
}

// readDashboards reads docs/metrics.md and the embedded dashboards.
func readDashboards(t *testing.T) (metricsdoc.Doc, map[string][]byte) {
	t.Helper()
	doc, err := metricsdoc.ReadDoc()
	if err != nil {
		t.Fatal(err)
	}
	dashboards, err := Dashboards()
	if err != nil {
		t.Fatal(err)
	}
	return doc, dashboards
}

var metricName = regexp.MustCompile(`warmpool_[a-z0-9_]+`)
