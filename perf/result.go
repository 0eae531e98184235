package perf

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Result is everything one benchmark invocation measured: the settings,
// every run, and the summary across runs. It is what the JSON report holds.
type Result struct {
	Settings Settings  `json:"settings"`
	Started  time.Time `json:"started"`
	// Runs are in the order they ran: for each repetition, for each shape,
	// every IPAM, so that drift on a shared machine spreads over all.
	Runs []Run `json:"runs"`
}

// Settings are the knobs a run used; the report states them.
type Settings struct {
	Nodes int `json:"nodes"`
	Pods  int `json:"pods"`
	// Shapes run, e.g. "1x1000" and "100x10" (deployments x replicas).
	Shapes []Shape `json:"shapes"`
	// IPAMs compared, by name ("warmpool", "static", "host-local").
	IPAMs []string `json:"ipams"`
	Runs  int      `json:"runs"`
	// PoolSize is the number of address pairs in warmpool's pool (Pods when
	// 1:1 with the pods).
	PoolSize int `json:"poolSize"`
	// NetNS is false when the simulated kubelets run the IPAM alone, with
	// no network namespace or macvlan interface.
	NetNS bool `json:"netns"`
	// DAD is true when IPv6 duplicate address detection stayed on in the
	// pod namespaces.
	DAD bool `json:"dad"`
	// Parallel is the number of pods each simulated kubelet sets up or
	// tears down at once.
	Parallel int `json:"parallel"`
	// ControllerQPS and ControllerBurst are the controller-manager's and
	// the scheduler's API client limits (0: the upstream defaults).
	ControllerQPS   int `json:"controllerQPS"`
	ControllerBurst int `json:"controllerBurst"`
	// Cluster says where it ran: "local" (a control plane the harness
	// started) or the kubeconfig's server.
	Cluster string `json:"cluster"`
	CPUs    int    `json:"cpus"`
}

// Shape is a workload: Deployments of Replicas pods each and, when
// Pinned is set, one more Deployment of Pinned pods kept on the first
// PinnedNodes nodes while the others are kept off them; its re-create
// swaps the two groups of nodes, so that at 1:1 units must move between
// nodes ("700@3+1x300": 700 pods on 3 nodes, 300 on the other 7).
type Shape struct {
	Deployments int `json:"deployments"`
	Replicas    int `json:"replicas"`
	Pinned      int `json:"pinned,omitempty"`
	PinnedNodes int `json:"pinnedNodes,omitempty"`
}

// Pods is the number of pods the shape makes.
func (s Shape) Pods() int { return s.Pinned + s.Deployments*s.Replicas }

// ParseShape reads a shape as String writes it: "DxR" or "P@N+DxR".
func ParseShape(text string) (Shape, error) {
	var s Shape
	rest := text
	if pinned, others, ok := strings.Cut(text, "+"); ok {
		if s.Pinned, s.PinnedNodes, ok = positivePair(pinned, "@"); !ok {
			return Shape{}, fmt.Errorf("shape %q: want PODS@NODES+DEPLOYMENTSxREPLICAS", text)
		}
		rest = others
	}
	var ok bool
	if s.Deployments, s.Replicas, ok = positivePair(rest, "x"); !ok {
		return Shape{}, fmt.Errorf("shape %q: want DEPLOYMENTSxREPLICAS or PODS@NODES+DEPLOYMENTSxREPLICAS", text)
	}
	return s, nil
}

// positivePair reads "AsepB" of two positive integers.
func positivePair(text, sep string) (a, b int, ok bool) {
	x, y, found := strings.Cut(text, sep)
	a, errA := strconv.Atoi(x)
	b, errB := strconv.Atoi(y)
	return a, b, found && errA == nil && errB == nil && a > 0 && b > 0
}

// Phase names, in the order a run goes through them.
const (
	PhaseCreate   = "create"
	PhaseRecreate = "re-create"
	PhaseDelete   = "delete"
)

// Run is one IPAM through the three phases of one shape.
type Run struct {
	IPAM   string  `json:"ipam"`
	Shape  Shape   `json:"shape"`
	Index  int     `json:"index"` // 0-based repetition
	Phases []Phase `json:"phases"`
	// PeakRSS is the peak resident memory, in bytes, of the IPAM's own
	// processes over the run, by process ("allocator", "agent-<node>"):
	// empty for the baselines, which have none.
	PeakRSS map[string]uint64 `json:"peakRSS,omitempty"`
	// Error is set when the run failed; its phases are those that finished.
	Error string `json:"error,omitempty"`
}

// Phase is one timed phase of a run.
type Phase struct {
	Name string `json:"name"`
	// Start is when the phase's action began: the calls in calls.csv
	// are placed in their phase by it.
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"duration"`
	// Pods is the number of pods the phase waited for: to be Running
	// (create, re-create) or gone (delete).
	Pods int `json:"pods"`
	// Curve is the number of pods Running (create, re-create: new pods
	// only) or still present (delete) over time since the phase started,
	// one point per change.
	Curve []Point `json:"curve"`
	// TimeToRunning holds percentiles of each pod's time from its
	// creation being seen to it being Running (create, re-create).
	TimeToRunning *Percentiles `json:"timeToRunning,omitempty"`
	// ADDs and DELs the simulated kubelets ran, and how many failed (a
	// failed ADD is retried with back-off, as the kubelet does).
	ADDs        int `json:"adds"`
	ADDFailures int `json:"addFailures"`
	DELs        int `json:"dels"`
	DELFailures int `json:"delFailures"`
	// Hits and Misses of warmpool's warm caches (warmpool only).
	Hits   int `json:"hits"`
	Misses int `json:"misses"`
	// CoolingWaits are the hits that waited for a unit of their node to
	// finish its reuse delay after a DEL (warmpool only).
	CoolingWaits int `json:"coolingWaits"`
	// APIWrites is the number of Kubernetes API writes warmpool's
	// components made (warmpool only; -1 when not measured).
	APIWrites int `json:"apiWrites"`
	// LeaseWrites are the allocator's NodeLease writes among them, by
	// cause (grant, miss, revoke, retry, node-lost, takeover); the rest
	// of APIWrites is the election Lease's renewals and the pools' status
	// (warmpool only).
	LeaseWrites map[string]int `json:"leaseWrites,omitempty"`
	// BusMessages is the number of messages published on the bus
	// (warmpool only).
	BusMessages int `json:"busMessages"`
	// ADDTime and DELTime hold percentiles of the simulated kubelets' CNI
	// calls in the phase, each timed from exec to result (the chain:
	// macvlan and the IPAM under test), failed ones included.
	ADDTime *Percentiles `json:"addTime,omitempty"`
	DELTime *Percentiles `json:"delTime,omitempty"`
	// ADDCPU and DELCPU hold percentiles of the CPU time each call's
	// plugin processes spent (macvlan's includes the IPAM's).
	ADDCPU *Percentiles `json:"addCPU,omitempty"`
	DELCPU *Percentiles `json:"delCPU,omitempty"`
	// CPU is where the machine's CPU time went during the phase.
	CPU *CPU `json:"cpu,omitempty"`
	// Error is set when the phase failed: it timed out, or what it handed
	// out failed a check. Its figures are kept for a look, and left out
	// of every median and target.
	Error string `json:"error,omitempty"`
}

// Point is one step of a curve.
type Point struct {
	At    time.Duration `json:"at"`
	Count int           `json:"count"`
}

// CPU is the CPU time a phase spent, in seconds summed over the CPUs.
type CPU struct {
	// Busy is the machine's time not idle nor waiting for I/O; IOWait is
	// the time idle with I/O outstanding.
	Busy   float64 `json:"busy"`
	IOWait float64 `json:"iowait"`
	// By divides Busy by the process that spent it: the CPUGroups.
	By map[string]float64 `json:"by"`
}

// Percentiles of a set of durations.
type Percentiles struct {
	P50 time.Duration `json:"p50"`
	P90 time.Duration `json:"p90"`
	P99 time.Duration `json:"p99"`
	Max time.Duration `json:"max"`
}
