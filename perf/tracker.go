package perf

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// tracker times the phases from the pod informer's events: when each pod
// of the namespace under test was first seen, became Running, and went.
// Times are taken as events arrive, so a phase ends at the event that
// completed it, not when its waiter woke.
type tracker struct {
	mu    sync.Mutex
	ns    string
	pods  map[types.UID]*podTimes
	phase *phaseWatch
}

type podTimes struct {
	name     string
	seen     time.Time
	running  time.Time // zero until Running
	deleting bool
	gone     bool
	ips      []string
}

// phaseWatch is one phase being timed.
type phaseWatch struct {
	name  string
	start time.Time
	// old holds the pods present when a re-create began: they do not count.
	old    map[types.UID]bool
	target int
	count  int
	curve  []Point
	end    time.Time
	done   chan struct{}
}

func newTracker(informer cache.SharedIndexInformer) (*tracker, error) {
	t := &tracker{pods: map[types.UID]*podTimes{}}
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { t.observe(obj, false) },
		UpdateFunc: func(_, obj any) { t.observe(obj, false) },
		DeleteFunc: func(obj any) { t.observe(obj, true) },
	})
	if err != nil {
		return nil, fmt.Errorf("pod handler: %w", err)
	}
	return t, nil
}

// follow makes ns the namespace under test, forgetting the last one.
func (t *tracker) follow(ns string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ns, t.pods, t.phase = ns, map[types.UID]*podTimes{}, nil
}

func (t *tracker) observe(obj any, deleted bool) {
	now := time.Now()
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj, deleted = d.Obj, true
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if pod.Namespace != t.ns {
		return
	}
	p := t.pods[pod.UID]
	if p == nil {
		p = &podTimes{name: pod.Name, seen: now}
		t.pods[pod.UID] = p
	}
	p.gone = p.gone || deleted
	p.deleting = p.deleting || pod.DeletionTimestamp != nil
	if p.running.IsZero() && pod.Status.Phase == corev1.PodRunning && !p.deleting {
		p.running = now
		p.ips = nil
		for _, ip := range pod.Status.PodIPs {
			p.ips = append(p.ips, ip.IP)
		}
	}
	t.updateLocked(now)
}

// countLocked is what the phase waits on: new pods Running (create,
// re-create) or pods left (delete).
func (t *tracker) countLocked() int {
	n := 0
	for uid, p := range t.pods {
		switch {
		case t.phase.name == PhaseDelete:
			if !p.gone {
				n++
			}
		case !t.phase.old[uid] && !p.running.IsZero() && !p.deleting && !p.gone:
			n++
		}
	}
	return n
}

func (t *tracker) updateLocked(now time.Time) {
	w := t.phase
	if w == nil || !w.end.IsZero() {
		return
	}
	n := t.countLocked()
	if n != w.count || len(w.curve) == 0 {
		w.count = n
		w.curve = append(w.curve, Point{At: now.Sub(w.start), Count: n})
	}
	if n == w.target {
		w.end = now
		close(w.done)
	}
}

// begin starts timing a phase that waits for target pods (Running, or
// left for delete) from now. A re-create counts only pods not present now.
func (t *tracker) begin(name string, target int) *phaseWatch {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := &phaseWatch{name: name, start: time.Now(), target: target, count: -1, done: make(chan struct{})}
	if name == PhaseRecreate {
		w.old = map[types.UID]bool{}
		for uid, p := range t.pods {
			if !p.gone {
				w.old[uid] = true
			}
		}
	}
	t.phase = w
	t.updateLocked(w.start)
	return w
}

// progress is the phase's current count.
func (t *tracker) progress(w *phaseWatch) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return max(w.count, 0)
}

// finish turns a completed (or abandoned) watch into a Phase.
func (t *tracker) finish(w *phaseWatch) Phase {
	t.mu.Lock()
	defer t.mu.Unlock()
	end := w.end
	if end.IsZero() {
		end = time.Now()
	}
	ph := Phase{Name: w.name, Start: w.start, Duration: end.Sub(w.start), Pods: w.target, Curve: slices.Clone(w.curve), APIWrites: -1}
	if w.name != PhaseDelete {
		var ds []time.Duration
		for uid, p := range t.pods {
			if !w.old[uid] && !p.running.IsZero() {
				ds = append(ds, p.running.Sub(p.seen))
			}
		}
		ph.TimeToRunning = percentiles(ds)
	}
	if t.phase == w {
		t.phase = nil
	}
	return ph
}

// sharedAddresses lists every address reported by two pods Running now,
// with the pods: an IPAM that lists any has handed one address out twice.
func (t *tracker) sharedAddresses() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	owner := map[string]string{}
	var dup []string
	for _, p := range t.pods {
		if p.running.IsZero() || p.deleting || p.gone {
			continue
		}
		for _, ip := range p.ips {
			if o, ok := owner[ip]; ok {
				dup = append(dup, fmt.Sprintf("%s (%s and %s)", ip, o, p.name))
			}
			owner[ip] = p.name
		}
	}
	slices.Sort(dup)
	return dup
}

// runningPods is the number of pods Running now, and how many of them
// have one IPv4 and one IPv6 address.
func (t *tracker) runningPods() (running, dual int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.pods {
		if p.running.IsZero() || p.deleting || p.gone {
			continue
		}
		running++
		var v4, v6 int
		for _, ip := range p.ips {
			if a, err := netip.ParseAddr(ip); err == nil && a.Is4() {
				v4++
			} else if err == nil {
				v6++
			}
		}
		if v4 == 1 && v6 == 1 {
			dual++
		}
	}
	return running, dual
}

func percentiles(ds []time.Duration) *Percentiles {
	if len(ds) == 0 {
		return nil
	}
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	return &Percentiles{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: ds[len(ds)-1]}
}
