package allocator

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

// watcher holds the allocator's informers: pods (cluster-wide, stripped
// to what demand needs), nodes, namespaces and pools. Every change that
// can move demand or eligibility kicks a planning round.
type watcher struct {
	nodes      listerscorev1.NodeLister
	podLister  listerscorev1.PodLister
	namespaces listerscorev1.NamespaceLister
	synced     []cache.InformerSynced
	factory    informers.SharedInformerFactory
	poolInf    cache.SharedIndexInformer
	poolDone   chan struct{}

	// selection counts the changes that can change a pod's pool (a
	// namespace, a node), so that demand chooses it again only then.
	selection atomic.Uint64

	mu   sync.Mutex
	pods map[types.UID]*podInfo
	// notReadySince is when this allocator first saw each node not Ready
	// or deleted; a node is lost once that is older than the grace period. Our clock,
	// not the node's condition timestamp: a restart waits a full period
	// again, which is the safe direction.
	notReadySince map[string]time.Time
}

// podInfo is what demand needs of a pod. A change to the pod replaces it.
type podInfo struct {
	namespace, name string
	uid             types.UID
	node            string
	labels          map[string]string
	annotations     map[string]string

	// The pool demand chose for the pod ("" for none), as of chosenAt;
	// read and written by the planner's goroutine only.
	chosen   bool
	chosenAt selectionKey
	pool     string
}

// selectionKey says what a pod's pool was chosen against: the watcher's
// namespace and node changes, and the ledger's pool changes.
type selectionKey struct{ watched, pools uint64 }

func newWatcher(kube kubernetes.Interface, wp *client.Clientset, now func() time.Time, onPool func(*v1alpha1.IPPool), kick func()) *watcher {
	w := &watcher{pods: map[types.UID]*podInfo{}, notReadySince: map[string]time.Time{}}
	factory := informers.NewSharedInformerFactory(kube, 0)
	podInf := factory.Core().V1().Pods().Informer()
	// Pods are the biggest cache: keep only the fields demand reads.
	_ = podInf.SetTransform(stripPod)
	nodeInf := factory.Core().V1().Nodes().Informer()
	nsInf := factory.Core().V1().Namespaces().Informer()
	w.nodes = factory.Core().V1().Nodes().Lister()
	w.podLister = factory.Core().V1().Pods().Lister()
	w.namespaces = factory.Core().V1().Namespaces().Lister()
	poolInf := wp.PoolInformer()

	onPod := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok && w.trackPod(p) {
			kick()
		}
	}
	_, _ = podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onPod,
		UpdateFunc: func(_, obj any) { onPod(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				w.mu.Lock()
				delete(w.pods, p.UID)
				w.mu.Unlock()
				kick()
			}
		},
	})
	onNode := func(obj any) {
		w.selection.Add(1)
		if n, ok := obj.(*corev1.Node); ok {
			w.mu.Lock()
			if ready(n) {
				delete(w.notReadySince, n.Name)
			} else if _, seen := w.notReadySince[n.Name]; !seen {
				w.notReadySince[n.Name] = now()
			}
			w.mu.Unlock()
		}
		kick()
	}
	_, _ = nodeInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onNode,
		UpdateFunc: func(old, obj any) {
			o, n := old.(*corev1.Node), obj.(*corev1.Node)
			w.readyBlip(o, n, now())
			// Heartbeats change a node every few seconds: only readiness
			// and labels matter here.
			if ready(o) != ready(n) || !maps.Equal(o.Labels, n.Labels) {
				onNode(obj)
			}
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			w.selection.Add(1)
			if n, ok := obj.(*corev1.Node); ok {
				// Deleted counts as not Ready from now: the grace period
				// applies to deletions too, since the node's agent may
				// have been vouched for by a read of the Node just before.
				w.mu.Lock()
				if _, seen := w.notReadySince[n.Name]; !seen {
					w.notReadySince[n.Name] = now()
				}
				w.mu.Unlock()
			}
			kick()
		},
	})
	onNamespace := func() {
		w.selection.Add(1)
		kick()
	}
	_, _ = nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { onNamespace() },
		UpdateFunc: func(any, any) { onNamespace() },
		DeleteFunc: func(any) { onNamespace() },
	})
	onPoolObj := func(obj any) {
		if p, ok := obj.(*v1alpha1.IPPool); ok {
			onPool(p)
			kick()
		}
	}
	_, _ = poolInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onPoolObj,
		UpdateFunc: func(_, obj any) { onPoolObj(obj) },
	})
	w.synced = []cache.InformerSynced{podInf.HasSynced, nodeInf.HasSynced, nsInf.HasSynced, poolInf.HasSynced}
	w.factory, w.poolInf = factory, poolInf
	return w
}

// run starts the informers and waits for their caches.
func (w *watcher) run(ctx context.Context) error {
	w.factory.Start(ctx.Done())
	w.poolDone = make(chan struct{})
	go func() {
		defer close(w.poolDone)
		w.poolInf.Run(ctx.Done())
	}()
	if !cache.WaitForCacheSync(ctx.Done(), w.synced...) {
		return fmt.Errorf("allocator informers did not sync: %w", ctx.Err())
	}
	return nil
}

// forgetGone drops the not-Ready times of deleted nodes that hold nothing
// and were deleted before cutoff.
func (w *watcher) forgetGone(holding map[string]bool, cutoff time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for name, since := range w.notReadySince {
		if _, err := w.nodes.Get(name); err != nil && !holding[name] && since.Before(cutoff) {
			delete(w.notReadySince, name)
		}
	}
}

// shutdown waits for the informers to stop once run's context is done:
// an open watch would delay the apiserver's own shutdown in tests.
func (w *watcher) shutdown() {
	w.factory.Shutdown()
	if w.poolDone != nil {
		<-w.poolDone
	}
}

// trackPod records a pod that may need an address, or forgets one that
// cannot (host network, finished, terminating: its DEL is coming). It
// reports whether demand may have changed.
func (w *watcher) trackPod(p *corev1.Pod) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p.Spec.HostNetwork || p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		_, had := w.pods[p.UID]
		delete(w.pods, p.UID)
		return had
	}
	old := w.pods[p.UID]
	if old != nil && old.node == p.Spec.NodeName && maps.Equal(old.labels, p.Labels) && maps.Equal(old.annotations, p.Annotations) {
		return false
	}
	w.pods[p.UID] = &podInfo{namespace: p.Namespace, name: p.Name, uid: p.UID, node: p.Spec.NodeName, labels: p.Labels, annotations: p.Annotations}
	return true
}

// stripPod keeps the fields the allocator reads of a pod.
func stripPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, Annotations: p.Annotations, DeletionTimestamp: p.DeletionTimestamp, CreationTimestamp: p.CreationTimestamp},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}, nil
}

// readyBlip takes a node not Ready, then not Ready again with a newer
// transition of its Ready condition, as not Ready from at: it was Ready in
// between (a relist after a lost watch hides the blip), when its agent may
// have read it Ready and vouched for itself.
func (w *watcher) readyBlip(o, n *corev1.Node, at time.Time) {
	if !ready(o) && !ready(n) && readySince(n).After(readySince(o)) {
		w.mu.Lock()
		w.notReadySince[n.Name] = at
		w.mu.Unlock()
	}
}

// readySince is when the node's Ready condition last changed (zero
// without one).
func readySince(n *corev1.Node) time.Time {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.LastTransitionTime.Time
		}
	}
	return time.Time{}
}

func ready(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
