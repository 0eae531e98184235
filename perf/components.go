package perf

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/internal/rig/child"
)

// process is one of warmpool's components, run from its real binary as
// it would run on a node: the harness measures its memory and reads its
// /metrics (and an agent's /state).
type process struct {
	*child.Process
	base    string // http://127.0.0.1:<port>, its --metrics-addr
	metrics string // base + /metrics
}

// startProcess runs bin with args, its output in logDir/<name>.log, its
// metrics on a free loopback port passed as --metrics-addr.
func startProcess(name, bin, logDir string, args ...string) (*process, error) {
	addr, err := child.FreeAddr()
	if err != nil {
		return nil, err
	}
	p, err := child.Start(name, logDir, bin, append(args, "--metrics-addr="+addr)...)
	if err != nil {
		return nil, err
	}
	return &process{Process: p, base: "http://" + addr, metrics: "http://" + addr + "/metrics"}, nil
}

func (p *process) stop() { p.Stop(10 * time.Second) }

// alive fails once the process has exited.
func (p *process) alive() error {
	if p.Exited() {
		return p.ExitError()
	}
	return nil
}

// peakRSS is the process's peak resident set (VmHWM), in bytes.
func (p *process) peakRSS() (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.PID()))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("%s: no VmHWM in /proc status", p.Name)
}

var scrapeClient = &http.Client{Timeout: 5 * time.Second}

// scrape reads the process's metric families.
func (p *process) scrape(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.metrics, nil)
	if err != nil {
		return nil, err
	}
	resp, err := scrapeClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics of %s: %w", p.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics of %s: %s", p.Name, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("metrics of %s: %w", p.Name, err)
	}
	return fams, nil
}

// state reads an agent's record from its /state endpoint, served on its
// metrics address.
func (p *process) state(ctx context.Context) (*agent.State, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+agent.StatePath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := scrapeClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("state of %s: %w", p.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("state of %s: %s", p.Name, resp.Status)
	}
	var st agent.State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("state of %s: %w", p.Name, err)
	}
	return &st, nil
}

// waitServing waits until the process serves its metrics: the allocator
// serves them once it leads, the agent once it is set up.
func (p *process) waitServing(ctx context.Context, timeout time.Duration) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := p.alive(); err != nil {
			return false, err
		}
		_, last = p.scrape(ctx)
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("%s not serving after %s: %w", p.Name, timeout, errors.Join(err, last))
	}
	return nil
}

// sum adds the values of a metric's series whose labels include want.
func sum(fams map[string]*dto.MetricFamily, name string, want func(labels map[string]string) bool) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	var total float64
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if want != nil && !want(labels) {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			total += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			total += m.GetGauge().GetValue()
		}
	}
	return total
}
