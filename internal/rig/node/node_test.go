package node

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/warmpool/warmpool/internal/inspect"
	"github.com/warmpool/warmpool/internal/rig/gobuild"
	"github.com/warmpool/warmpool/internal/rig/testenv"
	"github.com/warmpool/warmpool/internal/rig/toolchain"
	"github.com/warmpool/warmpool/manifests/images"
)

// The real node changes the machine (links, iptables rules, /opt/cni,
// /etc/cni) while it runs, and one runs at a time: `make test-node` asks
// for it.
var (
	realNode = flag.Bool("node", false, "run the tests on a real node (make test-node); they change the machine's network and host paths while they run, and undo it")
	hold     = flag.Duration("node.hold", 0, "after the checks, keep the node and warmpool up this long (or until interrupted) to try them with kubectl, then tear down")
)

const (
	appImage   = "warmpool.test/app:rig"
	pauseImage = "warmpool.test/pause:rig"
	// network is the NetworkAttachmentDefinition the test's pods name: no
	// spec, so Multus loads the config of this name that the agents'
	// install-cni wrote (manifests/examples/multus-macvlan.yaml).
	network = "warmpool-underlay"
)

// buildImages builds the node's images as tarballs: the rig's app (also
// the sandbox's pause), and warmpool's two as make images does, named as
// the shipped base names them. It returns them and the directory of the
// binaries (kubectl-warmpool among them).
func buildImages(t *testing.T) (tarballs []string, binDir string) {
	t.Helper()
	ctx := context.Background()
	bin, out := t.TempDir(), t.TempDir()
	if err := gobuild.Build(ctx, bin, "./internal/rig/node/app", "./cmd/warmpool", "./cmd/warmpool-agent", "./cmd/warmpool-allocator", "./cmd/kubectl-warmpool"); err != nil {
		t.Fatal(err)
	}
	write := func(s images.Spec, refs ...string) {
		img, err := s.Build(images.Options{BinDir: bin})
		if err != nil {
			t.Fatal(err)
		}
		var tags []name.Tag
		for _, r := range refs {
			tag, err := name.NewTag(r)
			if err != nil {
				t.Fatal(err)
			}
			tags = append(tags, tag)
		}
		path := filepath.Join(out, s.Name+".tar")
		if err := images.Write(path, img, tags...); err != nil {
			t.Fatal(err)
		}
		tarballs = append(tarballs, path)
	}
	write(images.Spec{Name: "app", Binaries: []string{"app"}, User: "0:0"}, appImage, pauseImage)
	shipped, err := ShippedImages()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range images.Specs {
		ref, ok := shipped[s.Name]
		if !ok {
			t.Fatalf("the shipped base runs no image %s", s.Name)
		}
		write(s, ref)
	}
	return tarballs, bin
}

// TestWarmpoolOnARealNode brings up a node (kubelet, containerd, runc,
// kube-proxy, CoreDNS, Multus), installs warmpool from its shipped
// manifests with `kubectl apply -k` and an overlay that sets the macvlan
// master, and checks what a user would: the rollout and doctor; a
// Deployment's pods get distinct addresses of the pool on their Multus
// attachment, read inside the pods, as cache hits; a namespace and pool
// made after the install serve at once; killing the agent's pod and the
// leading allocator's pod loses nothing and stops nothing for long;
// delete and re-create leave no leak; where and pools agree with the
// pods. Then the node stops and must leave no trace on the machine.
func TestWarmpoolOnARealNode(t *testing.T) {
	if !*realNode {
		t.Skip("a real node changes the machine while it runs: make test-node (-node)")
	}
	// Interrupted (^C, or the 20 min bound), every wait ends, and the
	// deferred Stop undoes the node: the machine is left as it was.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute+*hold)
	defer cancel()
	imgs, bin := buildImages(t)
	existed := map[string]bool{}
	for _, d := range hostPaths {
		_, err := os.Stat(d)
		existed[d] = err == nil
	}
	start := time.Now()
	n, err := Start(ctx, Options{Images: imgs, PauseImage: pauseImage})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			n.Stop()
		}
	}()
	t.Logf("node %s Ready in %s", n.Name(), time.Since(start).Round(time.Second))
	w := &world{t: t, ctx: ctx, n: n, cli: filepath.Join(bin, "kubectl-warmpool")}

	// 1. The install rolls out; doctor is clean.
	start = time.Now()
	if err := n.InstallMultusCRD(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.InstallWarmpool(ctx); err != nil {
		t.Fatal(err)
	}
	w.kubectl("-n", "kube-system", "rollout", "status", "daemonset/warmpool-agent", "--timeout=5m")
	w.kubectl("-n", "kube-system", "rollout", "status", "deployment/warmpool-allocator", "--timeout=5m")
	t.Logf("warmpool rolled out in %s", time.Since(start).Round(time.Second))
	w.pool("underlay", "default", "10.252.0.0/24", "10.252.0.10", "10.252.0.73")
	w.attachment("default")
	w.waitDoctorClean("after the install")

	// 2. A Deployment of 30 pods on the attachment.
	const replicas = 30
	start = time.Now()
	w.deployment("burst", replicas)
	pods := w.waitRunning("default", "app=burst", replicas)
	t.Logf("%d pods Running in %s", replicas, time.Since(start).Round(time.Second))
	addrs := w.attachments(pods, "10.252.0.0/24")
	w.waitPool("underlay", func(p inspect.PoolRow) bool { return p.Assigned == replicas && p.Hits >= replicas && p.Misses == 0 })

	// 3. A namespace and a pool made after the install.
	w.kubectl("create", "namespace", "late")
	w.pool("late", "late", "10.252.1.0/24", "10.252.1.10", "10.252.1.41")
	w.attachment("late")
	start = time.Now()
	w.deploymentIn("late", "late", 1)
	late := w.waitRunning("late", "app=late", 1)
	w.attachments(late, "10.252.1.0/24")
	t.Logf("a pod of a namespace and a pool made after the install Running in %s", time.Since(start).Round(time.Second))

	// 4. The agent's pod killed: restarted; running pods keep their
	// addresses; new pods are served.
	agent := w.onePod("kube-system", "app.kubernetes.io/name=warmpool-agent")
	w.kubectl("-n", "kube-system", "delete", "pod", agent.Name, "--wait=false")
	start = time.Now()
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := w.podsMatching("kube-system", "app.kubernetes.io/name=warmpool-agent")
		return err == nil && len(p) == 1 && p[0].UID != agent.UID && ready(&p[0]), nil
	}); err != nil {
		t.Fatalf("the agent's pod did not come back Ready: %v", err)
	}
	t.Logf("agent pod back Ready %s after it was deleted", time.Since(start).Round(time.Second))
	if again := w.attachments(pods, "10.252.0.0/24"); !maps(again, addrs) {
		t.Errorf("after the agent's restart the pods have %v, before %v", again, addrs)
	}
	w.scale("default", "burst", replicas+3)
	w.attachments(w.waitRunning("default", "app=burst", replicas+3), "10.252.0.0/24")

	// The leading allocator's pod killed: the other replica takes over.
	leader := w.leader()
	w.kubectl("-n", "kube-system", "delete", "pod", leader, "--wait=false")
	start = time.Now()
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(context.Context) (bool, error) {
		l := w.leader()
		return l != "" && l != leader, nil
	}); err != nil {
		t.Fatalf("no allocator took over from %s: %v", leader, err)
	}
	t.Logf("%s leads %s after %s was deleted", w.leader(), time.Since(start).Round(time.Second), leader)
	w.scale("default", "burst", replicas+6)
	w.attachments(w.waitRunning("default", "app=burst", replicas+6), "10.252.0.0/24")

	// 5. Every pod deleted: every address back; re-created: no address
	// on two pods, no leak.
	w.scale("default", "burst", 0)
	w.scale("late", "late", 0)
	w.waitRunning("default", "app=burst", 0)
	w.waitRunning("late", "app=late", 0)
	w.waitPool("underlay", func(p inspect.PoolRow) bool { return p.Assigned == 0 })
	w.waitPool("late", func(p inspect.PoolRow) bool { return p.Assigned == 0 })
	w.scale("default", "burst", replicas)
	pods = w.waitRunning("default", "app=burst", replicas)
	addrs = w.attachments(pods, "10.252.0.0/24")
	w.waitPool("underlay", func(p inspect.PoolRow) bool { return p.Assigned == replicas })
	w.waitDoctorClean("after delete and re-create")

	// 6. where and pools agree with the pods.
	for _, p := range pods[:3] {
		out, code := w.warmpool("where", addrs[p.Name], "-o", "json")
		var loc inspect.Location
		if err := json.Unmarshal([]byte(out), &loc); err != nil || code != 0 {
			t.Fatalf("where %s: exit %d, %v: %s", addrs[p.Name], code, err, out)
		}
		if len(loc.Leases) != 1 || loc.Leases[0].Node != n.Name() || len(loc.Agents) != 1 || loc.Agents[0].Pod == nil ||
			loc.Agents[0].Pod.Name != p.Name || len(loc.Pods) != 1 || loc.Pods[0].Name != p.Name || len(loc.Disagreements) != 0 {
			t.Errorf("where %s (pod %s): %+v", addrs[p.Name], p.Name, loc)
		}
	}
	out, _ := w.warmpool("pools")
	t.Logf("$ kubectl warmpool pools\n%s", out)
	if *hold > 0 {
		kube, _ := n.binary(toolchain.Kube, "kube")
		t.Logf("holding the node for %s (^C to tear down now): export KUBECONFIG=%s; kubectl is %s kubectl, kubectl warmpool is %s", *hold, n.ControlPlane().Kubeconfig(), kube, w.cli)
		select {
		case <-time.After(*hold):
		case <-ctx.Done():
		}
	}

	// The test's pods go first, while the agent serves their DELs.
	w.scale("default", "burst", 0)
	w.waitRunning("default", "app=burst", 0)
	n.Stop()
	stopped = true
	for _, l := range []string{nodeLink, UnderlayLink, bridgeLink} {
		if exec.Command("ip", "link", "show", l).Run() == nil {
			t.Errorf("link %s is left after Stop", l)
		}
	}
	for _, d := range hostPaths {
		if _, err := os.Stat(d); err == nil && !existed[d] {
			t.Errorf("%s is left after Stop", d)
		}
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat", "mangle"} {
			out, err := exec.Command(ipt, "-t", table, "-S").Output()
			if err != nil {
				t.Fatal(err)
			}
			if c := newChains(string(out), nil); len(c) > 0 {
				t.Errorf("%s table %s: chains %v left after Stop", ipt, table, c)
			}
		}
	}
}

// world is the test's hands on the node: kubectl, kubectl-warmpool and
// the client.
type world struct {
	t   *testing.T
	ctx context.Context
	n   *Node
	cli string
}

func (w *world) kubectl(args ...string) string {
	w.t.Helper()
	out, err := w.n.Kubectl(w.ctx, nil, args...)
	if err != nil {
		w.t.Fatalf("%v; logs in %s", err, w.n.LogDir())
	}
	return string(out)
}

func (w *world) apply(yaml string) {
	w.t.Helper()
	if _, err := w.n.Kubectl(w.ctx, strings.NewReader(yaml), "apply", "-f", "-"); err != nil {
		w.t.Fatalf("%v\n%s", err, yaml)
	}
}

// warmpool runs kubectl-warmpool as the admin.
func (w *world) warmpool(args ...string) (string, int) {
	w.t.Helper()
	out, errOut, code := testenv.RunCLI(w.t, w.ctx, w.cli, append([]string{"--kubeconfig", w.n.ControlPlane().Kubeconfig()}, args...)...)
	if code == inspect.ExitFailed {
		w.t.Fatalf("kubectl warmpool %s failed: %s%s", strings.Join(args, " "), out, errOut)
	}
	return out, code
}

// waitDoctorClean waits until doctor finds nothing (the pools' status
// and the agents' reports trail the events by a few seconds).
func (w *world) waitDoctorClean(when string) {
	w.t.Helper()
	var out string
	var code int
	if err := wait.PollUntilContextTimeout(w.ctx, 2*time.Second, 2*time.Minute, true, func(context.Context) (bool, error) {
		out, code = w.warmpool("doctor")
		return code == 0 && strings.Contains(out, "no problem found"), nil
	}); err != nil {
		w.t.Fatalf("doctor %s: exit %d\n%s", when, code, out)
	}
	w.t.Logf("$ kubectl warmpool doctor   # %s\n%s", when, out)
}

// pool makes an IPv4 pool for the pods of namespace ns, as a user would.
func (w *world) pool(name, ns, cidr, first, last string) {
	w.t.Helper()
	w.apply(fmt.Sprintf(`apiVersion: warmpool.io/v1alpha1
kind: IPPool
metadata:
  name: %s
spec:
  ipv4:
    cidr: %s
    ranges:
    - start: %s
      end: %s
  namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: %s
`, name, cidr, first, last, ns))
}

// attachment makes the network in ns (the agents' config, by name).
func (w *world) attachment(ns string) {
	w.t.Helper()
	w.apply(fmt.Sprintf(`apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: %s
  namespace: %s
`, network, ns))
}

func (w *world) deployment(name string, replicas int32) { w.deploymentIn("default", name, replicas) }

func (w *world) deploymentIn(ns, name string, replicas int32) {
	w.t.Helper()
	labels := map[string]string{"app": name}
	grace := int64(1)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{"k8s.v1.cni.cncf.io/networks": network}},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					Containers:                    []corev1.Container{{Name: "app", Image: appImage, ImagePullPolicy: corev1.PullIfNotPresent}},
				},
			},
		},
	}
	// A new namespace's default ServiceAccount comes a moment later.
	if err := wait.PollUntilContextTimeout(w.ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := w.n.kube.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{})
		return err == nil, nil
	}); err != nil {
		w.t.Fatalf("create deployment %s/%s: %v", ns, name, err)
	}
}

func (w *world) scale(ns, name string, replicas int) {
	w.t.Helper()
	w.kubectl("-n", ns, "scale", "deployment/"+name, fmt.Sprintf("--replicas=%d", replicas))
}

func (w *world) podsMatching(ns, selector string) ([]corev1.Pod, error) {
	l, err := w.n.kube.CoreV1().Pods(ns).List(w.ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

func (w *world) onePod(ns, selector string) corev1.Pod {
	w.t.Helper()
	p, err := w.podsMatching(ns, selector)
	if err != nil || len(p) != 1 {
		w.t.Fatalf("pods %s in %s: %v, %d", selector, ns, err, len(p))
	}
	return p[0]
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitRunning waits until exactly want pods match selector, all Running
// and none terminating, and returns them.
func (w *world) waitRunning(ns, selector string, want int) []corev1.Pod {
	w.t.Helper()
	var pods []corev1.Pod
	if err := wait.PollUntilContextTimeout(w.ctx, time.Second, 5*time.Minute, true, func(context.Context) (bool, error) {
		p, err := w.podsMatching(ns, selector)
		if err != nil {
			return false, nil
		}
		pods = p
		if len(p) != want {
			return false, nil
		}
		for i := range p {
			if p[i].Status.Phase != corev1.PodRunning || p[i].DeletionTimestamp != nil {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		var states []string
		for _, p := range pods {
			states = append(states, p.Name+":"+string(p.Status.Phase))
		}
		events := w.kubectl("-n", ns, "get", "events", "--sort-by=.lastTimestamp")
		w.t.Fatalf("want %d pods %s in %s Running: %v; have %v\n%s\nlogs in %s", want, selector, ns, err, states, tail(events, 30), w.n.LogDir())
	}
	return pods
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}

// attachments reads each pod's attachment address inside the pod (the
// app's `addrs` through kubectl exec): every pod must have one address
// of cidr on net1, and no two pods the same. It returns them by pod.
func (w *world) attachments(pods []corev1.Pod, cidr string) map[string]string {
	w.t.Helper()
	prefix := netip.MustParsePrefix(cidr)
	out := map[string]string{}
	owner := map[string]string{}
	for _, p := range pods {
		// As the app writes them (app/main.go).
		var ifs []struct {
			Name  string   `json:"name"`
			Addrs []string `json:"addrs"`
		}
		raw := w.kubectl("-n", p.Namespace, "exec", p.Name, "-c", "app", "--", "/app", "addrs")
		if err := json.Unmarshal([]byte(raw), &ifs); err != nil {
			w.t.Fatalf("%s: app addrs: %v: %s", p.Name, err, raw)
		}
		var got []string
		for _, i := range ifs {
			if i.Name != "net1" {
				continue
			}
			for _, a := range i.Addrs {
				if pfx, err := netip.ParsePrefix(a); err == nil && prefix.Contains(pfx.Addr()) {
					got = append(got, pfx.Addr().String())
				}
			}
		}
		if len(got) != 1 {
			w.t.Errorf("pod %s has %v of %s on net1 (interfaces %+v)", p.Name, got, cidr, ifs)
			continue
		}
		if o, dup := owner[got[0]]; dup {
			w.t.Errorf("%s is on pods %s and %s", got[0], o, p.Name)
		}
		owner[got[0]] = p.Name
		out[p.Name] = got[0]
	}
	return out
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// waitPool waits until the pool's row in `kubectl warmpool pools`
// satisfies ok (its status trails the agents by a round or two).
func (w *world) waitPool(name string, ok func(inspect.PoolRow) bool) {
	w.t.Helper()
	var last []inspect.PoolRow
	if err := wait.PollUntilContextTimeout(w.ctx, 2*time.Second, 2*time.Minute, true, func(context.Context) (bool, error) {
		out, code := w.warmpool("pools", "-o", "json")
		last = nil
		if code != 0 || json.Unmarshal([]byte(out), &last) != nil {
			return false, nil
		}
		i := slices.IndexFunc(last, func(p inspect.PoolRow) bool { return p.Name == name })
		return i >= 0 && ok(last[i]), nil
	}); err != nil {
		w.t.Fatalf("pool %s: %v; pools %+v", name, err, last)
	}
}

// leader is the allocator pod that holds the election (its identity is
// the pod's name and a suffix), or "".
func (w *world) leader() string {
	w.t.Helper()
	out, code := w.warmpool("leases", "-o", "json")
	var r inspect.LeasesReport
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || !r.Election.Found || r.Election.Expired {
		return ""
	}
	pod, _, _ := strings.Cut(r.Election.Holder, "_")
	return pod
}
