package perf

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/warmpool/warmpool/internal/keyed"
	"github.com/warmpool/warmpool/internal/rig/netsim"
)

// network is how the pods of one IPAM under test get their interface: a
// CNI network config per node, and the CNI_ARGS a pod adds (the static
// baseline passes each pod's address that way).
type network struct {
	ipam  string
	lists []*libcni.NetworkConfigList // by node index
	// podArgs, if set, returns CNI_ARGS of a pod's ADD on node i.
	podArgs func(i int, pod *corev1.Pod) [][2]string
}

// kubelets simulates the networking half of one kubelet per node, in one
// process: for each pod bound to a node it creates a network namespace,
// runs the CNI chain's ADD through libcni as a container runtime does and
// sets the pod Running with the addresses; for a deleted pod it runs DEL,
// removes the namespace and finalises the pod. It does no more than that:
// no containers, no probes, no volumes.
type kubelets struct {
	kube  kubernetes.Interface
	cni   *libcni.CNIConfig
	pods  cache.Indexer
	nodes map[string]*kubelet
	// nets maps a namespace to the network its pods use; a pod of any
	// other namespace is none of the harness's business.
	nets sync.Map
	// netns false runs the IPAM alone: no namespace, no interface.
	netns bool
	dad   bool
	log   *slog.Logger

	adds, addFailures, dels, delFailures atomic.Int64
	// timesMu guards add and del, how long each CNI call took and the CPU
	// its processes spent, in the order the calls ended, and calls.
	timesMu  sync.Mutex
	add, del callTimes
	// calls, if set, gets a CSV line per CNI call (callLogHeader).
	calls *csv.Writer
	wg    sync.WaitGroup
}

// callLogHeader names the columns of the call log: when the call
// started, the pod's namespace (one per run) and node, ADD or DEL, its
// time and its processes' CPU in seconds, and whether it succeeded.
var callLogHeader = []string{"start", "namespace", "node", "call", "seconds", "cpu_seconds", "ok"}

// callTimes are the CNI calls of one kind: each one's time, and the CPU
// time of the plugin processes it ran.
type callTimes struct{ wall, cpu []time.Duration }

// timed runs a CNI call (ADD or DEL) of a pod of namespace on node, and
// records its time and CPU.
func (ks *kubelets) timed(ctx context.Context, kind, namespace, node string, call func(context.Context) error) error {
	var cpu atomic.Int64
	start := time.Now()
	err := call(withExecCPU(ctx, &cpu))
	d, c := time.Since(start), cpuOf(&cpu)
	ks.timesMu.Lock()
	defer ks.timesMu.Unlock()
	times := &ks.add
	if kind == "DEL" {
		times = &ks.del
	}
	times.wall, times.cpu = append(times.wall, d), append(times.cpu, c)
	if ks.calls != nil {
		// A write error stays in the csv.Writer: closing the log reports it.
		_ = ks.calls.Write([]string{start.UTC().Format(time.RFC3339Nano), namespace, node, kind,
			strconv.FormatFloat(d.Seconds(), 'f', 6, 64), strconv.FormatFloat(c.Seconds(), 'f', 6, 64), strconv.FormatBool(err == nil)})
	}
	return err
}

// openCallLog starts the call log at path (none if path is empty) and
// returns what flushes and closes it once the kubelets have stopped.
func (ks *kubelets) openCallLog(path string) (closeLog func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("call log: %w", err)
	}
	w := csv.NewWriter(f)
	if err := w.Write(callLogHeader); err != nil {
		return nil, errors.Join(fmt.Errorf("call log %s: %w", path, err), f.Close())
	}
	ks.timesMu.Lock()
	ks.calls = w
	ks.timesMu.Unlock()
	return func() error {
		ks.timesMu.Lock()
		defer ks.timesMu.Unlock()
		ks.calls = nil
		w.Flush()
		if err := errors.Join(w.Error(), f.Close()); err != nil {
			return fmt.Errorf("call log %s: %w", path, err)
		}
		return nil
	}, nil
}

// kubelet is one node's share.
type kubelet struct {
	ks    *kubelets
	name  string
	index int
	host  *netsim.Host // nil without network namespaces
	// setups and teardowns queue pod keys: a live pod's to set up, a
	// deleted pod's to tear down. A kubelet works on each pod apart (a
	// pod worker each), so a sandbox whose ADD waits does not hold up
	// another pod's DEL: with one queue, ADDs waiting for an address that
	// only a DEL queued behind them frees took every worker.
	setups, teardowns workqueue.TypedRateLimitingInterface[string]
	// syncing serialises one pod key's work across the two queues.
	syncing keyed.Mutex

	mu        sync.Mutex
	sandboxes map[string]*sandbox // by pod key, namespace/name
}

// sandbox is a pod's network as the runtime set it up.
type sandbox struct {
	uid       types.UID
	namespace string
	net       *network
	rt        *libcni.RuntimeConf
	netns     *netsim.Pod
	ips       []string
	reported  bool
}

// A failed ADD is retried per pod with exponential back-off, as the
// kubelet retries a sandbox it could not create; shorter than the
// kubelet's own so that a retry does not dominate the measured time.
const (
	retryBase = 100 * time.Millisecond
	retryCap  = 2 * time.Second
)

// noNetNS is the CNI_NETNS given when the IPAM runs alone: no plugin of
// that chain enters it.
const noNetNS = "/var/run/netns/none"

func newKubelets(kube kubernetes.Interface, cni *libcni.CNIConfig, informer cache.SharedIndexInformer, nodes []string, hosts []*netsim.Host, netns, dad bool, log *slog.Logger) (*kubelets, error) {
	ks := &kubelets{kube: kube, cni: cni, pods: informer.GetIndexer(), nodes: map[string]*kubelet{}, netns: netns, dad: dad, log: log}
	for i, name := range nodes {
		queue := func(kind string) workqueue.TypedRateLimitingInterface[string] {
			return workqueue.NewTypedRateLimitingQueueWithConfig(
				workqueue.NewTypedItemExponentialFailureRateLimiter[string](retryBase, retryCap),
				workqueue.TypedRateLimitingQueueConfig[string]{Name: "kubelet-" + name + "-" + kind})
		}
		k := &kubelet{ks: ks, name: name, index: i, sandboxes: map[string]*sandbox{},
			setups: queue("setups"), teardowns: queue("teardowns")}
		if netns {
			k.host = hosts[i]
		}
		ks.nodes[name] = k
	}
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { ks.enqueue(obj, false) },
		UpdateFunc: func(_, obj any) { ks.enqueue(obj, false) },
		DeleteFunc: func(obj any) { ks.enqueue(obj, true) },
	})
	if err != nil {
		return nil, fmt.Errorf("pod handler: %w", err)
	}
	return ks, nil
}

func (ks *kubelets) enqueue(obj any, deleted bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	k := ks.nodes[pod.Spec.NodeName]
	if k == nil {
		return
	}
	if _, ours := ks.nets.Load(pod.Namespace); !ours {
		return
	}
	key := pod.Namespace + "/" + pod.Name
	if deleted || pod.DeletionTimestamp != nil {
		k.teardowns.Add(key)
		return
	}
	k.setups.Add(key)
}

// run starts parallel workers per node for set-ups, and as many for
// teardowns; they stop when ctx ends and stop is called.
func (ks *kubelets) run(ctx context.Context, parallel int) {
	for _, k := range ks.nodes {
		for _, q := range []workqueue.TypedRateLimitingInterface[string]{k.setups, k.teardowns} {
			for range parallel {
				ks.wg.Add(1)
				go func() {
					defer ks.wg.Done()
					for k.work(ctx, q) {
					}
				}()
			}
		}
	}
}

// stop ends the workers, then tears down every sandbox left (a run that
// failed midway), so that no namespace or address outlives the harness.
func (ks *kubelets) stop(ctx context.Context) {
	for _, k := range ks.nodes {
		k.setups.ShutDown()
		k.teardowns.ShutDown()
	}
	ks.wg.Wait()
	for _, k := range ks.nodes {
		k.mu.Lock()
		left := k.sandboxes
		k.sandboxes = map[string]*sandbox{}
		k.mu.Unlock()
		for key, sb := range left {
			if err := k.teardown(ctx, sb); err != nil {
				ks.log.Warn("teardown at exit", "pod", key, "err", err)
			}
		}
	}
}

func (k *kubelet) work(ctx context.Context, q workqueue.TypedRateLimitingInterface[string]) bool {
	key, quit := q.Get()
	if quit {
		return false
	}
	defer q.Done(key)
	unlock := k.syncing.Lock(key)
	err := k.sync(ctx, key)
	unlock()
	if err != nil && ctx.Err() == nil {
		k.ks.log.Debug("pod sync failed, retrying", "node", k.name, "pod", key, "err", err)
		q.AddRateLimited(key)
		return true
	}
	q.Forget(key)
	return true
}

// sync brings a pod's network to what the API says: set up for a live
// pod bound here, torn down for a deleted one (or one replaced by a new
// pod of the same name).
func (k *kubelet) sync(ctx context.Context, key string) error {
	var pod *corev1.Pod
	if obj, ok, _ := k.ks.pods.GetByKey(key); ok {
		if p := obj.(*corev1.Pod); p.Spec.NodeName == k.name {
			pod = p
		}
	}
	k.mu.Lock()
	sb := k.sandboxes[key]
	k.mu.Unlock()
	if sb != nil && (pod == nil || pod.UID != sb.uid || pod.DeletionTimestamp != nil) {
		if err := k.teardown(ctx, sb); err != nil {
			return err
		}
		k.mu.Lock()
		delete(k.sandboxes, key)
		k.mu.Unlock()
		sb = nil
	}
	if pod == nil {
		return nil
	}
	if pod.DeletionTimestamp != nil {
		return k.finalise(ctx, pod)
	}
	if sb == nil {
		var err error
		if sb, err = k.setup(ctx, pod); err != nil {
			return err
		}
		k.mu.Lock()
		k.sandboxes[key] = sb
		k.mu.Unlock()
	}
	if sb.reported {
		return nil
	}
	if err := k.reportRunning(ctx, pod, sb); err != nil {
		return err
	}
	sb.reported = true // only the worker holding this key's lock touches sb
	return nil
}

// setup creates the pod's namespace and runs ADD into it. On failure it
// undoes what it did, DEL included, as a runtime cleans up a sandbox it
// could not create.
func (k *kubelet) setup(ctx context.Context, pod *corev1.Pod) (*sandbox, error) {
	v, ok := k.ks.nets.Load(pod.Namespace)
	if !ok {
		return nil, fmt.Errorf("no network for namespace %s", pod.Namespace)
	}
	net := v.(*network)
	rt := &libcni.RuntimeConf{ContainerID: "sandbox-" + string(pod.UID), NetNS: noNetNS, IfName: "eth0", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", pod.Namespace}, {"K8S_POD_NAME", pod.Name}, {"K8S_POD_UID", string(pod.UID)}}}
	if net.podArgs != nil {
		rt.Args = append(rt.Args, net.podArgs(k.index, pod)...)
	}
	sb := &sandbox{uid: pod.UID, namespace: pod.Namespace, net: net, rt: rt}
	if k.host != nil {
		p, err := k.host.NewPod(pod.Name)
		if err != nil {
			return nil, err
		}
		sb.netns, rt.NetNS = p, p.Path()
		if !k.ks.dad {
			if err := p.DisableDAD(); err != nil {
				return nil, errors.Join(err, k.host.RemovePod(p))
			}
		}
	}
	k.ks.adds.Add(1)
	var res *types100.Result
	err := k.ks.timed(ctx, "ADD", pod.Namespace, k.name, func(ctx context.Context) error {
		return k.cniDo(func() error {
			r, err := k.ks.cni.AddNetworkList(ctx, net.lists[k.index], rt)
			if err == nil {
				res, err = types100.NewResultFromResult(r)
			}
			return err
		})
	})
	if err != nil {
		k.ks.addFailures.Add(1)
		return nil, errors.Join(fmt.Errorf("ADD %s/%s: %w", pod.Namespace, pod.Name, err), k.teardown(ctx, sb))
	}
	for _, ip := range res.IPs {
		sb.ips = append(sb.ips, ip.Address.IP.String())
	}
	if len(sb.ips) == 0 {
		return nil, errors.Join(fmt.Errorf("ADD %s/%s gave no address", pod.Namespace, pod.Name), k.teardown(ctx, sb))
	}
	return sb, nil
}

// teardown runs DEL and removes the namespace.
func (k *kubelet) teardown(ctx context.Context, sb *sandbox) error {
	k.ks.dels.Add(1)
	err := k.ks.timed(ctx, "DEL", sb.namespace, k.name, func(ctx context.Context) error {
		return k.cniDo(func() error { return k.ks.cni.DelNetworkList(ctx, sb.net.lists[k.index], sb.rt) })
	})
	if err != nil {
		k.ks.delFailures.Add(1)
		return fmt.Errorf("DEL %s: %w", sb.rt.ContainerID, err)
	}
	if sb.netns != nil {
		return k.host.RemovePod(sb.netns)
	}
	return nil
}

// cniDo runs a CNI call where the runtime would: inside the node's host
// namespace, where the macvlan master lives.
func (k *kubelet) cniDo(fn func() error) error {
	if k.host == nil {
		return fn()
	}
	return k.host.Do(fn)
}

// reportRunning sets the pod Running with its addresses, as the kubelet's
// status manager does. The patch names the pod's UID: it fails on a new
// pod of the same name rather than mark it Running.
func (k *kubelet) reportRunning(ctx context.Context, pod *corev1.Pod, sb *sandbox) error {
	now := metav1.Now()
	ips := make([]corev1.PodIP, len(sb.ips))
	for i, ip := range sb.ips {
		ips[i] = corev1.PodIP{IP: ip}
	}
	ready := func(t corev1.PodConditionType) corev1.PodCondition {
		return corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now}
	}
	patch := map[string]any{
		"metadata": map[string]any{"uid": pod.UID},
		"status": corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: sb.ips[0], PodIPs: ips, StartTime: &now,
			Conditions: []corev1.PodCondition{ready(corev1.PodReadyToStartContainers), ready(corev1.PodInitialized),
				ready(corev1.ContainersReady), ready(corev1.PodReady)},
		},
	}
	data, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	_, err = k.ks.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{}, "status")
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // gone or replaced: its deletion event tears it down
	}
	if err != nil {
		return fmt.Errorf("status of %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// finalise deletes a terminating pod for good once its network is gone,
// as the kubelet does after its containers stopped.
func (k *kubelet) finalise(ctx context.Context, pod *corev1.Pod) error {
	zero := int64(0)
	err := k.ks.kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("finalise %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// counts are the kubelets' CNI call counters at one moment, and how many
// calls were timed.
type counts struct {
	adds, addFailures, dels, delFailures int64
	addTimes, delTimes                   int
}

func (ks *kubelets) counts() counts {
	ks.timesMu.Lock()
	defer ks.timesMu.Unlock()
	return counts{ks.adds.Load(), ks.addFailures.Load(), ks.dels.Load(), ks.delFailures.Load(), len(ks.add.wall), len(ks.del.wall)}
}

// timesSince fills in ph's percentiles of the ADDs' and DELs' times and
// CPU since c was taken.
func (ks *kubelets) timesSince(c counts, ph *Phase) {
	ks.timesMu.Lock()
	defer ks.timesMu.Unlock()
	ph.ADDTime, ph.ADDCPU = percentiles(slices.Clone(ks.add.wall[c.addTimes:])), percentiles(slices.Clone(ks.add.cpu[c.addTimes:]))
	ph.DELTime, ph.DELCPU = percentiles(slices.Clone(ks.del.wall[c.delTimes:])), percentiles(slices.Clone(ks.del.cpu[c.delTimes:]))
}
