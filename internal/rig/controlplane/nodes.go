package controlplane

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// RegisterNode creates a Node with labels and a Ready status and room for
// 110 pods, as a kubelet would register it. No kubelet renews it: the
// node-lifecycle controller taints it unreachable after ~40 s unless its
// Lease in kube-node-lease is renewed (KeepNodeReady).
func RegisterNode(ctx context.Context, kube kubernetes.Interface, name string, labels map[string]string) error {
	return Register(ctx, kube, Node{Name: name, Labels: labels})
}

// Node is what Register makes a Node of.
type Node struct {
	Name   string
	Labels map[string]string
	Taints []corev1.Taint
	// MaxPods is the node's pod capacity; 0 means the kubelet's default, 110.
	MaxPods int
}

// Register creates a Node as RegisterNode does, with taints and a pod
// capacity of its own.
func Register(ctx context.Context, kube kubernetes.Interface, node Node) error {
	name := node.Name
	if node.MaxPods == 0 {
		node.MaxPods = 110
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("32Gi"),
		corev1.ResourcePods:   *resource.NewQuantity(int64(node.MaxPods), resource.DecimalSI),
	}
	all := map[string]string{"kubernetes.io/hostname": name}
	for k, v := range node.Labels {
		all[k] = v
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: all}, Spec: corev1.NodeSpec{Taints: node.Taints}}
	if _, err := kube.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("register node %s: %w", name, err)
	}
	// Status is a subresource: Create ignores it. The node controllers
	// write to a new Node too, so the update retries on a conflict.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Capacity, n.Status.Allocatable = capacity, capacity
		n.Status.Conditions = []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
		}}
		_, err = kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("node %s status: %w", name, err)
	}
	return nil
}

// NodeLeaseNamespace holds the kubelets' heartbeat Leases.
const NodeLeaseNamespace = "kube-node-lease"

// KeepNodeReady does a kubelet's heartbeat for a registered node until ctx
// ends: it renews the node's Lease in kube-node-lease every interval (the
// kubelet's default is 10 s), which the node-lifecycle controller reads as
// the node being alive, and sets the Ready condition back to True if the
// controller marked it otherwise (after a pause longer than its grace
// period). It returns ctx's error, or the first error it cannot retry.
func KeepNodeReady(ctx context.Context, kube kubernetes.Interface, name string, interval time.Duration) error {
	leases := kube.CoordinationV1().Leases(NodeLeaseNamespace)
	seconds := int32(max(interval*4, time.Second) / time.Second)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		now := metav1.NewMicroTime(time.Now())
		l, err := leases.Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: NodeLeaseNamespace},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: &name, LeaseDurationSeconds: &seconds, RenewTime: &now}}, metav1.CreateOptions{})
		case err == nil:
			l.Spec.RenewTime = &now
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if err == nil {
			err = markReady(ctx, kube, name)
		}
		if err != nil && ctx.Err() == nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			return fmt.Errorf("heartbeat of node %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// markReady sets the node's Ready condition to True if it is not.
func markReady(ctx context.Context, kube kubernetes.Interface, name string) error {
	n, err := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for i, c := range n.Status.Conditions {
		if c.Type != corev1.NodeReady {
			continue
		}
		if c.Status == corev1.ConditionTrue {
			return nil
		}
		now := metav1.Now()
		n.Status.Conditions[i] = corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "simulated kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now}
		_, err = kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	}
	return nil
}
