package controlplane_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// TestKeepNodeReady: with the node-lifecycle controller's grace period cut
// to 8 s, a registered node whose heartbeat nobody renews turns Unknown
// and is tainted unreachable, while one kept by KeepNodeReady stays Ready
// and untainted over the same time.
func TestKeepNodeReady(t *testing.T) {
	cp := testenv.ControlPlane(t, controlplane.Options{ControllerManager: true,
		ControllerManagerArgs: []string{"--node-monitor-grace-period=8s", "--node-monitor-period=1s"}})
	kube, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, n := range []string{"beating", "silent"} {
		if err := controlplane.RegisterNode(ctx, kube, n, nil); err != nil {
			t.Fatal(err)
		}
	}
	hctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- controlplane.KeepNodeReady(hctx, kube, "beating", time.Second) }()
	defer func() {
		stop()
		if err := <-done; err != context.Canceled {
			t.Errorf("heartbeat ended with %v, want context.Canceled", err)
		}
	}()

	state := func(name string) (corev1.ConditionStatus, bool) {
		n, err := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var st corev1.ConditionStatus
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				st = c.Status
			}
		}
		tainted := false
		for _, taint := range n.Spec.Taints {
			if taint.Key == corev1.TaintNodeUnreachable {
				tainted = true
			}
		}
		return st, tainted
	}
	start := time.Now()
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		st, tainted := state("silent")
		return st != corev1.ConditionTrue && tainted, nil
	}); err != nil {
		t.Fatalf("the silent node was never marked unreachable: %v", err)
	}
	t.Logf("silent node unreachable after %s", time.Since(start).Round(time.Second))
	if st, tainted := state("beating"); st != corev1.ConditionTrue || tainted {
		t.Fatalf("the node kept by KeepNodeReady: Ready=%s, unreachable taint %v; want Ready, untainted", st, tainted)
	}
}
