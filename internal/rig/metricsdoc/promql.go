package metricsdoc

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// TargetLabels are the labels Prometheus adds to every series it scrapes:
// a dashboard may select and group by them on any metric. The agents'
// per-node panels use instance (each agent is one target).
var TargetLabels = []string{"instance", "job"}

// selector is one metric a PromQL expression reads, with the label names
// its matchers name.
type selector struct {
	name   string
	labels []string
}

// parsed is what CheckExpr reads from an expression: its selectors, the
// label names of its by, without, on, ignoring and group_ clauses, and
// the functions it calls.
type parsed struct {
	selectors []selector
	grouping  []string
	funcs     []string
}

// modifiers take a parenthesised list of label names.
var modifiers = []string{"by", "without", "on", "ignoring", "group_left", "group_right"}

// keywords are PromQL words that are not metrics: operators, and the
// aggregations, which may be followed by a modifier instead of "(".
var keywords = []string{"bool", "offset", "and", "or", "unless", "atan2", "start", "end",
	"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}

// parse reads a PromQL expression far enough to find the metrics and
// label names it uses. Strings, range and subquery brackets and Grafana
// variables ($name, ${name}) are skipped. It is not a full parser: it
// fails on what it does not understand (a selector without a metric
// name), which a dashboard then does without.
func parse(expr string) (parsed, error) {
	var p parsed
	i := 0
	peek := func() byte {
		for i < len(expr) && (expr[i] == ' ' || expr[i] == '\t' || expr[i] == '\n' || expr[i] == '\r') {
			i++
		}
		if i < len(expr) {
			return expr[i]
		}
		return 0
	}
	ident := func() string {
		start := i
		for i < len(expr) && (isIdentByte(expr[i]) || i > start && expr[i] >= '0' && expr[i] <= '9') {
			i++
		}
		return expr[start:i]
	}
	skipString := func() error {
		q := expr[i]
		for i++; i < len(expr); i++ {
			if expr[i] == '\\' && q != '`' {
				i++
				continue
			}
			if expr[i] == q {
				i++
				return nil
			}
		}
		return errors.New("unterminated string")
	}
	// labelList reads "(a, b)" after a modifier.
	labelList := func() ([]string, error) {
		if peek() != '(' {
			return nil, fmt.Errorf("want ( after a grouping modifier at %d", i)
		}
		i++
		var out []string
		for {
			switch c := peek(); {
			case c == ')':
				i++
				return out, nil
			case c == ',':
				i++
			case isIdentByte(c):
				out = append(out, ident())
			default:
				return nil, fmt.Errorf("unexpected %q in a label list at %d", c, i)
			}
		}
	}
	// matchers reads "{a="x", b=~"y"}" and returns the label names.
	matchers := func() ([]string, error) {
		i++ // {
		var out []string
		for {
			switch c := peek(); {
			case c == '}':
				i++
				return out, nil
			case c == ',':
				i++
			case isIdentByte(c):
				name := ident()
				if peek() == 0 || !strings.ContainsRune("=!", rune(expr[i])) {
					return nil, fmt.Errorf("label %s without a matcher at %d", name, i)
				}
				for i < len(expr) && strings.ContainsRune("=!~", rune(expr[i])) {
					i++
				}
				if c := peek(); c != '"' && c != '\'' && c != '`' {
					return nil, fmt.Errorf("label %s: want a string at %d", name, i)
				}
				if err := skipString(); err != nil {
					return nil, err
				}
				out = append(out, name)
			default:
				return nil, fmt.Errorf("unexpected %q in a selector at %d", c, i)
			}
		}
	}
	for {
		c := peek()
		switch {
		case c == 0:
			return p, nil
		case c == '"' || c == '\'' || c == '`':
			if err := skipString(); err != nil {
				return p, err
			}
		case c == '[':
			end := strings.IndexByte(expr[i:], ']')
			if end < 0 {
				return p, errors.New("unterminated [")
			}
			i += end + 1
		case c == '$':
			i++
			if i < len(expr) && expr[i] == '{' {
				end := strings.IndexByte(expr[i:], '}')
				if end < 0 {
					return p, errors.New("unterminated ${")
				}
				i += end + 1
			} else {
				ident()
			}
		case c == '{':
			return p, fmt.Errorf("a selector without a metric name at %d", i)
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isIdentByte(expr[i]) || expr[i] >= '0' && expr[i] <= '9' || expr[i] == '.' ||
				(expr[i] == '+' || expr[i] == '-') && (expr[i-1] == 'e' || expr[i-1] == 'E')) {
				i++
			}
		case isIdentByte(c):
			word := ident()
			switch {
			case slices.Contains(modifiers, word):
				ls, err := labelList()
				if err != nil {
					return p, err
				}
				p.grouping = append(p.grouping, ls...)
			case slices.Contains(keywords, word):
			case peek() == '(':
				p.funcs = append(p.funcs, word)
			default:
				s := selector{name: word}
				if peek() == '{' {
					ls, err := matchers()
					if err != nil {
						return p, err
					}
					s.labels = ls
				}
				p.selectors = append(p.selectors, s)
			}
		default:
			i++ // operators, parentheses, commas
		}
	}
}

func isIdentByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == ':'
}

// resolve finds the documented metric a series name belongs to: itself,
// or a histogram's (or summary's) _bucket, _sum or _count.
func (d Doc) resolve(name string) (Metric, string, bool) {
	if m, ok := d[name]; ok {
		return m, "", true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if m, ok := d[base]; ok && (m.Type == "histogram" || m.Type == "summary" && suffix != "_bucket") {
			return m, suffix, true
		}
	}
	return Metric{}, "", false
}

// labelsOf are the label names a selector of m (with suffix) may use.
func labelsOf(m Metric, suffix string) []string {
	ls := append(slices.Clone(m.Labels), TargetLabels...)
	if suffix == "_bucket" {
		ls = append(ls, "le")
	}
	return ls
}

// CheckExpr checks one PromQL expression against the doc: every metric it
// reads is documented (a histogram through _bucket, _sum or _count only,
// its buckets under histogram_quantile grouped by le), and every label
// name it selects or groups by is one of the metric's (or a target
// label). A grouping label must be on every metric of the expression.
func (d Doc) CheckExpr(expr string) []error {
	p, err := parse(expr)
	if err != nil {
		return []error{fmt.Errorf("%q: %w", expr, err)}
	}
	if len(p.selectors) == 0 {
		return []error{fmt.Errorf("%q reads no metric", expr)}
	}
	var errs []error
	for _, s := range p.selectors {
		m, suffix, ok := d.resolve(s.name)
		if !ok {
			errs = append(errs, fmt.Errorf("%q: %s is not a metric docs/metrics.md lists", expr, s.name))
			continue
		}
		if m.Type == "histogram" && suffix == "" {
			errs = append(errs, fmt.Errorf("%q: %s is a histogram: read %s_bucket, _sum or _count", expr, s.name, s.name))
		}
		if suffix == "_bucket" && (!slices.Contains(p.funcs, "histogram_quantile") || !slices.Contains(p.grouping, "le")) {
			errs = append(errs, fmt.Errorf("%q: %s wants histogram_quantile over a sum by (le, ...)", expr, s.name))
		}
		allowed := labelsOf(m, suffix)
		for _, l := range s.labels {
			if !slices.Contains(allowed, l) {
				errs = append(errs, fmt.Errorf("%q: %s has no label %s (it has %v)", expr, s.name, l, m.Labels))
			}
		}
		for _, l := range p.grouping {
			if !slices.Contains(allowed, l) {
				errs = append(errs, fmt.Errorf("%q: grouping by %s, which %s does not have (it has %v)", expr, l, s.name, m.Labels))
			}
		}
	}
	return errs
}

// labelValues matches a Grafana variable's query label_values(metric, label).
var labelValues = regexp.MustCompile(`^\s*label_values\(\s*([^,]+?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$`)

// CheckVariableQuery checks a Grafana template variable's
// label_values(metric{...}, label) query: label must be one of metric's.
func (d Doc) CheckVariableQuery(query string) []error {
	m := labelValues.FindStringSubmatch(query)
	if m == nil {
		return []error{fmt.Errorf("variable query %q: want label_values(metric, label)", query)}
	}
	errs := d.CheckExpr(m[1])
	p, err := parse(m[1])
	if err == nil && len(p.selectors) == 1 {
		if met, suffix, ok := d.resolve(p.selectors[0].name); ok && !slices.Contains(labelsOf(met, suffix), m[2]) {
			errs = append(errs, fmt.Errorf("variable query %q: %s has no label %s", query, met.Name, m[2]))
		}
	}
	return errs
}

// Dashboard is the part of a Grafana dashboard's JSON CheckDashboard reads.
type Dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []Panel `json:"panels"`
	Templating struct {
		List []Variable `json:"list"`
	} `json:"templating"`
}

// Panel is a dashboard panel; a row holds its panels when collapsed.
type Panel struct {
	Title      string      `json:"title"`
	Type       string      `json:"type"`
	Datasource *Datasource `json:"datasource"`
	Targets    []struct {
		Expr       string      `json:"expr"`
		Datasource *Datasource `json:"datasource"`
	} `json:"targets"`
	Panels []Panel `json:"panels"`
}

// Graphs returns the dashboard's panels that are not rows, in order, the
// panels of collapsed rows included.
func (db Dashboard) Graphs() []Panel {
	var out []Panel
	var walk func(ps []Panel)
	walk = func(ps []Panel) {
		for _, p := range ps {
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			out = append(out, p)
		}
	}
	walk(db.Panels)
	return out
}

// Datasource is a panel's or a target's data source reference.
type Datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// Variable is a template variable.
type Variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Datasource *Datasource     `json:"datasource"`
}

// DatasourceVariable is the dashboard's data source variable: every panel
// reads from it, so the dashboard imports into any Grafana.
const DatasourceVariable = "${datasource}"

// CheckDashboard parses a Grafana dashboard and checks it against the doc:
// a Prometheus data source variable that every panel and variable uses,
// pool and node variables, every panel with a query, and every query
// (CheckExpr, CheckVariableQuery).
func (d Doc) CheckDashboard(js []byte) []error {
	var db Dashboard
	if err := json.Unmarshal(js, &db); err != nil {
		return []error{err}
	}
	var errs []error
	if db.Title == "" || db.UID == "" {
		errs = append(errs, errors.New("the dashboard needs a title and a uid"))
	}
	vars := map[string]Variable{}
	for _, v := range db.Templating.List {
		vars[v.Name] = v
	}
	if ds, ok := vars["datasource"]; !ok || ds.Type != "datasource" || string(ds.Query) != `"prometheus"` {
		errs = append(errs, errors.New(`templating needs a variable "datasource" of type datasource and query "prometheus"`))
	}
	for _, name := range []string{"pool", "node"} {
		if _, ok := vars[name]; !ok {
			errs = append(errs, fmt.Errorf("templating needs a %q variable", name))
		}
	}
	for _, v := range db.Templating.List {
		if v.Type != "query" {
			continue
		}
		if v.Datasource == nil || v.Datasource.UID != DatasourceVariable {
			errs = append(errs, fmt.Errorf("variable %s: its datasource must be %s", v.Name, DatasourceVariable))
		}
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				errs = append(errs, fmt.Errorf("variable %s: query: %w", v.Name, err))
				continue
			}
			q = obj.Query
		}
		for _, err := range d.CheckVariableQuery(q) {
			errs = append(errs, fmt.Errorf("variable %s: %w", v.Name, err))
		}
	}
	titles := map[string]bool{}
	for _, p := range db.Graphs() {
		if titles[p.Title] {
			errs = append(errs, fmt.Errorf("two panels titled %q", p.Title))
		}
		titles[p.Title] = true
		if p.Datasource == nil || p.Datasource.UID != DatasourceVariable {
			errs = append(errs, fmt.Errorf("panel %q: its datasource must be %s", p.Title, DatasourceVariable))
		}
		if len(p.Targets) == 0 {
			errs = append(errs, fmt.Errorf("panel %q has no query", p.Title))
		}
		for _, t := range p.Targets {
			if t.Datasource != nil && t.Datasource.UID != DatasourceVariable {
				errs = append(errs, fmt.Errorf("panel %q: a query's datasource must be %s", p.Title, DatasourceVariable))
			}
			for _, err := range d.CheckExpr(t.Expr) {
				errs = append(errs, fmt.Errorf("panel %q: %w", p.Title, err))
			}
		}
	}
	if len(titles) == 0 {
		errs = append(errs, errors.New("the dashboard has no panel"))
	}
	return errs
}
