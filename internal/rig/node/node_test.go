package node

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/warmpool/warmpool/internal/rig/gobuild"
	"github.com/warmpool/warmpool/manifests/images"
)

// The real node changes the machine (links, iptables rules, /opt/cni,
// /etc/cni) while it runs, and one runs at a time: `make test-node` asks
// for it.
var realNode = flag.Bool("node", false, "run the tests on a real node (make test-node); they change the machine's network and host paths while they run, and undo it")

const (
	appImage   = "warmpool.test/app:rig"
	pauseImage = "warmpool.test/pause:rig"
)

// buildImages builds the node's images as tarballs: the rig's app (also
// the sandbox's pause) and warmpool's two, as make images does.
func buildImages(t *testing.T) []string {
	t.Helper()
	ctx := context.Background()
	bin, out := t.TempDir(), t.TempDir()
	if err := gobuild.Build(ctx, bin, "./internal/rig/node/app", "./cmd/warmpool", "./cmd/warmpool-agent", "./cmd/warmpool-allocator"); err != nil {
		t.Fatal(err)
	}
	var paths []string
	write := func(s images.Spec, refs ...string) {
		img, err := s.Build(images.Options{BinDir: bin})
		if err != nil {
			t.Fatal(err)
		}
		var tags []name.Tag
		for _, r := range refs {
			tag, err := name.NewTag(r)
			if err != nil {
				t.Fatal(err)
			}
			tags = append(tags, tag)
		}
		path := filepath.Join(out, s.Name+".tar")
		if err := images.Write(path, img, tags...); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, path)
	}
	write(images.Spec{Name: "app", Binaries: []string{"app"}, User: "0:0"}, appImage, pauseImage)
	return paths
}

func TestANodeComesUpServesAPodAndLeavesNoTrace(t *testing.T) {
	if !*realNode {
		t.Skip("a real node changes the machine while it runs: make test-node (-node)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	imgs := buildImages(t)
	existed := map[string]bool{}
	for _, d := range hostPaths {
		_, err := os.Stat(d)
		existed[d] = err == nil
	}
	start := time.Now()
	n, err := Start(ctx, Options{Images: imgs, PauseImage: pauseImage})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			n.Stop()
		}
	}()
	t.Logf("node %s Ready in %s", n.Name(), time.Since(start).Round(time.Second))

	kube := n.kube
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "default"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: appImage, ImagePullPolicy: corev1.PullIfNotPresent,
		}}},
	}
	// The default ServiceAccount comes from the controller-manager.
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := kube.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	var last *corev1.Pod
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, "app", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p
		return p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "", nil
	}); err != nil {
		t.Fatalf("pod not Running: %v; last %+v; logs in %s", err, last.Status, n.LogDir())
	}
	t.Logf("pod Running at %s", last.Status.PodIP)

	n.Stop()
	stopped = true
	for _, l := range []string{nodeLink, UnderlayLink, bridgeLink} {
		if exec.Command("ip", "link", "show", l).Run() == nil {
			t.Errorf("link %s is left after Stop", l)
		}
	}
	for _, d := range hostPaths {
		if _, err := os.Stat(d); err == nil && !existed[d] {
			t.Errorf("%s is left after Stop", d)
		}
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat", "mangle"} {
			out, err := exec.Command(ipt, "-t", table, "-S").Output()
			if err != nil {
				t.Fatal(err)
			}
			if c := newChains(string(out), nil); len(c) > 0 {
				t.Errorf("%s table %s: chains %v left after Stop", ipt, table, c)
			}
		}
	}
}
