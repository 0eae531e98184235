package faults

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/internal/rig/controlplane"
)

// Kind names a fault.
type Kind string

// The faults a scenario injects at random moments.
const (
	// LeaderKill: the leading allocator gets SIGKILL; the standby takes
	// over once the election Lease expires.
	LeaderKill Kind = "leader-kill"
	// LeaderFreeze: the leader is stopped (SIGSTOP) past its Lease, the
	// standby takes over, then the old leader resumes and sends what it
	// was sending: a deposed leader still alive (fencing).
	LeaderFreeze Kind = "leader-freeze"
	// AgentKill: a node's agent gets SIGKILL at a random moment and is
	// restarted; its store is checked before the restart.
	AgentKill Kind = "agent-kill"
	// NATSRestart: the NATS server stops and starts again on its port.
	NATSRestart Kind = "nats-restart"
	// AgentPartition: one agent's bus connection is cut for longer than
	// its miss timeout.
	AgentPartition Kind = "agent-partition"
	// NodeNotReady: a node turns NotReady past the node-loss grace period
	// while its agent is partitioned or dead, then comes back.
	NodeNotReady Kind = "node-notready"
	// NodeDelete: a node is deleted with its agent and its pods (no DEL:
	// the machine is gone), then registers again and its agent restarts
	// on its old store.
	NodeDelete Kind = "node-delete"
	// PodLeak: a pod is force-deleted and its sandbox never DEL'd (or
	// DEL'd late).
	PodLeak Kind = "pod-leak"
	// SandboxRestart: a pod's sandbox dies: DEL without the pod's
	// deletion, then a new sandbox is ADDed.
	SandboxRestart Kind = "sandbox-restart"
	// APIConflicts: for a few seconds half of the allocators' writes to
	// NodeLeases and IPPools are answered 409 Conflict.
	APIConflicts Kind = "api-conflicts"
	// APISlow: for a few seconds the allocators' writes are held before
	// they are sent, or their answers held, or lost after they landed.
	APISlow Kind = "api-slow"
	// APIRestart: kube-apiserver stops and starts again.
	APIRestart Kind = "apiserver-restart"
)

// AllKinds lists every fault.
var AllKinds = []Kind{LeaderKill, LeaderFreeze, AgentKill, NATSRestart, AgentPartition, NodeNotReady, NodeDelete, PodLeak, SandboxRestart,
	APIConflicts, APISlow, APIRestart}

// injector runs faults, at most one at a time per target: the allocator
// pair, the bus, each node.
type injector struct {
	w  *world
	wg sync.WaitGroup

	mu   sync.Mutex
	busy map[string]bool
	// unschedulable nodes get no new pods (NotReady or deleted).
	unschedulable map[string]bool
}

func newInjector(w *world) *injector {
	return &injector{w: w, busy: map[string]bool{}, unschedulable: map[string]bool{}}
}

// claim marks target busy; false if it already was.
func (f *injector) claim(target string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy[target] {
		return false
	}
	f.busy[target] = true
	return true
}

func (f *injector) free(target string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.busy, target)
}

func (f *injector) setSchedulable(node string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ok {
		delete(f.unschedulable, node)
	} else {
		f.unschedulable[node] = true
	}
}

// schedulable returns the nodes new pods may go to.
func (f *injector) schedulable() []*component {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*component
	for _, a := range f.w.agents {
		if !f.unschedulable[a.node] {
			out = append(out, a)
		}
	}
	return out
}

// inject starts a fault of kind in the background, unless its target is
// busy. ctx ending cuts the fault short; it heals in any case.
func (f *injector) inject(ctx context.Context, kind Kind) {
	w := f.w
	var target string
	var node *component
	switch kind {
	case LeaderKill, LeaderFreeze:
		target = "allocators"
	case NATSRestart:
		target = "nats"
	case APIConflicts, APISlow, APIRestart:
		target = "api"
	case AgentKill, AgentPartition, NodeNotReady, NodeDelete:
		node = w.agents[w.intn(len(w.agents))]
		target = node.node
	case PodLeak, SandboxRestart:
		running := w.runtime.running()
		if len(running) == 0 {
			return
		}
		p := running[w.intn(len(running))]
		cmd := cmdLeak
		if kind == SandboxRestart {
			cmd = cmdRestart
		}
		if w.runtime.tell(p, cmd) {
			w.stats.count("fault:" + string(kind))
			w.log.add("fault", "%s: %s on %s", kind, p.name, p.node.node)
		}
		return
	}
	if !f.claim(target) {
		return
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer f.free(target)
		if err := f.run(ctx, kind, node); err != nil && (ctx.Err() == nil || errors.Is(err, errHeal)) {
			// A fault cut short by the end of the churn healed itself;
			// only a fault that could not be injected or healed fails.
			w.fail(fmt.Errorf("fault %s: %w", kind, err))
		}
	}()
}

// heal is a context for undoing a fault even after the scenario's ended.
// Two minutes: an apiserver restarted on an overloaded machine has taken
// most of a minute to serve again (seed 93 in CI: TLS handshakes timing
// out), and a heal that gives up leaves a node down for good.
func heal() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Minute)
}

// errHeal marks a fault that could not be undone: the scenario fails on
// it, as the harness's failure, even once the churn has ended.
var errHeal = errors.New("could not heal")

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (f *injector) run(ctx context.Context, kind Kind, node *component) error {
	w := f.w
	switch kind {
	case LeaderKill:
		l := w.leader(ctx)
		if l == nil {
			return nil
		}
		w.stats.count("fault:" + string(kind))
		w.log.add("fault", "%s: SIGKILL %s", kind, l.name)
		w.kill(l)
	case LeaderFreeze:
		l := w.leader(ctx)
		if l == nil {
			return nil
		}
		p, _ := l.current()
		frozen := leaseDuration + w.between(500*time.Millisecond, 3*time.Second)
		w.stats.count("fault:" + string(kind))
		w.log.add("fault", "%s: SIGSTOP %s for %s", kind, l.name, frozen)
		_ = syscall.Kill(p.PID(), syscall.SIGSTOP)
		sleep(ctx, frozen)
		_ = syscall.Kill(p.PID(), syscall.SIGCONT)
		w.log.add("heal", "%s: SIGCONT %s (leader now: %v)", kind, l.name, nameOf(w.leader(context.Background())))
	case APIConflicts, APISlow:
		d := w.between(2*time.Second, 8*time.Second)
		w.stats.count("fault:" + string(kind))
		w.log.add("fault", "%s for %s", kind, d)
		mode := apiConflicts
		if kind == APISlow {
			mode = apiSlow
		}
		w.api.set(mode)
		sleep(ctx, d)
		w.api.set(apiPass)
		w.log.add("heal", "%s over", kind)
	case APIRestart:
		d := w.between(200*time.Millisecond, 3*time.Second)
		w.stats.count("fault:" + string(kind))
		w.log.add("fault", "%s: kube-apiserver down for %s", kind, d)
		hctx, cancel := heal()
		defer cancel()
		if err := w.cp.RestartAPIServer(hctx, d); err != nil {
			return fmt.Errorf("%w: kube-apiserver: %w", errHeal, err)
		}
		w.log.add("heal", "%s: kube-apiserver ready", kind)
	case AgentKill:
		w.stats.count("fault:" + string(kind))
		w.log.add("fault", "%s: SIGKILL %s", kind, node.name)
		w.kill(node)
	case NATSRestart:
		down := w.between(200*time.Millisecond, 3*time.Second)
		w.stats.count("fault:" + string(kind))
		w.log.add("fault", "%s: NATS down for %s", kind, down)
		w.natsMu.Lock()
		srv, port := w.nats, w.natsPort
		w.nats = nil
		w.natsMu.Unlock()
		srv.Shutdown()
		sleep(ctx, down)
		var err error
		for range 20 {
			if err = w.startNATS(port); err == nil {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("restart NATS on port %d: %w", port, err)
		}
		w.log.add("heal", "%s: NATS up", kind)
	case AgentPartition:
		d := missTimeout + w.between(time.Second, 4*time.Second)
		w.stats.count("fault:" + string(kind))
		w.log.add("fault", "%s: %s cut from the bus for %s", kind, node.name, d)
		node.natsProxy.Cut()
		sleep(ctx, d)
		node.natsProxy.Heal()
		w.log.add("heal", "%s: %s back on the bus", kind, node.name)
	case NodeNotReady:
		dead := w.intn(2) == 0
		d := nodeLossGrace + w.between(time.Second, 4*time.Second)
		w.stats.count("fault:" + string(kind))
		how := "its agent partitioned"
		if dead {
			how = "its agent dead"
		}
		w.log.add("fault", "%s: %s NotReady for %s, %s", kind, node.node, d, how)
		f.setSchedulable(node.node, false)
		defer f.setSchedulable(node.node, true)
		if err := w.setReady(ctx, node.node, false); err != nil {
			if ctx.Err() == nil {
				return err
			}
			// Cut short: the write may have landed. Undo it.
			hctx, cancel := heal()
			defer cancel()
			return w.setReady(hctx, node.node, true)
		}
		if dead {
			node.hold()
			w.kill(node)
		} else {
			node.natsProxy.Cut()
		}
		sleep(ctx, d)
		hctx, cancel := heal()
		defer cancel()
		err := w.setReady(hctx, node.node, true)
		// The agent comes back either way: its Node's status is the
		// harness's to fix, not a reason to keep the agent dead.
		if dead {
			node.release()
		} else {
			node.natsProxy.Heal()
		}
		if err != nil {
			return fmt.Errorf("%w: %s Ready: %w", errHeal, node.node, err)
		}
		w.log.add("heal", "%s: %s Ready", kind, node.node)
	case NodeDelete:
		d := nodeLossGrace + w.between(time.Second, 5*time.Second)
		w.stats.count("fault:" + string(kind))
		w.log.add("fault", "%s: %s deleted with its agent and pods for %s", kind, node.node, d)
		f.setSchedulable(node.node, false)
		defer f.setSchedulable(node.node, true)
		node.hold()
		w.kill(node)
		if err := persist(ctx, "delete node "+node.node, func(ctx context.Context) error {
			err := w.kube.CoreV1().Nodes().Delete(ctx, node.node, metav1.DeleteOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		}); err != nil && ctx.Err() == nil {
			node.release()
			return err
		}
		if ctx.Err() != nil {
			// Cut short before the node was surely deleted: bring it back.
			hctx, cancel := heal()
			defer cancel()
			_ = w.reregister(hctx, node.node)
			node.release()
			return nil
		}
		// The pod GC removes a deleted node's pods; nobody DELs them.
		for _, p := range w.runtime.onNode(node.node) {
			w.runtime.tell(p, cmdGone)
		}
		sleep(ctx, d)
		hctx, cancel := heal()
		defer cancel()
		err := w.reregister(hctx, node.node)
		node.release()
		if err != nil {
			return fmt.Errorf("%w: register %s again: %w", errHeal, node.node, err)
		}
		w.log.add("heal", "%s: %s registered again", kind, node.node)
	}
	return nil
}

// reregister registers a deleted node again, as its kubelet would when
// the machine comes back, through an apiserver restart.
func (w *world) reregister(ctx context.Context, node string) error {
	return persist(ctx, "register "+node+" again", func(ctx context.Context) error {
		err := controlplane.RegisterNode(ctx, w.kube, node, nil)
		if apierrors.IsAlreadyExists(err) {
			return w.setReady(ctx, node, true) // registered, its status not yet written
		}
		return err
	})
}

func nameOf(c *component) string {
	if c == nil {
		return "none"
	}
	return c.name
}

// armFailpoint arms a random failpoint in half of an agent's starts, to
// fire at its Nth pass (1-10).
func (w *world) armFailpoint(c *component) {
	if w.intn(2) == 0 || w.healed.Load() != 0 {
		return // none once the faults have healed: liveness is measured then
	}
	name := agent.Failpoints[w.intn(len(agent.Failpoints))]
	c.mu.Lock()
	c.failpoint = fmt.Sprintf("%s:%d", name, 1+w.intn(10))
	c.mu.Unlock()
}
