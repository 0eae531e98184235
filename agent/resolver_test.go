package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/internal/rig/child"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// TestInformerResolver resolves pools on a real apiserver: netconf pool,
// pod and namespace annotations, selectors (namespace, pod, node), and the
// errors for an unknown pool, no or several matching pools, and a missing
// or re-created pod.
func TestInformerResolver(t *testing.T) {
	cfg := testenv.APIServerWithCRDs(t)
	kube := kubernetes.NewForConfigOrDie(cfg)
	wp, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{"zone": "x"}}}, metav1.CreateOptions{}))
	for name, lbl := range map[string]map[string]string{"team-a": {"team": "a"}, "plain": nil} {
		must(kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbl}}, metav1.CreateOptions{}))
	}
	must(kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "annotated",
		Annotations: map[string]string{agent.PoolAnnotation: "pool-ns"}}}, metav1.CreateOptions{}))
	sel := func(k, v string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
	}
	for name, spec := range map[string]v1alpha1.IPPoolSpec{
		"pool-team-a": {IPv4: &v1alpha1.Subnet{CIDR: "10.1.0.0/24"}, NamespaceSelector: sel("team", "a")},
		"pool-app-b":  {IPv4: &v1alpha1.Subnet{CIDR: "10.2.0.0/24"}, PodSelector: sel("app", "b")},
		"pool-zone-y": {IPv4: &v1alpha1.Subnet{CIDR: "10.3.0.0/24"}, NodeSelector: sel("zone", "y")},
		"pool-ns":     {IPv4: &v1alpha1.Subnet{CIDR: "10.4.0.0/24"}, PodSelector: sel("nothing", "matches")},
		"pool-pod":    {IPv4: &v1alpha1.Subnet{CIDR: "10.5.0.0/24"}, PodSelector: sel("nothing", "matches")},
	} {
		must(wp.IPPools().Create(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}, metav1.CreateOptions{}))
	}
	pod := func(ns, name string, lbl, ann map[string]string) wire.Pod {
		t.Helper()
		p, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: lbl, Annotations: ann},
			Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/c:1"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return wire.Pod{Namespace: ns, Name: name, UID: string(p.UID)}
	}
	inTeamA := pod("team-a", "web", nil, nil)
	appB := pod("plain", "b", map[string]string{"app": "b"}, nil)
	lonely := pod("plain", "lonely", nil, nil)
	both := pod("team-a", "both", map[string]string{"app": "b"}, nil)
	annotatedPod := pod("plain", "ann", nil, map[string]string{agent.PoolAnnotation: "pool-pod"})
	inAnnotatedNS := pod("annotated", "x", nil, nil)

	r := agent.NewInformerResolver("node-1", kube, wp)
	if err := r.Start(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// The informers have listed; wait for the node, created before, to be seen too.
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		p, werr := r.Resolve(ctx, inTeamA, "")
		return werr == nil && p == "pool-team-a", nil
	}); err != nil {
		t.Fatalf("resolver never resolved the namespace-selected pool: %v", err)
	}
	for _, tc := range []struct {
		name    string
		pod     wire.Pod
		netconf string
		want    string
		code    uint
		msg     string
	}{
		{"netconf pool", lonely, "pool-app-b", "pool-app-b", 0, ""},
		{"netconf unknown pool", lonely, "nope", "", wire.CodeUnknownPool, `pool "nope", named by the network config's ipam.pool, does not exist`},
		{"namespace selector", inTeamA, "", "pool-team-a", 0, ""},
		{"pod selector", appB, "", "pool-app-b", 0, ""},
		{"pod annotation", annotatedPod, "", "pool-pod", 0, ""},
		{"namespace annotation", inAnnotatedNS, "", "pool-ns", 0, ""},
		{"no pool (node selector excludes zone-y)", lonely, "", "", wire.CodeNoPool, "no IPPool selects pod plain/lonely on node node-1"},
		{"several pools", both, "", "", wire.CodeNoPool, "several IPPools select pod team-a/both: pool-app-b, pool-team-a"},
		{"missing pod", wire.Pod{Namespace: "plain", Name: "ghost"}, "", "", wire.CodePodNotFound, "pod plain/ghost is not in the API"},
		{"re-created pod", wire.Pod{Namespace: "plain", Name: "lonely", UID: "old-uid"}, "", "", wire.CodePodNotFound, "it was re-created"},
	} {
		got, werr := r.Resolve(ctx, tc.pod, tc.netconf)
		switch {
		case tc.code == 0 && (werr != nil || got != tc.want):
			t.Errorf("%s: got %q, %v; want %q", tc.name, got, werr, tc.want)
		case tc.code != 0 && (werr == nil || werr.Code != tc.code || !strings.Contains(werr.Msg, tc.msg)):
			t.Errorf("%s: got %q, %+v; want code %d with %q", tc.name, got, werr, tc.code, tc.msg)
		}
	}
	// A pod created after the informers synced resolves at once, through
	// the live GET if the informer has not delivered it yet.
	fresh := pod("team-a", "fresh", nil, nil)
	if got, werr := r.Resolve(ctx, fresh, ""); werr != nil || got != "pool-team-a" {
		t.Errorf("fresh pod: %q, %v", got, werr)
	}

	// The leak GC's reads (Pods): the live read of the API, and the cache
	// once it has the pod.
	for _, tc := range []struct {
		name string
		pod  store.Pod
		gone bool
	}{
		{"a live pod", store.Pod{Namespace: "plain", Name: "b", UID: appB.UID}, false},
		{"a live pod, no UID on record", store.Pod{Namespace: "plain", Name: "b"}, false},
		{"a pod not in the API", store.Pod{Namespace: "plain", Name: "ghost", UID: "u"}, true},
		{"a re-created pod", store.Pod{Namespace: "plain", Name: "b", UID: "old-uid"}, true},
	} {
		if got, err := r.GoneLive(ctx, tc.pod); err != nil || got != tc.gone {
			t.Errorf("GoneLive of %s: %v, %v; want %v", tc.name, got, err, tc.gone)
		}
		if got := r.GoneCached(tc.pod); got != tc.gone {
			t.Errorf("GoneCached of %s: %v; want %v", tc.name, got, tc.gone)
		}
	}
}

// TestInformerResolverStartIsBoundedWithoutAnAPI: with no apiserver to
// list from, Start gives up after its sync timeout (not the informers'
// context, which stays open) with an error that says so.
func TestInformerResolverStartIsBoundedWithoutAnAPI(t *testing.T) {
	addr, err := child.FreeAddr() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	cfg := &rest.Config{Host: "http://" + addr}
	kube := kubernetes.NewForConfigOrDie(cfg)
	wp, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = agent.NewInformerResolver("node-1", kube, wp).Start(ctx, 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "caches not synced within 300ms") {
		t.Fatalf("Start without an API: %v, want the sync timeout's error", err)
	}
}
