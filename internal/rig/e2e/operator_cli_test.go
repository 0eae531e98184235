package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/allocator"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/internal/inspect"
	"github.com/warmpool/warmpool/internal/rig/testenv"
	"github.com/warmpool/warmpool/manifests"
)

// TestOperatorCLI runs the built kubectl-warmpool against the rig: a real
// apiserver, the allocator, four agents and the real plugin through
// libcni, 100 pods (a quarter of them reporting their address the way
// Multus does, in the network-status annotation). One agent is reached
// the way a cluster's are, through the apiserver's pod proxy to an agent
// Pod (served on this machine's first non-loopback address: the apiserver
// refuses to proxy to loopback); the others by --agent NODE=URL. The
// CLI's pools, nodes, where and leases must match the records, and
// doctor must find nothing and exit 0. Then the test breaks the records
// one way at a time (a pod force-deleted without a DEL, a NodeLease
// listing a unit its agent does not hold, a pod reporting an address no
// record assigns, an agent stopped) and doctor must name each and exit
// non-zero. The CLI's outputs are logged (go test -v shows them).
func TestOperatorCLI(t *testing.T) {
	const pods, nodesN = 100, 4
	bin := testenv.Binary(t, "kubectl-warmpool")
	// The leak must stay until doctor sees it: no GC pass in the test.
	// maxWarm 12 on 4 nodes leaves units free after the 100 pods (the
	// test edits a lease to list one): with the default 64, the burst's
	// pace could park the whole pool on the nodes as headroom.
	c := newCluster(t, dualPool(160, &v1alpha1.Warm{MinWarm: i32(2), WarmTarget: i32(4), MaxWarm: i32(12)}), func(cfg *allocator.Config) { cfg.GCInterval = time.Hour })
	var nodes []*node
	for i := range nodesN {
		nodes = append(nodes, c.addNode(fmt.Sprintf("op-%d", i)))
	}
	for _, n := range nodes {
		n.waitWarm(t, 4)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	holdElection(t, c)

	// The agents' metrics ports: op-0's behind an agent Pod and the pod
	// proxy, the others by URL.
	proxied := nodes[0]
	agentURLs := map[string]string{}
	servers := map[string]func(){}
	for i, n := range nodes {
		host := "127.0.0.1"
		if i == 0 {
			host = nonLoopbackAddr(t)
		}
		url, stop := serveAgent(t, n, host)
		servers[n.name] = stop
		if i == 0 {
			createAgentPod(t, ctx, c, proxied.name, url)
			continue
		}
		agentURLs[n.name] = url
	}
	cli := func(args ...string) (string, int) {
		t.Helper()
		// --gc-interval: the CLI cannot know the allocator's, and says
		// how soon a leak is reclaimed from it.
		full := append([]string{"--kubeconfig", c.cp.Kubeconfig(), "--gc-interval", "1h"}, args...)
		for node, u := range agentURLs {
			full = append(full, "--agent", node+"="+u)
		}
		out, errOut, code := testenv.RunCLI(t, ctx, bin, full...)
		if code == inspect.ExitFailed {
			t.Fatalf("kubectl-warmpool %s failed: %s%s", strings.Join(args, " "), out, errOut)
		}
		return out, code
	}

	created, owner := c.burst(t, ctx, "op", pods, func(i int) *node { return nodes[i%nodesN] })
	reportAddresses(t, ctx, c, created, owner)
	c.waitAgree(t, nodes...)
	waitStatusMatchesRecords(t, ctx, c, nodes, pods)

	// pools
	out, code := cli("pools")
	t.Logf("$ kubectl warmpool pools\n%s", out)
	out, _ = cli("pools", "-o", "wide")
	t.Logf("$ kubectl warmpool pools -o wide\n%s", out)
	var poolRows []inspect.PoolRow
	jsonOut(t, cli, &poolRows, "pools", "-o", "json")
	if code != 0 || len(poolRows) != 1 {
		t.Fatalf("pools: exit %d, rows %+v", code, poolRows)
	}
	// The leases say which units the nodes hold, not which are assigned:
	// of those, the status's assigned are the agents' (pods, as
	// waitStatusMatchesRecords saw), the rest warm.
	p := poolRows[0]
	if p.Assigned != pods || p.Pending != 0 || p.Warm != p.Leased-pods || p.Free != p.Total-p.Leased ||
		p.Total != 160 || p.Ready != "True" || p.LeaseNodes != nodesN || p.HitRate == nil {
		t.Errorf("pools: %+v", p)
	}

	// nodes
	out, code = cli("nodes")
	t.Logf("$ kubectl warmpool nodes\n%s", out)
	out, _ = cli("nodes", "-o", "wide")
	t.Logf("$ kubectl warmpool nodes -o wide\n%s", out)
	var nodeRows []inspect.NodeRow
	jsonOut(t, cli, &nodeRows, "nodes", "-o", "json")
	if code != 0 || len(nodeRows) != nodesN {
		t.Fatalf("nodes: exit %d, rows %+v", code, nodeRows)
	}
	for _, r := range nodeRows {
		// The lease lists the node's units, the agent says which are
		// assigned.
		if r.Leased == nil || r.Agent == nil || r.AgentStatus != "ok" || r.NodeReady != "True" ||
			r.Agent.Warm+r.Agent.Assigned+r.Agent.Cooling != *r.Leased || r.Agent.Assigned != pods/nodesN {
			t.Errorf("nodes: %+v (agent %+v)", r, r.Agent)
		}
		if r.Node == proxied.name && !strings.HasPrefix(r.AgentSource, "pod kube-system/warmpool-agent-") {
			t.Errorf("%s's agent read from %q, not through its pod", r.Node, r.AgentSource)
		}
	}

	// where: an address reported in podIPs, and one in network-status.
	for _, i := range []int{1, 4} {
		pod := created[i]
		addr := addressOf(t, owner, pod.Name)
		out, code = cli("where", addr)
		t.Logf("$ kubectl warmpool where %s\n%s", addr, out)
		var loc inspect.Location
		jsonOut(t, cli, &loc, "where", addr, "-o", "json")
		src := "status.podIPs"
		if multus(i) {
			src = "network-status"
		}
		// The pod is the agent's record's; the lease is its node's.
		if code != 0 || len(loc.Leases) != 1 || loc.Leases[0].Node != pod.Spec.NodeName || len(loc.Agents) != 1 ||
			loc.Agents[0].Node != pod.Spec.NodeName || loc.Agents[0].Pod == nil || loc.Agents[0].Pod.Name != pod.Name ||
			len(loc.Pods) != 1 || loc.Pods[0].Name != pod.Name || !strings.Contains(loc.Pods[0].Source, src) || len(loc.Disagreements) != 0 {
			t.Errorf("where %s (pod %s): exit %d, %+v", addr, pod.Name, code, loc)
		}
	}
	out, _ = cli("where", "10.20.0.3")
	t.Logf("$ kubectl warmpool where 10.20.0.3\n%s", out)
	if !strings.Contains(out, "outside the pool's ranges") {
		t.Errorf("where 10.20.0.3: %s", out)
	}

	// leases
	out, code = cli("leases")
	t.Logf("$ kubectl warmpool leases\n%s", out)
	var leases inspect.LeasesReport
	jsonOut(t, cli, &leases, "leases", "-o", "json")
	if code != 0 || !leases.Election.Found || leases.Election.Holder != "e2e-allocator" || leases.Election.DerivedEpoch != 1 ||
		leases.Election.Expired || len(leases.NodeLeases) != nodesN {
		t.Errorf("leases: exit %d, %+v", code, leases)
	}
	for _, l := range leases.NodeLeases {
		if l.Epoch != 1 || len(l.Flags) != 0 {
			t.Errorf("NodeLease %+v", l)
		}
	}

	// doctor, on a healthy cluster
	out, code = cli("doctor")
	t.Logf("$ kubectl warmpool doctor\n%s", out)
	if code != 0 || !strings.Contains(out, "no problem found") {
		t.Fatalf("doctor on a healthy cluster: exit %d", code)
	}

	// The same as an operator bound to rbac/operator.yaml's roles (the
	// admin impersonating a member of warmpool-operators): the role must
	// be enough for every read, the pod proxy to op-0's agent included.
	if err := manifests.InstallRBAC(ctx, c.kube); err != nil {
		t.Fatal(err)
	}
	out, code = cli("doctor", "--as", "alice", "--as-group", "warmpool-operators")
	t.Logf("$ kubectl warmpool doctor --as alice --as-group warmpool-operators\n%s", out)
	if code != 0 || !strings.Contains(out, "no problem found") || !strings.Contains(out, "4 agents (4 read") {
		t.Fatalf("doctor with the operator's role: exit %d", code)
	}

	// 1. A pod force-deleted, its sandbox never DEL'd: a leak (warning).
	leaked := created[5]
	if err := c.kube.CoreV1().Pods(leaked.Namespace).Delete(ctx, leaked.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	r := doctor(t, cli, "after a pod was force-deleted without a DEL", inspect.ExitWarnings, inspect.KindLeakPodGone)
	if f := find(r, inspect.KindLeakPodGone); f.Pod != "default/"+leaked.Name || !strings.Contains(f.Action, "2h0m0s") {
		t.Errorf("leak finding %+v", f)
	}
	out, _ = cli("where", addressOf(t, owner, leaked.Name))
	t.Logf("$ kubectl warmpool where %s   # the leaked address\n%s", addressOf(t, owner, leaked.Name), out)
	if !strings.Contains(out, "default/"+leaked.Name+", which is gone: a leak") {
		t.Errorf("where does not call the leaked address a leak")
	}

	// 2. The allocator stopped (so nothing repairs the lease), then a
	// NodeLease edited to list a free unit its agent does not hold, and
	// a pod reporting a free address no record assigns (errors).
	c.alloc.Stop()
	free := freeUnits(t, ctx, c, 2)
	victim := nodes[1]
	if err := editLease(ctx, c, victim.name, func(l *v1alpha1.NodeLease) {
		l.Spec.Units = append(l.Spec.Units, v1alpha1.LeasedUnit{IPv4: free[0][0], IPv6: free[0][1]})
	}); err != nil {
		t.Fatal(err)
	}
	stray, err := c.kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "stray", Namespace: "default"},
		Spec:       corev1.PodSpec{NodeName: nodes[2].name, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/c:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setPodStatus(t, ctx, c, stray, []string{free[1][0]})
	r = doctor(t, cli, "after a NodeLease was edited and a pod reports an unrecorded address", inspect.ExitErrors,
		inspect.KindLeakPodGone, inspect.KindLeaseUnitNotHeld, inspect.KindUnrecordedPodAddress)
	if f := find(r, inspect.KindLeaseUnitNotHeld); f.Node != victim.name || f.Unit != free[0][0] {
		t.Errorf("lease finding %+v", f)
	}

	// 3. An agent stopped: unreachable (error).
	down := nodes[3]
	servers[down.name]()
	down.stop()
	r = doctor(t, cli, "after an agent stopped", inspect.ExitErrors,
		inspect.KindLeakPodGone, inspect.KindLeaseUnitNotHeld, inspect.KindUnrecordedPodAddress, inspect.KindAgentUnreachable)
	if f := find(r, inspect.KindAgentUnreachable); f.Node != down.name {
		t.Errorf("unreachable finding %+v", f)
	}
	out, _ = cli("nodes")
	t.Logf("$ kubectl warmpool nodes   # with %s's agent stopped\n%s", down.name, out)
}

// multus says which of the burst's pods report their address as Multus
// does (network-status), the others as the test rig's kubelet does
// (status.podIPs).
func multus(i int) bool { return i%4 == 0 }

// holdElection holds the allocator's election Lease for the test, as the
// allocator binary would (allocator.RunLeader): the in-process allocator
// serves at epoch 1, which is what the Lease's first term derives.
func holdElection(t *testing.T, c *cluster) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	led := make(chan uint64, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = allocator.RunLeader(ctx, c.kube, allocator.Election{Namespace: "kube-system", Name: "warmpool-allocator", Identity: "e2e-allocator"},
			func(ctx context.Context, epoch uint64) error {
				led <- epoch
				<-ctx.Done()
				return nil
			})
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case e := <-led:
		if e != 1 {
			t.Fatalf("the election's first term has epoch %d, want 1", e)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("never took the election Lease")
	}
}

// serveAgent serves an agent's /state and /metrics on host, as the agent
// binary does on its metrics port, and returns its URL and a stop
// function.
func serveAgent(t *testing.T, n *node, host string) (string, func()) {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(n.agent.Registry(), promhttp.HandlerOpts{}))
	mux.Handle(agent.StatePath, n.agent.StateHandler(n.bus.Fencing))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	var once sync.Once
	stop := func() { once.Do(func() { _ = srv.Close() }) }
	t.Cleanup(stop)
	return "http://" + l.Addr().String(), stop
}

// nonLoopbackAddr returns this machine's first global unicast address:
// the apiserver proxies to a pod only at such an address (the pod
// registry's ResourceLocation refuses others).
func nonLoopbackAddr(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var v6 string
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || !p.Addr().IsGlobalUnicast() {
			continue
		}
		if p.Addr().Is4() {
			return p.Addr().String()
		}
		if v6 == "" {
			v6 = p.Addr().String()
		}
	}
	if v6 == "" {
		testenv.Missing(t, "no non-loopback address on this machine: the apiserver's pod proxy cannot reach an agent on loopback")
	}
	return v6
}

// createAgentPod creates the agent Pod the CLI finds on node, as the
// DaemonSet would: labelled app.kubernetes.io/name=warmpool-agent, a
// container port named metrics, Running at the address url serves on.
func createAgentPod(t *testing.T, ctx context.Context, c *cluster, node, url string) {
	t.Helper()
	host, port, err := net.SplitHostPort(strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	p, err := c.kube.CoreV1().Pods("kube-system").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "warmpool-agent-" + node, Namespace: "kube-system",
			Labels: map[string]string{"app.kubernetes.io/name": "warmpool-agent"}},
		// hostNetwork as the DaemonSet's (manifests/deploy): the
		// allocator counts no demand for it.
		Spec: corev1.PodSpec{NodeName: node, HostNetwork: true, Containers: []corev1.Container{{Name: "agent", Image: "registry.invalid/warmpool-agent:1",
			Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: int32(n)}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setPodStatus(t, ctx, c, p, []string{host})
}

// setPodStatus marks a pod Running with ips, as a kubelet would.
func setPodStatus(t *testing.T, ctx context.Context, c *cluster, p *corev1.Pod, ips []string) {
	t.Helper()
	st := map[string]any{"phase": "Running"}
	if len(ips) > 0 {
		var podIPs []map[string]string
		for _, ip := range ips {
			podIPs = append(podIPs, map[string]string{"ip": ip})
		}
		st["podIP"], st["podIPs"] = ips[0], podIPs
	}
	body, _ := json.Marshal(map[string]any{"status": st})
	if _, err := c.kube.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, body, metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("status of %s: %v", p.Name, err)
	}
}

// reportAddresses makes each pod report its warmpool addresses: in
// status.podIPs, or (multus) in the network-status annotation with a
// primary address of another network in podIPs.
func reportAddresses(t *testing.T, ctx context.Context, c *cluster, created []*corev1.Pod, owner map[netip.Addr]string) {
	t.Helper()
	byPod := map[string][]string{}
	for a, name := range owner {
		byPod[name] = append(byPod[name], a.String())
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 20)
	for i, p := range created {
		ips := byPod[p.Name]
		slices.SortFunc(ips, func(a, b string) int { return strings.Count(a, ":") - strings.Count(b, ":") }) // IPv4 first
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if !multus(i) {
				setPodStatus(t, ctx, c, p, ips)
				return
			}
			ns, _ := json.Marshal([]map[string]any{
				{"name": "cbr0", "interface": "eth0", "ips": []string{fmt.Sprintf("10.244.0.%d", i+2)}, "default": true},
				{"name": "default/underlay", "interface": "net1", "ips": ips},
			})
			body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{inspect.NetworkStatusAnnotation: string(ns)}}})
			if _, err := c.kube.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
				t.Errorf("annotate %s: %v", p.Name, err)
				return
			}
			setPodStatus(t, ctx, c, p, []string{fmt.Sprintf("10.244.0.%d", i+2)})
		})
	}
	wg.Wait()
}

// waitStatusMatchesRecords waits until the pool's status (written every
// 5 s when a count changed) has caught up with the records: the leases
// for the units the nodes hold, the agents' records for which of those
// are assigned (want of them, every pod's), and no pod pending. A round
// planned before the agents' last reports counts the pods they had not
// reported yet as pending, and the status can carry that count for up to
// 5 s after the other counts are right.
func waitStatusMatchesRecords(t *testing.T, ctx context.Context, c *cluster, nodes []*node, want int64) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.client.IPPools().Get(ctx, "dual", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		leases, err := c.leases(ctx)
		if err != nil {
			return false, nil
		}
		var held, assigned int64
		for _, l := range leases {
			held += int64(len(l.Spec.Units))
		}
		for _, n := range nodes {
			_, a, err := n.recordCounts()
			if err != nil {
				return false, nil
			}
			assigned += int64(a)
		}
		st := p.Status
		last = fmt.Sprintf("status %+v; leases hold %d, agents assign %d (want %d)", st, held, assigned, want)
		return assigned == want && st.Assigned == assigned && st.Warm == held-assigned && st.Free == st.Total-held && st.Pending == 0, nil
	})
	if err != nil {
		t.Fatalf("pool status never matched the records: %s", last)
	}
}

// freeUnits returns n units of the pool in no lease, as [ipv4, ipv6].
func freeUnits(t *testing.T, ctx context.Context, c *cluster, n int) [][2]string {
	t.Helper()
	p, err := c.client.IPPools().Get(ctx, "dual", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pu, err := allocator.Enumerate(p.Spec)
	if err != nil {
		t.Fatal(err)
	}
	leases, err := c.leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]bool{}
	for _, l := range leases {
		for _, u := range l.Spec.Units {
			held[u.IPv4] = true
		}
	}
	var out [][2]string
	for i := len(pu.Units) - 1; i >= 0 && len(out) < n; i-- {
		if u := pu.Units[i]; !held[u.IPv4.String()] {
			out = append(out, [2]string{u.IPv4.String(), u.IPv6.String()})
		}
	}
	if len(out) < n {
		t.Fatalf("only %d free units", len(out))
	}
	return out
}

func editLease(ctx context.Context, c *cluster, node string, edit func(*v1alpha1.NodeLease)) error {
	leases, err := c.leases(ctx)
	if err != nil {
		return err
	}
	l := leases[node]
	if l == nil {
		return fmt.Errorf("no NodeLease of %s", node)
	}
	edit(l)
	_, err = c.client.NodeLeases().Update(ctx, l, metav1.UpdateOptions{})
	return err
}

func addressOf(t *testing.T, owner map[netip.Addr]string, pod string) string {
	t.Helper()
	for a, name := range owner {
		if name == pod && a.Is4() {
			return a.String()
		}
	}
	t.Fatalf("no IPv4 address of %s", pod)
	return ""
}

func jsonOut(t *testing.T, cli func(...string) (string, int), v any, args ...string) {
	t.Helper()
	out, _ := cli(args...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("kubectl warmpool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// doctor runs doctor, logs its output, and wants the exit code and at
// least the finding kinds given (and no other kind).
func doctor(t *testing.T, cli func(...string) (string, int), when string, wantCode int, wantKinds ...string) inspect.DoctorReport {
	t.Helper()
	out, code := cli("doctor", "--recheck=2s")
	t.Logf("$ kubectl warmpool doctor   # %s (exit %d)\n%s", when, code, out)
	var r inspect.DoctorReport
	jsonOut(t, cli, &r, "doctor", "--recheck=2s", "-o", "json")
	if code != wantCode {
		t.Errorf("doctor %s: exit %d, want %d", when, code, wantCode)
	}
	var got []string
	for _, f := range r.Findings {
		if !slices.Contains(got, f.Kind) {
			got = append(got, f.Kind)
		}
	}
	for _, k := range wantKinds {
		if !slices.Contains(got, k) {
			t.Errorf("doctor %s: no %s among %v", when, k, got)
		}
	}
	for _, k := range got {
		if !slices.Contains(wantKinds, k) && k != inspect.KindStatusDisagrees {
			t.Errorf("doctor %s: unexpected %s", when, k)
		}
	}
	return r
}

func find(r inspect.DoctorReport, kind string) inspect.Finding {
	for _, f := range r.Findings {
		if f.Kind == kind {
			return f
		}
	}
	return inspect.Finding{}
}
