package agent

import (
	"context"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/broker"
)

// The leak GC. An assignment whose pod is gone (deleted, re-created under
// a new UID, or finished) without a CNI DEL is a leak. The agent owns the
// assignments, so it collects them. The incumbents' worst bug is the
// opposite, a GC that frees an address still in use, so a leak is
// confirmed three times before anything is freed: the pod is absent from
// the informer at two passes apart, and then a live GET (namespace/name)
// finds no pod with that UID, or finds it finished. A confirmed leak is
// released as a DEL would be (the reuse delay applies) and reported.

// Pods tells whether the pod of an assignment is gone.
type Pods interface {
	// GoneCached reads a cache, which may lag (a pod bound a moment ago).
	GoneCached(p store.Pod) bool
	// GoneLive reads the API.
	GoneLive(ctx context.Context, p store.Pod) (bool, error)
}

// suspect is an assignment whose pod a pass found gone from the cache.
type suspect struct {
	pool, unit string
	pod        store.Pod
}

// CollectLeaks is one pass of the leak GC: it releases the assignments
// whose pods this pass and the one before found gone from the cache, and
// a live read confirms gone. It returns how many it released.
func (a *Agent) CollectLeaks(ctx context.Context) (int, error) {
	if a.cfg.Pods == nil {
		return 0, nil
	}
	a.mu.Lock()
	assignments := maps.Clone(a.assignments)
	a.mu.Unlock()
	a.leakMu.Lock()
	defer a.leakMu.Unlock()
	seen := map[string]suspect{}
	released := 0
	var firstErr error
	for key, as := range assignments {
		if !a.cfg.Pods.GoneCached(as.Pod) {
			continue
		}
		s := suspect{pool: as.Pool, unit: as.UnitID, pod: as.Pod}
		if a.suspects[key] != s {
			seen[key] = s // first sighting: confirmed at the next pass
			continue
		}
		gone, err := a.cfg.Pods.GoneLive(ctx, as.Pod)
		switch {
		case err != nil:
			// Unknown: keep the suspicion and ask again at the next pass.
			seen[key] = s
			if firstErr == nil {
				firstErr = err
			}
			continue
		case !gone:
			continue // the cache lags: the pod lives
		}
		ctr, ifname := broker.SplitAttachment(key)
		ok, werr := a.delIf(&wire.Request{Attachment: wire.Attachment{ContainerID: ctr, IfName: ifname}}, func(cur store.Assignment) bool {
			return cur.Pool == as.Pool && cur.UnitID == as.UnitID && cur.Pod.Same(as.Pod)
		}, "leaked assignment released: its pod is gone")
		if werr != nil {
			seen[key] = s
			if firstErr == nil {
				firstErr = fmt.Errorf("release leaked %s: %s", key, werr.Msg)
			}
			continue
		}
		if ok {
			released++
			a.metrics.reclaimed.WithLabelValues(as.Pool).Inc()
		}
	}
	a.suspects = seen
	return released, firstErr
}

// DefaultGCInterval is the leak GC's default period.
const DefaultGCInterval = 30 * time.Second

// RunLeakGC runs CollectLeaks every interval until ctx ends: a leak is
// released within about two intervals.
func (a *Agent) RunLeakGC(ctx context.Context, interval time.Duration) {
	every(ctx, interval, func() {
		if _, err := a.CollectLeaks(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("leak GC", "err", err)
		}
	})
}

// GoneCached implements Pods from the node's pod informer.
func (r *InformerResolver) GoneCached(p store.Pod) bool {
	pod, err := r.pods.Pods(p.Namespace).Get(p.Name)
	return err != nil || gone(pod, p, r.node)
}

// GoneLive implements Pods by a GET from the API, never a cache.
func (r *InformerResolver) GoneLive(ctx context.Context, p store.Pod) (bool, error) {
	gctx, cancel := context.WithTimeout(ctx, r.LiveGetTimeout)
	defer cancel()
	pod, err := r.kube.CoreV1().Pods(p.Namespace).Get(gctx, p.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("live GET of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return gone(pod, p, r.node), nil
}

// mirrorAnnotation on a static pod's mirror in the API holds the UID the
// kubelet gives the static pod (and passes in K8S_POD_UID); the mirror
// has a UID of its own.
const mirrorAnnotation = "kubernetes.io/config.mirror"

// HasUID says whether uid, as the runtime passed it, is pod's: its own, or
// for a static pod's mirror the static pod's.
func HasUID(pod *corev1.Pod, uid string) bool {
	return string(pod.UID) == uid || pod.Annotations[mirrorAnnotation] == uid
}

// gone reports whether pod, the pod named by p, is not the one p was
// assigned to on node, or has finished (its sandbox torn down by the
// kubelet). Without a UID (a runtime that did not pass K8S_POD_UID) a pod
// of that name is taken to be it unless it is bound to another node (a
// StatefulSet pod re-created elsewhere).
func gone(pod *corev1.Pod, p store.Pod, node string) bool {
	if p.UID != "" && !HasUID(pod, p.UID) {
		return true
	}
	if p.UID == "" && pod.Spec.NodeName != "" && pod.Spec.NodeName != node {
		return true
	}
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}
