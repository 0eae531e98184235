package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// TestAgentSeesObjectsCreatedAfterItStarted runs the real warmpool-agent
// binary, then changes what its pool resolver reads: a new namespace with a
// new IPPool selecting it, an IPPool whose namespace selector changes, and
// a node label a pool's node selector needs. A pod in each, bound to the
// node, must be served from its pool through libcni with a network config
// that names no pool, as the runtime retries an ADD. The agent's informers
// must live as long as the process, not as long as its start-up wait
// (they once stopped as soon as their caches had synced).
func TestAgentSeesObjectsCreatedAfterItStarted(t *testing.T) {
	const node = "node-late"
	sel := func(k, v string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
	}
	// The rig's pool selects no namespace of this test: a pod of it
	// resolves to exactly one pool, or none.
	base := dualPool(4, nil)
	base.Spec.NamespaceSelector = sel("team", "rig")
	c := newCluster(t, base)
	c.registerNode(node)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pool := func(name, cidr string, ns, nodes *metav1.LabelSelector) *v1alpha1.IPPool {
		return &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: cidr}, NamespaceSelector: ns, NodeSelector: nodes}}
	}
	namespace := func(t *testing.T, name, team string) {
		t.Helper()
		if _, err := c.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name,
			Labels: map[string]string{"team": team}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	createPool := func(t *testing.T, p *v1alpha1.IPPool) {
		t.Helper()
		if _, err := c.client.IPPools().Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Known before the agent starts: a namespace, a pool that does not
	// select it yet, and a pool for nodes with a label this one lacks.
	namespace(t, "billing", "billing")
	createPool(t, pool("billing", "10.61.0.0/24", sel("team", "nobody"), nil))
	namespace(t, "racked", "racked")
	createPool(t, pool("rack-r1", "10.62.0.0/24", sel("team", "racked"), sel("rack", "r1")))

	dir := t.TempDir()
	startAgent(t, testenv.Binary(t, "warmpool-agent"), c, node, dir)
	conf, err := libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"underlay","plugins":[{"type":"warmpool","ipam":{"type":"warmpool","socket":%q,"timeout":"10s"}}]}`,
		filepath.Join(dir, "agent.sock"))))
	if err != nil {
		t.Fatal(err)
	}
	// startAgent returned once the socket accepts: the agent's start-up
	// wait for its caches is over before anything below changes.
	cni := testenv.CNI(t, c.paths...)

	// served creates a pod bound to the node and runs its ADD until it
	// answers, as the runtime would; the address must be in cidr.
	served := func(t *testing.T, ns, name, cidr string) {
		t.Helper()
		p, err := c.kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/c:1"}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var res *types100.Result
		var last error
		if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			// The test's context, not the poll's: an ADD cut short by the
			// poll's deadline would hide the agent's last answer.
			r, err := cni.AddNetworkList(ctx, conf, podRT(p))
			if err == nil {
				res, err = types100.NewResultFromResult(r)
			}
			last = err
			return err == nil, nil
		}); err != nil {
			t.Fatalf("pod %s/%s was never served: last ADD: %v", ns, name, last)
		}
		prefix := netip.MustParsePrefix(cidr)
		if len(res.IPs) != 1 {
			t.Fatalf("pod %s/%s got %v, want one address of %s", ns, name, res.IPs, cidr)
		}
		if a, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4()); !prefix.Contains(a) {
			t.Fatalf("pod %s/%s got %s, not in %s", ns, name, a, cidr)
		}
		if err := cni.DelNetworkList(ctx, conf, podRT(p)); err != nil {
			t.Fatalf("DEL of pod %s/%s: %v", ns, name, err)
		}
	}

	t.Run("new namespace and pool", func(t *testing.T) {
		namespace(t, "payments", "payments")
		createPool(t, pool("payments", "10.60.0.0/24", sel("team", "payments"), nil))
		served(t, "payments", "underlay-app", "10.60.0.0/24")
	})
	t.Run("pool selector changed", func(t *testing.T) {
		patch := []byte(`{"spec":{"namespaceSelector":{"matchLabels":{"team":"billing"}}}}`)
		if _, err := c.client.IPPools().Patch(ctx, "billing", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		served(t, "billing", "invoicer", "10.61.0.0/24")
	})
	t.Run("node labelled", func(t *testing.T) {
		patch := []byte(`{"metadata":{"labels":{"rack":"r1"}}}`)
		if _, err := c.kube.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		served(t, "racked", "rack-app", "10.62.0.0/24")
	})
}
