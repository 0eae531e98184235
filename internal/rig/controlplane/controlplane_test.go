package controlplane_test

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/warmpool/warmpool/internal/rig/controlplane"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// TestStartServeStop starts etcd and kube-apiserver, writes and reads an
// object through the returned config and the kubeconfig file, then checks
// that Stop leaves no process and no directory behind.
func TestStartServeStop(t *testing.T) {
	cp := testenv.ControlPlane(t, controlplane.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cs, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "probe"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != "v1.37.2" {
		t.Errorf("server version %s, want v1.37.2", v.GitVersion)
	}

	fromFile, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig())
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	cs2, err := kubernetes.NewForConfig(fromFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs2.CoreV1().Namespaces().Get(ctx, "probe", metav1.GetOptions{}); err != nil {
		t.Fatalf("read through kubeconfig: %v", err)
	}

	pids := cp.PIDs()
	if len(pids) != 2 {
		t.Fatalf("running components %v, want etcd and kube-apiserver", pids)
	}
	cp.Stop()
	for name, pid := range pids {
		// Signal 0 probes for existence; the process was reaped by Stop.
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			t.Errorf("%s (pid %d) still exists after Stop: %v", name, pid, err)
		}
	}
	if len(cp.PIDs()) != 0 {
		t.Errorf("PIDs after Stop: %v", cp.PIDs())
	}
	if _, err := os.Stat(cp.Dir()); !os.IsNotExist(err) {
		t.Errorf("working directory %s still exists after Stop (%v)", cp.Dir(), err)
	}
}

// TestStartFailsOnBadBinary shows a component that cannot start fails Start
// with its name, rather than hanging until the timeout.
func TestStartFailsOnBadBinary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := controlplane.Start(ctx, controlplane.Options{EtcdBinary: "/bin/false", KubeBinary: "/bin/false"})
	if err == nil {
		t.Fatal("Start with /bin/false as etcd succeeded")
	}
	t.Logf("error, as expected: %v", err)
}
