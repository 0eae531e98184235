package perf

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseProcStat(t *testing.T) {
	in := "cpu  100 20 30 400 50 6 4 0 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1\n"
	busy, iowait, err := parseProcStat([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	// user+nice+system+irq+softirq+steal = 160 ticks; guest is in user.
	if busy != 1.6 || iowait != 0.5 {
		t.Fatalf("busy %v iowait %v, want 1.6 0.5", busy, iowait)
	}
	for _, bad := range []string{"", "cpu 1 2 x 4 5 6\n", "intr 1 2 3\n"} {
		if _, _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestParsePIDStat(t *testing.T) {
	// A name with a space and a parenthesis: the fields start after the last ')'.
	in := "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 3 4 20 0 12 0 100 1000 10"
	comm, secs, err := parsePIDStat([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if comm != "a b) c)" || math.Abs(secs-3.0) > 1e-9 {
		t.Fatalf("%q %v, want %q 3", comm, secs, "a b) c)")
	}
	for _, bad := range []string{"", "1 (x S 1", "1 (x) S 1 2 3", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 u s"} {
		if _, _, err := parsePIDStat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestCPUSince(t *testing.T) {
	prev := cpuSample{busy: 10, iowait: 1, self: 2, execs: 3, procs: map[int]procCPU{
		1: {CPUAPIServer, 4}, 2: {CPUWarmpool, 1}, 3: {CPUWarmpool, 5}}}
	now := cpuSample{busy: 30, iowait: 2, self: 4, execs: 8, procs: map[int]procCPU{
		1: {CPUAPIServer, 7}, 2: {CPUWarmpool, 2}, 4: {CPUWarmpool, 1.5}}} // 3 exited, 4 started
	c := now.since(prev)
	want := map[string]float64{CPUAPIServer: 3, CPUWarmpool: 2.5, CPUHarness: 2, CPUExecs: 5, CPUOther: 20 - 12.5}
	if c.Busy != 20 || c.IOWait != 1 {
		t.Fatalf("busy %v iowait %v", c.Busy, c.IOWait)
	}
	for g, v := range want {
		if math.Abs(c.By[g]-v) > 1e-9 {
			t.Errorf("%s: %v, want %v", g, c.By[g], v)
		}
	}
}

func TestSampleCPUReadsThisMachine(t *testing.T) {
	s, err := sampleCPU()
	if err != nil {
		t.Fatal(err)
	}
	if s.busy <= 0 || s.self <= 0 {
		t.Fatalf("busy %v self %v: nothing read", s.busy, s.self)
	}
}

func TestCPUGroupOf(t *testing.T) {
	for _, c := range []struct{ comm, arg1, want string }{
		{"kube", "kube-apiserver", CPUAPIServer},
		{"kube", "kube-controller-manager", CPUControllers},
		{"kube", "kube-scheduler", CPUControllers},
		{"kube", "kubelet", ""},
		{"etcd", "", CPUEtcd},
		{"warmpool-alloca", "", CPUWarmpool},
		{"warmpool-agent", "", CPUWarmpool},
		{"warmpool-perf", "", ""},
		{"macvlan", "", ""},
	} {
		if got := cpuGroupOf(c.comm, func() string { return c.arg1 }); got != c.want {
			t.Errorf("%s %s: %q, want %q", c.comm, c.arg1, got, c.want)
		}
	}
}

// TestMeteredExecCountsThePluginsCPU: the exec counts what the plugin
// process and its children spent, and reports a failure as libcni's
// RawExec does.
func TestMeteredExecCountsThePluginsCPU(t *testing.T) {
	dir := t.TempDir()
	plugin := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	e := newMeteredExec()
	var n atomic.Int64
	ctx := withExecCPU(context.Background(), &n)
	busy := plugin("busy", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo '{\"ok\":1}'\n")
	out, err := e.ExecPlugin(ctx, busy, nil, nil)
	if err != nil || string(out) != "{\"ok\":1}\n" {
		t.Fatalf("%q %v", out, err)
	}
	if cpuOf(&n) < time.Millisecond {
		t.Fatalf("CPU %v for a busy plugin", cpuOf(&n))
	}
	failing := plugin("fail", `echo '{"code":11,"msg":"try later"}'; exit 1`+"\n")
	var cniErr *types.Error
	if _, err := e.ExecPlugin(ctx, failing, nil, nil); !errors.As(err, &cniErr) || cniErr.Code != 11 || cniErr.Msg != "try later" {
		t.Fatalf("failing plugin: %v", err)
	}
	silent := plugin("silent", "echo oops >&2; exit 1\n")
	if _, err := e.ExecPlugin(ctx, silent, nil, nil); err == nil || !strings.Contains(err.Error(), "oops") {
		t.Fatalf("a plugin failing on stderr: %v", err)
	}
}
