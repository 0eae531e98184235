package controlplane_test

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/warmpool/warmpool/internal/controlplane"
	"github.com/warmpool/warmpool/internal/testenv"
)

func readyNode(name string) *corev1.Node {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("32Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity,
			Conditions: []corev1.NodeCondition{{
				Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
			}},
		},
	}
}

// TestDeploymentPodsGetBound runs the controller-manager and the scheduler
// with the apiserver, registers two Ready nodes, creates a Deployment of 3
// replicas and waits until its 3 pods are bound to those nodes.
func TestDeploymentPodsGetBound(t *testing.T) {
	cp := testenv.ControlPlane(t, controlplane.Options{ControllerManager: true, Scheduler: true})
	cs, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	nodes := map[string]bool{"node-a": true, "node-b": true}
	for name := range nodes {
		if _, err := cs.CoreV1().Nodes().Create(ctx, readyNode(name), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Status is a subresource: Create ignores it. The node controllers
		// write to a new Node too, so the update retries on a conflict.
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			n.Status = readyNode(name).Status
			_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatalf("node %s status: %v", name, err)
		}
	}

	replicas := int32(3)
	labels := map[string]string{"app": "web"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "registry.invalid/web:1"}}},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	var bound []corev1.Pod
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, err
		}
		bound = bound[:0]
		for _, p := range pods.Items {
			if p.Spec.NodeName != "" {
				bound = append(bound, p)
			}
		}
		return len(pods.Items) == 3 && len(bound) == 3, nil
	})
	if err != nil {
		t.Fatalf("3 bound pods: %v (have %d bound)", err, len(bound))
	}
	for _, p := range bound {
		if !nodes[p.Spec.NodeName] {
			t.Errorf("pod %s bound to unknown node %q", p.Name, p.Spec.NodeName)
		}
	}
	t.Logf("3 pods created and bound in %s", time.Since(start).Round(time.Millisecond))
}
