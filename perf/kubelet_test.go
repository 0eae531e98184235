package perf

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// holdPlugin is a CNI plugin for the harness's own tests: it records each
// ADD's start and each DEL in dir, and holds the ADD of the pod named
// "slow" until dir/release exists.
const holdPlugin = `#!/bin/sh
dir=%q
pod=$(echo "$CNI_ARGS" | tr ';' '\n' | sed -n 's/^K8S_POD_NAME=//p')
case "$CNI_COMMAND" in
ADD)
	touch "$dir/add-$pod"
	if [ "$pod" = slow ]; then
		while [ ! -e "$dir/release" ]; do sleep 0.05; done
	fi
	echo '{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/24"}]}'
	;;
DEL)
	touch "$dir/del-$pod"
	;;
VERSION)
	echo '{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}'
	;;
esac
`

// TestATeardownDoesNotWaitForASetUp: with one worker per queue and that
// worker held by a pod whose ADD does not return, a deleted pod's DEL
// still runs, as a kubelet tears a pod down whatever another pod's
// sandbox is doing. With one queue for both, an ADD waiting for an
// address that only such a DEL frees would wait for ever.
func TestATeardownDoesNotWaitForASetUp(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "hold"), []byte(fmt.Sprintf(holdPlugin, dir)), 0o755); err != nil {
		t.Fatal(err)
	}
	conflist, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.0.0","name":"hold","plugins":[{"type":"hold"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{bin}, filepath.Join(dir, "cache"), newMeteredExec())

	kube := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(kube, 0)
	informer := factory.Core().V1().Pods().Informer()
	ks, err := newKubelets(kube, cni, informer, []string{"node-0"}, nil, false, false, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ks.nets.Store("bench", &network{ipam: "hold", lists: []*libcni.NetworkConfigList{conflist}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	factory.Start(stop)
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		t.Fatal("pod informer never synced")
	}
	kctx, kcancel := context.WithCancel(ctx)
	ks.run(kctx, 1)
	defer func() {
		_ = os.WriteFile(filepath.Join(dir, "release"), nil, 0o644)
		kcancel()
		ks.stop(ctx)
	}()

	exists := func(name string) func(context.Context) (bool, error) {
		return func(context.Context) (bool, error) {
			_, err := os.Stat(filepath.Join(dir, name))
			return err == nil, nil
		}
	}
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "bench", UID: types.UID("uid-" + name)},
			Spec: corev1.PodSpec{NodeName: "node-0"}}
	}
	if _, err := kube.CoreV1().Pods("bench").Create(ctx, pod("quick"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		ks.nodes["node-0"].mu.Lock()
		defer ks.nodes["node-0"].mu.Unlock()
		return ks.nodes["node-0"].sandboxes["bench/quick"] != nil, nil
	}); err != nil {
		t.Fatalf("pod quick never set up: %v", err)
	}
	if _, err := kube.CoreV1().Pods("bench").Create(ctx, pod("slow"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 30*time.Second, true, exists("add-slow")); err != nil {
		t.Fatalf("pod slow's ADD never started: %v", err)
	}
	if err := kube.CoreV1().Pods("bench").Delete(ctx, "quick", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 30*time.Second, true, exists("del-quick")); err != nil {
		t.Fatalf("pod quick's DEL waited for pod slow's ADD: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "release")); err == nil {
		t.Fatal("released too early: the test proves nothing")
	}
}
