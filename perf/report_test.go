package perf

import (
	"bytes"
	"image/color"
	"image/png"
	"maps"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
)

var (
	shape1x1000 = Shape{Deployments: 1, Replicas: 1000}
	shape100x10 = Shape{Deployments: 100, Replicas: 10}
)

const mib = 1 << 20

// reportResult is a synthetic three-run benchmark of two shapes and three
// IPAMs, chosen so that every target has a case met and a case missed,
// and so that host-local's third 1x1000 run fails after create (an even
// number of runs for its re-create and delete).
func reportResult() *Result {
	sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	// Seconds of create, re-create and delete, by run.
	secs := map[string]map[Shape][3][3]float64{
		"warmpool": {
			shape1x1000: {{60, 50, 30}, {62, 55, 31}, {70, 52, 32}},
			shape100x10: {{40, 45, 20}, {41, 44, 20}, {42, 46, 20}},
		},
		"static": {
			shape1x1000: {{58, 50, 40}, {60, 50, 40}, {59, 50, 40}},
			shape100x10: {{30, 38, 20}, {35, 38, 20}, {36, 38, 20}},
		},
		"host-local": {
			shape1x1000: {{65, 40, 45}, {64, 45, 45}, {66, 99, 45}},
			shape100x10: {{50, 50, 20}, {50, 50, 20}, {50, 50, 20}},
		},
	}
	r := &Result{
		Settings: Settings{
			Nodes: 10, Pods: 1000, Shapes: []Shape{shape1x1000, shape100x10},
			IPAMs: []string{"warmpool", "static", "host-local"}, Runs: 3,
			PoolSize: 1000, NetNS: true, DAD: false, Parallel: 8,
			Cluster: "local", CPUs: 16,
		},
		Started: time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC),
	}
	for i := range 3 {
		for _, shape := range r.Settings.Shapes {
			for _, ipam := range r.Settings.IPAMs {
				run := Run{IPAM: ipam, Shape: shape, Index: i}
				for j, name := range []string{PhaseCreate, PhaseRecreate, PhaseDelete} {
					d := sec(secs[ipam][shape][i][j])
					ph := Phase{Name: name, Duration: d, Pods: 1000, ADDs: 1000, APIWrites: -1}
					if name == PhaseDelete {
						ph.Curve = []Point{{0, 1000}, {d / 2, 400}, {d, 0}}
					} else {
						ph.Curve = []Point{{d / 4, 250}, {d / 2, 600}, {d, 1000}}
						ph.TimeToRunning = &Percentiles{P50: d / 2, P90: d * 9 / 10, P99: d * 99 / 100, Max: d}
					}
					run.Phases = append(run.Phases, ph)
				}
				if ipam == "warmpool" {
					run.PeakRSS = map[string]uint64{
						"allocator":    uint64(50+i) * mib,
						"agent-node-1": 20 * mib,
						"agent-node-2": uint64(30+5*(i%2)) * mib,
					}
					for j := range run.Phases {
						run.Phases[j].APIWrites = 10
						run.Phases[j].Hits = 1000
					}
				}
				r.Runs = append(r.Runs, run)
			}
		}
	}
	// Per run: warmpool's figures that the targets read.
	for i := range r.Runs {
		run := &r.Runs[i]
		n := run.Index
		switch {
		case run.IPAM == "warmpool" && run.Shape == shape1x1000:
			create, recreate := &run.Phases[0], &run.Phases[1]
			create.APIWrites = []int{50, 100, 200}[n] // median 0.1 per pod
			create.BusMessages = 2000
			create.TimeToRunning = &Percentiles{
				P50: sec([]float64{10, 20, 30}[n]),
				P90: sec([]float64{40, 70, 50}[n]),
				P99: sec([]float64{55, 75, 80}[n]),
				Max: sec(90),
			}
			recreate.Misses = []int{5, 10, 15}[n]        // 99.0 % exactly
			recreate.APIWrites = []int{250, 300, 100}[n] // median 0.25 per pod
			recreate.Hits = 1000 - recreate.Misses
		case run.IPAM == "warmpool" && run.Shape == shape100x10:
			create := &run.Phases[0]
			create.APIWrites = []int{300, 200, -1}[n] // median of 0.3 and 0.2
			create.LeaseWrites = []map[string]int{{"grant": 200, "revoke": 40}, {"grant": 100, "miss": 20}, nil}[n]
			create.Hits, create.Misses = 980, 20
			if n == 1 {
				create.ADDFailures = 3
			}
		case run.IPAM == "host-local" && run.Shape == shape1x1000 && n == 2:
			// Its re-create timed out: recorded, and left out of the
			// medians (or its 8m20s would count as a finish).
			run.Phases = run.Phases[:2]
			run.Phases[1].Duration = 500 * time.Second
			run.Phases[1].Error = "re-create: 900 of 1000 pods after 8m20s: context deadline exceeded"
			run.Error = "pods stuck"
		}
	}
	return r
}

func TestSummariseMedians(t *testing.T) {
	r := reportResult()
	s := Summarise(r)

	for _, c := range []struct {
		shape       Shape
		ipam, phase string
		want        time.Duration
		runs        int
	}{
		{shape1x1000, "warmpool", PhaseCreate, 62 * time.Second, 3},
		{shape1x1000, "warmpool", PhaseRecreate, 52 * time.Second, 3},
		{shape100x10, "static", PhaseCreate, 35 * time.Second, 3},
		// The failed run's create finished and counts.
		{shape1x1000, "host-local", PhaseCreate, 65 * time.Second, 3},
		// Two runs: the mean of 40s and 45s.
		{shape1x1000, "host-local", PhaseRecreate, 42500 * time.Millisecond, 2},
		{shape1x1000, "host-local", PhaseDelete, 45 * time.Second, 2},
	} {
		got, ok := s.Median(c.shape, c.ipam, c.phase)
		ps, _ := s.Phase(c.shape, c.ipam, c.phase)
		if !ok || got != c.want || ps.Runs != c.runs {
			t.Errorf("%s %s %s: median %v of %d runs (ok %v), want %v of %d", c.shape, c.ipam, c.phase, got, ps.Runs, ok, c.want, c.runs)
		}
	}
	if d, ok := s.Median(Shape{Deployments: 2, Replicas: 500}, "warmpool", PhaseCreate); ok {
		t.Errorf("median of a shape not run: %v, want none", d)
	}

	ps, _ := s.Phase(shape1x1000, "warmpool", PhaseCreate)
	if r.Runs[ps.MedianRun].IPAM != "warmpool" || r.Runs[ps.MedianRun].Phases[0].Duration != 62*time.Second {
		t.Errorf("median run of warmpool 1x1000 create: %+v, want the 62s one", r.Runs[ps.MedianRun])
	}
	wantTTR := Percentiles{P50: 20 * time.Second, P90: 50 * time.Second, P99: 75 * time.Second, Max: 90 * time.Second}
	if ps.TimeToRunning == nil || *ps.TimeToRunning != wantTTR {
		t.Errorf("time to Running: %+v, want %+v", ps.TimeToRunning, wantTTR)
	}
	if rate, ok := ps.HitRate(); !ok || rate != 1 {
		t.Errorf("hit rate warmpool 1x1000 create: %v %v, want 1", rate, ok)
	}
	if ps.APIWritesPerPod != 0.1 || ps.APIWriteRuns != 3 {
		t.Errorf("API writes/pod: %v over %d runs, want 0.1 over 3", ps.APIWritesPerPod, ps.APIWriteRuns)
	}
	if ps.BusMessagesPerPod != 2 {
		t.Errorf("bus messages/pod: %v, want 2", ps.BusMessagesPerPod)
	}

	// Even: the lower middle run is the one plotted.
	ps, _ = s.Phase(shape1x1000, "host-local", PhaseRecreate)
	if got := r.Runs[ps.MedianRun].Phases[1].Duration; got != 40*time.Second {
		t.Errorf("median run of host-local 1x1000 re-create lasted %v, want the 40s one", got)
	}

	ps, _ = s.Phase(shape1x1000, "warmpool", PhaseRecreate)
	if rate, ok := ps.HitRate(); !ok || ps.Hits != 2970 || ps.Misses != 30 || math.Abs(rate-0.99) > 1e-12 {
		t.Errorf("hit rate warmpool 1x1000 re-create: %d/%d = %v, want 2970/30 = 0.99", ps.Hits, ps.Misses, rate)
	}
	ps, _ = s.Phase(shape100x10, "warmpool", PhaseCreate)
	if ps.APIWritesPerPod != 0.25 || ps.APIWriteRuns != 2 || ps.ADDFailures != 3 {
		t.Errorf("warmpool 100x10 create: %v writes/pod over %d runs, %d ADD failures; want 0.25 over 2, 3",
			ps.APIWritesPerPod, ps.APIWriteRuns, ps.ADDFailures)
	}
	wantCauses := map[string]float64{"grant": 0.15, "miss": 0.01, "revoke": 0.02, "retry": 0, "node-lost": 0, "takeover": 0, "other": 0.07}
	if !maps.EqualFunc(ps.LeaseWritesPerPod, wantCauses, func(x, y float64) bool { return math.Abs(x-y) < 1e-12 }) {
		t.Errorf("warmpool 100x10 create writes per pod by cause: %v, want %v", ps.LeaseWritesPerPod, wantCauses)
	}
	// The other writes: 60 in 40 s, 80 in 41 s.
	if want := (60.0/40 + 80.0/41) / 2; math.Abs(ps.OtherWritesPerSecond-want) > 1e-12 {
		t.Errorf("warmpool 100x10 create other writes per second: %v, want %v", ps.OtherWritesPerSecond, want)
	}
	ps, _ = s.Phase(shape100x10, "static", PhaseCreate)
	if rate, ok := ps.HitRate(); ok || ps.APIWriteRuns != 0 {
		t.Errorf("static has a hit rate (%v, %v) or API writes over %d runs; want neither", rate, ok, ps.APIWriteRuns)
	}

	wantPeak := RSSPeak{Allocator: 52 * mib, Agent: 35 * mib, AgentName: "agent-node-2"}
	if got := s.Peaks["warmpool"]; got != wantPeak || len(s.Peaks) != 1 {
		t.Errorf("peaks: %+v, want only warmpool's %+v", s.Peaks, wantPeak)
	}
	if len(s.Failed) != 1 || s.Failed[0].Error != "pods stuck" {
		t.Errorf("failed runs: %+v, want host-local's", s.Failed)
	}
}

func TestSummariseMedianOfDurations(t *testing.T) {
	for _, c := range []struct {
		in   []time.Duration
		want time.Duration
	}{
		{nil, 0},
		{[]time.Duration{7}, 7},
		{[]time.Duration{3, 1, 2}, 2},
		{[]time.Duration{4 * time.Second, 1 * time.Second, 3 * time.Second, 2 * time.Second}, 2500 * time.Millisecond},
		{[]time.Duration{math.MaxInt64, math.MaxInt64 - 2}, math.MaxInt64 - 1},
	} {
		if got := medianOfDurations(c.in); got != c.want {
			t.Errorf("median of %v: %v, want %v", c.in, got, c.want)
		}
	}
	if got := medianOfFloats([]float64{0.3, 0.1, 0.2, 0.4}); got != 0.25 {
		t.Errorf("median of floats: %v, want 0.25", got)
	}
}

func TestSummaryRatios(t *testing.T) {
	s := Summarise(reportResult())
	for _, c := range []struct {
		shape           Shape
		phase, baseline string
		want            float64
	}{
		{shape1x1000, PhaseCreate, "static", 62.0 / 59},
		{shape1x1000, PhaseRecreate, "host-local", 52 / 42.5},
		{shape100x10, PhaseCreate, "static", 41.0 / 35},
		{shape1x1000, PhaseDelete, "host-local", 31.0 / 45},
	} {
		got, ok := s.Ratio(c.shape, c.phase, c.baseline)
		if !ok || math.Abs(got.Value-c.want) > 1e-9 {
			t.Errorf("warmpool/%s %s %s: %v (ok %v), want %v", c.baseline, c.shape, c.phase, got.Value, ok, c.want)
		}
	}
	// The spread pairs the runs of one repetition: 60/58, 62/60, 70/59;
	// and only the repetitions both finished (host-local's third failed
	// after create): 50/40, 55/45.
	for _, c := range []struct {
		shape           Shape
		phase, baseline string
		min, max        float64
		pairs           int
		text            string
	}{
		{shape1x1000, PhaseCreate, "static", 62.0 / 60, 70.0 / 59, 3, "1.05 (1.03-1.19)"},
		{shape1x1000, PhaseRecreate, "host-local", 55.0 / 45, 50.0 / 40, 2, "1.22 (1.22-1.25)"},
	} {
		got, _ := s.Ratio(c.shape, c.phase, c.baseline)
		if math.Abs(got.Min-c.min) > 1e-9 || math.Abs(got.Max-c.max) > 1e-9 || got.Pairs != c.pairs || got.String() != c.text {
			t.Errorf("warmpool/%s %s %s: spread %v-%v over %d (%q), want %v-%v over %d (%q)",
				c.baseline, c.shape, c.phase, got.Min, got.Max, got.Pairs, got.String(), c.min, c.max, c.pairs, c.text)
		}
	}
	if got := (Ratio{Value: 1.234, Min: 1, Max: 2, Pairs: 1}).String(); got != "1.23" {
		t.Errorf("one pair: %q, want no spread", got)
	}
	if n := len(s.Ratios()); n != 12 {
		t.Errorf("%d ratios, want 12 (2 shapes x 3 phases x 2 baselines)", n)
	}
	if _, ok := s.Ratio(shape1x1000, PhaseCreate, "calico"); ok {
		t.Error("a ratio to a baseline that was not run")
	}
}

func TestTargets(t *testing.T) {
	s := Summarise(reportResult())
	want := []Target{
		{"1x1000 create: warmpool/static", "1.051 (1.03-1.19)", "≤ 1.10", true},
		{"1x1000 create: warmpool/host-local", "0.954 (0.92-1.06)", "≤ 1.00", true},
		{"1x1000 create: warmpool hit rate", "100.0 %", "≥ 99 %", true},
		{"1x1000 create: warmpool ADD failures", "0", "0", true},
		{"1x1000 create: warmpool API writes/pod", "0.100 (0.050-0.200)", "≤ 0.1", true},
		{"1x1000 create: warmpool/static p99 time to Running", "1.284 (1m15s vs 58.4s)", "≤ 1.20", false},
		{"1x1000 re-create: warmpool/static", "1.040 (1.00-1.10)", "≤ 1.10", true},
		{"1x1000 re-create: warmpool/host-local", "1.224 (1.22-1.25)", "≤ 1.00", false},
		{"1x1000 re-create: warmpool hit rate", "99.0 %", "≥ 99 %", true},
		{"1x1000 re-create: warmpool ADD failures", "0", "0", true},
		{"1x1000 re-create: warmpool API writes/pod", "0.250 (0.100-0.300)", "≤ 0.2", false},
		{"1x1000 re-create: warmpool/static p99 time to Running", "1.040 (51.5s vs 49.5s)", "≤ 1.20", true},
		{"1x1000: re-create ÷ create, warmpool vs static", "0.84 vs 0.85", "no larger", true},
		{"100x10 create: warmpool/static", "1.171 (1.17-1.33)", "≤ 1.10", false},
		{"100x10 create: warmpool/host-local", "0.820 (0.80-0.84)", "≤ 1.00", true},
		{"100x10 create: warmpool hit rate", "98.0 %", "≥ 99 %", false},
		{"100x10 create: warmpool ADD failures", "3", "0", false},
		{"100x10 create: warmpool API writes/pod", "0.250 (0.200-0.300)", "≤ 0.1", false},
		{"100x10 create: warmpool/static p99 time to Running", "1.171 (40.6s vs 34.7s)", "≤ 1.20", true},
		{"100x10 re-create: warmpool/static", "1.184 (1.16-1.21)", "≤ 1.10", false},
		{"100x10 re-create: warmpool/host-local", "0.900 (0.88-0.92)", "≤ 1.00", true},
		{"100x10 re-create: warmpool hit rate", "100.0 %", "≥ 99 %", true},
		{"100x10 re-create: warmpool ADD failures", "0", "0", true},
		{"100x10 re-create: warmpool API writes/pod", "0.010 (0.010-0.010)", "≤ 0.2", true},
		{"100x10 re-create: warmpool/static p99 time to Running", "1.184 (44.6s vs 37.6s)", "≤ 1.20", true},
		{"100x10: re-create ÷ create, warmpool vs static", "1.10 vs 1.09", "no larger", false},
	}
	got := s.Targets()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("targets:\n got %+v\nwant %+v", got, want)
	}

	// At the limit is met: host-local as fast as warmpool.
	r := reportResult()
	for i, run := range r.Runs {
		if run.IPAM == "host-local" && run.Shape == shape100x10 {
			r.Runs[i].Phases[0].Duration = 41 * time.Second
		}
	}
	for _, tg := range Summarise(r).Targets() {
		if tg.Name == "100x10 create: warmpool/host-local" && (!strings.HasPrefix(tg.Value, "1.000 ") || !tg.Met) {
			t.Errorf("at the limit: %+v, want 1.000 met", tg)
		}
	}

	// Without a baseline its targets go, and only they.
	r = reportResult()
	var runs []Run
	for _, run := range r.Runs {
		if run.IPAM != "static" {
			runs = append(runs, run)
		}
	}
	r.Runs = runs
	got = Summarise(r).Targets()
	// Its ratios, the p99 ratios and re-create ÷ create: 10.
	if len(got) != len(want)-10 {
		t.Errorf("%d targets without static, want %d", len(got), len(want)-10)
	}
	for _, tg := range got {
		if strings.Contains(tg.Name, "static") {
			t.Errorf("target %q without static runs", tg.Name)
		}
	}
}

func TestReportTable(t *testing.T) {
	var b bytes.Buffer
	if err := WriteTable(&b, reportResult()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	lines := strings.Split(out, "\n")
	// line returns the first line holding every one of parts.
	line := func(parts ...string) string {
		t.Helper()
	next:
		for _, l := range lines {
			for _, p := range parts {
				if !strings.Contains(l, p) {
					continue next
				}
			}
			return l
		}
		t.Errorf("no line holds all of %q in:\n%s", parts, out)
		return ""
	}
	line("10 nodes", "1000 pods", "pool 1:1", "netns on", "DAD off", "parallel 8",
		"controller QPS/burst upstream defaults", "cluster local", "16 CPUs", "3 runs (1 failed)")
	line("| IPAM", "| 1x1000 create / re-create / delete", "| 100x10 create / re-create / delete")
	line("| warmpool ", "| 1m02s / 52.0s / 31.0s ", "| 41.0s / 45.0s / 20.0s ")
	line("| host-local ", "| 1m05s / 42.5s (n=2) / 45.0s (n=2) ")
	// Ratios: warmpool/static then warmpool/host-local.
	line("| 1x1000 ", "| re-create ", "| 1.04 (1.00-1.10) ", "| 1.22 (1.22-1.25) ")
	line("| 100x10 ", "| create ", "| 1.17 (1.17-1.33) ", "| 0.82 (0.80-0.84) ")
	// Details: runs, median, p50, p90, p99, hit rate, writes, bus messages, failures.
	line("| warmpool ", "| 1x1000 ", "| create ", "| 3 ", "| 1m02s ", "| 20.0s ", "| 50.0s ", "| 1m15s ",
		"| 100.0 % ", "| 0.100 ", "| 2.00 ")
	line("| warmpool ", "| 100x10 ", "| create ", "| 98.0 % ", "| 0.250 ", "| 3 ")
	// Writes by cause: all, grant, miss, revoke, retry, node-lost, takeover, other, other per second.
	line("| 100x10 ", "| create ", "| 0.250 ", "| 0.150 ", "| 0.010 ", "| 0.020 ", "| 0.000 ", "| 0.070 ", "| 1.73 ")
	line("| warmpool ", "| 52.0 ", "| 35.0 (agent-node-2) ")
	line("Targets: 17 of 26 met.")
	if l := line("| 1x1000 re-create: warmpool/host-local ", "| 1.224 "); !strings.Contains(l, "| MISSED ") {
		t.Errorf("target line %q, want MISSED", l)
	}
	if l := line("| 1x1000 create: warmpool/static ", "| 1.051 "); !strings.Contains(l, "| MET ") {
		t.Errorf("target line %q, want MET", l)
	}
	line("FAILED: run 2, host-local 1x1000: pods stuck")

	// Every table row is a Markdown row, and each table has its separator.
	seps := 0
	for _, l := range lines {
		if !strings.HasPrefix(l, "|") {
			continue
		}
		if !strings.HasSuffix(l, "|") {
			t.Errorf("table row %q does not end in |", l)
		}
		if strings.HasPrefix(l, "| ---") {
			seps++
		}
	}
	if seps != 6 {
		t.Errorf("%d table separators, want 6 (medians, ratios, details, writes by cause, peak RSS, targets)", seps)
	}
}

func TestReportDurations(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{850 * time.Millisecond, "850ms"},
		{12340 * time.Millisecond, "12.3s"},
		{62 * time.Second, "1m02s"},
		{59970 * time.Millisecond, "1m00s"},
		{155 * time.Second, "2m35s"},
		{3723 * time.Second, "1h02m03s"},
	} {
		if got := formatDuration(c.d); got != c.want {
			t.Errorf("formatDuration(%v) = %q, want %q", c.d, got, c.want)
		}
	}
	if got := formatHitRate(0.98999); got != "98.9 %" {
		t.Errorf("hit rate just under 99 %%: %q, want 98.9 %%", got)
	}
}

func TestPlotSteps(t *testing.T) {
	got := stepVertices([]Point{{time.Second, 10}, {2500 * time.Millisecond, 20}}, 0, 3)
	want := plotter.XYs{{X: 0, Y: 0}, {X: 1, Y: 0}, {X: 1, Y: 10}, {X: 2.5, Y: 10}, {X: 2.5, Y: 20}, {X: 3, Y: 20}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("create steps: %v, want %v", got, want)
	}
	// A first point at 0 is the start; the curve already reaches the end.
	got = stepVertices([]Point{{0, 1000}, {2 * time.Second, 500}, {4 * time.Second, 0}}, 1000, 4)
	want = plotter.XYs{{X: 0, Y: 1000}, {X: 2, Y: 1000}, {X: 2, Y: 500}, {X: 4, Y: 500}, {X: 4, Y: 0}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("delete steps: %v, want %v", got, want)
	}
	// No points: flat from the start to the end.
	got = stepVertices(nil, 7, 2)
	want = plotter.XYs{{X: 0, Y: 7}, {X: 2, Y: 7}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("empty curve: %v, want %v", got, want)
	}
}

func TestWritePlots(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "plots")
	paths, err := WritePlots(dir, reportResult())
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, name := range []string{"1x1000-create", "1x1000-re-create", "1x1000-delete",
		"100x10-create", "100x10-re-create", "100x10-delete"} {
		want = append(want, filepath.Join(dir, name+".png"))
	}
	if !reflect.DeepEqual(paths, want) {
		t.Fatalf("paths %q, want %q", paths, want)
	}
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		// 8x5 inches at 96 dpi.
		if b := img.Bounds(); b.Dx() != 768 || b.Dy() != 480 {
			t.Errorf("%s: %v, want 768x480", path, b)
		}
		// Each IPAM's line, in its colour: several times the pixels of its
		// legend swatch (under 30), even where all three lines coincide
		// (100x10 delete).
		for i, ipam := range []string{"warmpool", "static", "host-local"} {
			c := color.RGBAModel.Convert(plotutil.Color(i))
			n := 0
			for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y++ {
				for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x++ {
					if color.RGBAModel.Convert(img.At(x, y)) == c {
						n++
					}
				}
			}
			if n < 100 {
				t.Errorf("%s: %d pixels of %s's colour, want a line", path, n, ipam)
			}
		}
	}
}

func TestReportJSON(t *testing.T) {
	r := reportResult()
	path := filepath.Join(t.TempDir(), "result.json")
	if err := WriteJSON(path, r); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Errorf("round trip:\n got %+v\nwant %+v", *got, *r)
	}
	if !bytes.Contains(data, []byte("\n  \"settings\": {")) {
		t.Errorf("not indented:\n%.200s", data)
	}
	if err := WriteJSON(filepath.Join(t.TempDir(), "missing", "result.json"), r); err == nil {
		t.Error("WriteJSON into a missing directory: no error")
	}
	if _, err := ReadJSON(filepath.Join(t.TempDir(), "result.json")); err == nil {
		t.Error("ReadJSON of a missing file: no error")
	}
	bad := filepath.Join(t.TempDir(), "result.json")
	if err := os.WriteFile(bad, data[:len(data)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadJSON(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("ReadJSON of a cut file: %v, want an error naming it", err)
	}
}

func TestParseShape(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Shape
	}{
		{"1x1000", Shape{Deployments: 1, Replicas: 1000}},
		{"100x10", Shape{Deployments: 100, Replicas: 10}},
		{"700@3+1x300", Shape{Deployments: 1, Replicas: 300, Pinned: 700, PinnedNodes: 3}},
	} {
		got, err := ParseShape(c.in)
		if err != nil || got != c.want || got.String() != c.in || got.slug() == "" {
			t.Errorf("%q: %+v, %v (back %q), want %+v", c.in, got, err, got.String(), c.want)
		}
	}
	if got := (Shape{Deployments: 1, Replicas: 300, Pinned: 700, PinnedNodes: 3}).slug(); got != "700at3-1x300" {
		t.Errorf("slug %q, want 700at3-1x300 (a namespace's characters)", got)
	}
	for _, bad := range []string{"", "x", "1x", "x10", "0x10", "1x0", "-1x10", "1x10+2x3", "700@3", "700@+1x300", "@3+1x300", "0@3+1x300", "700@0+1x300", "700@3+", "a@b+cxd"} {
		if s, err := ParseShape(bad); err == nil {
			t.Errorf("%q parsed as %+v", bad, s)
		}
	}
}

// FuzzParseShape: whatever parses, prints back to what parses the same.
func FuzzParseShape(f *testing.F) {
	for _, s := range []string{"1x1000", "100x10", "700@3+1x300", "1x10+2x3", "@+x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseShape(in)
		if err != nil {
			return
		}
		if s.Deployments <= 0 || s.Replicas <= 0 || s.Pinned < 0 || (s.Pinned > 0) != (s.PinnedNodes > 0) {
			t.Fatalf("%q parsed as %+v", in, s)
		}
		back, err := ParseShape(s.String())
		if err != nil || back != s {
			t.Fatalf("%q: %+v prints %q, which parses as %+v, %v", in, s, s.String(), back, err)
		}
	})
}

// TestPlainTicks: the time axis says "25", not "25.00", whatever the
// range, and keeps the fraction of a tick that has one.
func TestPlainTicks(t *testing.T) {
	for _, max := range []float64{1.03, 7.5, 77.2, 123.6, 450} {
		labelled := 0
		for _, tk := range (plainTicks{}).Ticks(0, max) {
			if tk.Label == "" {
				continue
			}
			labelled++
			if want := strconv.FormatFloat(tk.Value, 'f', -1, 64); tk.Label != want || strings.HasSuffix(tk.Label, ".00") {
				t.Errorf("range 0-%g: tick %g labelled %q, want %q", max, tk.Value, tk.Label, want)
			}
		}
		if labelled < 2 {
			t.Errorf("range 0-%g: %d labelled ticks", max, labelled)
		}
	}
}
