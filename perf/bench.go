package perf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/internal/rig/gobuild"
	"github.com/warmpool/warmpool/internal/rig/netsim"
	"github.com/warmpool/warmpool/internal/rig/toolchain"
	"github.com/warmpool/warmpool/manifests"
)

// Labels and taint the harness puts on what it creates, so that on a
// real cluster its pods land only on its simulated nodes and nothing else
// lands there.
const (
	nodeLabel  = "warmpool.io/bench-node"
	ipamLabel  = "warmpool.io/bench-ipam"
	benchTaint = "warmpool.io/bench"
	// indexLabel numbers the simulated nodes from 0, for the pinned
	// Deployments' node affinity.
	indexLabel = "warmpool.io/bench-node-index"
)

// Options configure a benchmark.
type Options struct {
	Nodes int
	Pods  int
	// Shapes default to 1 Deployment of Pods replicas and Pods/10
	// Deployments of 10.
	Shapes []Shape
	// IPAMs to compare, among IPAMWarmpool, IPAMStatic, IPAMHostLocal.
	IPAMs []string
	Runs  int
	// PoolSize is the number of pairs in warmpool's pool; 0 means Pods (1:1).
	PoolSize int
	// NoNetNS runs the IPAM alone, without namespaces or macvlan.
	NoNetNS bool
	// DAD keeps IPv6 duplicate address detection on in pod namespaces.
	DAD bool
	// Parallel set-ups per simulated kubelet, and as many teardowns;
	// default 8.
	Parallel int
	// ControllerQPS and ControllerBurst for the controller-manager and the
	// scheduler of the local cluster; negative keeps the upstream defaults.
	ControllerQPS, ControllerBurst int
	// Kubeconfig points at a cluster to run on instead of a local one.
	Kubeconfig string
	// BinDir holds warmpool, warmpool-agent and warmpool-allocator; empty
	// builds them from this module.
	BinDir string
	// LogDir keeps the logs of warmpool's allocator and agents; empty
	// writes them to the temporary directory removed at the end.
	LogDir string
	// CallLog, if set, is the path of a CSV file that gets a line per CNI
	// call: when it started, its pod's namespace and node, ADD or DEL, its
	// time, its processes' CPU, and whether it succeeded.
	CallLog string
	// WarmpoolLogLevel is their --log-level; default warn.
	WarmpoolLogLevel string
	// Progress, if set, shows a progress bar.
	Progress io.Writer
	Log      *slog.Logger
}

func (o *Options) defaults() error {
	if o.Nodes <= 0 || o.Pods <= 0 {
		return fmt.Errorf("need nodes and pods, have %d and %d", o.Nodes, o.Pods)
	}
	if len(o.Shapes) == 0 {
		o.Shapes = []Shape{{Deployments: 1, Replicas: o.Pods}}
		if o.Pods%10 == 0 && o.Pods > 10 {
			o.Shapes = append(o.Shapes, Shape{Deployments: o.Pods / 10, Replicas: 10})
		}
	}
	for _, s := range o.Shapes {
		if s.Pods() != o.Pods {
			return fmt.Errorf("shape %s does not make %d pods", s, o.Pods)
		}
		if s.Pinned > 0 && (s.PinnedNodes <= 0 || s.PinnedNodes >= o.Nodes) {
			return fmt.Errorf("shape %s: its pinned pods need between 1 and %d of the %d nodes", s, o.Nodes-1, o.Nodes)
		}
	}
	if len(o.IPAMs) == 0 {
		o.IPAMs = []string{IPAMWarmpool, IPAMStatic, IPAMHostLocal}
	}
	for _, name := range o.IPAMs {
		switch name {
		case IPAMWarmpool, IPAMStatic, IPAMHostLocal:
		default:
			return fmt.Errorf("unknown IPAM %q: want %s, %s or %s", name, IPAMWarmpool, IPAMStatic, IPAMHostLocal)
		}
	}
	if o.Runs <= 0 {
		o.Runs = 1
	}
	if o.PoolSize == 0 {
		o.PoolSize = o.Pods
	}
	if o.PoolSize < o.Pods {
		return fmt.Errorf("a pool of %d pairs cannot address %d pods", o.PoolSize, o.Pods)
	}
	if o.Parallel <= 0 {
		o.Parallel = 8
	}
	if o.WarmpoolLogLevel == "" {
		o.WarmpoolLogLevel = "warn"
	}
	if o.ControllerQPS == 0 {
		o.ControllerQPS, o.ControllerBurst = 500, 1000
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// bench is one benchmark's cluster and harness.
type bench struct {
	opts       Options
	dir        string // logs, sockets, stores
	kube       kubernetes.Interface
	wp         *client.Clientset
	kubeconfig string
	bins       string
	nats       *broker.Server
	nodes      []string
	hosts      []*netsim.Host
	kubelets   *kubelets
	tracker    *tracker
	networks   map[string]*network
	warmpool   *warmpoolDeployment
	bar        *progress
	// stopKubelets stops the simulated kubelets, tearing down what pods
	// are left; idempotent.
	stopKubelets func()
	cleanup      []func()
	logDir       string // warmpool's processes' logs
}

// Benchmark brings up the cluster and everything the IPAMs need, runs every
// shape for every IPAM Runs times, and tears it all down.
func Benchmark(ctx context.Context, o Options) (res *Result, err error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	b := &bench{opts: o, networks: map[string]*network{}, bar: newProgress(o.Progress)}
	defer func() {
		for i := len(b.cleanup) - 1; i >= 0; i-- {
			b.cleanup[i]()
		}
	}()
	res = &Result{Started: time.Now(), Settings: Settings{Nodes: o.Nodes, Pods: o.Pods, Shapes: o.Shapes, IPAMs: o.IPAMs,
		Runs: o.Runs, PoolSize: o.PoolSize, NetNS: !o.NoNetNS, DAD: o.DAD, Parallel: o.Parallel, CPUs: runtime.NumCPU()}}
	if o.ControllerQPS > 0 && o.Kubeconfig == "" {
		res.Settings.ControllerQPS, res.Settings.ControllerBurst = o.ControllerQPS, o.ControllerBurst
	}
	b.bar.say("==> %d runs (%d IPAMs x %d shapes x %d repetitions) of %d pods: about %.0f min on a 2-core machine, up to four times that on a slower one",
		len(o.IPAMs)*len(o.Shapes)*o.Runs, len(o.IPAMs), len(o.Shapes), o.Runs, o.Pods, o.estimate().Minutes())
	if res.Settings.Cluster, err = b.up(ctx); err != nil {
		return nil, err
	}
	for rep := range o.Runs {
		for _, shape := range o.Shapes {
			for _, ipam := range runOrder(o.IPAMs, rep) {
				run := b.run(ctx, ipam, shape, rep)
				res.Runs = append(res.Runs, run)
				if ctx.Err() != nil {
					return res, ctx.Err()
				}
			}
		}
	}
	return res, nil
}

// runOrder is the order of the IPAMs' runs in a repetition: rotated by
// one each time, so that over len(ipams) repetitions each IPAM runs once
// in each position. In a fixed order the first IPAM of a shape always ran
// right after the last shape's clean-up, and the others right after one
// another's: a difference of position, measured as one of IPAMs.
func runOrder(ipams []string, rep int) []string {
	if len(ipams) == 0 {
		return nil
	}
	r := rep % len(ipams)
	return append(slices.Clone(ipams[r:]), ipams[:r]...)
}

// mostPodsOnANode is about the most pods of a shape one node runs: the
// pinned pods crowd their nodes, and after the swap the others do.
func (o Options) mostPodsOnANode() int {
	most := ceilDiv(o.Pods, o.Nodes)
	for _, s := range o.Shapes {
		if s.Pinned == 0 {
			continue
		}
		others := s.Pods() - s.Pinned
		most = max(most, ceilDiv(s.Pinned, s.PinnedNodes), ceilDiv(s.Pinned, o.Nodes-s.PinnedNodes),
			ceilDiv(others, s.PinnedNodes), ceilDiv(others, o.Nodes-s.PinnedNodes))
	}
	return most
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// Measured on a 2-core machine (2026-12-06): the local cluster starts in
// about a minute, and a pod's phase (created, re-created or deleted,
// netns on) takes about 80 ms of a run's time: 1000 pods, three IPAMs and
// two shapes, three repetitions, in 71 min.
const (
	estimateStart       = time.Minute
	estimatePerPodPhase = 80 * time.Millisecond
)

// estimate is about how long the benchmark takes: the printed promise
// docs/benchmark.md quotes.
func (o Options) estimate() time.Duration {
	podPhases := len(o.IPAMs) * len(o.Shapes) * o.Runs * o.Pods * 3
	return estimateStart + time.Duration(podPhases)*estimatePerPodPhase
}

// step reports a set-up step on the progress writer.
func (b *bench) step(format string, args ...any) func() {
	start := time.Now()
	b.bar.say("==> "+format, args...)
	return func() { b.bar.say("    done in %s", time.Since(start).Round(time.Millisecond)) }
}

func (b *bench) up(ctx context.Context) (where string, err error) {
	o := b.opts
	if b.dir, err = os.MkdirTemp("", "warmpool-bench-"); err != nil {
		return "", err
	}
	b.cleanup = append(b.cleanup, func() { os.RemoveAll(b.dir) })
	b.logDir = o.LogDir
	if b.logDir == "" {
		b.logDir = filepath.Join(b.dir, "logs")
	}
	for _, d := range []string{b.logDir, filepath.Join(b.dir, "run"), filepath.Join(b.dir, "host-local")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
	}
	var cfg *rest.Config
	if o.Kubeconfig == "" {
		done := b.step("starting etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback")
		copts := controlplane.Options{ControllerManager: true, Scheduler: true}
		if o.ControllerQPS > 0 {
			copts.ClientQPS, copts.ClientBurst = o.ControllerQPS, o.ControllerBurst
		}
		cp, err := controlplane.Start(ctx, copts)
		if err != nil {
			return "", err
		}
		b.cleanup = append(b.cleanup, cp.Stop)
		cfg, b.kubeconfig, where = cp.RESTConfig(), cp.Kubeconfig(), "local"
		done()
	} else {
		if cfg, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig); err != nil {
			return "", fmt.Errorf("kubeconfig: %w", err)
		}
		cfg.QPS = -1
		b.kubeconfig, where = o.Kubeconfig, cfg.Host
	}
	// In protobuf, as a kubelet reads its pods.
	if b.kube, err = kubernetes.NewForConfig(client.KubeConfig(cfg)); err != nil {
		return "", err
	}
	if b.wp, err = client.New(cfg); err != nil {
		return "", err
	}
	if err := manifests.InstallCRDs(ctx, cfg); err != nil {
		return "", err
	}
	if err := b.binaries(ctx); err != nil {
		return "", err
	}
	done := b.step("starting the embedded NATS server")
	if b.nats, err = broker.StartServer(broker.ServerOptions{}); err != nil {
		return "", err
	}
	b.cleanup = append(b.cleanup, b.nats.Shutdown)
	done()
	if err := b.registerNodes(ctx); err != nil {
		return "", err
	}
	if err := b.startKubelets(ctx); err != nil {
		return "", err
	}
	return where, b.networksUp(ctx)
}

// binaries finds or builds warmpool's binaries, as shipped: the plugin
// is exec'd for every ADD and DEL, and a dynamically linked one would add
// the dynamic loader's cost to warmpool's times.
func (b *bench) binaries(ctx context.Context) error {
	if b.opts.BinDir != "" {
		b.bins = b.opts.BinDir
		if !b.usesWarmpool() {
			return nil
		}
		for _, name := range []string{"warmpool", "warmpool-agent", "warmpool-allocator"} {
			if _, err := os.Stat(filepath.Join(b.bins, name)); err != nil {
				return fmt.Errorf("warmpool binaries: %w (run make build)", err)
			}
		}
		return gobuild.CheckStatic(filepath.Join(b.bins, "warmpool"))
	}
	done := b.step("building warmpool's binaries")
	b.bins = filepath.Join(b.dir, "bin")
	if err := gobuild.Build(ctx, b.bins, "./cmd/warmpool", "./cmd/warmpool-agent", "./cmd/warmpool-allocator"); err != nil {
		return fmt.Errorf("build warmpool: %w", err)
	}
	done()
	return nil
}

func (b *bench) usesWarmpool() bool {
	for _, name := range b.opts.IPAMs {
		if name == IPAMWarmpool {
			return true
		}
	}
	return false
}

// registerNodes registers the simulated nodes, keeps them Ready and
// creates their host namespaces.
func (b *bench) registerNodes(ctx context.Context) error {
	done := b.step("registering %d simulated nodes", b.opts.Nodes)
	perNode := b.opts.mostPodsOnANode()
	hctx, stop := context.WithCancel(context.Background())
	var beats sync.WaitGroup
	// Cleanups run last first: heartbeats stop before the nodes go, or a
	// heartbeat would recreate a deleted node's Lease.
	b.cleanup = append(b.cleanup, func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, name := range b.nodes {
			_ = b.kube.CoreV1().Nodes().Delete(dctx, name, metav1.DeleteOptions{})
		}
	}, func() { stop(); beats.Wait() })
	for i := range b.opts.Nodes {
		name := fmt.Sprintf("bench-node-%02d", i)
		b.nodes = append(b.nodes, name) // before Register: a half-made node is deleted too
		err := controlplane.Register(ctx, b.kube, controlplane.Node{Name: name, Labels: map[string]string{nodeLabel: "true", indexLabel: strconv.Itoa(i)},
			Taints: []corev1.Taint{{Key: benchTaint, Value: "true", Effect: corev1.TaintEffectNoSchedule}}, MaxPods: max(110, 2*perNode+10)})
		if err != nil {
			return err
		}
		beats.Add(1)
		go func() {
			defer beats.Done()
			if err := controlplane.KeepNodeReady(hctx, b.kube, name, 10*time.Second); err != nil && hctx.Err() == nil {
				b.opts.Log.Error("node heartbeat stopped", "node", name, "err", err)
			}
		}()
		if !b.opts.NoNetNS {
			h, err := netsim.NewHost(name)
			if err != nil {
				return err
			}
			b.hosts = append(b.hosts, h)
			b.cleanup = append(b.cleanup, func() { _ = h.Close() })
		}
	}
	done()
	return nil
}

// startKubelets starts the pod informer the kubelets and the tracker share.
func (b *bench) startKubelets(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(b.kube, 0)
	informer := factory.Core().V1().Pods().Informer()
	cniDir, err := toolchain.Dir(toolchain.CNIPlugins)
	if err != nil {
		return err
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{cniDir, b.bins}, filepath.Join(b.dir, "cni-cache"), newMeteredExec())
	if b.kubelets, err = newKubelets(b.kube, cni, informer, b.nodes, b.hosts, !b.opts.NoNetNS, b.opts.DAD, b.opts.Log.With("component", "kubelet")); err != nil {
		return err
	}
	if b.tracker, err = newTracker(informer); err != nil {
		return err
	}
	closeCalls, err := b.kubelets.openCallLog(b.opts.CallLog)
	if err != nil {
		return err
	}
	kctx, cancel := context.WithCancel(context.Background())
	stop := make(chan struct{})
	factory.Start(stop)
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		close(stop)
		cancel()
		return errors.Join(fmt.Errorf("pod informer never synced: %w", ctx.Err()), closeCalls())
	}
	b.kubelets.run(kctx, b.opts.Parallel)
	var once sync.Once
	b.stopKubelets = func() {
		once.Do(func() {
			sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
			defer scancel()
			cancel()
			b.kubelets.stop(sctx)
			if err := closeCalls(); err != nil {
				b.opts.Log.Warn("call log", "err", err)
			}
			close(stop)
			factory.Shutdown()
		})
	}
	b.cleanup = append(b.cleanup, b.stopKubelets)
	return nil
}

// networksUp prepares each IPAM's network, deploying warmpool if it runs.
func (b *bench) networksUp(ctx context.Context) (err error) {
	netns := !b.opts.NoNetNS
	for _, name := range b.opts.IPAMs {
		var n *network
		switch name {
		case IPAMWarmpool:
			done := b.step("deploying warmpool: a %d-pair dual-stack pool, the allocator and %d agents", b.opts.PoolSize, b.opts.Nodes)
			if b.warmpool, err = deployWarmpool(ctx, b); err != nil {
				if b.warmpool != nil {
					err = fmt.Errorf("%w\n%s", err, b.warmpool.logTails(2000))
				}
				return err
			}
			// The kubelets' last DELs need the agents: they stop first.
			d := b.warmpool
			b.cleanup = append(b.cleanup, func() { b.stopKubelets(); d.stop() })
			n, err = warmpoolNetwork(b.warmpool.pool, b.warmpool.sockets, netns)
			done()
			b.bar.say("    allocator metrics at %s, profiles at %s", b.warmpool.alloc.metrics, strings.TrimSuffix(b.warmpool.alloc.metrics, "metrics")+"debug/pprof/")
		case IPAMStatic:
			n, err = staticNetwork(b.opts.Nodes, netns)
		case IPAMHostLocal:
			// Room for a node's pods twice over (old and new during a
			// re-create) and then some: host-local is never short.
			perNode := 2*b.opts.mostPodsOnANode() + 16
			n, err = hostLocalNetwork(b.opts.Nodes, perNode, filepath.Join(b.dir, "host-local"), netns)
		}
		if err != nil {
			return err
		}
		b.networks[name] = n
	}
	return nil
}
