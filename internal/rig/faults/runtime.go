package faults

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ifName is the interface every sandbox asks an address for.
const ifName = "eth0"

// What the suite tells a pod's kubelet to do.
type podCmd int

const (
	cmdDelete  podCmd = iota // graceful deletion: DEL, then the pod goes
	cmdLeak                  // the pod is force-deleted and its sandbox never DEL'd
	cmdRestart               // the sandbox dies: DEL without the pod's deletion, then a new sandbox
	cmdGone                  // the node was deleted: the pod goes, no DEL (the machine is gone)
)

// runtime is every node's kubelet and container runtime: it creates each
// pod's sandbox through the plugin (libcni, as a runtime execs it),
// reports the addresses in the pod's status, tears sandboxes down, and
// keeps the ledger of which live sandbox holds which address, which
// checks invariant 1 at every acknowledged ADD.
type runtime struct {
	w *world

	mu     sync.Mutex
	seq    int
	pods   map[string]*podSim
	owners map[string]*sandbox // address -> the live sandbox holding it
	wg     sync.WaitGroup
	// dangling are sandboxes whose ADD failed: like a runtime, we DEL
	// them until it succeeds.
	dangling int
}

type podSim struct {
	name string
	uid  types.UID
	node *component
	cmds chan podCmd
	// Guarded by runtime.mu.
	sb       *sandbox // the live sandbox, its ADD acknowledged
	running  bool     // status says Running
	stopping bool     // a delete, leak or node loss is under way
}

type sandbox struct {
	id     string
	pod    *podSim
	v4, v6 string
	// deleting: a DEL was sent (guarded by runtime.mu); the agent may have
	// released the address, so its store need not hold it after a crash.
	deleting bool
}

func newRuntime(w *world) *runtime {
	return &runtime{w: w, pods: map[string]*podSim{}, owners: map[string]*sandbox{}}
}

func (r *runtime) rt(sb *sandbox) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: sb.id, NetNS: "/var/run/netns/none", IfName: ifName, Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", namespace}, {"K8S_POD_NAME", sb.pod.name}, {"K8S_POD_UID", string(sb.pod.uid)}}}
}

func (r *runtime) newSandbox(p *podSim) *sandbox {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	return &sandbox{id: fmt.Sprintf("sb-%s-%d", p.name, r.seq), pod: p}
}

// create makes a pod bound to node and starts its kubelet loop.
func (r *runtime) create(ctx context.Context, node *component) error {
	r.mu.Lock()
	r.seq++
	name := fmt.Sprintf("pod-%d", r.seq)
	r.mu.Unlock()
	pod, err := r.w.kube.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec:       corev1.PodSpec{NodeName: node.node, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/c:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	p := &podSim{name: name, uid: pod.UID, node: node, cmds: make(chan podCmd, 4)}
	r.mu.Lock()
	r.pods[name] = p
	r.mu.Unlock()
	r.w.stats.count("pods-created")
	r.w.log.add("pod", "%s created on %s", name, node.node)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.run(ctx, p)
	}()
	return nil
}

// tell sends a command to a pod that is not already stopping; it reports
// whether it was sent.
func (r *runtime) tell(p *podSim, cmd podCmd) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p.stopping {
		return false
	}
	select {
	case p.cmds <- cmd:
		// Only once sent: a dropped delete must not leave the pod
		// "stopping" with nothing under way.
		if cmd != cmdRestart {
			p.stopping = true
		}
		return true
	default:
		return false
	}
}

// running returns the pods that are Running and not stopping.
func (r *runtime) running() []*podSim {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*podSim
	for _, p := range r.pods {
		if p.running && !p.stopping {
			out = append(out, p)
		}
	}
	return out
}

// active counts the pods not stopping: those the churn counts against the
// peak.
func (r *runtime) active() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, p := range r.pods {
		if !p.stopping {
			n++
		}
	}
	return n
}

// onNode returns the pods of a node.
func (r *runtime) onNode(node string) []*podSim {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*podSim
	for _, p := range r.pods {
		if p.node.node == node {
			out = append(out, p)
		}
	}
	return out
}

// run is one pod's kubelet: sandbox, status, and whatever it is told.
func (r *runtime) run(ctx context.Context, p *podSim) {
	defer func() {
		r.mu.Lock()
		delete(r.pods, p.name)
		r.mu.Unlock()
	}()
	for {
		sb, cmd := r.addSandbox(ctx, p)
		if ctx.Err() != nil {
			return
		}
		if sb != nil {
			if err := r.setStatus(ctx, p, sb); err != nil {
				return // ctx ended
			}
			select {
			case <-ctx.Done():
				return
			case cmd = <-p.cmds:
			}
		}
		switch cmd {
		case cmdRestart:
			// The sandbox died: the status stops claiming its address
			// before the address is released.
			if err := r.setStatus(ctx, p, nil); err != nil {
				return
			}
			r.w.log.add("sandbox", "%s: sandbox %s died, DEL without the pod's deletion", p.name, sb.id)
			r.w.stats.count("sandbox-restarts")
			if !r.del(ctx, p, sb) {
				return
			}
			// The sandbox held its address until its DEL was answered.
			r.release(sb)
			continue
		case cmdDelete:
			r.remove(ctx, p, sb)
		case cmdLeak:
			r.forceDelete(ctx, p)
			r.release(sb)
			r.w.log.add("pod", "%s force-deleted, its sandbox %v never DEL'd (a leak)", p.name, sandboxID(sb))
			r.w.stats.count("leaks")
			if sb != nil && r.w.intn(2) == 0 {
				// The runtime's own clean-up catches up later.
				r.lateDel(ctx, p, sb)
			}
		case cmdGone:
			r.forceDelete(ctx, p)
			r.release(sb)
		}
		return
	}
}

func sandboxID(sb *sandbox) string {
	if sb == nil {
		return "(none)"
	}
	return sb.id
}

// addSandbox runs ADD until one is acknowledged, or until the pod is told
// to stop (then sb is nil and cmd says what to do).
func (r *runtime) addSandbox(ctx context.Context, p *podSim) (*sandbox, podCmd) {
	backoff := 100 * time.Millisecond
	sb := r.newSandbox(p)
	for {
		select {
		case cmd := <-p.cmds:
			if cmd == cmdRestart {
				continue // nothing is running to restart
			}
			r.dangle(ctx, p, sb)
			return nil, cmd
		default:
		}
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := r.w.cni.AddNetworkList(actx, p.node.conf, r.rt(sb))
		cancel()
		if ctx.Err() != nil {
			return nil, cmdDelete
		}
		r.w.stats.count("adds")
		if err == nil {
			err = r.acked(p, sb, res)
			if err == nil {
				return sb, 0
			}
		}
		r.w.stats.count(fmt.Sprintf("add-failures(code %d)", cniCode(err)))
		r.w.log.add("add", "%s sandbox %s on %s failed: %v", p.name, sb.id, p.node.node, err)
		if r.w.intn(2) == 0 {
			// A new sandbox, as a kubelet makes after a failed one; the
			// failed one is DEL'd.
			r.dangle(ctx, p, sb)
			sb = r.newSandbox(p)
		}
		select {
		case <-ctx.Done():
			return nil, cmdDelete
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func cniCode(err error) uint {
	var e *cnitypes.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// acked records an acknowledged ADD. The address must not be held by any
// other live sandbox: that would be one address on two live pods.
func (r *runtime) acked(p *podSim, sb *sandbox, res cnitypes.Result) error {
	out, err := types100.NewResultFromResult(res)
	if err != nil {
		return err
	}
	for _, ip := range out.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		if a.Unmap().Is4() {
			sb.v4 = a.Unmap().String()
		} else {
			sb.v6 = a.String()
		}
	}
	if sb.v4 == "" || sb.v6 == "" {
		return fmt.Errorf("ADD of %s answered %v: want one IPv4 and one IPv6 address", sb.id, out.IPs)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, addr := range []string{sb.v4, sb.v6} {
		if o := r.owners[addr]; o != nil && o != sb {
			r.w.fail(fmt.Errorf("invariant 1: %s given to sandbox %s of %s on %s while sandbox %s of %s on %s holds it",
				addr, sb.id, p.name, p.node.node, o.id, o.pod.name, o.pod.node.node))
		}
		r.owners[addr] = sb
	}
	p.sb = sb
	r.w.stats.count("adds-acknowledged")
	r.w.log.add("add", "%s sandbox %s on %s got %s %s", p.name, sb.id, p.node.node, sb.v4, sb.v6)
	return nil
}

// release drops a sandbox from the ledger: from now on its address may go
// elsewhere.
func (r *runtime) release(sb *sandbox) {
	if sb == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, addr := range []string{sb.v4, sb.v6} {
		if r.owners[addr] == sb {
			delete(r.owners, addr)
		}
	}
	if sb.pod.sb == sb {
		sb.pod.sb = nil
		sb.pod.running = false
	}
}

// liveOn returns the live sandboxes of a node (acknowledged, no DEL sent):
// what the node's agent must hold after a crash.
func (r *runtime) liveOn(node string) []*sandbox {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*sandbox
	for _, p := range r.pods {
		if p.node.node == node && p.sb != nil && !p.sb.deleting {
			out = append(out, p.sb)
		}
	}
	return out
}

// deletingOn returns the sandboxes of a node whose DEL was sent and not
// yet answered.
func (r *runtime) deletingOn(node string) []*sandbox {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*sandbox
	for _, p := range r.pods {
		if p.node.node == node && p.sb != nil && p.sb.deleting {
			out = append(out, p.sb)
		}
	}
	return out
}

// setStatus writes the pod's status: Running with sb's addresses, or
// Pending with none (sb nil). It retries until it lands, the pod is gone,
// or ctx ends (the only error).
func (r *runtime) setStatus(ctx context.Context, p *podSim, sb *sandbox) error {
	patch := []byte(`{"status":{"phase":"Pending","podIP":null,"podIPs":null}}`)
	if sb != nil {
		patch = fmt.Appendf(nil, `{"status":{"phase":"Running","podIP":%q,"podIPs":[{"ip":%q},{"ip":%q}]}}`, sb.v4, sb.v4, sb.v6)
	}
	for {
		_, err := r.w.kube.CoreV1().Pods(namespace).Patch(ctx, p.name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
		if err == nil || apierrors.IsNotFound(err) {
			r.mu.Lock()
			p.running = sb != nil && err == nil
			r.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// del runs DEL of sb until it succeeds; false if ctx ended first.
func (r *runtime) del(ctx context.Context, p *podSim, sb *sandbox) bool {
	r.mu.Lock()
	sb.deleting = true
	r.mu.Unlock()
	backoff := 100 * time.Millisecond
	for {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := r.w.cni.DelNetworkList(dctx, p.node.conf, r.rt(sb))
		cancel()
		if ctx.Err() != nil {
			return false
		}
		r.w.stats.count("dels")
		if err == nil {
			r.w.log.add("del", "%s sandbox %s on %s", p.name, sb.id, p.node.node)
			return true
		}
		r.w.stats.count(fmt.Sprintf("del-failures(code %d)", cniCode(err)))
		r.w.log.add("del", "%s sandbox %s on %s failed: %v", p.name, sb.id, p.node.node, err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// dangle DELs a sandbox whose ADD failed, in the background as a runtime
// does, until it succeeds.
func (r *runtime) dangle(ctx context.Context, p *podSim, sb *sandbox) {
	r.mu.Lock()
	r.dangling++
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.del(ctx, p, sb)
		r.mu.Lock()
		r.dangling--
		r.mu.Unlock()
	}()
}

// lateDel DELs a leaked sandbox after a while.
func (r *runtime) lateDel(ctx context.Context, p *podSim, sb *sandbox) {
	r.mu.Lock()
	r.dangling++
	r.mu.Unlock()
	d := r.w.between(time.Second, 8*time.Second)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		select {
		case <-ctx.Done():
		case <-time.After(d):
			r.w.log.add("del", "%s: the runtime's clean-up DELs leaked sandbox %s", p.name, sb.id)
			r.del(ctx, p, sb)
		}
		r.mu.Lock()
		r.dangling--
		r.mu.Unlock()
	}()
}

// remove is a pod's graceful deletion, as the kubelet sees it: the API
// marks it deleted, the sandbox is DEL'd, then the pod is removed.
func (r *runtime) remove(ctx context.Context, p *podSim, sb *sandbox) {
	grace := int64(30)
	for {
		err := r.w.kube.CoreV1().Pods(namespace).Delete(ctx, p.name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
		if err == nil || apierrors.IsNotFound(err) || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A terminating pod's sandbox holds its address until its DEL is
	// answered.
	if sb != nil && !r.del(ctx, p, sb) {
		return
	}
	r.release(sb)
	r.forceDelete(ctx, p)
	r.w.stats.count("pods-deleted")
	r.w.log.add("pod", "%s deleted", p.name)
}

// forceDelete removes the pod at once (grace 0, this pod's UID only).
func (r *runtime) forceDelete(ctx context.Context, p *podSim) {
	zero := int64(0)
	for {
		err := r.w.kube.CoreV1().Pods(namespace).Delete(ctx, p.name, metav1.DeleteOptions{GracePeriodSeconds: &zero,
			Preconditions: &metav1.Preconditions{UID: &p.uid}})
		if err == nil || apierrors.IsNotFound(err) || apierrors.IsConflict(err) || ctx.Err() != nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// quiet reports whether every pod not stopping is Running and no pod is
// stopping and no failed sandbox awaits its DEL.
func (r *runtime) quiet() (bool, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dangling > 0 {
		return false, fmt.Sprintf("%d sandboxes await their DEL", r.dangling)
	}
	for _, p := range r.pods {
		if p.stopping {
			return false, fmt.Sprintf("%s is still stopping", p.name)
		}
		if !p.running {
			return false, fmt.Sprintf("%s on %s is not Running", p.name, p.node.node)
		}
	}
	return true, ""
}
