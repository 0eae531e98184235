package faults

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warmpool/warmpool/internal/rig/testenv"
	"github.com/warmpool/warmpool/internal/rig/toolchain"
)

// regressionSeeds are the slice make test runs: seeds whose scenarios
// found bugs (docs/invariants.md, "What it found"), as many as fit in
// 5 minutes (seed 34 stands for 10: the same path, a node back from
// deletion, and more). A seed does not replay its run exactly (timing
// decides the order in which concurrent goroutines draw from it), so each
// bug is also pinned by a unit test.
const regressionSeeds = "2,3,34,91,93,94"

var (
	seedList  = flag.String("faults.seeds", regressionSeeds, "comma-separated seeds to run, unless -faults.scenarios is set")
	scenarios = flag.Int("faults.scenarios", 0, "run this many scenarios, seeds -faults.seed, -faults.seed+1, ... (make test-faults: 100)")
	firstSeed = flag.Int64("faults.seed", 1, "the first seed of -faults.scenarios")
	duration  = flag.Duration("faults.duration", 30*time.Second, "churn with faults per scenario")
	kinds     = flag.String("faults.kinds", "", "comma-separated fault kinds (default all)")
)

// TestFaults runs the seeded scenarios, one after the other. A failing
// one keeps its directory (logs of every component and the event log) and
// names its seed: rerun it with -faults.seeds=N.
func TestFaults(t *testing.T) {
	for _, c := range []string{toolchain.Etcd, toolchain.Kube} {
		if _, err := toolchain.Dir(c); err != nil {
			testenv.Missing(t, "%v", err)
		}
	}
	bins := Binaries{
		Agent:     testenv.Binary(t, "warmpool-agent"),
		Allocator: testenv.Binary(t, "warmpool-allocator"),
		CNIPath:   []string{testenv.PluginDir(t)},
	}
	var ks []Kind
	if *kinds != "" {
		for _, k := range strings.Split(*kinds, ",") {
			if !slices.Contains(AllKinds, Kind(k)) {
				t.Fatalf("-faults.kinds: unknown %q, want some of %v", k, AllKinds)
			}
			ks = append(ks, Kind(k))
		}
	}
	var seeds []int64
	if *scenarios > 0 {
		for i := range *scenarios {
			seeds = append(seeds, *firstSeed+int64(i))
		}
	} else {
		for _, f := range strings.Split(*seedList, ",") {
			seed, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
			if err != nil {
				t.Fatalf("-faults.seeds: %q is not a seed", f)
			}
			seeds = append(seeds, seed)
		}
	}
	var mu sync.Mutex
	total := map[string]int{}
	passed := 0
	var failed []string
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			dir, err := os.MkdirTemp("", fmt.Sprintf("warmpool-faults-%d-", seed))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), *duration+5*time.Minute)
			defer cancel()
			rep, err := Run(ctx, Config{Seed: seed, Duration: *duration, Kinds: ks, Dir: dir, Binaries: bins})
			if rep != nil {
				t.Log(rep)
			}
			if err != nil {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("seed %d: %s", seed, headLines(err.Error(), 6)))
				mu.Unlock()
				t.Fatalf("%v\nrerun: go test ./internal/rig/faults -run TestFaults -faults.seeds=%d -v\nlogs kept in %s", err, seed, dir)
			}
			os.RemoveAll(dir)
			mu.Lock()
			defer mu.Unlock()
			passed++
			for k, v := range rep.Snapshot() {
				total[k] += v
			}
		})
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(total)) {
		fmt.Fprintf(&b, "\n  %-40s %d", k, total[k])
	}
	t.Logf("%d of %d scenarios passed; totals:%s", passed, len(seeds), b.String())
	// Last, so that a log cut to its tail (CI's) still says which seed
	// failed and why.
	for _, f := range failed {
		t.Logf("FAILED %s", f)
	}
}

// headLines is s cut to its first n lines.
func headLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = append(lines[:n], "…")
	}
	return strings.Join(lines, "\n")
}
