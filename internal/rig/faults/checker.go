package faults

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/internal/inspect"
)

// checker watches the sources of truth while the scenario runs: the pods'
// reported addresses, the allocator's persisted NodeLeases, and each
// agent's store. The runtime checks acknowledged ADDs itself (it knows
// the instant), and the supervisor checks a dead agent's store.
type checker struct {
	w *world
	r *runtime
}

// watch samples every interval until ctx ends.
func (c *checker) watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := c.sample(ctx); err != nil {
			c.w.fail(err)
			return
		}
	}
}

// sample checks invariants 1 and 2 on one reading of each source. Reading
// errors (the apiserver restarting, an agent down) skip that source.
func (c *checker) sample(ctx context.Context) error {
	c.w.stats.count("samples")
	if err := c.podsShareNoAddress(ctx); err != nil {
		return err
	}
	if err := c.leasesShareNoUnit(ctx); err != nil {
		return err
	}
	return c.agentsShareNoUnit(ctx)
}

// podsShareNoAddress: no address is reported by two live pods (Running,
// not being deleted). One LIST is one instant of etcd's history, and the
// runtime clears a pod's addresses before it releases them.
func (c *checker) podsShareNoAddress(ctx context.Context) error {
	pods, err := c.w.kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil
	}
	owner := map[string]string{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || p.Status.Phase != "Running" {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			c.w.stats.add("addresses-checked", 1)
			if o, ok := owner[ip.IP]; ok {
				return fmt.Errorf("invariant 1: %s is reported by live pods %s and %s", ip.IP, o, p.Name)
			}
			owner[ip.IP] = p.Name
		}
	}
	return nil
}

// leasesShareNoUnit: no unit is in two nodes' leases (one LIST, one
// instant).
func (c *checker) leasesShareNoUnit(ctx context.Context) error {
	list, err := c.w.wp.NodeLeases().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil
	}
	for _, l := range list.Items {
		c.w.stats.add("addresses-checked", len(l.Spec.Units))
	}
	if shared := inspect.SharedLeaseUnits(list.Items); len(shared) > 0 {
		s := shared[0]
		return fmt.Errorf("invariant 2: %s is in the NodeLeases of %s and %s", s.Unit, s.Leases[0].Node, s.Leases[1].Node)
	}
	return nil
}

// agentsShareNoUnit: no unit is held by two agents that may use what they
// hold. A fenced agent (silent past its warm TTL, or not yet synced) uses
// nothing until a sync reconciles it, and its node's units may have been
// reclaimed by design; a dead agent uses nothing. The agents are read one
// after the other, so a suspect pair is read again: held at A's first
// reading, at B's, and at A's second means held by both at once.
func (c *checker) agentsShareNoUnit(ctx context.Context) error {
	states := c.readAgents(ctx)
	suspects := inspect.SharedAgentUnits(states)
	if len(suspects) == 0 {
		return nil
	}
	again := c.readAgents(ctx)
	for unit, nodes := range suspects { // two nodes or more each
		confirmed := 0
		for _, n := range nodes {
			if st := again[n]; st != nil && holds(st, unit) {
				confirmed++
			}
		}
		if confirmed >= 2 {
			return fmt.Errorf("invariant 2: unit %s is held by the agents of %s at once: %s", unit, strings.Join(nodes, " and "), describe(again, nodes, unit))
		}
	}
	return nil
}

// readAgents reads every serving, unfenced agent's record, by node.
func (c *checker) readAgents(ctx context.Context) map[string]*agent.State {
	out := map[string]*agent.State{}
	for _, a := range c.w.agents {
		st, err := agentState(ctx, a)
		if err != nil || st.Fenced != "" {
			continue
		}
		out[a.node] = st
	}
	return out
}

func holds(st *agent.State, id string) bool {
	return slices.ContainsFunc(st.Units, func(u store.Unit) bool { return u.ID == id })
}

func describe(states map[string]*agent.State, nodes []string, id string) string {
	var parts []string
	for _, n := range nodes {
		if st := states[n]; st != nil {
			for _, u := range st.Units {
				if u.ID == id {
					parts = append(parts, fmt.Sprintf("%s: %s %s", n, u.State, u.Attachment))
				}
			}
		}
	}
	return strings.Join(parts, "; ")
}

// checkStore is invariant 4, on an agent that just died: every ADD it
// acknowledged whose sandbox is still live is in its store, with the same
// unit.
func (w *world) checkStore(c *component) {
	snap, err := readStore(c)
	if err != nil {
		w.fail(fmt.Errorf("invariant 4: read the store of dead %s: %w", c.name, err))
		return
	}
	live := w.runtime.liveOn(c.node)
	for _, sb := range live {
		as, ok := snap.Assignments[sb.id+"/"+ifName]
		if !ok || as.UnitID != sb.v4 {
			w.fail(fmt.Errorf("invariant 4: %s acknowledged %s to sandbox %s of %s, but its store after the crash has %+v",
				c.name, sb.v4, sb.id, sb.pod.name, as))
			return
		}
	}
	// A DEL the agent recorded before it died reached the IPAM: the
	// address is free from then on, though its answer never came (the
	// runtime retries it). One it did not record still holds it.
	for _, sb := range w.runtime.deletingOn(c.node) {
		if _, ok := snap.Assignments[sb.id+"/"+ifName]; !ok {
			w.log.add("del", "%s: the DEL of sandbox %s was recorded by %s before it died", sb.pod.name, sb.id, c.name)
			w.runtime.release(sb)
		}
	}
	w.stats.count("stores-checked-after-crash")
	w.stats.add("assignments-checked-after-crash", len(live))
}

// notServing returns, for liveness once the faults have healed, the agents
// that cannot serve ADDs now and why: down, or fenced (the allocator and
// the bus are up, so a sync must reconcile each).
func (c *checker) notServing(ctx context.Context) map[string]string {
	out := map[string]string{}
	for _, a := range c.w.agents {
		st, err := agentState(ctx, a)
		switch {
		case err != nil:
			out[a.name] = err.Error()
		case st.Fenced != "":
			out[a.name] = "fenced: " + st.Fenced
		}
	}
	return out
}

// converged is invariant 3 once the faults have stopped: every unit of
// the pool is free (in no lease), or held by exactly the node whose lease
// lists it (the lease says only which node holds a unit; warm or assigned,
// and to which pod, is the agent's record); every assignment in the
// agents' stores is a live sandbox's, and every live sandbox's address is
// recorded by its node's agent; every pod Running with its address. It
// returns nil or what still disagrees.
func (c *checker) converged(ctx context.Context) error {
	if ok, why := c.r.quiet(); !ok {
		return errors.New(why)
	}
	list, err := c.w.wp.NodeLeases().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	leased := map[string][]v1alpha1.NodeLease{} // node -> its leases
	for _, l := range list.Items {
		leased[l.Spec.Node] = append(leased[l.Spec.Node], l)
	}
	live := map[string]*sandbox{} // attachment -> sandbox
	for _, a := range c.w.agents {
		for _, sb := range c.r.liveOn(a.node) {
			live[sb.id+"/"+ifName] = sb
		}
	}
	inLeases := 0
	for _, a := range c.w.agents {
		st, err := agentState(ctx, a)
		if err != nil {
			return fmt.Errorf("%s: %w", a.name, err)
		}
		if st.Fenced != "" {
			return fmt.Errorf("%s is fenced: %s", a.name, st.Fenced)
		}
		for _, l := range leased[a.node] {
			inLeases += len(l.Spec.Units)
		}
		// The same rule as kubectl-warmpool doctor's: the same units in
		// the node's leases and its agent's record (states are the
		// agent's alone); the agent's units first, then the lease's the
		// agent lacks.
		if ms := inspect.CompareHoldings(leased[a.node], st); len(ms) > 0 {
			switch m := ms[0]; {
			case m.Lease == nil && m.Agent != nil:
				return fmt.Errorf("%s holds %s (%s), which its NodeLease does not list", a.name, m.Unit, agentUnit(m.Agent))
			case m.Agent == nil:
				return fmt.Errorf("the NodeLease of %s lists %s, which its agent does not hold", a.node, m.Unit)
			default:
				return fmt.Errorf("%s and its NodeLease disagree on %s (agent: %s)", a.name, m.Unit, agentUnit(m.Agent))
			}
		}
		for _, as := range st.Assignments {
			sb, ok := live[as.Attachment]
			if !ok {
				return fmt.Errorf("%s assigns %s to %s (pod %s/%s), no live sandbox's (a leak)", a.name, as.UnitID, as.Attachment, as.Pod.Namespace, as.Pod.Name)
			}
			if sb.v4 != as.UnitID || sb.pod.node.node != a.node {
				return fmt.Errorf("%s assigns %s to %s, but that sandbox on %s got %s", a.name, as.UnitID, as.Attachment, sb.pod.node.node, sb.v4)
			}
			delete(live, as.Attachment)
		}
	}
	for att, sb := range live {
		return fmt.Errorf("sandbox %s of %s on %s has %s, which its agent does not record", att, sb.pod.name, sb.pod.node.node, sb.v4)
	}
	if inLeases > c.w.cfg.Peak {
		return fmt.Errorf("%d units in the leases of a %d-unit pool", inLeases, c.w.cfg.Peak)
	}
	c.w.stats.add("addresses-checked", c.w.cfg.Peak)
	return nil
}

// agentUnit describes an agent's unit: its state, and the attachment it
// is assigned to if any.
func agentUnit(u *store.Unit) string {
	if u.Attachment == "" {
		return string(u.State)
	}
	return fmt.Sprintf("%s to %s", u.State, u.Attachment)
}
