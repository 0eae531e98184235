package inspect

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
)

// podOf gives a pod the form store.Pod.Same compares: the commands
// compare pods as the agent does. A runtime that does not pass
// K8S_POD_UID leaves a record without one, and the agent still takes it
// for that pod's; so must the commands, or they report a mismatch the
// agent never sees (or miss one it would).
func podOf(p *corev1.Pod) store.Pod {
	return store.Pod{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)}
}

// podFinished: the kubelet has torn the sandbox down, so no DEL will come.
func podFinished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// leakOf says whether the agents' leak GC (agent/leaks.go, gone)
// releases the assignment of ref on node, given p, the pod of that
// namespace and name (nil when there is none): the doctor's leak-* kind
// and why (said of the pod), or "" when it does not. It is the GC's
// rule, not a stricter one, so that what both commands call a leak is
// what the GC will reclaim.
// A pod being deleted but not finished is no leak (its DEL comes with
// its sandbox's teardown); a finished one is, deleted or not. Without a
// UID the pod of that name is taken to be it, unless bound to another
// node: a StatefulSet pod re-created elsewhere.
func leakOf(p *corev1.Pod, ref store.Pod, node string) (kind, why string) {
	switch {
	case p == nil:
		return KindLeakPodGone, "is gone"
	case ref.UID != "" && !agent.HasUID(p, ref.UID):
		return KindLeakPodReplaced, fmt.Sprintf("now has uid %s (re-created)", p.UID)
	case ref.UID == "" && p.Spec.NodeName != "" && p.Spec.NodeName != node:
		return KindLeakPodReplaced, fmt.Sprintf("is bound to node %q (re-created there; the record has no uid)", p.Spec.NodeName)
	case podFinished(p) && p.DeletionTimestamp != nil:
		return KindLeakPodFinished, fmt.Sprintf("has %s and is being deleted", p.Status.Phase)
	case podFinished(p):
		return KindLeakPodFinished, fmt.Sprintf("has %s", p.Status.Phase)
	}
	return "", ""
}
