// Package metricsdoc holds docs/metrics.md and the Grafana dashboard to
// what the components really register. It reads the doc's tables, gathers
// a component's registry with one series of every metric (so that vectors
// without children show up too, with their type and label names), and
// checks the metric names and label names a dashboard's PromQL uses.
//
// The components' tests (agent, allocator, internal/metrics) compare what
// they register with their sections of the doc, both ways; the manifests
// test compares the dashboard with the doc. Together: every metric a
// dashboard graphs is documented and registered. This package's own tests
// hold docs/operator-guide.md to the code the same way: its flags, its
// table of CNI errors, its metrics and its alert expressions.
package metricsdoc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warmpool/warmpool/internal/rig/gobuild"
)

// Metric is one metric as the doc lists it or a registry holds it.
type Metric struct {
	Name string
	// Type is counter, gauge, histogram or summary.
	Type string
	// Labels are the metric's label names, sorted (le and quantile not
	// included: they are the type's).
	Labels []string
	// Section is the doc's "## " heading above the metric's table (empty
	// for a registered metric).
	Section string
}

// Doc is docs/metrics.md's tables, by metric name.
type Doc map[string]Metric

// Sections of docs/metrics.md: each component's test compares its
// registry with its own.
const (
	SectionAgent     = "Agent"
	SectionAllocator = "Allocator"
	SectionBoth      = "Both components"
)

var (
	backticked = regexp.MustCompile("`([^`]+)`")
	heading    = regexp.MustCompile(`^##\s+(.+?)\s*$`)
)

// ParseDoc reads the metric tables of a metrics.md: rows whose first cell
// is a backticked metric name, under a header row "name|metric, type,
// labels, meaning". A label cell names each label in backticks (its values
// after a colon are prose). It fails on a metric listed twice or a type it
// does not know.
func ParseDoc(md []byte) (Doc, error) {
	doc := Doc{}
	section := ""
	inTable := false
	sc := bufio.NewScanner(bytes.NewReader(md))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if m := heading.FindStringSubmatch(line); m != nil {
			section, inTable = m[1], false
			continue
		}
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if len(cells) >= 4 && (cells[0] == "name" || cells[0] == "metric") && cells[1] == "type" && cells[2] == "labels" {
			inTable = true
			continue
		}
		if !inTable || strings.HasPrefix(cells[0], "---") {
			continue
		}
		name := backticked.FindStringSubmatch(cells[0])
		if name == nil {
			return nil, fmt.Errorf("line %d: a metric row without a `name`: %s", n, line)
		}
		m := Metric{Name: name[1], Type: cells[1], Section: section}
		switch m.Type {
		case "counter", "gauge", "histogram", "summary":
		default:
			return nil, fmt.Errorf("line %d: %s: unknown type %q", n, m.Name, m.Type)
		}
		for _, l := range backticked.FindAllStringSubmatch(cells[2], -1) {
			m.Labels = append(m.Labels, l[1])
		}
		slices.Sort(m.Labels)
		if _, dup := doc[m.Name]; dup {
			return nil, fmt.Errorf("line %d: %s listed twice", n, m.Name)
		}
		doc[m.Name] = m
	}
	if len(doc) == 0 {
		return nil, errors.New("no metric table found")
	}
	return doc, sc.Err()
}

// ReadDoc reads docs/metrics.md of the module the working directory is in
// (a test's: its package's folder).
func ReadDoc() (Doc, error) {
	root, err := gobuild.ModuleRoot()
	if err != nil {
		return nil, err
	}
	md, err := os.ReadFile(filepath.Join(root, "docs", "metrics.md"))
	if err != nil {
		return nil, err
	}
	return ParseDoc(md)
}

var (
	descName   = regexp.MustCompile(`^Desc\{fqName: ("(?:[^"\\]|\\.)*")`)
	descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}\}$`)
)

// describe reads a descriptor's name and variable label names. Desc has
// no accessors; its String is stable and, should it change, Registered
// fails loudly (a metric described but not gathered).
func describe(d *prometheus.Desc) (string, []string, error) {
	s := d.String()
	m := descName.FindStringSubmatch(s)
	l := descLabels.FindStringSubmatch(s)
	if m == nil || l == nil {
		return "", nil, fmt.Errorf("cannot read descriptor %s", s)
	}
	name, err := strconv.Unquote(m[1])
	if err != nil {
		return "", nil, fmt.Errorf("descriptor %s: %w", s, err)
	}
	var labels []string
	if l[1] != "" {
		for _, v := range strings.Split(l[1], ",") {
			// A constrained label is written c(name).
			labels = append(labels, strings.TrimSuffix(strings.TrimPrefix(v, "c("), ")"))
		}
	}
	return name, labels, nil
}

// Registered gathers reg after creating one child (label values "x") of
// each vector in vecs, and returns every metric reg holds. A vector
// gathers nothing until a child exists, so it fails when a metric reg
// describes did not gather: a vector left out of vecs, or a collector
// with nothing to report in the caller's set-up.
func Registered(reg *prometheus.Registry, vecs ...prometheus.Collector) (map[string]Metric, error) {
	for _, c := range vecs {
		if err := touch(c); err != nil {
			return nil, err
		}
	}
	families, err := reg.Gather()
	if err != nil {
		return nil, err
	}
	out := map[string]Metric{}
	for _, f := range families {
		m := Metric{Name: f.GetName(), Type: strings.ToLower(f.GetType().String())}
		if len(f.GetMetric()) > 0 {
			for _, lp := range f.GetMetric()[0].GetLabel() {
				m.Labels = append(m.Labels, lp.GetName())
			}
			slices.Sort(m.Labels)
		}
		out[m.Name] = m
	}
	descs := make(chan *prometheus.Desc)
	go func() { reg.Describe(descs); close(descs) }()
	var errs []error
	for d := range descs {
		name, _, err := describe(d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, ok := out[name]; !ok {
			errs = append(errs, fmt.Errorf("%s is registered but gathered nothing: give it a series in the test", name))
		}
	}
	return out, errors.Join(errs...)
}

// touch creates one child of a vector.
func touch(c prometheus.Collector) error {
	descs := make(chan *prometheus.Desc, 1)
	go func() { c.Describe(descs); close(descs) }()
	var labels []string
	n := 0
	for d := range descs {
		n++
		_, ls, err := describe(d)
		if err != nil {
			return err
		}
		labels = ls
	}
	if n != 1 {
		return fmt.Errorf("a vector describes one metric; %T describes %d", c, n)
	}
	values := make([]string, len(labels))
	for i := range values {
		values[i] = "x"
	}
	switch v := c.(type) {
	case *prometheus.CounterVec:
		v.WithLabelValues(values...)
	case *prometheus.GaugeVec:
		v.WithLabelValues(values...)
	case *prometheus.HistogramVec:
		v.WithLabelValues(values...)
	case *prometheus.SummaryVec:
		v.WithLabelValues(values...)
	default:
		return fmt.Errorf("%T is not a vector", c)
	}
	return nil
}

// Compare lists the differences between the doc's metrics in sections
// and reg (Registered's): a metric registered but not documented there,
// documented there but not registered, or documented with another type or
// other labels. The Go runtime and process collectors' go_* and process_*
// are documented as a group, not one by one: Runtime checks them.
func Compare(doc Doc, sections []string, reg map[string]Metric) []error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(reg)) {
		r := reg[name]
		if runtimeMetric(name) {
			continue
		}
		d, ok := doc[name]
		switch {
		case !ok || !slices.Contains(sections, d.Section):
			errs = append(errs, fmt.Errorf("%s (%s, labels %v) is registered but not documented under %q in docs/metrics.md", name, r.Type, r.Labels, sections))
		case d.Type != r.Type:
			errs = append(errs, fmt.Errorf("%s: docs/metrics.md says %s, registered as %s", name, d.Type, r.Type))
		case !slices.Equal(d.Labels, r.Labels):
			errs = append(errs, fmt.Errorf("%s: docs/metrics.md gives labels %v, registered with %v", name, d.Labels, r.Labels))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(doc)) {
		if d := doc[name]; slices.Contains(sections, d.Section) {
			if _, ok := reg[name]; !ok {
				errs = append(errs, fmt.Errorf("%s is documented under %q in docs/metrics.md but not registered", name, d.Section))
			}
		}
	}
	return errs
}

// Runtime fails unless reg holds the Go runtime's and the process's
// metrics, which docs/metrics.md says both components export.
func Runtime(reg map[string]Metric) error {
	var goRuntime, process bool
	for name := range reg {
		goRuntime = goRuntime || strings.HasPrefix(name, "go_")
		process = process || strings.HasPrefix(name, "process_")
	}
	if !goRuntime || !process {
		return fmt.Errorf("docs/metrics.md says the Go runtime and process collectors are exported: go_* found %v, process_* found %v", goRuntime, process)
	}
	return nil
}

func runtimeMetric(name string) bool {
	return strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_")
}
