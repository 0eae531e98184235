package perf

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/warmpool/warmpool/allocator"
)

// String returns the shape as the benchmark names it: "1x1000" for one
// Deployment of 1000 replicas, "700@3+1x300" with 700 more pinned to 3
// nodes.
func (s Shape) String() string {
	base := fmt.Sprintf("%dx%d", s.Deployments, s.Replicas)
	if s.Pinned > 0 {
		return fmt.Sprintf("%d@%d+%s", s.Pinned, s.PinnedNodes, base)
	}
	return base
}

// slug is String in the characters of a namespace's name.
func (s Shape) slug() string {
	return strings.NewReplacer("@", "at", "+", "-").Replace(s.String())
}

// Summary is a Result reduced to one figure per (shape, IPAM, phase), the
// medians over the runs, which is what the report and the targets read.
type Summary struct {
	Settings Settings
	// Shapes, IPAMs and Phases in report order: those of the settings
	// first, then any others found in the runs.
	Shapes []Shape
	IPAMs  []string
	Phases []string
	// PhaseSummaries holds one entry per (shape, IPAM, phase) that at least one
	// run went through, in Shapes x IPAMs x Phases order.
	PhaseSummaries []PhaseSummary
	// Peaks holds the peak memory of each IPAM that reported any.
	Peaks map[string]RSSPeak
	// Failed lists the runs that failed, in the order they ran.
	Failed []Run
}

// PhaseSummary is one phase of one IPAM on one shape, across the runs that
// have that phase (a failed run counts for the phases it finished).
type PhaseSummary struct {
	Shape Shape
	IPAM  string
	Phase string
	// Runs is the number of runs the figures are taken over.
	Runs int
	// Median is the median duration; with an even number of runs it is the
	// mean of the two middle ones.
	Median time.Duration
	// MedianRun is the index in Result.Runs of the run whose duration is
	// the median one (the lower middle one for an even count): its curve is
	// the one plotted.
	MedianRun int
	// Pods is the number of pods the median run's phase waited for.
	Pods int
	// ByRun is each run's duration, by repetition (Run.Index): the ratios'
	// spread pairs the runs of one repetition, which ran side by side.
	ByRun map[int]time.Duration
	// TimeToRunning holds the median, over the runs that measured it, of
	// each percentile; nil when none did (delete).
	TimeToRunning *Percentiles
	// Hits, Misses and CoolingWaits (hits that waited for a reuse delay)
	// are summed over the runs.
	Hits, Misses, CoolingWaits int
	// APIWritesPerPod is the median over the runs that measured API
	// writes of their writes per pod; APIWriteRuns is how many did.
	APIWritesPerPod float64
	APIWriteRuns    int
	// APIWritesMin and APIWritesMax are the fewest and most per pod of
	// those runs.
	APIWritesMin, APIWritesMax float64
	// LeaseWritesPerPod is, by cause, the median over the same runs of
	// the allocator's NodeLease writes per pod, and under writesOther of
	// the rest of the API writes.
	LeaseWritesPerPod map[string]float64
	// OtherWritesPerSecond is the median over the same runs of the other
	// writes per second of the phase: they come with time, not with pods
	// (the election Lease every 2 s, each pool's status every 5 s while it
	// changes), so their share per pod grows with the phase's length, on
	// a slower machine too.
	OtherWritesPerSecond float64
	// BusMessagesPerPod is the median over the runs of bus messages per
	// pod.
	BusMessagesPerPod float64
	// ADDFailures and DELFailures are summed over the runs.
	ADDFailures, DELFailures int
	// ADDTime and DELTime hold the median of each percentile of the CNI
	// calls' times over the runs that timed them; nil when none did.
	ADDTime, DELTime *Percentiles
	// ADDCPU and DELCPU: the same of the calls' plugin processes' CPU.
	ADDCPU, DELCPU *Percentiles
	// CPU holds the median of each figure over the runs that measured
	// it; nil when none did.
	CPU *CPU
}

// HitRate is the share of ADDs served from warm caches, over all the runs;
// false when there were neither hits nor misses (the baselines).
func (p PhaseSummary) HitRate() (float64, bool) {
	total := p.Hits + p.Misses
	if total == 0 {
		return 0, false
	}
	return float64(p.Hits) / float64(total), true
}

// RSSPeak is an IPAM's peak resident memory over all its runs, in bytes.
type RSSPeak struct {
	Allocator uint64
	// Agent is the largest peak of any one node agent, AgentName its
	// process name ("agent-<node>").
	Agent     uint64
	AgentName string
}

// Ratio is the subject IPAM's median duration over a baseline's, with
// the spread of the same ratio taken run by run.
type Ratio struct {
	Shape    Shape
	Phase    string
	Baseline string
	Value    float64
	// Min and Max are the smallest and largest ratio of one repetition's
	// runs (they ran side by side), over the Pairs repetitions both
	// finished the phase in.
	Min, Max float64
	Pairs    int
}

// String is the ratio to two decimals, with its spread: "1.21 (1.15-1.30)".
func (r Ratio) String() string { return fmt.Sprintf("%.2f", r.Value) + r.spread() }

// spread is " (min-max)" when more than one repetition measured the
// ratio, else nothing.
func (r Ratio) spread() string {
	if r.Pairs < 2 {
		return ""
	}
	return fmt.Sprintf(" (%.2f-%.2f)", r.Min, r.Max)
}

// Target is one of the benchmark's goals, with the measured value.
type Target struct {
	Name  string
	Value string
	Limit string
	Met   bool
}

// Summarise reduces r to medians per (shape, IPAM, phase).
func Summarise(r *Result) Summary {
	s := Summary{Settings: r.Settings, Peaks: map[string]RSSPeak{}}
	s.Shapes = slices.Clone(r.Settings.Shapes)
	s.IPAMs = slices.Clone(r.Settings.IPAMs)
	s.Phases = []string{PhaseCreate, PhaseRecreate, PhaseDelete}
	for _, run := range r.Runs {
		if !slices.Contains(s.Shapes, run.Shape) {
			s.Shapes = append(s.Shapes, run.Shape)
		}
		if !slices.Contains(s.IPAMs, run.IPAM) {
			s.IPAMs = append(s.IPAMs, run.IPAM)
		}
		for _, ph := range run.Phases {
			if !slices.Contains(s.Phases, ph.Name) {
				s.Phases = append(s.Phases, ph.Name)
			}
		}
		if run.Error != "" {
			s.Failed = append(s.Failed, run)
		}
		summarisePeak(s.Peaks, run)
	}
	for _, shape := range s.Shapes {
		for _, ipam := range s.IPAMs {
			for _, phase := range s.Phases {
				if ps, ok := summarisePhase(r, shape, ipam, phase); ok {
					s.PhaseSummaries = append(s.PhaseSummaries, ps)
				}
			}
		}
	}
	return s
}

func summarisePeak(peaks map[string]RSSPeak, run Run) {
	if len(run.PeakRSS) == 0 {
		return
	}
	p := peaks[run.IPAM]
	for name, rss := range run.PeakRSS {
		switch {
		case name == "allocator":
			p.Allocator = max(p.Allocator, rss)
		case strings.HasPrefix(name, "agent-"):
			// Ties go to the lower name so the report does not depend on
			// map order.
			if rss > p.Agent || (rss == p.Agent && name < p.AgentName) {
				p.Agent, p.AgentName = rss, name
			}
		}
	}
	peaks[run.IPAM] = p
}

// writesOther keys the API writes that are not NodeLease writes: the
// election Lease's renewals and the pools' status.
const writesOther = "other"

func summarisePhase(r *Result, shape Shape, ipam, phase string) (PhaseSummary, bool) {
	ps := PhaseSummary{Shape: shape, IPAM: ipam, Phase: phase}
	type timed struct {
		d   time.Duration
		run int
	}
	var (
		durations                []timed
		ttrs, addTimes, delTimes []*Percentiles
		addCPUs, delCPUs         []*Percentiles
		cpus                     []*CPU
		writesPerPod, busPerPod  []float64
		otherPerSecond           []float64
		leasePerPod              = map[string][]float64{}
	)
	for i, run := range r.Runs {
		if run.Shape != shape || run.IPAM != ipam {
			continue
		}
		ph, ok := phaseNamed(run, phase)
		if !ok || ph.Error != "" {
			continue // a failed run that did not get this far, or failed here
		}
		durations = append(durations, timed{ph.Duration, i})
		if ps.ByRun == nil {
			ps.ByRun = map[int]time.Duration{}
		}
		ps.ByRun[run.Index] = ph.Duration
		ttrs, addTimes, delTimes = appendMeasured(ttrs, ph.TimeToRunning), appendMeasured(addTimes, ph.ADDTime), appendMeasured(delTimes, ph.DELTime)
		addCPUs, delCPUs, cpus = appendMeasured(addCPUs, ph.ADDCPU), appendMeasured(delCPUs, ph.DELCPU), appendMeasured(cpus, ph.CPU)
		ps.Hits += ph.Hits
		ps.Misses += ph.Misses
		ps.CoolingWaits += ph.CoolingWaits
		ps.ADDFailures += ph.ADDFailures
		ps.DELFailures += ph.DELFailures
		if ph.Pods > 0 {
			if ph.APIWrites >= 0 {
				writesPerPod = append(writesPerPod, float64(ph.APIWrites)/float64(ph.Pods))
				other := ph.APIWrites
				for _, cause := range allocator.LeaseWriteCauses {
					leasePerPod[cause] = append(leasePerPod[cause], float64(ph.LeaseWrites[cause])/float64(ph.Pods))
					other -= ph.LeaseWrites[cause]
				}
				leasePerPod[writesOther] = append(leasePerPod[writesOther], float64(max(other, 0))/float64(ph.Pods))
				if ph.Duration > 0 {
					otherPerSecond = append(otherPerSecond, float64(max(other, 0))/ph.Duration.Seconds())
				}
			}
			busPerPod = append(busPerPod, float64(ph.BusMessages)/float64(ph.Pods))
		}
	}
	if len(durations) == 0 {
		return ps, false
	}
	// Stable, so that equal durations keep the order they ran in and the
	// median run does not depend on the sort.
	slices.SortStableFunc(durations, func(a, b timed) int { return cmp.Compare(a.d, b.d) })
	ds := make([]time.Duration, len(durations))
	for i, t := range durations {
		ds[i] = t.d
	}
	ps.Runs = len(durations)
	ps.Median = medianOfDurations(ds)
	ps.MedianRun = durations[(len(durations)-1)/2].run
	median, _ := phaseNamed(r.Runs[ps.MedianRun], phase)
	ps.Pods = median.Pods
	ps.TimeToRunning, ps.ADDTime, ps.DELTime = medianPercentiles(ttrs), medianPercentiles(addTimes), medianPercentiles(delTimes)
	ps.ADDCPU, ps.DELCPU, ps.CPU = medianPercentiles(addCPUs), medianPercentiles(delCPUs), medianCPU(cpus)
	ps.APIWriteRuns = len(writesPerPod)
	ps.APIWritesPerPod = medianOfFloats(writesPerPod)
	if len(writesPerPod) > 0 {
		ps.APIWritesMin, ps.APIWritesMax = slices.Min(writesPerPod), slices.Max(writesPerPod)
		ps.LeaseWritesPerPod = map[string]float64{}
		for cause, v := range leasePerPod {
			ps.LeaseWritesPerPod[cause] = medianOfFloats(v)
		}
		ps.OtherWritesPerSecond = medianOfFloats(otherPerSecond)
	}
	ps.BusMessagesPerPod = medianOfFloats(busPerPod)
	return ps, true
}

// medianPercentiles is the median of each percentile; nil for none.
func medianPercentiles(ps []*Percentiles) *Percentiles {
	if len(ps) == 0 {
		return nil
	}
	var p50, p90, p99, pmax []time.Duration
	for _, p := range ps {
		p50, p90, p99, pmax = append(p50, p.P50), append(p90, p.P90), append(p99, p.P99), append(pmax, p.Max)
	}
	return &Percentiles{P50: medianOfDurations(p50), P90: medianOfDurations(p90), P99: medianOfDurations(p99), Max: medianOfDurations(pmax)}
}

// phaseNamed returns the run's phase called name; false when the run has
// none (it failed before).
func phaseNamed(run Run, name string) (Phase, bool) {
	i := slices.IndexFunc(run.Phases, func(p Phase) bool { return p.Name == name })
	if i < 0 {
		return Phase{}, false
	}
	return run.Phases[i], true
}

// medianOfDurations returns the median of ds (the mean of the two middle
// values for an even count), 0 for none. It does not modify ds.
func medianOfDurations(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	// Halve each before adding so that long durations cannot overflow.
	a, b := s[n/2-1], s[n/2]
	return a/2 + b/2 + (a%2+b%2)/2
}

// medianOfFloats is medianOfDurations for float64s.
func medianOfFloats(fs []float64) float64 {
	if len(fs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(fs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Phase returns the summary of one phase of one IPAM on one shape; false
// when no run went through it.
func (s Summary) Phase(shape Shape, ipam, phase string) (PhaseSummary, bool) {
	for _, ps := range s.PhaseSummaries {
		if ps.Shape == shape && ps.IPAM == ipam && ps.Phase == phase {
			return ps, true
		}
	}
	return PhaseSummary{}, false
}

// Median returns the median duration of one phase of one IPAM on one
// shape; false when no run went through it.
func (s Summary) Median(shape Shape, ipam, phase string) (time.Duration, bool) {
	ps, ok := s.Phase(shape, ipam, phase)
	return ps.Median, ok
}

// Ratio returns warmpool's median duration over baseline's for one phase
// of one shape, with its spread; false unless both were measured.
func (s Summary) Ratio(shape Shape, phase, baseline string) (Ratio, bool) {
	subject, ok := s.Phase(shape, IPAMWarmpool, phase)
	if !ok {
		return Ratio{}, false
	}
	base, ok := s.Phase(shape, baseline, phase)
	if !ok || base.Median <= 0 {
		return Ratio{}, false
	}
	r := Ratio{Shape: shape, Phase: phase, Baseline: baseline, Value: float64(subject.Median) / float64(base.Median)}
	for i, d := range subject.ByRun {
		b, ok := base.ByRun[i]
		if !ok || b <= 0 {
			continue
		}
		v := float64(d) / float64(b)
		if r.Pairs == 0 || v < r.Min {
			r.Min = v
		}
		if r.Pairs == 0 || v > r.Max {
			r.Max = v
		}
		r.Pairs++
	}
	return r, true
}

// Ratios returns every ratio of warmpool to a baseline that can be
// computed, by shape, phase, then baseline.
func (s Summary) Ratios() []Ratio {
	var out []Ratio
	for _, shape := range s.Shapes {
		for _, phase := range s.Phases {
			for _, base := range []string{IPAMStatic, IPAMHostLocal} {
				if r, ok := s.Ratio(shape, phase, base); ok {
					out = append(out, r)
				}
			}
		}
	}
	return out
}

// Limits of the targets.
const (
	maxRatioStatic       = 1.10
	maxRatioHostLocal    = 1.0
	minHitPercent        = 99
	maxWritesCreate      = 0.1
	maxWritesRecreate    = 0.2
	maxP99RatioStatic    = 1.2
	maxADDFailuresTarget = 0
)

// Targets returns the benchmark's goals for create and re-create, per
// shape, each with its measured value. A target whose inputs were not
// measured (a baseline not run, a phase missing) is left out.
func (s Summary) Targets() []Target {
	var out []Target
	add := func(name, value, limit string, met bool) {
		out = append(out, Target{Name: name, Value: value, Limit: limit, Met: met})
	}
	for _, shape := range s.Shapes {
		for _, phase := range []string{PhaseCreate, PhaseRecreate} {
			at := fmt.Sprintf("%s %s: %s", shape, phase, IPAMWarmpool)
			for _, c := range []struct {
				base  string
				limit float64
			}{{IPAMStatic, maxRatioStatic}, {IPAMHostLocal, maxRatioHostLocal}} {
				if r, ok := s.Ratio(shape, phase, c.base); ok {
					add(at+"/"+c.base, fmt.Sprintf("%.3f", r.Value)+r.spread(), fmt.Sprintf("≤ %.2f", c.limit), r.Value <= c.limit)
				}
			}
			ps, ok := s.Phase(shape, IPAMWarmpool, phase)
			if !ok {
				continue
			}
			if rate, ok := ps.HitRate(); ok {
				// In integers, so that exactly 99 % is met.
				add(at+" hit rate", formatHitRate(rate), fmt.Sprintf("≥ %d %%", minHitPercent),
					ps.Hits*100 >= minHitPercent*(ps.Hits+ps.Misses))
			}
			add(at+" ADD failures", fmt.Sprint(ps.ADDFailures), fmt.Sprint(maxADDFailuresTarget), ps.ADDFailures <= maxADDFailuresTarget)
			if ps.APIWriteRuns > 0 {
				limit := maxWritesCreate
				if phase == PhaseRecreate {
					limit = maxWritesRecreate
				}
				value := fmt.Sprintf("%.3f", ps.APIWritesPerPod)
				if ps.APIWriteRuns > 1 {
					value += fmt.Sprintf(" (%.3f-%.3f)", ps.APIWritesMin, ps.APIWritesMax)
				}
				add(at+" API writes/pod", value, fmt.Sprintf("≤ %g", limit), ps.APIWritesPerPod <= limit)
			}
			if st, ok := s.Phase(shape, IPAMStatic, phase); ok && ps.TimeToRunning != nil && st.TimeToRunning != nil && st.TimeToRunning.P99 > 0 {
				w, b := ps.TimeToRunning.P99, st.TimeToRunning.P99
				v := float64(w) / float64(b)
				add(at+"/"+IPAMStatic+" p99 time to Running", fmt.Sprintf("%.3f (%s vs %s)", v, formatDuration(w), formatDuration(b)),
					fmt.Sprintf("≤ %.2f", maxP99RatioStatic), v <= maxP99RatioStatic)
			}
		}
		// The harness's re-create runs a DEL and an ADD per pod, so any
		// IPAM's re-create takes longer than its create: the target is
		// that warmpool's grows no more than static's.
		wc, okw := s.Median(shape, IPAMWarmpool, PhaseCreate)
		wr, okwr := s.Median(shape, IPAMWarmpool, PhaseRecreate)
		sc, oks := s.Median(shape, IPAMStatic, PhaseCreate)
		sr, oksr := s.Median(shape, IPAMStatic, PhaseRecreate)
		if okw && okwr && oks && oksr && wc > 0 && sc > 0 {
			w, st := float64(wr)/float64(wc), float64(sr)/float64(sc)
			add(fmt.Sprintf("%s: re-create ÷ create, %s vs %s", shape, IPAMWarmpool, IPAMStatic), fmt.Sprintf("%.2f vs %.2f", w, st),
				"no larger", w <= st)
		}
	}
	return out
}

// formatDuration rounds d the way the public benchmark quotes durations:
// "850ms", "12.3s", "1m02s", "1h02m03s".
func formatDuration(d time.Duration) string {
	if d < 0 {
		return "-" + formatDuration(-d)
	}
	if d < time.Second {
		return fmt.Sprintf("%dms", d.Round(time.Millisecond).Milliseconds())
	}
	// Round before choosing the form, so that 59.97s reads 1m00s rather
	// than 60.0s.
	if r := d.Round(100 * time.Millisecond); r < time.Minute {
		return fmt.Sprintf("%.1fs", r.Seconds())
	}
	sec := int64(d.Round(time.Second) / time.Second)
	if sec < 3600 {
		return fmt.Sprintf("%dm%02ds", sec/60, sec%60)
	}
	return fmt.Sprintf("%dh%02dm%02ds", sec/3600, sec/60%60, sec%60)
}

// formatHitRate truncates rather than rounds, so that a rate just under
// the 99 % target never reads as 99.0 %.
func formatHitRate(rate float64) string {
	return fmt.Sprintf("%.1f %%", math.Floor(rate*1000)/10)
}

func formatMiB(b uint64) string {
	return fmt.Sprintf("%.1f", float64(b)/(1<<20))
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// settingsLine states the knobs in one sentence.
func settingsLine(st Settings, failed int) string {
	pool := fmt.Sprintf("pool %d pairs", st.PoolSize)
	if st.PoolSize == st.Pods {
		pool = "pool 1:1"
	}
	limits := "controller QPS/burst upstream defaults"
	if st.ControllerQPS != 0 || st.ControllerBurst != 0 {
		qps, burst := "default", "default"
		if st.ControllerQPS != 0 {
			qps = fmt.Sprint(st.ControllerQPS)
		}
		if st.ControllerBurst != 0 {
			burst = fmt.Sprint(st.ControllerBurst)
		}
		limits = fmt.Sprintf("controller QPS %s/burst %s", qps, burst)
	}
	runs := fmt.Sprintf("%d runs", st.Runs)
	if failed > 0 {
		runs += fmt.Sprintf(" (%d failed)", failed)
	}
	return fmt.Sprintf("%d nodes, %d pods, %s, netns %s, DAD %s, parallel %d, %s, cluster %s, %d CPUs, %s.",
		st.Nodes, st.Pods, pool, onOff(st.NetNS), onOff(st.DAD), st.Parallel, limits, st.Cluster, st.CPUs, runs)
}

// mdTable writes rows as a Markdown table aligned by tabwriter: the first
// row is the header.
func mdTable(w io.Writer, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	line := func(cells []string) {
		for _, c := range cells {
			fmt.Fprintf(tw, "| %s\t", c)
		}
		fmt.Fprintln(tw, "|")
	}
	for i, row := range rows {
		line(row)
		if i == 0 {
			sep := make([]string, len(row))
			for j := range sep {
				sep[j] = "---"
			}
			line(sep)
		}
	}
	return tw.Flush()
}

// WriteTable writes a human-readable report of r to w: the settings, the
// median durations in the public benchmark's layout, warmpool's ratios to
// the baselines, the details per phase, peak memory, the targets and the
// failed runs. The tables are Markdown.
func WriteTable(w io.Writer, r *Result) error {
	s := Summarise(r)
	// Built in memory so that a write error is reported once, here.
	var b bytes.Buffer
	var errs []error
	table := func(rows [][]string) {
		if err := mdTable(&b, rows); err != nil {
			errs = append(errs, err)
		}
		b.WriteString("\n")
	}

	b.WriteString("warmpool benchmark")
	if !r.Started.IsZero() {
		fmt.Fprintf(&b, ", started %s", r.Started.Format(time.RFC3339))
	}
	b.WriteString("\n\n")
	fmt.Fprintf(&b, "Settings: %s\n\n", settingsLine(r.Settings, len(s.Failed)))

	b.WriteString("Median durations (create / re-create / delete):\n\n")
	head := []string{"IPAM"}
	for _, shape := range s.Shapes {
		head = append(head, fmt.Sprintf("%s %s / %s / %s", shape, PhaseCreate, PhaseRecreate, PhaseDelete))
	}
	rows := [][]string{head}
	short := false
	for _, ipam := range s.IPAMs {
		row := []string{ipam}
		for _, shape := range s.Shapes {
			var cells []string
			for _, phase := range []string{PhaseCreate, PhaseRecreate, PhaseDelete} {
				cell, n := s.medianCell(shape, ipam, phase)
				cells = append(cells, cell)
				short = short || n
			}
			row = append(row, strings.Join(cells, " / "))
		}
		rows = append(rows, row)
	}
	table(rows)
	if short {
		b.WriteString("(n=...): the median of only the runs that finished that phase.\n\n")
	}

	if ratios := s.Ratios(); len(ratios) > 0 {
		b.WriteString("Ratios of median durations (in brackets, the smallest and largest ratio of one repetition's runs, which ran side by side):\n\n")
		rows = [][]string{{"shape", "phase", IPAMWarmpool + "/" + IPAMStatic, IPAMWarmpool + "/" + IPAMHostLocal}}
		for _, shape := range s.Shapes {
			for _, phase := range s.Phases {
				row := []string{shape.String(), phase}
				measured := false
				for _, base := range []string{IPAMStatic, IPAMHostLocal} {
					cell := "-"
					if r, ok := s.Ratio(shape, phase, base); ok {
						cell, measured = r.String(), true
					}
					row = append(row, cell)
				}
				if measured {
					rows = append(rows, row)
				}
			}
		}
		table(rows)
	}

	b.WriteString("Details (medians over runs; time to Running per pod):\n\n")
	rows = [][]string{{"IPAM", "shape", "phase", "runs", "median", "p50", "p90", "p99",
		"hit rate", "hits after cooling", "API writes/pod", "bus msgs/pod", "ADD failures", "DEL failures"}}
	for _, ipam := range s.IPAMs {
		for _, shape := range s.Shapes {
			for _, phase := range s.Phases {
				ps, ok := s.Phase(shape, ipam, phase)
				if !ok {
					continue
				}
				p50, p90, p99 := "-", "-", "-"
				if t := ps.TimeToRunning; t != nil {
					p50, p90, p99 = formatDuration(t.P50), formatDuration(t.P90), formatDuration(t.P99)
				}
				hit, cooled := "-", "-"
				if rate, ok := ps.HitRate(); ok {
					hit, cooled = formatHitRate(rate), fmt.Sprint(ps.CoolingWaits)
				}
				writes := "-"
				if ps.APIWriteRuns > 0 {
					writes = fmt.Sprintf("%.3f", ps.APIWritesPerPod)
				}
				rows = append(rows, []string{ipam, shape.String(), phase, fmt.Sprint(ps.Runs),
					formatDuration(ps.Median), p50, p90, p99, hit, cooled, writes,
					fmt.Sprintf("%.2f", ps.BusMessagesPerPod), fmt.Sprint(ps.ADDFailures), fmt.Sprint(ps.DELFailures)})
			}
		}
	}
	table(rows)

	rows = [][]string{append(append([]string{"shape", "phase", "all"}, allocator.LeaseWriteCauses...), writesOther, "other per second")}
	for _, shape := range s.Shapes {
		for _, phase := range s.Phases {
			ps, ok := s.Phase(shape, IPAMWarmpool, phase)
			if !ok || ps.APIWriteRuns == 0 {
				continue
			}
			row := []string{shape.String(), phase, fmt.Sprintf("%.3f", ps.APIWritesPerPod)}
			for _, cause := range append(allocator.LeaseWriteCauses, writesOther) {
				row = append(row, fmt.Sprintf("%.3f", ps.LeaseWritesPerPod[cause]))
			}
			rows = append(rows, append(row, fmt.Sprintf("%.2f", ps.OtherWritesPerSecond)))
		}
	}
	if len(rows) > 1 {
		b.WriteString("warmpool's API writes per pod, by cause (medians over runs of each column: the allocator's NodeLease writes by cause, and the other writes: the election Lease's renewals and the pools' status, which come with time, not pods: also per second of the phase):\n\n")
		table(rows)
	}

	rows = s.timeRows()
	if len(rows) > 1 {
		b.WriteString("Where the time goes (medians over runs): each CNI call's time from exec to result (the chain: macvlan and the IPAM) and the CPU its processes spent; the CPU the machine spent, as its share of the phase's CPU capacity (busy) and in CPU-seconds: waiting for I/O, and by who spent it (the allocator and agents run, and watch, in every IPAM's runs; execs are the CNI plugins; other is the kernel's threads and the rest):\n\n")
		table(rows)
	}

	if len(s.Peaks) > 0 {
		b.WriteString("Peak RSS over all runs, MiB:\n\n")
		rows = [][]string{{"IPAM", "allocator", "largest agent"}}
		for _, ipam := range s.IPAMs {
			p, ok := s.Peaks[ipam]
			if !ok {
				continue
			}
			agent := "-"
			if p.AgentName != "" {
				agent = fmt.Sprintf("%s (%s)", formatMiB(p.Agent), p.AgentName)
			}
			rows = append(rows, []string{ipam, formatMiB(p.Allocator), agent})
		}
		table(rows)
	}

	if targets := s.Targets(); len(targets) > 0 {
		met := 0
		rows = [][]string{{"target", "value", "limit", "result"}}
		for _, t := range targets {
			result := "MISSED"
			if t.Met {
				result, met = "MET", met+1
			}
			rows = append(rows, []string{t.Name, t.Value, t.Limit, result})
		}
		fmt.Fprintf(&b, "Targets: %d of %d met.\n\n", met, len(targets))
		table(rows)
	}

	for _, run := range s.Failed {
		fmt.Fprintf(&b, "FAILED: run %d, %s %s: %s\n", run.Index, run.IPAM, run.Shape, run.Error)
	}

	if len(errs) > 0 {
		return fmt.Errorf("format report: %w", errs[0])
	}
	if _, err := w.Write(b.Bytes()); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// medianCell is one cell of the main table: the median, with the number of
// runs it is taken over when some runs are missing (then short is true).
func (s Summary) medianCell(shape Shape, ipam, phase string) (cell string, short bool) {
	ps, ok := s.Phase(shape, ipam, phase)
	if !ok {
		return "-", false
	}
	if ps.Runs < s.Settings.Runs {
		return fmt.Sprintf("%s (n=%d)", formatDuration(ps.Median), ps.Runs), true
	}
	return formatDuration(ps.Median), false
}

// WriteJSON writes r, indented, to the file at path.
func WriteJSON(path string, r *Result) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

// ReadJSON reads a result WriteJSON wrote, so that a report can be
// written again from it (warmpool-perf report).
func ReadJSON(path string) (*Result, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read result: %w", err)
	}
	var r Result
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decode result %s: %w", path, err)
	}
	return &r, nil
}
