package perf

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// CPU groups: where a phase's CPU time went, by the process that spent it.
const (
	CPUAPIServer   = "apiserver"
	CPUEtcd        = "etcd"
	CPUControllers = "controllers" // kube-controller-manager and kube-scheduler
	CPUWarmpool    = "warmpool"    // the allocators and agents, in every run: they watch the baselines' pods too
	CPUHarness     = "harness"     // this process: the simulated kubelets, the tracker, the embedded NATS
	CPUExecs       = "execs"       // the processes it ran that exited: the CNI plugins
	CPUOther       = "other"       // the rest of the machine's busy time: the kernel's own threads, other processes
)

// CPUGroups lists the groups in report order.
var CPUGroups = []string{CPUAPIServer, CPUEtcd, CPUControllers, CPUWarmpool, CPUHarness, CPUExecs, CPUOther}

// cpuGroupOf maps a process name (/proc/PID/comm: 15 bytes at most) to
// its group; "" for one not followed apart. The combined Kubernetes
// binary, "kube", is named by its first argument: arg1 reads it.
func cpuGroupOf(comm string, arg1 func() string) string {
	if comm == "kube" {
		comm = arg1()
	}
	switch {
	case comm == "kube-apiserver":
		return CPUAPIServer
	case comm == "etcd":
		return CPUEtcd
	case strings.HasPrefix(comm, "kube-controller"), comm == "kube-scheduler":
		return CPUControllers
	case strings.HasPrefix(comm, "warmpool-alloc"), comm == "warmpool-agent":
		return CPUWarmpool
	}
	return ""
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every
// Linux architecture this runs on.
const clockTicks = 100

// cpuSample is the CPU time spent up to one moment, in seconds: the
// machine's, each followed process's, this process's and its reaped
// children's.
type cpuSample struct {
	busy, iowait float64
	procs        map[int]procCPU
	self, execs  float64
}

type procCPU struct {
	group   string
	seconds float64
}

// sampleCPU reads /proc. A process that exits between two samples is
// lost from its group (the components live through a phase; the CNI
// plugins, which do not, are counted whole as this process's children).
func sampleCPU() (cpuSample, error) {
	s := cpuSample{procs: map[int]procCPU{}}
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, err
	}
	if s.busy, s.iowait, err = parseProcStat(stat); err != nil {
		return s, err
	}
	var self, children syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &self); err != nil {
		return s, fmt.Errorf("rusage: %w", err)
	}
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children); err != nil {
		return s, fmt.Errorf("rusage: %w", err)
	}
	s.self = seconds(self.Utime) + seconds(self.Stime)
	s.execs = seconds(children.Utime) + seconds(children.Stime)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return s, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		comm, secs, err := parsePIDStat(b)
		if err != nil {
			continue
		}
		arg1 := func() string {
			b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			if args := bytes.Split(b, []byte{0}); len(args) > 1 {
				return string(args[1])
			}
			return ""
		}
		if g := cpuGroupOf(comm, arg1); g != "" {
			s.procs[pid] = procCPU{g, secs}
		}
	}
	return s, nil
}

func seconds(tv syscall.Timeval) float64 { return float64(tv.Sec) + float64(tv.Usec)/1e6 }

// parseProcStat returns the busy and iowait seconds of the "cpu" line of
// /proc/stat, summed over the CPUs.
func parseProcStat(b []byte) (busy, iowait float64, err error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[0] != "cpu" {
			continue
		}
		// user nice system idle iowait irq softirq steal guest guest_nice;
		// guest time is already in user.
		var total float64
		for i, v := range f[1:min(len(f), 9)] {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("/proc/stat: %q: %w", sc.Text(), err)
			}
			switch i {
			case 3: // idle
			case 4:
				iowait = n / clockTicks
			default:
				total += n
			}
		}
		return total / clockTicks, iowait, nil
	}
	return 0, 0, fmt.Errorf("/proc/stat: no cpu line")
}

// parsePIDStat returns the name and the user plus system seconds of a
// /proc/PID/stat. The name is in parentheses and may hold spaces and
// parentheses itself: the fields after it start after the last ')'.
func parsePIDStat(b []byte) (comm string, secs float64, err error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return "", 0, fmt.Errorf("stat: no name")
	}
	comm = string(b[open+1 : end])
	// After the name: state(3) ... utime(14) stime(15), fields counted
	// from 1 with pid and comm as 1 and 2.
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 13 {
		return "", 0, fmt.Errorf("stat of %s: %d fields", comm, len(f))
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	s, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return "", 0, fmt.Errorf("stat of %s: bad times", comm)
	}
	return comm, (u + s) / clockTicks, nil
}

// since is the CPU spent from prev to s, by group.
func (s cpuSample) since(prev cpuSample) *CPU {
	c := &CPU{Busy: s.busy - prev.busy, IOWait: s.iowait - prev.iowait, By: map[string]float64{}}
	for pid, p := range s.procs {
		before := 0.0 // started during the phase
		if q, ok := prev.procs[pid]; ok && q.group == p.group {
			before = q.seconds
		}
		c.By[p.group] += p.seconds - before
	}
	c.By[CPUHarness] = s.self - prev.self
	c.By[CPUExecs] = s.execs - prev.execs
	known := 0.0
	for _, v := range c.By {
		known += v
	}
	c.By[CPUOther] = max(c.Busy-known, 0)
	return c
}
