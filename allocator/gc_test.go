package allocator

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
)

// TestGCNeverFreesALivePodBehindALaggingInformer: the allocator's pod
// informer has not seen a pod (it lags; here it never started), so the
// GC finds the pod's assignment "gone" at two passes; the live GET finds
// the pod, and nothing is freed. Once the pod is really deleted, two
// passes later the node's agent is asked to release exactly that
// assignment. An assignment without a pod UID (the runtime passed none)
// is never taken for a leak while a pod of its name exists.
func TestGCNeverFreesALivePodBehindALaggingInformer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs, conn, rc := newRig(t, ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"},
		Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/24"}}})
	kube := kubernetes.NewForConfigOrDie(rc)
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	a, err := New(ctx, Config{Client: cs, Bus: broker.NATS(conn), Kube: kube, Epoch: 1, Clock: clk, GCInterval: 30 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	// Informers built but never run: a pod informer that lags forever.
	a.watch = newWatcher(kube, cs, clk.Now, a.upsertPool, a.kick)
	a.started = clk.Now()

	pod, err := kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	units, _, _, err := a.grant(ctx, "p", "node-1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.applyEvents(ctx, "p", "node-1", []broker.Event{{Kind: broker.EventAssigned, Pool: "p", UnitID: units[0].ID,
		Attachment: "sandbox/net1", Pod: broker.Pod{Namespace: "default", Name: "web", UID: string(pod.UID)}}}); err != nil {
		t.Fatal(err)
	}
	// A runtime that passes no K8S_POD_UID: the assignment names the pod
	// only; a pod of that name exists, so it is not a leak.
	if _, err := kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Image: "x"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	more, _, _, err := a.grant(ctx, "p", "node-1", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.applyEvents(ctx, "p", "node-1", []broker.Event{{Kind: broker.EventAssigned, Pool: "p", UnitID: more[0].ID,
		Attachment: "sandbox-db/net1", Pod: broker.Pod{Namespace: "default", Name: "db"}}}); err != nil {
		t.Fatal(err)
	}
	asked := make(chan broker.Reclaim, 4)
	sub, err := conn.Subscribe(broker.SubjectReclaim("node-1"), func(m *nats.Msg) {
		var r broker.Reclaim
		_ = broker.Decode(m.Data, &r)
		asked <- r
		_ = m.Respond(broker.Encode(&broker.Reclaimed{V: broker.ProtocolVersion, IDs: []string{r.Items[0].UnitID}}))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	pass := func() {
		t.Helper()
		if err := a.collect(ctx); err != nil {
			t.Fatalf("collect: %v", err)
		}
		clk.Step(30 * time.Second)
	}
	pass() // gone from the informer: suspected
	pass() // again, but the live GET finds it: cleared
	if len(asked) != 0 {
		t.Fatalf("the GC asked to reclaim the address of a pod that exists: %+v", <-asked)
	}
	for _, u := range a.committedUnits("p", "node-1") {
		if u.State != v1alpha1.UnitAssigned {
			t.Fatalf("lease after two passes: %+v, want both units still assigned", u)
		}
	}

	if err := kube.CoreV1().Pods("default").Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	pass() // first observation of the pod gone: suspected only
	if len(asked) != 0 {
		t.Fatal("reclaimed at the first observation")
	}
	pass() // second observation, live GET: NotFound
	select {
	case r := <-asked:
		if r.Epoch != 1 || r.Pool != "p" || len(r.Items) != 1 || r.Items[0].UnitID != units[0].ID ||
			r.Items[0].Attachment != "sandbox/net1" || r.Items[0].PodUID != string(pod.UID) {
			t.Fatalf("reclaim request %+v, want unit %s of sandbox/net1, pod %s", r, units[0].ID, pod.UID)
		}
	default:
		t.Fatal("the deleted pod's assignment was not reclaimed at the second pass")
	}
}

// TestGone: which pod states make an assignment a leak candidate.
func TestGone(t *testing.T) {
	pod := func(uid, node string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid)}, Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: phase}}
	}
	for name, tc := range map[string]struct {
		p    *corev1.Pod
		ref  v1alpha1.PodRef
		want bool
	}{
		"same UID, running":              {pod("u1", "n1", corev1.PodRunning), v1alpha1.PodRef{UID: "u1"}, false},
		"re-created under another UID":   {pod("u2", "n1", corev1.PodRunning), v1alpha1.PodRef{UID: "u1"}, true},
		"finished":                       {pod("u1", "n1", corev1.PodSucceeded), v1alpha1.PodRef{UID: "u1"}, true},
		"no UID, same name on this node": {pod("u9", "n1", corev1.PodRunning), v1alpha1.PodRef{}, false},
		"no UID, same name unscheduled":  {pod("u9", "", corev1.PodPending), v1alpha1.PodRef{}, false},
		"no UID, same name elsewhere":    {pod("u9", "n2", corev1.PodRunning), v1alpha1.PodRef{}, true},
	} {
		if got := gone(tc.p, tc.ref, "n1"); got != tc.want {
			t.Errorf("%s: gone = %v, want %v", name, got, tc.want)
		}
	}
}
