package agent

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
)

// podsOf is a Pods whose cache has lost every pod (it lags forever) and
// whose API holds the pods in live, by name; readErr fails live reads.
type podsOf struct {
	mu      sync.Mutex
	live    map[string]string // name -> UID
	readErr error
	reads   int
}

func (p *podsOf) GoneCached(store.Pod) bool { return true }

func (p *podsOf) GoneLive(_ context.Context, pod store.Pod) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reads++
	if p.readErr != nil {
		return false, p.readErr
	}
	uid, ok := p.live[pod.Name]
	return !ok || pod.UID != "" && uid != pod.UID, nil
}

// TestLeakGCNeverReleasesALivePod: the cache has lost the pods (it lags),
// so every pass suspects every assignment; the live read finds them, and
// nothing is released. A pod deleted is released at the second pass that
// suspects it, not the first, and only its assignment; a live read that
// fails releases nothing; an attachment whose assignment changed between
// the passes (its sandbox DELed, then ADDed for a new pod) is suspected
// afresh.
func TestLeakGCNeverReleasesALivePod(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 4)
	pods := &podsOf{live: map[string]string{"pod-c1": "uid-c1", "pod-c2": "uid-c2", "pod-c3": "uid-c3"}}
	f.agent.cfg.Pods = pods
	for _, c := range []string{"c1", "c2", "c3"} {
		mustAdd(t, f, c)
	}
	pass := func(what string, want int) {
		t.Helper()
		n, err := f.agent.CollectLeaks(ctx)
		if err != nil && !errors.Is(err, pods.readErr) {
			t.Fatalf("%s: %v", what, err)
		}
		if n != want {
			t.Fatalf("%s: %d released, want %d", what, n, want)
		}
	}
	held := func(c string) bool { return f.do(t, req(wire.OpCheck, c)).Error == nil }

	pass("first pass, a lagging cache", 0)
	pass("second pass: the live reads find every pod", 0)
	pods.mu.Lock()
	delete(pods.live, "pod-c1")
	delete(pods.live, "pod-c3")
	pods.readErr = errors.New("apiserver unreachable")
	pods.mu.Unlock()
	pass("c1 and c3 deleted: first sighting", 0)
	pass("second sighting, but the live read fails", 0)
	pods.mu.Lock()
	pods.readErr = nil
	pods.mu.Unlock()
	// c3's sandbox is DELed and the attachment ADDed again for a new pod
	// of that name, still running.
	if resp := f.do(t, req(wire.OpDel, "c3")); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	again := req(wire.OpAdd, "c3")
	again.Pod.UID = "uid-c3-new"
	if resp := f.do(t, again); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	pods.mu.Lock()
	pods.live["pod-c3"] = "uid-c3-new"
	pods.mu.Unlock()
	pass("the read answers: c1 is released; c3's new assignment is not", 1)
	if held("c1") || !held("c2") || !held("c3") {
		t.Fatalf("after the GC: c1 held %v, c2 %v, c3 %v; want only c1 released", held("c1"), held("c2"), held("c3"))
	}
	if n := testutil.ToFloat64(f.agent.metrics.reclaimed.WithLabelValues("dual")); n != 1 {
		t.Errorf("reclaimed_total %v, want 1", n)
	}
}

// TestGone: which pod states make an assignment a leak.
func TestGone(t *testing.T) {
	pod := func(uid, node string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid)}, Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: phase}}
	}
	// The kubelet passes a static pod's own UID; the API has its mirror,
	// with another UID and the static pod's in an annotation.
	mirror := func(uid, static string) *corev1.Pod {
		p := pod(uid, "n1", corev1.PodRunning)
		p.Annotations = map[string]string{"kubernetes.io/config.mirror": static}
		return p
	}
	for name, tc := range map[string]struct {
		p    *corev1.Pod
		ref  store.Pod
		want bool
	}{
		"same UID, running":              {pod("u1", "n1", corev1.PodRunning), store.Pod{UID: "u1"}, false},
		"re-created under another UID":   {pod("u2", "n1", corev1.PodRunning), store.Pod{UID: "u1"}, true},
		"finished":                       {pod("u1", "n1", corev1.PodSucceeded), store.Pod{UID: "u1"}, true},
		"failed":                         {pod("u1", "n1", corev1.PodFailed), store.Pod{UID: "u1"}, true},
		"no UID, same name on this node": {pod("u9", "n1", corev1.PodRunning), store.Pod{}, false},
		"no UID, same name unscheduled":  {pod("u9", "", corev1.PodPending), store.Pod{}, false},
		"no UID, same name elsewhere":    {pod("u9", "n2", corev1.PodRunning), store.Pod{}, true},
		"a static pod's mirror":          {mirror("mirror-uid", "static-uid"), store.Pod{UID: "static-uid"}, false},
		"another static pod's mirror":    {mirror("mirror-uid", "other-static-uid"), store.Pod{UID: "static-uid"}, true},
	} {
		if got := gone(tc.p, tc.ref, "n1"); got != tc.want {
			t.Errorf("%s: gone = %v, want %v", name, got, tc.want)
		}
	}
}
