package faults

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Config is one scenario.
type Config struct {
	// Seed seeds every random choice: the churn, the faults, their targets
	// and timings, the failpoints. Concurrent goroutines draw from it, so
	// on a shared machine a seed does not replay the same sequence of
	// choices, let alone the same interleaving; the event log records what
	// happened, and each bug found is pinned by a unit test.
	Seed int64
	// Duration is the churn with faults; default 30 s.
	Duration time.Duration
	// Nodes, at least 5 (the default).
	Nodes int
	// Peak is the most pods at once and the pool's size (1:1); default
	// 40.
	Peak int
	// Kinds are the faults injected; default AllKinds.
	Kinds []Kind
	// Settle bounds the convergence after the faults stop; default 60 s.
	Settle time.Duration
	// Dir receives the components' logs and the event log.
	Dir      string
	Binaries Binaries
}

// Report is what a scenario did and checked.
type Report struct {
	Seed   int64
	Counts map[string]int
	// EventLog is the file the history was written to.
	EventLog string
	mu       sync.Mutex
}

func (r *Report) count(name string) { r.add(name, 1) }

func (r *Report) add(name string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Counts[name] += n
}

// Snapshot returns a copy of the counts.
func (r *Report) Snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.Counts)
}

// String lists the counts, sorted.
func (r *Report) String() string {
	counts := r.Snapshot()
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d:", r.Seed)
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		fmt.Fprintf(&b, " %s=%d", k, counts[k])
	}
	return b.String()
}

// Run runs one scenario and returns what it did, and an error naming the
// seed and quoting the event log if an invariant broke or the cluster
// could not be run.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Duration == 0 {
		cfg.Duration = 30 * time.Second
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = 5
	}
	if cfg.Peak == 0 {
		cfg.Peak = 40
	}
	if cfg.Kinds == nil {
		cfg.Kinds = AllKinds
	}
	if cfg.Settle == 0 {
		cfg.Settle = 60 * time.Second
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	events, err := os.Create(filepath.Join(cfg.Dir, "events.log"))
	if err != nil {
		return nil, err
	}
	defer events.Close()
	rep := &Report{Seed: cfg.Seed, Counts: map[string]int{}, EventLog: events.Name()}
	w := &world{cfg: cfg, dir: cfg.Dir, log: newEventLog(events), stats: rep, fatal: make(chan error, 1),
		rnd: rand.New(rand.NewPCG(uint64(cfg.Seed), 0x5eed))}
	w.runtime = newRuntime(w)
	err = w.scenario(ctx)
	if err != nil {
		w.log.add("FAIL", "%v", err)
		err = fmt.Errorf("seed %d: %w\nevent log %s ends with:\n%s", cfg.Seed, err, events.Name(), w.log.tail(80))
	}
	return rep, err
}

func (w *world) scenario(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer w.down()
	w.log.add("start", "seed %d: %d nodes, pool and peak %d pods, %s of churn, faults %v", w.cfg.Seed, w.cfg.Nodes, w.cfg.Peak, w.cfg.Duration, w.cfg.Kinds)
	if err := w.up(ctx); err != nil {
		return fmt.Errorf("bring the cluster up: %w", err)
	}
	chk := &checker{w: w, r: w.runtime}
	// The runtime outlives the churn: its pods must converge.
	rctx, stopRuntime := context.WithCancel(ctx)
	defer func() {
		stopRuntime()
		w.runtime.wg.Wait()
	}()
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go chk.watch(wctx, 300*time.Millisecond)

	inj := newInjector(w)
	fctx, stopFaults := context.WithCancel(ctx)
	churned := make(chan struct{})
	go func() {
		defer close(churned)
		w.churn(fctx, rctx, inj)
	}()
	injecting := make(chan struct{})
	go func() {
		defer close(injecting)
		for fctx.Err() == nil {
			sleep(fctx, w.between(300*time.Millisecond, 2*time.Second))
			if fctx.Err() == nil {
				inj.inject(fctx, w.cfg.Kinds[w.intn(len(w.cfg.Kinds))])
			}
		}
	}()
	select {
	case err := <-w.fatal:
		stopFaults()
		// The churn may be creating a pod: its runtime.wg.Add must come
		// before the deferred Wait.
		<-churned
		<-injecting
		inj.wg.Wait()
		return err
	case <-time.After(w.cfg.Duration):
	}
	stopFaults()
	<-churned
	<-injecting   // no fault starts after this
	inj.wg.Wait() // every fault healed
	w.healed.Store(time.Now().UnixNano())
	w.log.add("settle", "faults stopped; waiting for convergence (at most %s; every node serving within %s)", w.cfg.Settle, livenessBound)

	deadline := time.Now().Add(w.cfg.Settle)
	var last error
	outSince := map[string]time.Time{} // agent -> out of service since, once past the liveness bound
	for {
		select {
		case err := <-w.fatal:
			return err
		default:
		}
		if last = chk.converged(ctx); last == nil {
			break
		}
		if past, since := w.pastLiveness(); past {
			out := chk.notServing(ctx)
			for name := range outSince {
				if _, ok := out[name]; !ok {
					delete(outSince, name)
				}
			}
			for name, why := range out {
				first, ok := outSince[name]
				if !ok {
					outSince[name] = time.Now()
				} else if time.Since(first) >= livenessHold {
					return fmt.Errorf("liveness: %s out of service for %s in a row, %s after the faults healed (bound %s): %s",
						name, time.Since(first).Round(time.Second), since, livenessBound, why)
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("invariant 3: not converged %s after the faults stopped: %w", w.cfg.Settle, last)
		}
		sleep(ctx, 500*time.Millisecond)
	}
	// One more full sample of the invariants at rest.
	if err := chk.sample(ctx); err != nil {
		return err
	}
	stopWatch()
	select {
	case err := <-w.fatal:
		return err
	default:
	}
	w.log.add("pass", "%s", w.stats)
	return nil
}

// churn creates and deletes pods until fctx ends; pods live on rctx.
func (w *world) churn(fctx, rctx context.Context, inj *injector) {
	for fctx.Err() == nil {
		sleep(fctx, w.between(20*time.Millisecond, 250*time.Millisecond))
		if fctx.Err() != nil {
			return
		}
		r := w.runtime
		switch {
		case w.intn(200) == 0:
			// A burst: a quarter of the pods go at once, the churn refills.
			running := r.running()
			n := len(running) / 4
			for _, i := range w.perm(len(running))[:n] {
				r.tell(running[i], cmdDelete)
			}
			w.log.add("churn", "burst: %d pods deleted", n)
		case r.active() < w.cfg.Peak && w.intn(10) < 6:
			nodes := inj.schedulable()
			if len(nodes) == 0 {
				continue
			}
			if err := r.create(rctx, nodes[w.intn(len(nodes))]); err != nil && fctx.Err() == nil {
				w.log.add("churn", "create: %v", err)
			}
		default:
			running := r.running()
			if len(running) > 0 {
				r.tell(running[w.intn(len(running))], cmdDelete)
			}
		}
	}
}
