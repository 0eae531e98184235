package allocator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// writeFault is what memLeases does with one write.
type writeFault int

const (
	writeOK       writeFault = iota
	writeRefused             // a Forbidden answer; nothing stored
	writeLost                // stored, and the answer lost (a transport error)
	writeDown                // nothing stored, a transport error (the API is down)
	writeLate                // a transport error now; stored when landLate is called, if it still can be
	writeConflict            // a Conflict answer; nothing stored (the fault suite's api-conflicts)
)

// memLeases is an in-memory Leases with the apiserver's rules the ledger
// leans on: a write at a stale resourceVersion is a Conflict, a create of
// a name that exists AlreadyExists, a read of a missing one NotFound;
// every stored write gets a new resourceVersion, and one that changes the
// spec a new generation. Its fault, if set, decides what becomes of each
// write: the failures an apiserver and a network give a client. Tests set
// fault directly while nothing else writes, or with setFault while an
// allocator's goroutines may.
type memLeases struct {
	mu     sync.Mutex
	objs   map[string]*v1alpha1.NodeLease
	rv     int64
	late   []func() // writes that will land late, in order
	writes int      // writes stored
	fault  func(verb, name string) writeFault
	// hold, if set, is called with each write before the write is looked
	// at, outside mu: a test blocks in it (until it closes a channel) to
	// hold one write in flight while every other request goes on, as an
	// apiserver slow to answer that write would. Set it with setHold.
	hold func(verb, name string)
}

var _ Leases = (*memLeases)(nil)

func newMemLeases() *memLeases { return &memLeases{objs: map[string]*v1alpha1.NodeLease{}} }

var leaseResource = schema.GroupResource{Group: v1alpha1.GroupName, Resource: "nodeleases"}

func (m *memLeases) List(context.Context, metav1.ListOptions) (*v1alpha1.NodeLeaseList, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := &v1alpha1.NodeLeaseList{ListMeta: metav1.ListMeta{ResourceVersion: strconv.FormatInt(m.rv, 10)}}
	for _, name := range slices.Sorted(maps.Keys(m.objs)) {
		out.Items = append(out.Items, *m.objs[name].DeepCopy())
	}
	return out, nil
}

func (m *memLeases) Get(_ context.Context, name string, _ metav1.GetOptions) (*v1alpha1.NodeLease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	nl, ok := m.objs[name]
	if !ok {
		return nil, apierrors.NewNotFound(leaseResource, name)
	}
	return nl.DeepCopy(), nil
}

func (m *memLeases) Create(_ context.Context, nl *v1alpha1.NodeLease, _ metav1.CreateOptions) (*v1alpha1.NodeLease, error) {
	return m.write("create", nl.DeepCopy())
}

func (m *memLeases) Update(_ context.Context, nl *v1alpha1.NodeLease, _ metav1.UpdateOptions) (*v1alpha1.NodeLease, error) {
	return m.write("update", nl.DeepCopy())
}

// setFault sets fault under the store's lock.
func (m *memLeases) setFault(f func(verb, name string) writeFault) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fault = f
}

// setHold sets hold (nil: writes are held no more).
func (m *memLeases) setHold(f func(verb, name string)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.hold = f
}

// every is a fault that does f to every write.
func every(f writeFault) func(verb, name string) writeFault {
	return func(string, string) writeFault { return f }
}

// inTurn is a fault that does fs to the next writes, one each, and lets
// the writes after them through.
func inTurn(fs ...writeFault) func(verb, name string) writeFault {
	return func(string, string) writeFault {
		if len(fs) == 0 {
			return writeOK
		}
		f := fs[0]
		fs = fs[1:]
		return f
	}
}

// write waits for hold, applies the fault, then stores nl if the rules
// allow it.
func (m *memLeases) write(verb string, nl *v1alpha1.NodeLease) (*v1alpha1.NodeLease, error) {
	m.mu.Lock()
	hold := m.hold
	m.mu.Unlock()
	if hold != nil {
		hold(verb, nl.Name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	f := writeOK
	if m.fault != nil {
		f = m.fault(verb, nl.Name)
	}
	switch f {
	case writeRefused:
		return nil, apierrors.NewForbidden(leaseResource, nl.Name, errors.New("refused by the test"))
	case writeDown:
		return nil, errors.New("connection refused (the test: API down)")
	case writeConflict:
		return nil, apierrors.NewConflict(leaseResource, nl.Name, errors.New("injected by the test"))
	case writeLate:
		m.late = append(m.late, func() { _, _ = m.storeLocked(verb, nl) })
		return nil, errors.New("client timeout (the test: the request is still in flight at the apiserver)")
	}
	out, err := m.storeLocked(verb, nl)
	if f == writeLost {
		return nil, errors.New("connection reset by peer (the test lost the answer)")
	}
	return out, err
}

func (m *memLeases) storeLocked(verb string, nl *v1alpha1.NodeLease) (*v1alpha1.NodeLease, error) {
	cur, exists := m.objs[nl.Name]
	switch {
	case verb == "create" && exists:
		return nil, apierrors.NewAlreadyExists(leaseResource, nl.Name)
	case verb == "update" && !exists:
		return nil, apierrors.NewNotFound(leaseResource, nl.Name)
	case verb == "update" && nl.ResourceVersion != cur.ResourceVersion:
		return nil, apierrors.NewConflict(leaseResource, nl.Name,
			fmt.Errorf("the object has been modified: resourceVersion %s, stored %s", nl.ResourceVersion, cur.ResourceVersion))
	}
	if exists && equality.Semantic.DeepEqual(cur.Spec, nl.Spec) && equality.Semantic.DeepEqual(cur.Labels, nl.Labels) &&
		equality.Semantic.DeepEqual(cur.Annotations, nl.Annotations) {
		return cur.DeepCopy(), nil // the apiserver stores nothing for a write that changes nothing
	}
	m.rv++
	nl.ResourceVersion = strconv.FormatInt(m.rv, 10)
	nl.Generation = 1
	if exists {
		nl.Generation = cur.Generation
		if !equality.Semantic.DeepEqual(cur.Spec, nl.Spec) {
			nl.Generation++
		}
	}
	m.objs[nl.Name] = nl
	m.writes++
	return nl.DeepCopy(), nil
}

// landLate lands the writes that writeLate held back, in order; each may
// now conflict, as a late write at the apiserver would.
func (m *memLeases) landLate() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, land := range m.late {
		land()
	}
	m.late = nil
}

// memPools is an in-memory Pools.
type memPools struct {
	mu   sync.Mutex
	objs map[string]*v1alpha1.IPPool
}

var _ Pools = (*memPools)(nil)

var poolResource = schema.GroupResource{Group: v1alpha1.GroupName, Resource: "ippools"}

func newMemPools(pools ...*v1alpha1.IPPool) *memPools {
	m := &memPools{objs: map[string]*v1alpha1.IPPool{}}
	for _, p := range pools {
		p = p.DeepCopy()
		p.ResourceVersion, p.Generation = "1", 1
		m.objs[p.Name] = p
	}
	return m
}

func (m *memPools) List(context.Context, metav1.ListOptions) (*v1alpha1.IPPoolList, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := &v1alpha1.IPPoolList{}
	for _, name := range slices.Sorted(maps.Keys(m.objs)) {
		out.Items = append(out.Items, *m.objs[name].DeepCopy())
	}
	return out, nil
}

func (m *memPools) Get(_ context.Context, name string, _ metav1.GetOptions) (*v1alpha1.IPPool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.objs[name]
	if !ok {
		return nil, apierrors.NewNotFound(poolResource, name)
	}
	return p.DeepCopy(), nil
}

func (m *memPools) UpdateStatus(_ context.Context, p *v1alpha1.IPPool, _ metav1.UpdateOptions) (*v1alpha1.IPPool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.objs[p.Name]
	switch {
	case !ok:
		return nil, apierrors.NewNotFound(poolResource, p.Name)
	case p.ResourceVersion != cur.ResourceVersion:
		return nil, apierrors.NewConflict(poolResource, p.Name, errors.New("the object has been modified"))
	}
	next := cur.DeepCopy()
	next.Status = *p.Status.DeepCopy()
	rv, _ := strconv.Atoi(cur.ResourceVersion)
	next.ResourceVersion = strconv.Itoa(rv + 1)
	m.objs[p.Name] = next
	return next.DeepCopy(), nil
}

// memAllocator is an allocator (not started) of a pool "p" over cidr on
// in-memory leases and pools and an in-memory bus: no apiserver, no NATS.
func memAllocator(t *testing.T, ctx context.Context, cidr string, cfg Config) (*Allocator, *memLeases, *broker.Network) {
	t.Helper()
	leases := newMemLeases()
	a, net := memAllocatorOn(t, ctx, leases, cidr, cfg)
	return a, leases, net
}

// storeLeases stores, at epoch 1, a lease of pool "p" for each node listing
// the given IPv4 addresses.
func storeLeases(t *testing.T, ctx context.Context, leases *memLeases, units map[string][]string) {
	t.Helper()
	for _, node := range slices.Sorted(maps.Keys(units)) {
		nl := &v1alpha1.NodeLease{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.NodeLeaseName("p", node)}, Spec: v1alpha1.NodeLeaseSpec{Pool: "p", Node: node, Epoch: 1}}
		for _, u := range units[node] {
			nl.Spec.Units = append(nl.Spec.Units, v1alpha1.LeasedUnit{IPv4: u})
		}
		if _, err := leases.Create(ctx, nl, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// memAllocatorOn is memAllocator on leases already stored.
func memAllocatorOn(t *testing.T, ctx context.Context, leases *memLeases, cidr string, cfg Config) (*Allocator, *broker.Network) {
	t.Helper()
	net := broker.NewNetwork()
	return memAllocatorOnNet(t, ctx, leases, net, cidr, cfg), net
}

// memAllocatorOnNet is memAllocatorOn on a bus already made: another
// allocator on the same leases and bus (a successor, on the API and the
// NATS of the leader it takes over from), its endpoint named after its
// epoch; its pools are a store of its own holding the same pool "p".
func memAllocatorOnNet(t *testing.T, ctx context.Context, leases *memLeases, net *broker.Network, cidr string, cfg Config) *Allocator {
	t.Helper()
	cfg.Leases, cfg.Bus = leases, net.Endpoint(fmt.Sprintf("allocator-%d", cfg.Epoch))
	cfg.Pools = newMemPools(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: cidr}}})
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	a, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestMemLeasesKeepsTheAPIServersRules holds the fake to the rules the
// ledger leans on, so that a test on it means what it would on the
// apiserver (TestLeaseWritesOnTheAPIServer checks the same on the real
// one).
func TestMemLeasesKeepsTheAPIServersRules(t *testing.T) {
	leaseRules(t, newMemLeases())
}

// TestLeaseWritesOnTheAPIServer runs leaseRules on a real apiserver.
func TestLeaseWritesOnTheAPIServer(t *testing.T) {
	cs, err := client.New(testenv.APIServerWithCRDs(t))
	if err != nil {
		t.Fatal(err)
	}
	leaseRules(t, cs.NodeLeases())
}

// leaseRules is what the ledger assumes of a lease store.
func leaseRules(t *testing.T, leases Leases) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lease := func(units ...string) *v1alpha1.NodeLease {
		nl := &v1alpha1.NodeLease{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.NodeLeaseName("p", "n1")}, Spec: v1alpha1.NodeLeaseSpec{Pool: "p", Node: "n1", Epoch: 1}}
		for _, u := range units {
			nl.Spec.Units = append(nl.Spec.Units, v1alpha1.LeasedUnit{IPv4: u})
		}
		return nl
	}
	name := lease().Name
	if _, err := leases.Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("Get of a missing lease: %v, want NotFound", err)
	}
	if _, err := leases.Update(ctx, lease(), metav1.UpdateOptions{}); err == nil {
		t.Fatal("Update of a missing lease succeeded")
	}
	first, err := leases.Create(ctx, lease("10.0.0.1"), metav1.CreateOptions{})
	if err != nil || first.ResourceVersion == "" || first.Generation != 1 {
		t.Fatalf("Create: %+v, %v; want a resourceVersion and generation 1", first, err)
	}
	if _, err := leases.Create(ctx, lease("10.0.0.2"), metav1.CreateOptions{}); !apierrors.IsAlreadyExists(err) {
		t.Fatalf("Create of an existing lease: %v, want AlreadyExists", err)
	}
	next := lease("10.0.0.1", "10.0.0.2")
	next.ResourceVersion = first.ResourceVersion
	second, err := leases.Update(ctx, next, metav1.UpdateOptions{})
	if err != nil || second.ResourceVersion == first.ResourceVersion || second.Generation != 2 {
		t.Fatalf("Update at the stored resourceVersion: %+v, %v; want a new resourceVersion and generation 2", second, err)
	}
	stale := lease("10.0.0.3")
	stale.ResourceVersion = first.ResourceVersion
	if _, err := leases.Update(ctx, stale, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Fatalf("Update at a stale resourceVersion: %v, want Conflict", err)
	}
	same := lease("10.0.0.1", "10.0.0.2")
	same.ResourceVersion = second.ResourceVersion
	third, err := leases.Update(ctx, same, metav1.UpdateOptions{})
	if err != nil || third.ResourceVersion != second.ResourceVersion || third.Generation != 2 {
		t.Fatalf("Update that changes nothing: %+v, %v; want nothing stored", third, err)
	}
	list, err := leases.List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 1 || len(list.Items[0].Spec.Units) != 2 {
		t.Fatalf("List: %+v, %v; want the one lease with 2 units", list, err)
	}
}
