package controlplane_test

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

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
		if err := controlplane.RegisterNode(ctx, cs, name, nil); err != nil {
			t.Fatal(err)
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
