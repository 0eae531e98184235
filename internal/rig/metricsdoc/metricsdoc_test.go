package metricsdoc

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

const sampleDoc = "# metrics\n\n## Agent\n\n" +
	"| name | type | labels | meaning |\n| --- | --- | --- | --- |\n" +
	"| `x_add_seconds` | histogram | `result`: hit, miss | ADDs |\n" +
	"| `x_units` | gauge | `pool`, `state`: warm, assigned | units |\n" +
	"| `x_moved_total` | counter | | moves |\n\n" +
	"## Both components\n\n| metric | type | labels | meaning |\n| --- | --- | --- | --- |\n" +
	"| `x_kube_total` | counter | `method`, `code` | requests |\n"

func mustDoc(t *testing.T) Doc {
	t.Helper()
	doc, err := ParseDoc([]byte(sampleDoc))
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestParseDoc(t *testing.T) {
	doc := mustDoc(t)
	want := map[string]Metric{
		"x_add_seconds": {Name: "x_add_seconds", Type: "histogram", Labels: []string{"result"}, Section: "Agent"},
		"x_units":       {Name: "x_units", Type: "gauge", Labels: []string{"pool", "state"}, Section: "Agent"},
		"x_moved_total": {Name: "x_moved_total", Type: "counter", Section: "Agent"},
		"x_kube_total":  {Name: "x_kube_total", Type: "counter", Labels: []string{"code", "method"}, Section: "Both components"},
	}
	if len(doc) != len(want) {
		t.Fatalf("got %d metrics, want %d: %v", len(doc), len(want), doc)
	}
	for name, w := range want {
		g := doc[name]
		if g.Name != w.Name || g.Type != w.Type || g.Section != w.Section || !slices.Equal(g.Labels, w.Labels) {
			t.Errorf("%s: got %+v, want %+v", name, g, w)
		}
	}
	for _, bad := range []string{
		strings.Replace(sampleDoc, "| gauge |", "| gage |", 1),
		strings.Replace(sampleDoc, "`x_moved_total`", "`x_units`", 1),
		strings.Replace(sampleDoc, "| `x_moved_total` |", "| x_moved_total |", 1),
	} {
		if _, err := ParseDoc([]byte(bad)); err == nil {
			t.Errorf("no error for\n%s", bad)
		}
	}
}

// TestCompareFindsEveryKindOfDrift: an undocumented metric, a documented
// one not registered, a wrong type and wrong labels are each reported.
func TestCompareFindsEveryKindOfDrift(t *testing.T) {
	doc := mustDoc(t)
	reg := prometheus.NewRegistry()
	add := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "x_add_seconds"}, []string{"result"})
	units := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_units"}, []string{"pool"}) // wrong type, a label short
	extra := prometheus.NewCounter(prometheus.CounterOpts{Name: "x_extra_total"})
	reg.MustRegister(add, units, extra, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	got, err := Registered(reg, add, units)
	if err != nil {
		t.Fatal(err)
	}
	if err := Runtime(got); err != nil {
		t.Error(err)
	}
	if m := got["x_add_seconds"]; m.Type != "histogram" || !slices.Equal(m.Labels, []string{"result"}) {
		t.Errorf("gathered %+v", m)
	}
	errs := fmt.Sprint(Compare(doc, []string{SectionAgent}, got))
	for _, want := range []string{
		"x_extra_total (counter, labels []) is registered but not documented",
		"x_units: docs/metrics.md says gauge, registered as counter",
		"x_moved_total is documented under \"Agent\" in docs/metrics.md but not registered",
	} {
		if !strings.Contains(errs, want) {
			t.Errorf("missing %q in %s", want, errs)
		}
	}
	if strings.Contains(errs, "x_kube_total") {
		t.Errorf("another section's metric compared: %s", errs)
	}
	units2 := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "x_units"}, []string{"pool"})
	reg2 := prometheus.NewRegistry()
	reg2.MustRegister(units2)
	got2, err := Registered(reg2, units2)
	if err != nil {
		t.Fatal(err)
	}
	if errs := fmt.Sprint(Compare(doc, []string{SectionAgent}, got2)); !strings.Contains(errs, "x_units: docs/metrics.md gives labels [pool state], registered with [pool]") {
		t.Errorf("label drift not found: %s", errs)
	}
	if err := Runtime(got2); err == nil {
		t.Error("no Go collector: want an error")
	}
}

// TestRegisteredWantsEveryVectorTouched: a vector left out gathers
// nothing, and is reported instead of silently skipped.
func TestRegisteredWantsEveryVectorTouched(t *testing.T) {
	reg := prometheus.NewRegistry()
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_forgotten_total"}, []string{"pool"})
	reg.MustRegister(v)
	if _, err := Registered(reg); err == nil || !strings.Contains(err.Error(), "x_forgotten_total is registered but gathered nothing") {
		t.Errorf("got %v", err)
	}
}

func TestCheckExpr(t *testing.T) {
	doc := mustDoc(t)
	good := []string{
		`histogram_quantile(0.99, sum by (le, result) (rate(x_add_seconds_bucket[$__rate_interval])))`,
		`sum(rate(x_add_seconds_count{result="hit"}[5m])) / sum(rate(x_add_seconds_count[5m]))`,
		`sum by (state) (x_units{pool=~"$pool", instance=~"${instance}"})`,
		`sum(x_units) by (pool, state)`,
		`increase(x_moved_total[1h]) > 0`,
		`sum by (code, method) (rate(x_kube_total{job="warmpool-agent"}[5m]))`,
		`rate(x_add_seconds_sum[5m]) / rate(x_add_seconds_count[5m])`,
		"x_units{state!~'free|warm', pool=`a\\b`}",
	}
	for _, e := range good {
		if errs := doc.CheckExpr(e); len(errs) > 0 {
			t.Errorf("%s: %v", e, errs)
		}
	}
	bad := map[string]string{
		`sum(rate(x_ad_seconds_count[5m]))`:                                         "x_ad_seconds_count is not a metric",
		`sum(rate(x_add_seconds[5m]))`:                                              "is a histogram",
		`histogram_quantile(0.5, sum by (result) (rate(x_add_seconds_bucket[5m])))`: "wants histogram_quantile over a sum by (le",
		`sum(rate(x_add_seconds_bucket[5m])) by (le)`:                               "wants histogram_quantile",
		`sum by (pool) (rate(x_add_seconds_count[5m]))`:                             "grouping by pool",
		`x_units{node="a"}`:                                                         "x_units has no label node",
		`sum by (le) (x_units)`:                                                     "grouping by le",
		`x_moved_total_bucket`:                                                      "not a metric",
		`{__name__="x_units"}`:                                                      "without a metric name",
		`sum(rate(x_moved_total{pool="a}[5m]))`:                                     "unterminated",
		`1 + 1`:                                                                     "reads no metric",
	}
	for e, want := range bad {
		errs := fmt.Sprint(doc.CheckExpr(e))
		if !strings.Contains(errs, want) {
			t.Errorf("%s: want %q, got %s", e, want, errs)
		}
	}
}

func TestCheckVariableQuery(t *testing.T) {
	doc := mustDoc(t)
	if errs := doc.CheckVariableQuery(`label_values(x_units, pool)`); len(errs) > 0 {
		t.Error(errs)
	}
	if errs := doc.CheckVariableQuery(`label_values(x_units{state="warm"}, instance)`); len(errs) > 0 {
		t.Error(errs)
	}
	for _, q := range []string{`label_values(x_units, node)`, `label_values(x_unit, pool)`, `label_values(pool)`} {
		if errs := doc.CheckVariableQuery(q); len(errs) == 0 {
			t.Errorf("%s: no error", q)
		}
	}
}

const sampleDashboard = `{
  "title": "x", "uid": "x",
  "templating": {"list": [
    {"name": "datasource", "type": "datasource", "query": "prometheus"},
    {"name": "pool", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"}, "query": {"query": "label_values(x_units, pool)"}},
    {"name": "node", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"}, "query": "label_values(x_units, instance)"}
  ]},
  "panels": [
    {"type": "row", "title": "r", "panels": [
      {"type": "timeseries", "title": "a", "datasource": {"type": "prometheus", "uid": "${datasource}"},
       "targets": [{"expr": "sum by (state) (x_units{pool=~\"$pool\"})"}]}
    ]},
    {"type": "timeseries", "title": "b", "datasource": {"type": "prometheus", "uid": "${datasource}"},
     "targets": [{"expr": "histogram_quantile(0.5, sum by (le) (rate(x_add_seconds_bucket[5m])))"}]}
  ]
}`

func TestCheckDashboard(t *testing.T) {
	doc := mustDoc(t)
	if errs := doc.CheckDashboard([]byte(sampleDashboard)); len(errs) > 0 {
		t.Fatal(errs)
	}
	bad := map[string]string{
		strings.Replace(sampleDashboard, "x_units{pool", "x_unit{pool", 1):           `panel "a": "sum by (state) (x_unit{pool=~\"$pool\"})": x_unit is not a metric`,
		strings.Replace(sampleDashboard, `"title": "b"`, `"title": "a"`, 1):          `two panels titled "a"`,
		strings.Replace(sampleDashboard, `"name": "node"`, `"name": "nod"`, 1):       `templating needs a "node" variable`,
		strings.Replace(sampleDashboard, `"query": "prometheus"`, `"query": "x"`, 1): `variable "datasource"`,
		strings.Replace(sampleDashboard, `"uid": "${datasource}"},
     "targets"`, `"uid": "prom"},
     "targets"`, 1): `panel "b": its datasource must be ${datasource}`,
		strings.Replace(sampleDashboard, `x_units, pool)`, `x_units, node)`, 1): "x_units has no label node",
		`{"title": `: "unexpected end of JSON input",
	}
	for js, want := range bad {
		if errs := fmt.Sprint(doc.CheckDashboard([]byte(js))); !strings.Contains(errs, want) {
			t.Errorf("want %q, got %s", want, errs)
		}
	}
}

// TestEveryDocumentedMetricIsCompared: each metric of docs/metrics.md is
// under a section a component's test compares with its registry, so none
// escapes the comparison.
func TestEveryDocumentedMetricIsCompared(t *testing.T) {
	doc, err := ReadDoc()
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range doc {
		if !slices.Contains([]string{SectionAgent, SectionAllocator, SectionBoth}, m.Section) {
			t.Errorf("%s is under %q in docs/metrics.md, which no component's test compares", name, m.Section)
		}
	}
}
