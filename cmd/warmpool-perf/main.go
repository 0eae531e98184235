// Command warmpool-perf runs warmpool's benchmark: the 1000-pod scenarios
// on a local cluster (or one named by --kubeconfig) with simulated
// kubelets, warmpool side by side with the static and host-local
// baselines; it prints the table and writes JSON and plots.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/warmpool/warmpool/perf"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "report" {
		// Writes report.txt and the plots again from a run's result.json
		// (say, after the report's targets changed).
		res, err := perf.ReadJSON(filepath.Join(os.Args[2], "result.json"))
		if err == nil {
			err = report(os.Args[2], res)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) < 2 || (os.Args[1] != "bench" && os.Args[1] != "demo") {
		fmt.Fprintln(os.Stderr, "usage: warmpool-perf bench [flags]   (warmpool-perf bench -h lists them)\n       warmpool-perf report DIR       (report.txt and plots again from DIR/result.json)")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	var o perf.Options
	fs.IntVar(&o.Nodes, "nodes", 10, "simulated nodes")
	fs.IntVar(&o.Pods, "pods", 1000, "pods per shape")
	shapes := fs.String("shapes", "", `comma-separated DEPLOYMENTSxREPLICAS, or PINNED@NODES+DEPLOYMENTSxREPLICAS for pods pinned to the first NODES nodes and swapped to the others on re-create, e.g. "1x1000,100x10,700@3+1x300" (default: 1xPODS and PODS/10x10)`)
	ipams := fs.String("ipams", "warmpool,static,host-local", "IPAMs to compare")
	fs.IntVar(&o.Runs, "runs", 1, "repetitions; the report quotes medians")
	fs.IntVar(&o.PoolSize, "pool-size", 0, "address pairs in warmpool's pool (default: one per pod, 1:1)")
	netns := fs.Bool("netns", true, "give each pod a network namespace and a macvlan interface; false runs the IPAM alone")
	fs.BoolVar(&o.DAD, "dad", false, "keep IPv6 duplicate address detection on in pod namespaces (each dual-stack ADD then waits ~1.5-2 s)")
	fs.IntVar(&o.Parallel, "parallel", 8, "pods each simulated kubelet sets up at once (and tears down at once, apart)")
	fs.IntVar(&o.ControllerQPS, "controller-qps", 500, "controller-manager and scheduler API QPS")
	fs.IntVar(&o.ControllerBurst, "controller-burst", 1000, "controller-manager and scheduler API burst")
	upstream := fs.Bool("upstream-qps", false, "keep the controller-manager's and scheduler's upstream client limits (20/30 and 50/100)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "run on this cluster instead of a local one (see docs/benchmark.md)")
	fs.StringVar(&o.BinDir, "bin-dir", "", "directory of warmpool's binaries (default: build them)")
	out := fs.String("out", "", "directory for report.txt, result.json and the plots (default perf-results/<time>)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	logLevel := fs.String("log-level", "warn", "harness log level on stderr")
	fs.StringVar(&o.WarmpoolLogLevel, "warmpool-log-level", "warn", "log level of warmpool's allocator and agents (their logs are in the output directory's logs/)")
	_ = fs.Parse(os.Args[2:])
	o.NoNetNS = !*netns
	if *upstream {
		o.ControllerQPS, o.ControllerBurst = -1, -1
	}
	var err error
	if o.Shapes, err = parseShapes(*shapes); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if *ipams != "" {
		o.IPAMs = strings.Split(*ipams, ",")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "--log-level: %v\n", err)
		os.Exit(2)
	}
	o.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// client-go's own warnings (a watch restarted) go where the harness's
	// logs go, at its level, not over the progress bar.
	klog.SetSlogLogger(o.Log)
	if !*quiet {
		o.Progress = os.Stderr
	}
	if *out == "" {
		*out = filepath.Join("perf-results", time.Now().Format("20060102-150405"))
	}
	o.LogDir = filepath.Join(*out, "logs")
	o.CallLog = filepath.Join(*out, "calls.csv")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	res, err := perf.Benchmark(ctx, o)
	if res != nil {
		if werr := report(*out, res); werr != nil {
			slog.Error("report", "err", werr)
		}
	}
	if err != nil {
		slog.Error("benchmark failed", "err", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "==> benchmark finished in %s; report, JSON and plots in %s\n", time.Since(start).Round(time.Second), *out)
}

func report(dir string, res *perf.Result) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "report.txt"))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := perf.WriteTable(os.Stdout, res); err != nil {
		return err
	}
	if err := perf.WriteTable(f, res); err != nil {
		return err
	}
	if err := perf.WriteJSON(filepath.Join(dir, "result.json"), res); err != nil {
		return err
	}
	_, err = perf.WritePlots(dir, res)
	return err
}

func parseShapes(s string) ([]perf.Shape, error) {
	var shapes []perf.Shape
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		shape, err := perf.ParseShape(f)
		if err != nil {
			return nil, fmt.Errorf("--shapes: %w", err)
		}
		shapes = append(shapes, shape)
	}
	return shapes, nil
}
