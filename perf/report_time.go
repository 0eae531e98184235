package perf

import (
	"fmt"
	"time"
)

// The report's table of where the time goes: the CNI calls' time and CPU,
// and the machine's CPU by who spent it.

// timeRows is that table, header first; the header alone when no run
// measured any of it.
func (s Summary) timeRows() [][]string {
	rows := [][]string{append([]string{"IPAM", "shape", "phase", "ADD p50", "ADD p99", "ADD CPU p50", "DEL p50", "DEL p99", "DEL CPU p50", "busy", "iowait"}, CPUGroups...)}
	for _, shape := range s.Shapes {
		for _, phase := range s.Phases {
			for _, ipam := range s.IPAMs {
				ps, ok := s.Phase(shape, ipam, phase)
				if !ok || ps.ADDTime == nil && ps.DELTime == nil && ps.CPU == nil {
					continue
				}
				row := []string{ipam, shape.String(), phase}
				for _, t := range [][2]*Percentiles{{ps.ADDTime, ps.ADDCPU}, {ps.DELTime, ps.DELCPU}} {
					wall, cpu := t[0], t[1]
					if wall == nil {
						row = append(row, "-", "-", "-")
						continue
					}
					row = append(row, formatMillis(wall.P50), formatMillis(wall.P99), "-")
					if cpu != nil {
						row[len(row)-1] = formatMillis(cpu.P50)
					}
				}
				if c := ps.CPU; c != nil {
					row = append(row, formatCPUShare(c.Busy, ps.Median, s.Settings.CPUs), fmt.Sprintf("%.0f", c.IOWait))
					for _, g := range CPUGroups {
						row = append(row, fmt.Sprintf("%.0f", c.By[g]))
					}
				} else {
					row = append(row, "-", "-")
					for range CPUGroups {
						row = append(row, "-")
					}
				}
				rows = append(rows, row)
			}
		}
	}
	return rows
}

// medianCPU is the median of each figure; nil for none.
func medianCPU(cs []*CPU) *CPU {
	if len(cs) == 0 {
		return nil
	}
	var busy, iowait []float64
	by := map[string][]float64{}
	for _, c := range cs {
		busy, iowait = append(busy, c.Busy), append(iowait, c.IOWait)
		for g, v := range c.By {
			by[g] = append(by[g], v)
		}
	}
	out := &CPU{Busy: medianOfFloats(busy), IOWait: medianOfFloats(iowait), By: map[string]float64{}}
	for g, vs := range by {
		out.By[g] = medianOfFloats(vs)
	}
	return out
}

// appendMeasured appends a run's figure, unless the run did not measure it.
func appendMeasured[T any](to []*T, v *T) []*T {
	if v == nil {
		return to
	}
	return append(to, v)
}

// formatMillis is a duration in milliseconds, as the CNI calls' times
// read best.
func formatMillis(d time.Duration) string { return fmt.Sprintf("%.0fms", d.Seconds()*1000) }

// formatCPUShare is busy CPU-seconds as a share of what the CPUs could
// give over the phase, or in CPU-seconds when either is unknown.
func formatCPUShare(busy float64, d time.Duration, cpus int) string {
	if d <= 0 || cpus <= 0 {
		return fmt.Sprintf("%.0f CPU-s", busy)
	}
	return fmt.Sprintf("%.0f %%", 100*busy/(d.Seconds()*float64(cpus)))
}
