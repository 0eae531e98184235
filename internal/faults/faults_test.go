package faults

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warmpool/warmpool/internal/testenv"
	"github.com/warmpool/warmpool/internal/toolchain"
)

var (
	scenarios = flag.Int("faults.scenarios", 3, "how many seeded scenarios to run (make test runs the default slice, make test-faults 100)")
	firstSeed = flag.Int64("faults.seed", 1, "the first scenario's seed; the others follow it")
	duration  = flag.Duration("faults.duration", 30*time.Second, "churn with faults per scenario")
	kinds     = flag.String("faults.kinds", "", "comma-separated fault kinds (default all)")
)

// TestFaults runs the seeded scenarios, one after the other. A failing
// one keeps its directory (logs of every component and the event log) and
// names its seed: rerun it with -faults.seed=N -faults.scenarios=1.
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
	var mu sync.Mutex
	total := map[string]int{}
	passed := 0
	for i := range *scenarios {
		seed := *firstSeed + int64(i)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			dir, err := os.MkdirTemp("", fmt.Sprintf("warmpool-faults-%d-", seed))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), *duration+5*time.Minute)
			defer cancel()
			rep, err := Run(ctx, Config{Seed: seed, Duration: *duration, Kinds: ks, Dir: dir, Binaries: bins})
			t.Log(rep)
			if err != nil {
				t.Fatalf("%v\nrerun: go test ./internal/faults -run TestFaults -faults.seed=%d -faults.scenarios=1 -v\nlogs kept in %s", err, seed, dir)
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
	t.Logf("%d of %d scenarios passed; totals:%s", passed, *scenarios, b.String())
}
