package perf

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WritePlots writes, into dir, one PNG per (shape, phase): the pods Running
// (create, re-create) or remaining (delete) over time, one step line per
// IPAM from its median run. It returns the paths written, in Shapes x
// Phases order.
func WritePlots(dir string, r *Result) ([]string, error) {
	s := Summarise(r)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("plots directory: %w", err)
	}
	var paths []string
	for _, shape := range s.Shapes {
		for _, phase := range s.Phases {
			p, err := phasePlot(r, s, shape, phase)
			if err != nil {
				return paths, fmt.Errorf("plot %s %s: %w", shape, phase, err)
			}
			if p == nil {
				continue
			}
			path := filepath.Join(dir, fmt.Sprintf("%s-%s.png", shape, phase))
			if err := p.Save(8*vg.Inch, 5*vg.Inch, path); err != nil {
				return paths, fmt.Errorf("plot %s %s: %w", shape, phase, err)
			}
			paths = append(paths, path)
		}
	}
	return paths, nil
}

// phasePlot draws one shape's phase for every IPAM that went through it;
// nil when none did.
func phasePlot(r *Result, s Summary, shape Shape, phase string) (*plot.Plot, error) {
	what := "pods Running"
	if phase == PhaseDelete {
		what = "pods remaining"
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s · %s · %s", shape, phase, what)
	p.X.Label.Text = "seconds since the phase started"
	p.X.Tick.Marker = plainTicks{}
	p.Y.Label.Text = what
	// Curves of pods Running rise from the bottom left to the top right,
	// those of pods remaining fall from the top left: put the legend in
	// the left corner they leave empty.
	p.Legend.Left = true
	p.Legend.Top = phase != PhaseDelete
	p.Add(plotter.NewGrid()) // first, so that the lines are drawn over it
	lines := 0
	var maxX, maxY float64
	// The colour and dashes are the IPAM's place in the report order, so
	// that an IPAM looks the same in every plot; the dashes let lines that
	// coincide (delete often does) show through one another.
	for i, ipam := range s.IPAMs {
		ps, ok := s.Phase(shape, ipam, phase)
		if !ok {
			continue
		}
		ph, _ := phaseNamed(r.Runs[ps.MedianRun], phase)
		start := 0
		if phase == PhaseDelete {
			start = ph.Pods
		}
		xys := stepVertices(ph.Curve, start, ph.Duration.Seconds())
		line, err := plotter.NewLine(xys)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ipam, err)
		}
		for _, xy := range xys {
			maxX, maxY = max(maxX, xy.X), max(maxY, xy.Y)
		}
		line.LineStyle.Color = plotutil.Color(i)
		line.LineStyle.Width = vg.Points(1.5)
		line.LineStyle.Dashes = plotutil.Dashes(i)
		p.Add(line)
		p.Legend.Add(fmt.Sprintf("%s (median %s)", ipam, formatDuration(ps.Median)), line)
		lines++
	}
	if lines == 0 {
		return nil, nil
	}
	// A margin above and to the right, so that lines along the top and the
	// end are not hidden by the frame.
	p.X.Min, p.X.Max = 0, max(maxX*1.03, 1)
	p.Y.Min, p.Y.Max = 0, max(maxY*1.05, 1)
	return p, nil
}

// plainTicks are gonum's default ticks labelled as plainly as their
// values allow: "25", not "25.00" (the default's precision follows the
// step's, and some ranges got two decimals on whole seconds).
type plainTicks struct{}

func (plainTicks) Ticks(min, max float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i, t := range ticks {
		if t.Label != "" {
			ticks[i].Label = strconv.FormatFloat(t.Value, 'f', -1, 64)
		}
	}
	return ticks
}

// stepVertices turns a curve, each point the count from its time onwards,
// into the vertices of a step line (x in seconds): it starts at (0, start)
// or at the first count when that is at time 0, moves horizontally to each
// change then vertically to the new count, and runs on to end.
func stepVertices(curve []Point, start int, end float64) plotter.XYs {
	y := float64(start)
	if len(curve) > 0 && curve[0].At <= 0 {
		y = float64(curve[0].Count)
		curve = curve[1:]
	}
	xys := plotter.XYs{{X: 0, Y: y}}
	x := 0.0
	for _, pt := range curve {
		x = max(x, pt.At.Seconds())
		xys = append(xys, plotter.XY{X: x, Y: y})
		y = float64(pt.Count)
		xys = append(xys, plotter.XY{X: x, Y: y})
	}
	if end > x {
		xys = append(xys, plotter.XY{X: end, Y: y})
	}
	return xys
}
