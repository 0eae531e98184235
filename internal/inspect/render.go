package inspect

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Output formats (-o).
const (
	FormatTable = ""
	FormatWide  = "wide"
	FormatJSON  = "json"
)

// ValidFormat reports whether f is an output format the commands know.
func ValidFormat(f string) bool { return f == FormatTable || f == FormatWide || f == FormatJSON }

// WriteJSON writes v as indented JSON, for -o json.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}

type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

func itoa[T int | int32 | int64](v T) string { return fmt.Sprint(v) }

func ftoa(v float64) string { return fmt.Sprintf("%.0f", v) }

// RenderPools writes `pools` as a table.
func RenderPools(w io.Writer, rows []PoolRow, wide bool) error {
	h := []string{"POOL", "IPV4", "IPV6", "TOTAL", "FREE", "WARM", "ASSIGNED", "PENDING", "HITS", "MISSES", "HIT-RATE", "READY", "EXHAUSTED"}
	if wide {
		h = append(h, "VLAN", "NODES", "LEASED", "READY-MESSAGE")
	}
	t := newTable(w, h...)
	for _, r := range rows {
		c := []string{r.Name, r.IPv4, r.IPv6, itoa(r.Total), itoa(r.Free), itoa(r.Warm), itoa(r.Assigned), itoa(r.Pending),
			itoa(r.Hits), itoa(r.Misses), FormatRate(r.HitRate), r.Ready, r.Exhausted}
		if wide {
			vlan := ""
			if r.VLAN != nil {
				vlan = itoa(*r.VLAN)
			}
			c = append(c, vlan, itoa(r.LeaseNodes), itoa(r.Leased), r.ReadyMessage)
		}
		t.row(c...)
	}
	return t.flush()
}

// unknown is what a table shows for a count no record read can give: the
// warm / assigned split of a node whose agent was not read.
const unknown = "?"

// RenderNodes writes `nodes` as a table: LEASED from the node's lease,
// WARM, ASSIGNED and COOLING from its agent's record, unknown ("?") when the
// agent was not read (the lease cannot say).
func RenderNodes(w io.Writer, rows []NodeRow, wide bool) error {
	h := []string{"NODE", "POOL", "LEASED", "WARM", "ASSIGNED", "COOLING", "HITS", "MISSES", "HIT-RATE", "AGENT", "NODE-READY"}
	if wide {
		h = append(h, "EPOCH", "SOURCE", "DETAIL")
	}
	t := newTable(w, h...)
	for _, r := range rows {
		leased := ""
		if r.Leased != nil {
			leased = itoa(*r.Leased)
		}
		aw, aa, ac, hits, misses := unknown, unknown, unknown, "", ""
		if r.Agent != nil {
			aw, aa, ac = itoa(r.Agent.Warm), itoa(r.Agent.Assigned), itoa(r.Agent.Cooling)
		}
		if r.AgentStatus != "unreachable" && r.AgentStatus != "none" {
			hits, misses = ftoa(r.Hits), ftoa(r.Misses)
		}
		c := []string{r.Node, r.Pool, leased, aw, aa, ac, hits, misses, FormatRate(r.HitRate), r.AgentStatus, r.NodeReady}
		if wide {
			epoch := ""
			if r.Leased != nil {
				epoch = itoa(r.Epoch)
			}
			c = append(c, epoch, r.AgentSource, oneLine(r.AgentDetail))
		}
		t.row(c...)
	}
	return t.flush()
}

// RenderWhere writes `where` as sentences, then the records it found.
func RenderWhere(w io.Writer, loc Location, wide bool) error {
	var b strings.Builder
	for _, s := range loc.Summary {
		fmt.Fprintf(&b, "%s\n", s)
	}
	if len(loc.Disagreements) == 0 {
		fmt.Fprintf(&b, "The records agree.\n")
	} else {
		fmt.Fprintf(&b, "The records disagree:\n")
		for _, d := range loc.Disagreements {
			fmt.Fprintf(&b, "  - %s\n", d)
		}
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !wide {
		return nil
	}
	fmt.Fprintln(w)
	t := newTable(w, "RECORD", "NODE", "POOL", "STATE", "POD", "DETAIL")
	for _, l := range loc.Leases {
		// A lease says only that the node holds the unit: its state and
		// pod are the agent's row's.
		t.row("NodeLease "+l.Lease, l.Node, l.Pool, "leased", "", "epoch "+itoa(l.Epoch))
	}
	for _, a := range loc.Agents {
		pod, detail := "", a.Attachment
		if a.Pod != nil {
			pod = a.Pod.Namespace + "/" + a.Pod.Name
			detail += " uid " + a.Pod.UID
		}
		if a.Since != nil {
			detail += " since " + a.Since.UTC().Format(time.RFC3339)
		}
		t.row("agent", a.Node, a.Pool, string(a.State), pod, strings.TrimSpace(detail))
	}
	for _, p := range loc.Pods {
		t.row("pod", p.Node, "", p.Phase, p.Namespace+"/"+p.Name, "uid "+p.UID+", "+p.Source)
	}
	return t.flush()
}

// RenderLeases writes `leases`: the election Lease, then the NodeLeases.
func RenderLeases(w io.Writer, r LeasesReport, wide bool) error {
	e := r.Election
	t := newTable(w, "ELECTION-LEASE", "HOLDER", "ACQUIRED", "RENEWED", "DURATION", "TRANSITIONS", "EPOCH", "STATUS")
	if !e.Found {
		t.row(e.Lease, "", "", "", "", "", "", "not found")
	} else {
		status := "held"
		if e.Expired {
			status = "expired: no leader"
		}
		epoch := itoa(e.DerivedEpoch)
		if e.ServedEpoch > e.DerivedEpoch {
			epoch = fmt.Sprintf("%d (serves %d)", e.DerivedEpoch, e.ServedEpoch)
		}
		t.row(e.Lease, e.Holder, timeAgo(e.AcquireTime, nil), timeAgo(e.RenewTime, e.SinceRenew),
			fmt.Sprintf("%ds", e.LeaseDuration), itoa(e.Transitions), epoch, status)
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	h := []string{"NODELEASE", "POOL", "NODE", "EPOCH", "UNITS", "FLAGS"}
	if wide {
		h = append(h, "GENERATION")
	}
	t = newTable(w, h...)
	for _, l := range r.NodeLeases {
		c := []string{l.Name, l.Pool, l.Node, itoa(l.Epoch), itoa(l.Units), strings.Join(l.Flags, ",")}
		if wide {
			c = append(c, itoa(l.Generation))
		}
		t.row(c...)
	}
	return t.flush()
}

// timeAgo formats t, and how long ago it was if ago is known.
func timeAgo(t *time.Time, ago *time.Duration) string {
	if t == nil {
		return ""
	}
	s := t.UTC().Format(time.RFC3339)
	if ago != nil {
		s += fmt.Sprintf(" (%s ago)", ago.Round(time.Second))
	}
	return s
}

// RenderDoctor writes the findings, each with its meaning and action,
// and a one-line verdict.
func RenderDoctor(w io.Writer, r DoctorReport, wide bool) error {
	if wide && len(r.Findings) > 0 {
		t := newTable(w, "SEVERITY", "KIND", "NODE", "POOL", "UNIT", "POD")
		for _, f := range r.Findings {
			t.row(string(f.Severity), f.Kind, f.Node, f.Pool, f.Unit, f.Pod)
		}
		if err := t.flush(); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}
	var b strings.Builder
	c := r.Checked
	fmt.Fprintf(&b, "checked %d pools, %d NodeLeases (%d units), %d agents (%d read, %d units), %d pods (%d pool addresses)\n",
		c.Pools, c.Leases, c.LeasedUnits, c.Agents, c.AgentsRead, c.AgentUnits, c.Pods, c.PodAddresses)
	if r.Transient > 0 {
		fmt.Fprintf(&b, "%d differences seen in one reading only (changes in flight) are not reported\n", r.Transient)
	}
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "\n%s %s: %s\n", strings.ToUpper(string(f.Severity)), f.Kind, f.Message)
		fmt.Fprintf(&b, "  means: %s\n", f.Meaning)
		fmt.Fprintf(&b, "  do:    %s\n", f.Action)
	}
	switch {
	case r.Errors+r.Warnings == 0:
		fmt.Fprintf(&b, "no problem found\n")
	default:
		fmt.Fprintf(&b, "\n%s, %s\n", plural(r.Errors, "error"), plural(r.Warnings, "warning"))
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
