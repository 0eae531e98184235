package allocator

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestReadyBlipHiddenByARelistRestartsNotReady: a node not Ready, then
// not Ready again with a newer transition (a relist after a lost watch
// hides that it was Ready in between, when its agent may have read it
// Ready) is not Ready from the update on, for the lost-node fence; an
// update that does not change the transition (a heartbeat) keeps the
// first time.
func TestReadyBlipHiddenByARelistRestartsNotReady(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	node := func(status corev1.ConditionStatus, since time.Time) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
			{Type: corev1.NodeReady, Status: status, LastTransitionTime: metav1.NewTime(since)}}}}
	}
	w := &watcher{notReadySince: map[string]time.Time{"n1": t0}}
	down := node(corev1.ConditionUnknown, t0)
	w.readyBlip(down, node(corev1.ConditionUnknown, t0), t0.Add(time.Minute))
	if got := w.notReadySince["n1"]; !got.Equal(t0) {
		t.Fatalf("after a heartbeat: not Ready since %v, want %v", got, t0)
	}
	w.readyBlip(down, node(corev1.ConditionFalse, t0.Add(2*time.Minute)), t0.Add(3*time.Minute))
	if got := w.notReadySince["n1"]; !got.Equal(t0.Add(3 * time.Minute)) {
		t.Fatalf("after a hidden Ready blip: not Ready since %v, want the update's time %v", got, t0.Add(3*time.Minute))
	}
}

// TestLockKeysOfAPoolCalledOrder: a node's order lock and its lease lock
// of a pool named "order" are two locks (they were one, and returnLost,
// which holds the first while it takes the second, waited on itself).
func TestLockKeysOfAPoolCalledOrder(t *testing.T) {
	a := newAllocator(Config{})
	unlockOrder := a.lockOrder("n1")
	taken := make(chan struct{})
	go func() {
		unlock := a.lockLease("order", "n1")
		unlock()
		close(taken)
	}()
	select {
	case <-taken:
	case <-time.After(10 * time.Second):
		t.Fatal("the lease lock of pool order on n1 waits for n1's order lock")
	}
	unlockOrder()
}
