package perf

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
)

// phaseTimeout bounds one phase: an IPAM that has not finished by then
// has failed the run.
func (b *bench) phaseTimeout() time.Duration {
	return 5*time.Minute + time.Duration(b.opts.Pods)*200*time.Millisecond
}

// run takes one IPAM through the three phases of a shape, in a namespace
// of its own.
func (b *bench) run(ctx context.Context, ipam string, shape Shape, rep int) Run {
	run := Run{IPAM: ipam, Shape: shape, Index: rep}
	ns := fmt.Sprintf("bench-%d-%s-%s", rep, shape.slug(), ipam)
	err := b.phases(ctx, &run, ns)
	if b.warmpool != nil && ipam == IPAMWarmpool {
		run.PeakRSS = b.warmpool.peakRSS()
	}
	if err != nil {
		run.Error = err.Error()
		b.bar.say("    %s %s run %d failed: %v", ipam, shape, rep+1, err)
		// Its pods would otherwise be torn down during the next runs,
		// taking their CPU and, at 1:1, warmpool's addresses.
		if err := b.drain(ctx, ns); err != nil {
			b.opts.Log.Warn("drain a failed run", "namespace", ns, "err", err)
		}
	}
	if err := b.deleteNamespace(ctx, ns); err != nil {
		b.opts.Log.Warn("delete namespace", "namespace", ns, "err", err)
	}
	return run
}

// deleteNamespace deletes a run's namespace and waits until it is gone:
// the namespace controller deletes what the run left (ReplicaSets, and
// thousands of Events), and that work would otherwise land on the next
// run's clock.
func (b *bench) deleteNamespace(ctx context.Context, ns string) error {
	// Deleted even when the benchmark is interrupted (on a cluster of
	// the user's, nothing else would); waited for only while it runs.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := b.kube.CoreV1().Namespaces().Delete(dctx, ns, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := b.kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		return fmt.Errorf("namespace %s still there: %w", ns, err)
	}
	return nil
}

func (b *bench) phases(ctx context.Context, run *Run, ns string) error {
	_, err := b.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
		Labels: map[string]string{ipamLabel: run.IPAM}}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("namespace %s: %w", ns, err)
	}
	b.kubelets.nets.Store(ns, b.networks[run.IPAM])
	b.tracker.follow(ns)
	actions := []struct {
		name string
		act  func(context.Context) error
	}{
		{PhaseCreate, func(ctx context.Context) error { return b.createDeployments(ctx, ns, run.Shape) }},
		{PhaseRecreate, func(ctx context.Context) error {
			if run.Shape.Pinned > 0 {
				return b.swapGroups(ctx, ns, run.Shape)
			}
			return b.deletePods(ctx, ns)
		}},
		{PhaseDelete, func(ctx context.Context) error {
			bg := metav1.DeletePropagationBackground
			return b.kube.AppsV1().Deployments(ns).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{})
		}},
	}
	for _, a := range actions {
		ph, err := b.phase(ctx, run, ns, a.name, a.act)
		if ph != nil {
			if err != nil {
				ph.Error = err.Error()
			}
			run.Phases = append(run.Phases, *ph)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", a.name, err)
		}
	}
	return nil
}

// phase times one phase: it starts watching, acts, and waits until the
// pods reach the phase's count; then it checks what the IPAM handed out
// and, for warmpool, waits for its record to settle before reading its
// counters.
func (b *bench) phase(ctx context.Context, run *Run, ns, name string, act func(context.Context) error) (*Phase, error) {
	var wp warmpoolCounts
	var err error
	subject := run.IPAM == IPAMWarmpool && b.warmpool != nil
	if subject {
		if wp, err = b.warmpool.counts(ctx); err != nil {
			return nil, err
		}
	}
	published, err := b.nats.Published()
	if err != nil {
		return nil, err
	}
	kc := b.kubelets.counts()
	cpu0, cpuErr := sampleCPU()
	target := b.opts.Pods
	if name == PhaseDelete {
		target = 0
	}
	w := b.tracker.begin(name, target)
	label := fmt.Sprintf("%s · %s · run %d/%d · %s", run.Shape, run.IPAM, run.Index+1, b.opts.Runs, name)
	bar := b.bar.start(label, b.opts.Pods, name == PhaseDelete)
	pctx, cancel := context.WithTimeout(ctx, b.phaseTimeout())
	defer cancel()
	err = act(pctx)
	if err == nil {
		err = b.wait(pctx, w, bar)
	}
	ph := b.tracker.finish(w)
	ph.Pods = b.opts.Pods // a delete waits for 0 left, of this many
	if cpu1, err := sampleCPU(); err == nil && cpuErr == nil {
		ph.CPU = cpu1.since(cpu0)
	}
	b.kubelets.timesSince(kc, &ph)
	bar.finish(ph.Duration, err == nil)
	if err != nil {
		return &ph, err
	}
	if name != PhaseDelete {
		if dup := b.tracker.sharedAddresses(); len(dup) > 0 {
			return &ph, fmt.Errorf("addresses given to two Running pods: %s", strings.Join(dup, ", "))
		}
		if running, dual := b.tracker.runningPods(); dual != running {
			return &ph, fmt.Errorf("%d of %d Running pods lack a dual-stack pair", running-dual, running)
		}
	}
	if subject {
		want := b.opts.Pods
		if name == PhaseDelete {
			want = 0
		}
		if err := b.warmpool.settle(ctx, ns, want); err != nil {
			return &ph, err
		}
		after, err := b.warmpool.counts(ctx)
		if err != nil {
			return &ph, err
		}
		ph.Hits, ph.Misses, ph.APIWrites = int(after.hits-wp.hits), int(after.misses-wp.misses), int(after.writes-wp.writes)
		ph.CoolingWaits = int(after.cooled - wp.cooled)
		ph.LeaseWrites = map[string]int{}
		for cause, n := range after.leaseWrites {
			if d := int(n - wp.leaseWrites[cause]); d > 0 {
				ph.LeaseWrites[cause] = d
			}
		}
		now, err := b.nats.Published()
		if err != nil {
			return &ph, err
		}
		ph.BusMessages = int(now - published)
	}
	kc2 := b.kubelets.counts()
	ph.ADDs, ph.ADDFailures = int(kc2.adds-kc.adds), int(kc2.addFailures-kc.addFailures)
	ph.DELs, ph.DELFailures = int(kc2.dels-kc.dels), int(kc2.delFailures-kc.delFailures)
	return &ph, nil
}

// wait blocks until the phase completes, updating the progress bar.
func (b *bench) wait(ctx context.Context, w *phaseWatch, bar *phaseBar) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-w.done:
			bar.set(b.tracker.progress(w))
			return nil
		case <-ctx.Done():
			n := b.tracker.progress(w)
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%d of %d pods after %s: %w", n, w.target, b.phaseTimeout(), ctx.Err())
			}
			return ctx.Err()
		case <-tick.C:
			bar.set(b.tracker.progress(w))
		}
	}
}

// pinnedDeployment names a pinned shape's Deployment of Pinned pods.
const pinnedDeployment = "pinned"

// createDeployments creates a shape's Deployments, ten at a time, as a
// kubectl apply of many objects would, a little faster.
func (b *bench) createDeployments(ctx context.Context, ns string, shape Shape) error {
	var ds []*appsv1.Deployment
	if shape.Pinned > 0 {
		ds = append(ds, deployment(pinnedDeployment, shape.Pinned, b.nodeGroup(shape, true)))
	}
	for i := range shape.Deployments {
		ds = append(ds, deployment(fmt.Sprintf("app-%03d", i), shape.Replicas, b.nodeGroup(shape, false)))
	}
	return inParallel(len(ds), 10, func(i int) error {
		_, err := b.kube.AppsV1().Deployments(ns).Create(ctx, ds[i], metav1.CreateOptions{})
		return err
	})
}

// nodeGroup returns the index labels of a pinned shape's first
// PinnedNodes nodes (first) or of the others; nil for a shape with
// nothing pinned.
func (b *bench) nodeGroup(shape Shape, first bool) []string {
	if shape.Pinned == 0 {
		return nil
	}
	var out []string
	for i := range b.opts.Nodes {
		if (i < shape.PinnedNodes) == first {
			out = append(out, strconv.Itoa(i))
		}
	}
	return out
}

// swapGroups is a pinned shape's re-create: the pinned Deployment moves
// to the other nodes and the others to its nodes. Their Recreate
// strategy deletes every old pod before it creates a new one, so at 1:1
// the units of the deleted pods must move to the other group.
func (b *bench) swapGroups(ctx context.Context, ns string, shape Shape) error {
	list, err := b.kube.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list deployments: %w", err)
	}
	return inParallel(len(list.Items), 10, func(i int) error {
		name := list.Items[i].Name
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			d, err := b.kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			d.Spec.Template.Spec.Affinity = onNodes(b.nodeGroup(shape, name != pinnedDeployment))
			_, err = b.kube.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{})
			return err
		})
	})
}

// inParallel calls fn for 0..n-1, at most limit at once, and joins the errors.
func inParallel(n, limit int, fn func(i int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	sem := make(chan struct{}, limit)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// drain deletes a namespace's Deployments and pods and waits until no pod
// is left.
func (b *bench) drain(ctx context.Context, ns string) error {
	bg := metav1.DeletePropagationBackground
	if err := b.kube.AppsV1().Deployments(ns).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{}); err != nil {
		return err
	}
	if err := b.deletePods(ctx, ns); err != nil {
		return err
	}
	return wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := b.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(pods.Items) == 0, nil
	})
}

// deletePods deletes every pod of ns at once, as kubectl delete pods
// --all does: a request per pod, many in flight. One DeleteCollection
// would do it in a single request that, for 1000 pods on a loaded
// apiserver, can outlast the apiserver's 60 s request timeout.
func (b *bench) deletePods(ctx context.Context, ns string) error {
	pods, err := b.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	return inParallel(len(pods.Items), 32, func(i int) error {
		p := &pods.Items[i]
		err := b.kube.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("delete pod %s: %w", p.Name, err)
		}
		return nil
	})
}

// deployment is one of the shape's Deployments: pods that go only to the
// simulated nodes, and of those only to nodes when it is not nil (then
// it is replaced by the Recreate strategy: see swapGroups).
func deployment(name string, replicas int, nodes []string) *appsv1.Deployment {
	n := int32(replicas)
	labels := map[string]string{"app": name}
	no := false
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &n,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:         []corev1.Container{{Name: "app", Image: "registry.invalid/bench:1"}},
					NodeSelector:       map[string]string{nodeLabel: "true"},
					Tolerations:        []corev1.Toleration{{Key: benchTaint, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
					EnableServiceLinks: &no,
					Affinity:           onNodes(nodes),
				},
			},
		},
	}
	if nodes != nil {
		d.Spec.Strategy.Type = appsv1.RecreateDeploymentStrategyType
	}
	return d
}

// onNodes is a node affinity to the simulated nodes of the given index
// labels; nil for none.
func onNodes(nodes []string) *corev1.Affinity {
	if nodes == nil {
		return nil
	}
	return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: indexLabel, Operator: corev1.NodeSelectorOpIn, Values: nodes}},
		}}},
	}}
}
