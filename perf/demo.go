// Package perf holds warmpool's benchmark harness. Until the benchmark
// exists it holds the demo that `make demo` runs: a real local control plane
// and an embedded NATS server, the CRDs and an example dual-stack pool, a
// report of what the apiserver then holds, and the data path: the allocator
// warms a node's agent and one ADD is served from the warm cache.
package perf

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/allocator"
	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/controlplane"
	"github.com/warmpool/warmpool/manifests"
)

// Demo brings up etcd, kube-apiserver and an embedded NATS server, installs
// the CRDs and the example dual-stack pool, prints what the apiserver holds
// and tears everything down. It writes its report to w.
func Demo(ctx context.Context, w io.Writer) error {
	step := func(format string, args ...any) func() {
		start := time.Now()
		fmt.Fprintf(w, "==> "+format+"\n", args...)
		return func() { fmt.Fprintf(w, "    done in %s\n", time.Since(start).Round(time.Millisecond)) }
	}

	done := step("starting etcd and kube-apiserver on loopback")
	cp, err := controlplane.Start(ctx, controlplane.Options{})
	if err != nil {
		return err
	}
	defer func() {
		d := step("tearing down the control plane")
		cp.Stop()
		d()
	}()
	done()
	cfg := cp.RESTConfig()
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	version, err := kube.Discovery().ServerVersion()
	if err != nil {
		return fmt.Errorf("server version: %w", err)
	}
	fmt.Fprintf(w, "    kube-apiserver %s at %s, pids %v\n", version.GitVersion, cfg.Host, cp.PIDs())

	done = step("starting the embedded NATS server")
	bus, err := broker.Open(ctx, broker.Config{ClientName: "warmpool-demo"})
	if err != nil {
		return err
	}
	defer bus.Close()
	if _, err := bus.Conn.Subscribe("warmpool.demo.ping", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	rtt, err := medianRTT(ctx, bus.Conn, 100)
	if err != nil {
		return err
	}
	done()
	fmt.Fprintf(w, "    nats at %s, request/reply median over 100: %s\n", bus.URL(), rtt)

	done = step("installing the CRDs")
	if err := manifests.InstallCRDs(ctx, cfg); err != nil {
		return err
	}
	done()

	done = step("creating the example dual-stack pool (manifests/examples/dual-stack.yaml)")
	pool, err := manifests.ExamplePool("dual-stack")
	if err != nil {
		return err
	}
	wp, err := client.New(cfg)
	if err != nil {
		return err
	}
	if _, err := wp.IPPools().Create(ctx, pool, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create pool %s: %w", pool.Name, err)
	}
	done()

	fmt.Fprintln(w, "==> what the apiserver holds")
	crds, err := manifests.CRDs()
	if err != nil {
		return err
	}
	for _, crd := range crds {
		fmt.Fprintf(w, "    CRD %s (%s, %s)\n", crd.Name, crd.Spec.Scope, crd.Spec.Versions[0].Name)
	}
	pools, err := wp.IPPools().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list pools: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "    NAME\tIPV4\tIPV6\tVLAN\tMIN/TARGET/MAX WARM")
	for _, p := range pools.Items {
		var v4, v6, vlan string = "-", "-", "-"
		if p.Spec.IPv4 != nil {
			v4 = p.Spec.IPv4.CIDR
		}
		if p.Spec.IPv6 != nil {
			v6 = p.Spec.IPv6.CIDR
		}
		if p.Spec.VLAN != nil {
			vlan = fmt.Sprint(*p.Spec.VLAN)
		}
		k := p.Spec.Warm.Resolved()
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%d/%d/%d\n", p.Name, v4, v6, vlan, k.MinWarm, k.WarmTarget, k.MaxWarm)
	}
	tw.Flush()
	stored, err := wp.IPPools().Get(ctx, pool.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	stored.ManagedFields = nil
	// The typed client drops TypeMeta on decode; put it back for the reader.
	stored.APIVersion, stored.Kind = v1alpha1.SchemeGroupVersion.String(), "IPPool"
	out, err := yaml.Marshal(stored)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "    the pool as stored (defaults applied):\n%s", indent(string(out), "      "))
	return demoDataPath(ctx, w, cfg, kube, wp, bus, pool.Name)
}

// demoDataPath runs the allocator and one node's agent in-process on the
// bus, lets the allocator warm the node, and serves one ADD over the
// agent's socket: the path a CNI ADD takes, without a network namespace.
func demoDataPath(ctx context.Context, w io.Writer, cfg *rest.Config, kube kubernetes.Interface, wp *client.Clientset, bus *broker.Bus, pool string) error {
	quiet := slog.New(slog.DiscardHandler)
	done := func(format string, args ...any) { fmt.Fprintf(w, "==> "+format+"\n", args...) }
	// Everything started here stops when the demo returns, before the
	// control plane does: an open watch delays the apiserver's shutdown.
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	const node = "demo-node"
	if err := controlplane.RegisterNode(ctx, kube, node, map[string]string{"warmpool.io/underlay": "vlan20"}); err != nil {
		return err
	}
	alloc, err := allocator.New(ctx, allocator.Config{Client: wp, Conn: bus.Conn, Kube: kube, Epoch: 1, Logger: quiet})
	if err != nil {
		return err
	}
	if err := alloc.Start(ctx); err != nil {
		return err
	}
	defer alloc.Stop()
	dir, err := os.MkdirTemp("", "warmpool-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	st, err := store.Open(filepath.Join(dir, "agent.db"), store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	ag, err := agent.New(agent.Config{Node: node, Store: st, Logger: quiet, Resolver: agent.StaticResolver{Known: map[string]bool{pool: true}}})
	if err != nil {
		return err
	}
	conn, err := broker.Connect(ctx, bus.URL(), "demo-agent")
	if err != nil {
		return err
	}
	defer conn.Close()
	agentBus := agent.NewBus(ag, conn, 0)
	sock := filepath.Join(dir, "agent.sock")
	srv, err := agent.Listen(ag, sock)
	if err != nil {
		return err
	}
	go func() { _ = agentBus.Run(actx) }()
	go func() { _ = srv.Serve(actx) }()

	start := time.Now()
	for ag.WarmCount(pool) < 4 {
		if time.Since(start) > 20*time.Second {
			return fmt.Errorf("the allocator did not warm %s", node)
		}
		time.Sleep(10 * time.Millisecond)
	}
	done("the allocator warmed %s with %d units of %s in %s", node, ag.WarmCount(pool), pool, time.Since(start).Round(time.Millisecond))
	t0 := time.Now()
	resp, err := wire.Call(ctx, sock, &wire.Request{Op: wire.OpAdd, Pool: pool, Network: "underlay",
		Attachment: wire.Attachment{ContainerID: "demo-sandbox", IfName: "net1"}, Pod: wire.Pod{Namespace: "default", Name: "web-0"}})
	if err != nil {
		return err
	}
	if resp.Error != nil {
		return resp.Error
	}
	done("ADD for default/web-0 answered in %s from the warm cache (hit=%v): %v", time.Since(t0).Round(time.Microsecond), resp.Result.Hit, resp.Result.IPs)
	for {
		leases, err := wp.NodeLeases().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, l := range leases.Items {
			for _, u := range l.Spec.Units {
				if u.State == v1alpha1.UnitAssigned {
					done("NodeLease %s (epoch %d) records %s/%s assigned to %s/%s; %d units held by the node", l.Name, l.Spec.Epoch, u.IPv4, u.IPv6, u.Pod.Namespace, u.Pod.Name, len(l.Spec.Units))
					return nil
				}
			}
		}
		if time.Since(t0) > 20*time.Second {
			return fmt.Errorf("the assignment never reached the NodeLease")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func medianRTT(ctx context.Context, nc *nats.Conn, n int) (time.Duration, error) {
	rtts := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if _, err := nc.RequestWithContext(ctx, "warmpool.demo.ping", []byte("ping")); err != nil {
			return 0, fmt.Errorf("nats request: %w", err)
		}
		rtts = append(rtts, time.Since(start))
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2], nil
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return prefix + strings.Join(lines, "\n"+prefix) + "\n"
}
