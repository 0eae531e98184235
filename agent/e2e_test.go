package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/internal/rig/netsim"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// node is one simulated node: a host namespace, an agent serving its
// socket, and a libcni runtime that execs the real plugins from inside the
// host namespace, as a container runtime on that node would.
type node struct {
	host   *netsim.Host
	agent  *agent.Agent
	socket string
	cni    *libcni.CNIConfig
	chain  *libcni.NetworkConfigList // macvlan + warmpool
	alone  *libcni.NetworkConfigList // warmpool as the only plugin, to reach its GC and STATUS
}

var dual = store.Pool{Name: "dual", Prefix4: 24, Prefix6: 64, Gateway4: "10.10.0.1", Gateway6: "fd00:10::1",
	Routes: []store.Route{{Dst: "172.16.0.0/12", GW: "10.10.0.254"}}}

// unitsFrom returns n dual-stack units starting at host number first.
func unitsFrom(first, n int) []store.Unit {
	us := make([]store.Unit, n)
	for i := range us {
		v4 := fmt.Sprintf("10.10.0.%d", first+i)
		us[i] = store.Unit{Pool: "dual", ID: v4, IPv4: v4, IPv6: fmt.Sprintf("fd00:10::%x", first+i)}
	}
	return us
}

func newNode(t *testing.T, name string, units []store.Unit) *node {
	t.Helper()
	host := testenv.Host(t, name)
	paths := []string{testenv.CNIPluginDir(t), testenv.PluginDir(t)}
	dir := t.TempDir()
	s, err := store.Open(filepath.Join(dir, "agent.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	a, err := agent.New(agent.Config{Node: name, Store: s, Logger: slog.New(slog.DiscardHandler),
		Resolver: agent.StaticResolver{Known: map[string]bool{"dual": true}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Grant(dual, units, 0); err != nil {
		t.Fatal(err)
	}
	n := &node{host: host, agent: a, socket: filepath.Join(dir, "run", "agent.sock")}
	srv, err := agent.Listen(a, n.socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	n.cni = testenv.CNI(t, paths...)
	ipam := fmt.Sprintf(`{"type":"warmpool","pool":"dual","socket":%q}`, n.socket)
	n.chain = macvlanChain(t, ipam)
	if n.alone, err = libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"warmpool","ipam":` + ipam + `}]}`)); err != nil {
		t.Fatal(err)
	}
	return n
}

// macvlanChain is the network a node runs: macvlan on the host
// namespace's master, with ipam (a JSON object) as its IPAM section.
func macvlanChain(t testing.TB, ipam string) *libcni.NetworkConfigList {
	t.Helper()
	l, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"macvlan","master":"` +
		netsim.Master + `","mode":"bridge","ipam":` + ipam + `}]}`))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func runtimeConf(ctr string, pod *netsim.Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: ctr, NetNS: pod.Path(), IfName: "eth0", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "pod-" + ctr}, {"K8S_POD_UID", "uid-" + ctr},
	}}
}

func (n *node) pod(t *testing.T, name string) *netsim.Pod {
	t.Helper()
	p, err := n.host.NewPod(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.DisableDAD(); err != nil {
		t.Fatal(err)
	}
	return p
}

func (n *node) add(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (*types100.Result, error) {
	var res *types100.Result
	err := n.host.Do(func() error {
		r, err := n.cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	return res, err
}

func (n *node) del(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return n.host.Do(func() error { return n.cni.DelNetworkList(ctx, list, rt) })
}

func ips(r *types100.Result) []string {
	var out []string
	for _, ip := range r.IPs {
		out = append(out, ip.Address.String())
	}
	return out
}

// TestDataPathThroughLibcni drives the real plugin binary through libcni,
// chained behind the real macvlan plugin, into a real pod namespace.
func TestDataPathThroughLibcni(t *testing.T) {
	n := newNode(t, "node-1", unitsFrom(10, 4))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pod := n.pod(t, "web-0")
	rt := runtimeConf("c1", pod)

	res, err := n.add(ctx, n.chain, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if got := ips(res); fmt.Sprint(got) != "[10.10.0.10/24 fd00:10::a/64]" {
		t.Fatalf("ADD gave %v, want the pair 10.10.0.10/24 fd00:10::a/64", got)
	}
	if res.IPs[0].Gateway.String() != "10.10.0.1" || res.IPs[1].Gateway.String() != "fd00:10::1" {
		t.Errorf("gateways %v %v", res.IPs[0].Gateway, res.IPs[1].Gateway)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "172.16.0.0/12" {
		t.Errorf("routes %v", res.Routes)
	}
	out, err := exec.Command("ip", "-n", pod.Name, "addr", "show", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "10.10.0.10/24") || !strings.Contains(string(out), "fd00:10::a/64") {
		t.Fatalf("the pod's eth0 lacks the pair (%v):\n%s", err, out)
	}

	// ADD again for the same container: the plugin alone (macvlan would
	// refuse a second eth0) answers the same pair. Its own result cache
	// keeps the chain's cached result, which CHECK compares against, intact.
	var again *types100.Result
	other := testenv.CNI(t, n.cni.Path...)
	err = n.host.Do(func() error {
		r, err := other.AddNetworkList(ctx, n.alone, rt)
		if err == nil {
			again, err = types100.NewResultFromResult(r)
		}
		return err
	})
	if err != nil || fmt.Sprint(ips(again)) != fmt.Sprint(ips(res)) {
		t.Fatalf("second ADD: %v %v, want %v", err, again, ips(res))
	}
	if err := n.host.Do(func() error { return n.cni.CheckNetworkList(ctx, n.chain, rt) }); err != nil {
		t.Fatalf("CHECK of a live attachment: %v", err)
	}

	// DEL twice, and DEL of a container never added.
	for i := range 2 {
		if err := n.del(ctx, n.chain, rt); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if err := n.del(ctx, n.alone, runtimeConf("never-added", pod)); err != nil {
		t.Fatalf("DEL of an unknown container: %v", err)
	}
}

// TestCheckDetectsALostAssignment: the runtime still has its cached result,
// but the agent no longer holds the attachment.
func TestCheckDetectsALostAssignment(t *testing.T) {
	n := newNode(t, "node-1", unitsFrom(10, 2))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pod := n.pod(t, "web-0")
	rt := runtimeConf("c1", pod)
	if _, err := n.add(ctx, n.chain, rt); err != nil {
		t.Fatal(err)
	}
	// Free it behind the runtime's back, as a GC of a confused runtime would.
	if resp := n.agent.Handle(ctx, &wire.Request{Op: wire.OpDel, Attachment: wire.Attachment{ContainerID: "c1", IfName: "eth0"}}); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	err := n.host.Do(func() error { return n.cni.CheckNetworkList(ctx, n.chain, rt) })
	if err == nil || testenv.CNICode(err) != wire.CodeCheckMismatch {
		t.Fatalf("CHECK after the assignment was lost: %v, want code %d", err, wire.CodeCheckMismatch)
	}
}

// TestGCAndStatus reaches the plugin's GC and STATUS (macvlan passes
// neither on, so warmpool runs alone here).
func TestGCAndStatus(t *testing.T) {
	n := newNode(t, "node-1", unitsFrom(10, 3))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pod := n.pod(t, "p")
	for _, c := range []string{"c1", "c2", "c3"} {
		if _, err := n.add(ctx, n.alone, runtimeConf(c, pod)); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.host.Do(func() error { return n.cni.GetStatusNetworkList(ctx, n.alone) }); err == nil || testenv.CNICode(err) != wire.CodeNotAvailable {
		t.Fatalf("STATUS with every unit assigned and no allocator: %v, want code %d", err, wire.CodeNotAvailable)
	}
	// A fresh cache dir: libcni would otherwise DEL from its own cache first
	// and the plugin's GC would have nothing left to do.
	gcCNI := testenv.CNI(t, n.cni.Path...)
	valid := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "c2", IfName: "eth0"}}}
	if err := n.host.Do(func() error { return gcCNI.GCNetworkList(ctx, n.alone, valid) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := n.agent.WarmCount("dual"); got != 0 {
		t.Fatalf("warm right after GC = %d, want 0 (released units cool first)", got)
	}
	n.agent.Recycle(time.Now().Add(agent.DefaultReuseDelay))
	if got := n.agent.WarmCount("dual"); got != 2 {
		t.Fatalf("warm after GC and cooling = %d, want 2 (c1 and c3 freed, c2 kept)", got)
	}
	if err := n.host.Do(func() error { return n.cni.GetStatusNetworkList(ctx, n.alone) }); err != nil {
		t.Fatalf("STATUS with warm units: %v", err)
	}
}

// TestAgentAbsent: no agent on the socket. ADD fails with "try again
// later", STATUS with "not available", and nothing is left in the pod.
func TestAgentAbsent(t *testing.T) {
	n := newNode(t, "node-1", nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := os.Remove(n.socket); err != nil {
		t.Fatal(err)
	}
	pod := n.pod(t, "p")
	rt := runtimeConf("c1", pod)
	_, err := n.add(ctx, n.chain, rt)
	if err == nil || testenv.CNICode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "not running on this node") {
		t.Fatalf("ADD without an agent: %v", err)
	}
	if err := n.host.Do(func() error { return n.cni.GetStatusNetworkList(ctx, n.alone) }); err == nil || testenv.CNICode(err) != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS without an agent: %v", err)
	}
	// macvlan leaves eth0 behind when the IPAM fails; the runtime's DEL
	// (which the plugin answers "try again" too) would remove it. The pod
	// namespace goes with the test either way.
}

// TestConcurrentAddsOnTwoNodes: 2 nodes x 50 concurrent ADDs through the
// real plugins against a 100-pair pool split between them: 100 distinct
// pairs, none on both nodes.
func TestConcurrentAddsOnTwoNodes(t *testing.T) {
	nodes := []*node{newNode(t, "node-a", unitsFrom(10, 50)), newNode(t, "node-b", unitsFrom(60, 50))}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var mu sync.Mutex
	owner := map[string]string{}
	var wg sync.WaitGroup
	start := time.Now()
	for ni, n := range nodes {
		for i := range 50 {
			wg.Go(func() {
				pod, err := n.host.NewPod(fmt.Sprintf("p%d", i))
				if err == nil {
					err = pod.DisableDAD()
				}
				if err != nil {
					t.Error(err)
					return
				}
				res, err := n.add(ctx, n.chain, runtimeConf(fmt.Sprintf("n%d-c%d", ni, i), pod))
				if err != nil {
					t.Errorf("node %d ADD %d: %v", ni, i, err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, ip := range ips(res) {
					if prev, ok := owner[ip]; ok {
						t.Errorf("%s given to %s and to node %d pod %d", ip, prev, ni, i)
					}
					owner[ip] = fmt.Sprintf("node %d pod %d", ni, i)
				}
			})
		}
	}
	wg.Wait()
	if len(owner) != 200 {
		t.Fatalf("%d distinct addresses, want 200 (100 pairs)", len(owner))
	}
	elapsed := time.Since(start)
	var all []string
	for ip := range owner {
		all = append(all, ip)
	}
	sort.Strings(all)
	t.Logf("100 ADDs through macvlan + warmpool on 2 nodes in %s (%.1f ADD/s)", elapsed.Round(time.Millisecond), 100/elapsed.Seconds())
}
