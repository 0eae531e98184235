package allocator

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Election configures leader election through a coordination.k8s.io Lease.
type Election struct {
	Namespace, Name, Identity           string
	LeaseDuration, RenewDeadline, Retry time.Duration
}

// RunLeader runs lead while this process holds the Lease, with the leader
// epoch: the Lease's leaseTransitions + 1 when leadership was taken, which
// rises with every change of holder, so a successor's epoch is always
// higher than its predecessor's (allocator.New raises it further above any
// lease's). lead's context ends when leadership is lost. When lead returns,
// for whatever reason, leadership is released (a leader that cannot serve
// must not keep the Lease) and RunLeader returns lead's error once lead has
// finished. A process whose RunLeader returned should exit: a deposed
// leader's state is not to be reused.
func RunLeader(ctx context.Context, kube kubernetes.Interface, e Election, lead func(ctx context.Context, epoch uint64) error) error {
	if e.LeaseDuration == 0 {
		e.LeaseDuration, e.RenewDeadline, e.Retry = 15*time.Second, 10*time.Second, 2*time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lock := &termLock{Interface: &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: e.Namespace, Name: e.Name},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.Identity},
	}, lost: cancel}
	var (
		leadErr error
		began   atomic.Bool
		led     = make(chan struct{}) // closed when lead has returned
	)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   e.LeaseDuration,
		RenewDeadline:   e.RenewDeadline,
		RetryPeriod:     e.Retry,
		ReleaseOnCancel: true,
		Name:            e.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) {
				began.Store(true)
				defer close(led)
				defer cancel() // give the Lease up, whatever ended our term
				lease, err := kube.CoordinationV1().Leases(e.Namespace).Get(lctx, e.Name, metav1.GetOptions{})
				if err != nil {
					leadErr = fmt.Errorf("read the leader lease for the epoch: %w", err)
					return
				}
				if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != e.Identity {
					leadErr = fmt.Errorf("leader lease held by %v right after we took it", lease.Spec.HolderIdentity)
					return
				}
				var transitions int32
				if lease.Spec.LeaseTransitions != nil {
					transitions = *lease.Spec.LeaseTransitions
				}
				lock.begin(int(transitions))
				leadErr = lead(lctx, uint64(transitions)+1)
			},
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	le.Run(ctx)
	// Run returns when leadership ends or ctx does; if we led, wait for
	// lead to finish before reading its result.
	if !began.Load() {
		return ctx.Err()
	}
	<-led
	return leadErr
}

// termLock is the election lock of one term of leadership. client-go's
// elector keeps leading when a renewal acquires the Lease again after
// someone else held it (a leader paused past its Lease, whose successor
// released it before the pause ended), without telling us: our epoch would
// then be older than the successor's, every write of ours refused, and
// the Lease held by a leader that cannot serve. A renewal that would
// record a change of hands ends the term instead.
type termLock struct {
	resourcelock.Interface
	lost func()

	mu      sync.Mutex
	leading bool
	term    int // the Lease's leaseTransitions when the term began
}

func (l *termLock) begin(transitions int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leading, l.term = true, transitions
}

// Update writes a renewal, unless the Lease changed hands during the term.
func (l *termLock) Update(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	l.mu.Lock()
	leading, term := l.leading, l.term
	l.mu.Unlock()
	if leading && rec.LeaderTransitions != term {
		l.lost()
		return fmt.Errorf("leader lease changed hands during this term (transitions %d, the term began at %d): stepping down", rec.LeaderTransitions, term)
	}
	return l.Interface.Update(ctx, rec)
}
