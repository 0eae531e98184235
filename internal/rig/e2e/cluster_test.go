package e2e

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/allocator"
	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/internal/rig/netsim"
	"github.com/warmpool/warmpool/internal/rig/testenv"
	"github.com/warmpool/warmpool/manifests"
)

// cluster is the control plane, the bus and the allocator.
type cluster struct {
	t      *testing.T
	cp     *controlplane.ControlPlane
	kube   kubernetes.Interface
	nodes  listerscorev1.NodeLister
	client *client.Clientset
	nats   *broker.Server
	port   int
	alloc  *allocator.Allocator
	paths  []string
	// gcInterval is the agents' leak-GC period: the allocator's
	// GCInterval, which the tests set for both.
	gcInterval time.Duration
}

func i32(v int32) *int32 { return &v }

// dualPool has n pairs: 10.20.0.10... with fd00:20::10...
func dualPool(n int, warm *v1alpha1.Warm) *v1alpha1.IPPool {
	return &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "dual"},
		Spec: v1alpha1.IPPoolSpec{
			IPv4: &v1alpha1.Subnet{CIDR: "10.20.0.0/24", Gateway: "10.20.0.1",
				Ranges: []v1alpha1.IPRange{{Start: "10.20.0.10", End: fmt.Sprintf("10.20.0.%d", 10+n-1)}},
				Routes: []v1alpha1.Route{{Dst: "172.16.0.0/12"}}},
			IPv6: &v1alpha1.Subnet{CIDR: "fd00:20::/64", Gateway: "fd00:20::1",
				Ranges: []v1alpha1.IPRange{{Start: "fd00:20::10", End: "fd00:20::ffff"}}},
			Warm: warm,
		},
	}
}

func newCluster(t *testing.T, pool *v1alpha1.IPPool, opts ...func(*allocator.Config)) *cluster {
	t.Helper()
	cp := testenv.ControlPlane(t, controlplane.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := manifests.InstallCRDs(ctx, cp.RESTConfig()); err != nil {
		t.Fatal(err)
	}
	cs, err := client.New(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.IPPools().Create(ctx, pool, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, cp: cp, client: cs, kube: kubernetes.NewForConfigOrDie(cp.RESTConfig()), paths: []string{testenv.CNIPluginDir(t), testenv.PluginDir(t)}}
	factory := informers.NewSharedInformerFactory(c.kube, 0)
	c.nodes = factory.Core().V1().Nodes().Lister()
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	factory.Start(stop)
	factory.WaitForCacheSync(stop)
	c.startNATS(0)
	conn, err := broker.Connect(ctx, c.nats.ClientURL(), "allocator")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	cfg := allocator.Config{Client: cs, Bus: broker.NATS(conn), Kube: c.kube, Epoch: 1, Logger: testenv.Logger(t).With("component", "allocator")}
	for _, o := range opts {
		o(&cfg)
	}
	c.gcInterval = cmp.Or(cfg.GCInterval, agent.DefaultGCInterval)
	a, err := allocator.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	c.alloc = a
	return c
}

// startNATS starts the embedded server, on port if non-zero (a restart).
func (c *cluster) startNATS(port int) {
	c.t.Helper()
	srv, err := broker.StartServer(broker.ServerOptions{Port: port})
	if err != nil {
		c.t.Fatal(err)
	}
	c.nats = srv
	var p int
	if _, err := fmt.Sscanf(srv.ClientURL()[len("nats://127.0.0.1:"):], "%d", &p); err != nil {
		c.t.Fatalf("port of %s: %v", srv.ClientURL(), err)
	}
	c.port = p
	c.t.Cleanup(srv.Shutdown)
}

// node is a simulated node: host namespace, agent, socket, bus client.
type node struct {
	name   string
	host   *netsim.Host
	agent  *agent.Agent
	bus    *agent.Bus // for the agent's state endpoint's fencing
	store  *store.Store
	socket string
	cni    *libcni.CNIConfig
	chain  *libcni.NetworkConfigList
	// alone is the plugin on its own: IPAM without an interface, for
	// tests of addresses at scale.
	alone *libcni.NetworkConfigList
	// stop stops the agent (its socket, bus client and recycler), as if
	// the node died; idempotent.
	stop func()
}

func (c *cluster) addNode(name string, labels ...string) *node {
	t := c.t
	t.Helper()
	c.registerNode(name, labels...)
	n := &node{name: name, host: testenv.Host(t, name)}
	dir := t.TempDir()
	s, err := store.Open(filepath.Join(dir, "agent.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	n.store = s
	ctx, cancel := context.WithCancel(context.Background())
	// The node's pods for the leak GC, as the agent binary reads them; the
	// pool is the network config's (StaticResolver).
	pods := agent.NewInformerResolver(name, c.kube, c.client)
	if err := pods.Start(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{Node: name, Store: s, Logger: testenv.Logger(t).With("component", "agent"), MissTimeout: 5 * time.Second,
		Resolver: agent.StaticResolver{Known: map[string]bool{"dual": true}}, Pods: pods})
	if err != nil {
		t.Fatal(err)
	}
	n.agent = a
	conn, err := broker.Connect(ctx, c.nats.ClientURL(), "agent-"+name)
	if err != nil {
		t.Fatal(err)
	}
	bus := agent.NewBus(a, broker.NATS(conn), 0)
	n.bus = bus
	n.socket = filepath.Join(dir, "agent.sock")
	srv, err := agent.Listen(a, n.socket)
	if err != nil {
		t.Fatal(err)
	}
	served, bused := make(chan error, 1), make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	go func() { bused <- bus.Run(ctx) }()
	go a.RunRecycler(ctx)
	go a.RunLeakGC(ctx, c.gcInterval)
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			cancel()
			<-served
			<-bused
			conn.Close()
		})
	}
	t.Cleanup(n.stop)
	n.cni = testenv.CNI(t, c.paths...)
	if n.chain, err = libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"macvlan","master":%q,"mode":"bridge","ipam":{"type":"warmpool","pool":"dual","socket":%q}}]}`, netsim.Master, n.socket))); err != nil {
		t.Fatal(err)
	}
	if n.alone, err = libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"warmpool","ipam":{"type":"warmpool","pool":"dual","socket":%q}}]}`, n.socket))); err != nil {
		t.Fatal(err)
	}
	return n
}

// podRT is the runtime config of an API pod's sandbox for the plugin on
// its own: no namespace is entered, so none is made.
func podRT(p *corev1.Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: "sandbox-" + string(p.UID), NetNS: "/var/run/netns/none", IfName: "net1", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.Name}, {"K8S_POD_UID", string(p.UID)}}}
}

// addPod runs the plugin's ADD for an API pod, as the kubelet's runtime
// would once the pod is bound to this node.
func (n *node) addPod(ctx context.Context, p *corev1.Pod) (*types100.Result, error) {
	r, err := n.cni.AddNetworkList(ctx, n.alone, podRT(p))
	if err != nil {
		return nil, err
	}
	return types100.NewResultFromResult(r)
}

func (n *node) delPod(ctx context.Context, p *corev1.Pod) error {
	return n.cni.DelNetworkList(ctx, n.alone, podRT(p))
}

func (n *node) rt(ctr string, pod *netsim.Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: ctr, NetNS: pod.Path(), IfName: "eth0", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", ctr}, {"K8S_POD_UID", "uid-" + ctr}}}
}

// add creates a pod namespace and runs the chain's ADD into it.
func (n *node) add(ctx context.Context, ctr string) (*types100.Result, *netsim.Pod, error) {
	pod, err := n.host.NewPod(ctr)
	if err == nil {
		err = pod.DisableDAD()
	}
	if err != nil {
		return nil, nil, err
	}
	var res *types100.Result
	err = n.host.Do(func() error {
		r, err := n.cni.AddNetworkList(ctx, n.chain, n.rt(ctr, pod))
		if err == nil {
			res, err = types100.NewResultFromResult(r)
		}
		return err
	})
	return res, pod, err
}

// addAsRuntime is add as a container runtime does it: an ADD the runtime
// retries (asRuntime) has its sandbox torn down, DEL and namespace, and
// is tried again. It returns how many times it was.
func (n *node) addAsRuntime(ctx context.Context, ctr string) (*types100.Result, int, error) {
	var res *types100.Result
	var pod *netsim.Pod
	retries, err := asRuntime(ctx, func() (err error) {
		res, pod, err = n.add(ctx, ctr)
		return err
	}, func() error {
		if pod == nil {
			return nil
		}
		if err := n.del(ctx, ctr, pod); err != nil {
			return err
		}
		return n.host.RemovePod(pod)
	})
	return res, retries, err
}

// asRuntime runs add until it succeeds, fails for good or ctx ends, as a
// kubelet retries a sandbox: an ADD told to try again (11), or that the
// allocator did not answer in time (104: a slow machine, a round trip
// queued behind others), is undone (undo may be nil; an undo that fails
// is tried again, as a kubelet retries a teardown) and tried again.
// It returns how many times add was tried again. A test asserts what
// the ADDs got, not how soon: that is the benchmark's.
func asRuntime(ctx context.Context, add, undo func() error) (int, error) {
	retries := 0
	pause := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(500 * time.Millisecond):
			return true
		}
	}
	for {
		err := add()
		if err == nil || ctx.Err() != nil || !slices.Contains([]uint{wire.CodeTryAgainLater, wire.CodeMissTimeout}, testenv.CNICode(err)) {
			return retries, err
		}
		// A kubelet retries a teardown that failed (a DEL that timed out
		// on a starved machine) until it succeeds, before a new sandbox.
		for undo != nil {
			uerr := undo()
			if uerr == nil {
				break
			}
			if !pause() {
				return retries, fmt.Errorf("undo the failed ADD (%v): %w", err, uerr)
			}
		}
		retries++
		if !pause() {
			return retries, err
		}
	}
}

func (n *node) del(ctx context.Context, ctr string, pod *netsim.Pod) error {
	return n.host.Do(func() error { return n.cni.DelNetworkList(ctx, n.chain, n.rt(ctr, pod)) })
}

// waitWarm waits until the node's agent holds want warm units.
func (n *node) waitWarm(t *testing.T, want int) {
	t.Helper()
	n.waitWarmWhere(t, fmt.Sprint(want), func(warm int) bool { return warm == want })
}

// waitWarmAtLeast waits until the node holds at least min warm units of
// the pool: the headroom above known pods is topped up in batches.
func (n *node) waitWarmAtLeast(t *testing.T, min int) {
	t.Helper()
	n.waitWarmWhere(t, fmt.Sprintf("at least %d", min), func(warm int) bool { return warm >= min })
}

func (n *node) waitWarmWhere(t *testing.T, want string, ok func(warm int) bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		return ok(n.agent.WarmCount("dual")), nil
	})
	if err != nil {
		t.Fatalf("node %s: %d warm, want %s", n.name, n.agent.WarmCount("dual"), want)
	}
}

// waitSynced waits until the node's agent has synced with the allocator
// and may use its warm units.
func (n *node) waitSynced(t *testing.T) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return n.bus.Fencing() == nil, nil
	})
	if err != nil {
		t.Fatalf("node %s never synced: %v", n.name, n.bus.Fencing())
	}
}

// leases reads every NodeLease of the pool, by node.
func (c *cluster) leases(ctx context.Context) (map[string]*v1alpha1.NodeLease, error) {
	list, err := c.client.NodeLeases().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]*v1alpha1.NodeLease{}
	for i := range list.Items {
		out[list.Items[i].Spec.Node] = &list.Items[i]
	}
	return out, nil
}

// waitAgree waits until the allocator's persisted record and the agents'
// agree (agree). A lease may list a unit whose grant the agent never got
// (the answer to a miss it had stopped waiting for): its next sync brings
// it, and waitAgree asks the agents for one every second rather than
// wait for their periodic sync.
func (c *cluster) waitAgree(t *testing.T, nodes ...*node) {
	t.Helper()
	var last error
	polls := 0
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		if polls++; polls%20 == 0 {
			for _, n := range nodes {
				if n.bus != nil {
					n.bus.Resync()
				}
			}
		}
		last = c.agree(ctx, nodes...)
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("allocator and agents disagree: %v", last)
	}
}

// agree checks the persisted record against the agents': no unit in two
// leases; each node's lease lists exactly the units its agent holds
// (warm, cooling or assigned: the lease says only which node holds a
// unit); and in each agent's record, the assigned units are exactly
// those of its assignments, to the same attachments (which unit is
// assigned to which pod is the agent's fact alone).
func (c *cluster) agree(ctx context.Context, nodes ...*node) error {
	leases, err := c.leases(ctx)
	if err != nil {
		return err
	}
	holder := map[string]string{}
	for node, l := range leases {
		for _, u := range l.Spec.Units {
			if h, ok := holder[u.ID()]; ok {
				return fmt.Errorf("unit %s in the leases of %s and %s", u.ID(), h, node)
			}
			holder[u.ID()] = node
		}
	}
	for _, n := range nodes {
		st, err := n.record()
		if err != nil {
			return err
		}
		leased := map[string]bool{}
		if l := leases[n.name]; l != nil {
			for _, u := range l.Spec.Units {
				leased[u.ID()] = true
			}
		}
		assignedTo := map[string]string{} // unit -> attachment, assigned ones
		for _, u := range st.Units {
			if !leased[u.ID] {
				return fmt.Errorf("node %s holds %s (%s %s) that its lease does not list", n.name, u.ID, u.State, u.Attachment)
			}
			delete(leased, u.ID)
			if u.State == store.Assigned {
				assignedTo[u.ID] = u.Attachment
			}
		}
		if len(leased) > 0 {
			return fmt.Errorf("the lease of node %s lists %v, which its agent does not hold", n.name, slices.Sorted(maps.Keys(leased)))
		}
		assignments := map[string]string{}
		for _, a := range st.Assignments {
			assignments[a.UnitID] = a.Attachment
		}
		if !maps.Equal(assignedTo, assignments) {
			return fmt.Errorf("node %s: its record has units assigned %v, assignments %v", n.name, assignedTo, assignments)
		}
	}
	return nil
}

// record is the node agent's record, as it serves it on /state.
func (n *node) record() (*agent.State, error) {
	return n.agent.State(n.bus.Fencing)
}

// recordCounts counts the units the node's agent holds, by its record:
// the assigned ones and the others (warm or cooling).
func (n *node) recordCounts() (unassigned, assigned int, err error) {
	st, err := n.record()
	if err != nil {
		return 0, 0, err
	}
	for _, u := range st.Units {
		if u.State == store.Assigned {
			assigned++
		} else {
			unassigned++
		}
	}
	return unassigned, assigned, nil
}

// assignment returns an agent record's assignment of an attachment
// ("<containerID>/<ifname>").
func assignment(st *agent.State, attachment string) (store.Assignment, bool) {
	i := slices.IndexFunc(st.Assignments, func(a store.Assignment) bool { return a.Attachment == attachment })
	if i < 0 {
		return store.Assignment{}, false
	}
	return st.Assignments[i], true
}

// leasedIDs returns the units a node's NodeLease lists, sorted; none when
// it has no lease.
func (c *cluster) leasedIDs(ctx context.Context, node string) ([]string, error) {
	leases, err := c.leases(ctx)
	if err != nil {
		return nil, err
	}
	var ids []string
	if l := leases[node]; l != nil {
		for _, u := range l.Spec.Units {
			ids = append(ids, u.ID())
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// lists says whether a NodeLease (nil: none) lists the unit id.
func lists(l *v1alpha1.NodeLease, id string) bool {
	return l != nil && slices.ContainsFunc(l.Spec.Units, func(u v1alpha1.LeasedUnit) bool { return u.ID() == id })
}

// metric returns the value of a counter or gauge in a registry, summed
// over the series whose labels include want.
func metric(t *testing.T, g prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// registerNode creates a Ready Node object with labels ("k=v") and waits
// until the allocator's node informer has it.
func (c *cluster) registerNode(name string, kv ...string) {
	t := c.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lbl := map[string]string{}
	for _, s := range kv {
		k, v, _ := strings.Cut(s, "=")
		lbl[k] = v
	}
	if err := controlplane.RegisterNode(ctx, c.kube, name, lbl); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextCancel(ctx, 10*time.Millisecond, true, func(context.Context) (bool, error) {
		n, err := c.nodes.Get(name)
		return err == nil && len(n.Status.Conditions) > 0, nil
	}); err != nil {
		t.Fatalf("node %s never reached the informer: %v", name, err)
	}
}

// own records that res's addresses went to name, failing on one given
// before. The caller serialises calls.
func own(t *testing.T, owner map[netip.Addr]string, res *types100.Result, name string) {
	t.Helper()
	for _, ip := range res.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		a = a.Unmap()
		if prev, ok := owner[a]; ok {
			t.Errorf("%s given to %s and %s", a, prev, name)
		}
		owner[a] = name
	}
}
