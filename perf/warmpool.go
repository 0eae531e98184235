package perf

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/warmpool/warmpool/allocator"
	"github.com/warmpool/warmpool/api/client"
)

// warmpoolDeployment is warmpool as it runs in a cluster: the allocator
// and one agent per node, each its real binary, on the harness's bus.
type warmpoolDeployment struct {
	pool    string
	alloc   *process
	agents  []*process
	sockets []string
	client  *client.Clientset
}

// deployWarmpool creates the pool and starts the allocator and the agents,
// then waits until every node's agent holds warm units.
func deployWarmpool(ctx context.Context, b *bench) (d *warmpoolDeployment, err error) {
	d = &warmpoolDeployment{pool: "bench", client: b.wp}
	defer func() {
		if err != nil {
			d.stop()
		}
	}()
	if _, err := b.wp.IPPools().Create(ctx, benchPool(d.pool, b.opts.PoolSize), metav1.CreateOptions{}); err != nil {
		return d, fmt.Errorf("create pool %s (on a cluster that ran the harness before, delete the pool and its NodeLeases): %w", d.pool, err)
	}
	logDir, level := b.logDir, "--log-level="+b.opts.WarmpoolLogLevel
	if d.alloc, err = startProcess("allocator", filepath.Join(b.bins, "warmpool-allocator"), logDir,
		"--kubeconfig="+b.kubeconfig, "--nats-url="+b.nats.ClientURL(), "--namespace=kube-system",
		"--lease-name=warmpool-bench-allocator", level, "--pprof"); err != nil {
		return d, err
	}
	if err := d.alloc.waitServing(ctx, time.Minute); err != nil {
		return d, err
	}
	for i, node := range b.nodes {
		sock := filepath.Join(b.dir, "run", fmt.Sprintf("agent-%d.sock", i))
		p, err := startProcess("agent-"+node, filepath.Join(b.bins, "warmpool-agent"), logDir,
			"--node="+node, "--socket="+sock, "--state="+filepath.Join(b.dir, "run", fmt.Sprintf("agent-%d.db", i)),
			"--nats-url="+b.nats.ClientURL(), "--kubeconfig="+b.kubeconfig, level, "--pprof")
		if err != nil {
			return d, err
		}
		d.agents, d.sockets = append(d.agents, p), append(d.sockets, sock)
	}
	for _, p := range d.agents {
		if err := p.waitServing(ctx, time.Minute); err != nil {
			return d, err
		}
	}
	// An agent serves warm units only after its first sync: wait until
	// every one holds some, so the first ADD of a run meets a warm cache
	// as it would on a cluster that has been up for a while.
	var cold []string
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		cold = cold[:0]
		for _, p := range d.agents {
			fams, err := p.scrape(ctx)
			if err != nil {
				return false, err
			}
			if sum(fams, "warmpool_agent_units", func(l map[string]string) bool { return l["state"] == "warm" }) == 0 {
				cold = append(cold, p.Name)
			}
		}
		return len(cold) == 0, nil
	})
	if err != nil {
		return d, fmt.Errorf("agents never warmed: %v: %w", cold, err)
	}
	return d, nil
}

func (d *warmpoolDeployment) processes() []*process {
	var ps []*process
	if d.alloc != nil {
		ps = append(ps, d.alloc)
	}
	return append(ps, d.agents...)
}

// stop stops the agents, then the allocator.
func (d *warmpoolDeployment) stop() {
	for _, p := range d.agents {
		p.stop()
	}
	if d.alloc != nil {
		d.alloc.stop()
	}
}

// peakRSS is each process's peak resident memory so far.
func (d *warmpoolDeployment) peakRSS() map[string]uint64 {
	out := map[string]uint64{}
	for _, p := range d.processes() {
		if v, err := p.peakRSS(); err == nil {
			out[p.Name] = v
		}
	}
	return out
}

// warmpoolCounts are warmpool's own counters at one moment.
type warmpoolCounts struct {
	hits, misses, cooled, writes float64
	leaseWrites                  map[string]float64 // by cause
}

func (d *warmpoolDeployment) counts(ctx context.Context) (warmpoolCounts, error) {
	c := warmpoolCounts{leaseWrites: map[string]float64{}}
	for _, p := range d.processes() {
		if err := p.alive(); err != nil {
			return c, err
		}
		fams, err := p.scrape(ctx)
		if err != nil {
			return c, err
		}
		c.hits += sum(fams, "warmpool_agent_cache_hits_total", nil)
		c.misses += sum(fams, "warmpool_agent_cache_misses_total", nil)
		c.cooled += sum(fams, "warmpool_agent_cooling_waits_total", nil)
		c.writes += sum(fams, "warmpool_kube_requests_total", func(l map[string]string) bool {
			switch l["method"] {
			case "POST", "PUT", "PATCH", "DELETE":
				return true
			}
			return false
		})
		for _, cause := range allocator.LeaseWriteCauses {
			c.leaseWrites[cause] += sum(fams, "warmpool_allocator_lease_writes_total", func(l map[string]string) bool { return l["cause"] == cause })
		}
	}
	return c, nil
}

// settle waits until the agents' records hold exactly want assignments
// to pods of ns: the agents did what the phase asked. The API writes a
// phase caused are counted after it. (The NodeLeases do not record
// assignments: they list which node holds which unit, and an ADD or a DEL
// does not write them; which unit is assigned to which pod is the agent's
// record, read from its /state.)
func (d *warmpoolDeployment) settle(ctx context.Context, ns string, want int) error {
	var have int
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		have = 0
		for _, p := range d.agents {
			if err := p.alive(); err != nil {
				return false, err
			}
			st, err := p.state(ctx)
			if err != nil {
				return false, err
			}
			for _, as := range st.Assignments {
				if as.Pool == d.pool && as.Pod.Namespace == ns {
					have++
				}
			}
		}
		return have == want, nil
	})
	if err != nil {
		return fmt.Errorf("the agents' records hold %d assignments in %s, want %d: %w", have, ns, want, err)
	}
	return nil
}

// logTails returns the end of each component's log, for an error.
func (d *warmpoolDeployment) logTails(n int) string {
	var b strings.Builder
	for _, p := range d.processes() {
		fmt.Fprintf(&b, "--- %s\n%s\n", p.Name, p.Tail(n))
	}
	return b.String()
}
