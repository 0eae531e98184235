package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
)

// PoolAnnotation on a pod, or on its namespace, names the pool its
// attachments use when the network config names none.
const PoolAnnotation = v1alpha1.PoolAnnotation

// InformerResolver resolves pools from informers: the pods of this node
// (field selector on spec.nodeName), all namespaces, and all IPPools. No
// API call is on an ADD's path unless the pod is not in the informer yet
// (a pod bound a moment ago), when one live GET decides.
type InformerResolver struct {
	node       string
	kube       kubernetes.Interface
	pods       listerscorev1.PodLister
	namespaces listerscorev1.NamespaceLister
	pools      cache.Indexer
	nodeLabels func() labels.Set
	synced     []cache.InformerSynced
	starters   []func(stop <-chan struct{})
	// LiveGetTimeout bounds the GET of a pod missing from the informer.
	LiveGetTimeout time.Duration
}

// NewInformerResolver builds the informers; Start starts them.
func NewInformerResolver(node string, kube kubernetes.Interface, wp *client.Clientset) *InformerResolver {
	nodeScoped := informers.NewSharedInformerFactoryWithOptions(kube, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
		}))
	cluster := informers.NewSharedInformerFactory(kube, 0)
	podInf := nodeScoped.Core().V1().Pods()
	nsInf := cluster.Core().V1().Namespaces()
	nodeInf := informers.NewSharedInformerFactoryWithOptions(kube, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", node).String()
		})).Core().V1().Nodes()
	poolInf := wp.PoolInformer()
	r := &InformerResolver{
		node: node, kube: kube,
		pods: podInf.Lister(), namespaces: nsInf.Lister(), pools: poolInf.GetIndexer(),
		synced:         []cache.InformerSynced{podInf.Informer().HasSynced, nsInf.Informer().HasSynced, poolInf.HasSynced, nodeInf.Informer().HasSynced},
		LiveGetTimeout: 2 * time.Second,
	}
	nodeLister := nodeInf.Lister()
	r.nodeLabels = func() labels.Set {
		if n, err := nodeLister.Get(node); err == nil {
			return n.Labels
		}
		return labels.Set{} // unknown node: only pools without a nodeSelector match
	}
	r.starters = []func(<-chan struct{}){nodeScoped.Start, cluster.Start, func(stop <-chan struct{}) { go poolInf.Run(stop) },
		func(stop <-chan struct{}) { go nodeInf.Informer().Run(stop) }}
	return r
}

// Start starts the informers, which run until ctx is done, and waits up to
// syncTimeout for their caches. The two bounds are apart on purpose: the
// informers must outlive the wait, or the caches freeze at start-up and
// namespaces, pools and node labels created or changed later are never
// seen.
func (r *InformerResolver) Start(ctx context.Context, syncTimeout time.Duration) error {
	for _, start := range r.starters {
		start(ctx.Done())
	}
	sctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if !cache.WaitForCacheSync(sctx.Done(), r.synced...) {
		return fmt.Errorf("pool resolver: caches not synced within %s: %w", syncTimeout, sctx.Err())
	}
	return nil
}

// Resolve implements PoolResolver: the netconf's pool, else the pod's
// annotation, else its namespace's, else the one pool whose selectors
// match the pod, its namespace and this node.
func (r *InformerResolver) Resolve(ctx context.Context, pod wire.Pod, netconfPool string) (string, *wire.Error) {
	if netconfPool != "" {
		return r.known(netconfPool, "the network config's ipam.pool")
	}
	p, werr := r.pod(ctx, pod)
	if werr != nil {
		return "", werr
	}
	ns, err := r.namespaces.Get(p.Namespace)
	if err != nil {
		return "", &wire.Error{Code: wire.CodePodNotFound, Msg: fmt.Sprintf("namespace %s of pod %s/%s is not known", p.Namespace, p.Namespace, p.Name), Details: err.Error()}
	}
	choice, err := r.selectPool(p, ns)
	switch {
	case errors.Is(err, v1alpha1.ErrNoPool):
		return "", &wire.Error{Code: wire.CodeNoPool, Msg: fmt.Sprintf("no IPPool selects pod %s/%s on node %s", p.Namespace, p.Name, r.node),
			Details: "set ipam.pool in the network config, the " + v1alpha1.PoolAnnotation + " annotation, or a pool's selectors"}
	case err != nil:
		return "", &wire.Error{Code: wire.CodeNoPool, Msg: fmt.Sprintf("several IPPools select pod %s/%s: %s", p.Namespace, p.Name, strings.Join(choice.Candidates, ", ")),
			Details: "name one with the " + v1alpha1.PoolAnnotation + " annotation or ipam.pool"}
	case choice.Source == "selectors":
		return choice.Name, nil
	}
	return r.known(choice.Name, choice.Source)
}

// selectPool applies the rules the allocator shares to what the informers
// hold.
func (r *InformerResolver) selectPool(p *corev1.Pod, ns *corev1.Namespace) (v1alpha1.PoolChoice, error) {
	var pools []*v1alpha1.IPPool
	for _, obj := range r.pools.List() {
		pools = append(pools, obj.(*v1alpha1.IPPool))
	}
	return v1alpha1.SelectPool(p.Annotations, p.Labels, ns.Annotations, ns.Labels, r.nodeLabels(), ns.Name, pools)
}

func (r *InformerResolver) known(name, source string) (string, *wire.Error) {
	if _, ok, _ := r.pools.GetByKey(name); !ok {
		return "", &wire.Error{Code: wire.CodeUnknownPool, Msg: fmt.Sprintf("pool %q, named by %s, does not exist", name, source),
			Details: "create the IPPool or fix the name"}
	}
	return name, nil
}

// pod finds the pod in the informer, or by one live GET when the informer
// has not seen it yet; a UID mismatch means the pod was re-created.
func (r *InformerResolver) pod(ctx context.Context, want wire.Pod) (*corev1.Pod, *wire.Error) {
	p, err := r.pods.Pods(want.Namespace).Get(want.Name)
	if apierrors.IsNotFound(err) {
		gctx, cancel := context.WithTimeout(ctx, r.LiveGetTimeout)
		defer cancel()
		p, err = r.kube.CoreV1().Pods(want.Namespace).Get(gctx, want.Name, metav1.GetOptions{})
	}
	switch {
	case apierrors.IsNotFound(err):
		return nil, &wire.Error{Code: wire.CodePodNotFound, Msg: fmt.Sprintf("pod %s/%s is not in the API", want.Namespace, want.Name),
			Details: "the runtime asked for a pod that does not exist (deleted meanwhile?)"}
	case err != nil:
		return nil, &wire.Error{Code: wire.CodeTryAgainLater, Msg: fmt.Sprintf("pod %s/%s could not be read", want.Namespace, want.Name), Details: err.Error()}
	case want.UID != "" && !HasUID(p, want.UID):
		return nil, &wire.Error{Code: wire.CodePodNotFound, Msg: fmt.Sprintf("pod %s/%s has UID %s, not %s: it was re-created", want.Namespace, want.Name, p.UID, want.UID)}
	}
	return p, nil
}

// NodeReadyProbe reads a node live from the API (never from a cache) and
// returns nil if it is Ready: the Bus's NodeReady.
func NodeReadyProbe(kube kubernetes.Interface, node string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read node %s: %w", node, err)
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("node %s is not Ready", node)
	}
}
