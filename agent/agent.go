// Package agent is the per-node daemon. It serves the CNI plugin's socket,
// owns the node's warm cache (the units of each pool leased to this node
// and not assigned), records every assignment in its bbolt store before ADD
// returns, takes DELs into the cache after a reuse delay, and rebuilds from
// the store on restart.
//
// Concurrency: ADD, DEL and CHECK of one attachment (containerID/ifname) are
// serialised by a per-attachment lock; the cache is guarded by Agent.mu,
// which is never held across a store commit, an API call or a bus round
// trip. Store commits of concurrent ADDs share one fsync.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	cnitypes "github.com/containernetworking/cni/pkg/types"
	cniutils "github.com/containernetworking/cni/pkg/utils"

	"golang.org/x/sync/singleflight"

	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/keyed"
	"github.com/warmpool/warmpool/internal/logkey"
)

// DefaultReuseDelay is how long a released unit cools before it is warm
// again: neighbours on the underlay may still hold the old pod's MAC in
// their ARP/ND caches, and a new pod answering on that address too soon
// gets its traffic misdelivered. 1 s covers a gratuitous-ARP-refreshed cache
// and costs little in a re-creation burst.
const DefaultReuseDelay = time.Second

// PoolResolver picks the pool of a pod's attachment: the netconf's pool if
// set, else the pod's or its namespace's annotation, else the pools whose
// selectors match. It returns a wire error (unknown pool, no pool, pod not
// found) that the plugin passes to the runtime.
type PoolResolver interface {
	Resolve(ctx context.Context, pod wire.Pod, netconfPool string) (string, *wire.Error)
}

// Allocator is the agent's view of the cluster allocator: the cache-miss
// path. Miss asks for count units of pool for this node and returns them
// once the allocator has persisted the lease. CanServe reports whether a
// miss of pool could be served now: the allocator is reachable and did not
// last say the pool is exhausted.
type Allocator interface {
	Miss(ctx context.Context, pool string, count int) ([]store.Unit, store.Pool, int64, error)
	CanServe(pool string) bool
	// Fenced says why warm units must not be used now (the allocator has
	// not answered for too long), or nil.
	Fenced() error
}

// Errors an Allocator returns from Miss.
var (
	// ErrPoolExhausted: the pool has no free unit anywhere.
	ErrPoolExhausted = errors.New("pool exhausted")
	// ErrBusy: nothing could be granted now, but units may be freed
	// shortly (revokes under way); the agent asks again until its miss
	// timeout.
	ErrBusy = errors.New("allocator busy")
)

// Config configures an agent.
type Config struct {
	Node      string
	Store     *store.Store
	Resolver  PoolResolver
	Allocator Allocator // nil: no miss path (every miss fails at once)
	// Pods, if set, lets the leak GC (CollectLeaks) tell whether an
	// assignment's pod is gone.
	Pods       Pods
	ReuseDelay time.Duration
	// MissTimeout bounds a cache miss's wait for the allocator: an ADD's
	// waits together (with a unit's reuse delay) take at most
	// ReuseDelay + MissTimeout.
	MissTimeout time.Duration
	// Now is the clock; time.Now in production, a fake in tests.
	Now    func() time.Time
	Logger *slog.Logger
	// OnEvent is told of every assignment and release once persisted, in
	// order per attachment; the bus reports them to the allocator. It must
	// not block.
	OnEvent func(broker.Event)
	// Failpoint, if set, is called at the named steps (the Failpoint*
	// constants) of ADD, DEL, recycling, grants and revokes: the fault
	// suite kills the agent there.
	Failpoint func(name string)
}

// The failpoints: each names the step after which a crash is the hardest
// to recover from.
const (
	FailpointAddBeforePersist   = "add-before-persist"    // a unit popped, nothing recorded
	FailpointAddAfterPersist    = "add-after-persist"     // assignment committed, ADD not answered
	FailpointDelBeforePersist   = "del-before-persist"    // DEL received, release not recorded
	FailpointDelAfterPersist    = "del-after-persist"     // release committed, DEL not answered, not reported
	FailpointRecycle            = "recycle-after-persist" // units re-warmed on disk, not in memory
	FailpointGrantAfterPersist  = "grant-after-persist"   // grant recorded, not acknowledged
	FailpointRevokeAfterPersist = "revoke-after-persist"  // units dropped, the allocator not told
)

// Failpoints lists every failpoint.
var Failpoints = []string{FailpointAddBeforePersist, FailpointAddAfterPersist, FailpointDelBeforePersist,
	FailpointDelAfterPersist, FailpointRecycle, FailpointGrantAfterPersist, FailpointRevokeAfterPersist}

func (a *Agent) failpoint(name string) {
	if a.cfg.Failpoint != nil {
		a.cfg.Failpoint(name)
	}
}

// Agent is the node agent's state and CNI operations.
type Agent struct {
	cfg   Config
	store *store.Store
	log   *slog.Logger

	locks   keyed.Mutex
	metrics *metrics

	// recordMu serialises the changes to the node's holdings that come
	// from the allocator (Grant, Revoke, Reconcile), each across its store
	// write and its memory update, so memory and bbolt never diverge.
	recordMu sync.Mutex
	// recycleMu serialises Recycle.
	recycleMu sync.Mutex

	mu          sync.Mutex
	pools       map[string]store.Pool
	units       map[store.Key]store.Unit
	warm        map[string][]store.Key // per pool, oldest-warm first
	assignments map[string]store.Assignment
	epoch       uint64
	// grantedAt is the lease generation a unit was granted at (0: loaded
	// from the store); revokedAt the generation at which the node gave a
	// unit back. A message listing a unit at a generation not newer than
	// its revokedAt is stale; a sync reply older than a unit's grantedAt
	// cannot have listed it.
	grantedAt map[store.Key]int64
	revokedAt map[store.Key]int64
	// missing counts the ADDs of each pool waiting on a miss; misses
	// shares one request among them.
	missing map[string]int
	misses  singleflight.Group
	// coolWaiters counts the ADDs of each pool waiting for a cooling unit.
	coolWaiters map[string]int
	// leakMu serialises the leak GC's passes; suspects are the
	// assignments (by attachment) whose pods its last pass found gone.
	leakMu   sync.Mutex
	suspects map[string]suspect
	// served counts this run's assignments per pool, hits and misses: the
	// pool's hit rate is the agent's fact, sent in full with every report
	// and sync (broker.Served).
	served map[string]broker.Served
}

// New builds an agent from its store: what the store says the node holds
// is the cache (a restart loses nothing that was acknowledged).
func New(cfg Config) (*Agent, error) {
	if cfg.Node == "" || cfg.Store == nil || cfg.Resolver == nil {
		return nil, errors.New("agent: Node, Store and Resolver are required")
	}
	if cfg.ReuseDelay < 0 {
		return nil, fmt.Errorf("agent: negative reuse delay %s", cfg.ReuseDelay)
	}
	if cfg.MissTimeout == 0 {
		cfg.MissTimeout = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	snap, err := cfg.Store.Load()
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:         cfg,
		store:       cfg.Store,
		log:         cfg.Logger.With("node", cfg.Node),
		pools:       snap.Pools,
		units:       snap.Units,
		warm:        map[string][]store.Key{},
		served:      map[string]broker.Served{},
		assignments: snap.Assignments,
		epoch:       snap.Epoch,
		grantedAt:   map[store.Key]int64{},
		revokedAt:   map[store.Key]int64{},
		missing:     map[string]int{},
		coolWaiters: map[string]int{},
	}
	a.metrics = newMetrics(a)
	keys := make([]store.Key, 0, len(snap.Units))
	for k, u := range snap.Units {
		if u.State == store.Warm {
			keys = append(keys, k)
		}
	}
	// A stable order makes a restarted agent hand out what it would have.
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].Pool < keys[j].Pool || keys[i].Pool == keys[j].Pool && keys[i].ID < keys[j].ID
	})
	for _, k := range keys {
		a.warm[k.Pool] = append(a.warm[k.Pool], k)
	}
	a.log.Info("agent state loaded", "units", len(snap.Units), "warm", len(keys), "assignments", len(snap.Assignments), "epoch", snap.Epoch)
	return a, nil
}

// Grant adds units of pool, granted at lease generation gen, to the node's
// cache, persisted first. Units the node gave back at a generation not
// older than gen are stale and skipped. It is the allocator's push; tests
// call it directly (gen 0 is "no generation").
func (a *Agent) Grant(pool store.Pool, units []store.Unit, gen int64) error {
	a.recordMu.Lock()
	defer a.recordMu.Unlock()
	return a.grantRecordLocked(pool, units, gen)
}

// grantRecordLocked is Grant; the caller holds recordMu.
func (a *Agent) grantRecordLocked(pool store.Pool, units []store.Unit, gen int64) error {
	a.mu.Lock()
	fresh := make([]store.Unit, 0, len(units))
	for _, u := range units {
		if r, revoked := a.revokedAt[u.Key()]; revoked && gen <= r {
			continue
		}
		fresh = append(fresh, u)
	}
	a.mu.Unlock()
	if err := a.store.PutPool(pool); err != nil {
		return fmt.Errorf("grant to %s: %w", pool.Name, err)
	}
	if err := a.store.Grant(fresh); err != nil {
		return fmt.Errorf("grant to %s: %w", pool.Name, err)
	}
	if len(fresh) > 0 {
		a.failpoint(FailpointGrantAfterPersist)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pools[pool.Name] = pool
	for _, u := range fresh {
		k := u.Key()
		if gen > a.grantedAt[k] {
			a.grantedAt[k] = gen
		}
		if _, held := a.units[k]; held {
			continue // grants are idempotent
		}
		u.State, u.Attachment, u.Since = store.Warm, "", time.Time{}
		a.units[k] = u
		a.warm[k.Pool] = append(a.warm[k.Pool], k)
	}
	return nil
}

// emit reports an assignment or a release to the allocator: e carries
// its kind and hit, as the rest.
func (a *Agent) emit(e broker.Event, as store.Assignment) {
	if a.cfg.OnEvent != nil {
		e.Pool, e.UnitID, e.Attachment = as.Pool, as.UnitID, as.Attachment
		e.Pod = broker.Pod{Namespace: as.Pod.Namespace, Name: as.Pod.Name, UID: as.Pod.UID}
		a.cfg.OnEvent(e)
	}
}

// AcceptEpoch records an allocator's epoch and reports whether a message
// of that epoch may be obeyed: not if a higher epoch was seen (fencing of
// a deposed leader). The highest epoch is persisted, so a restart keeps it.
func (a *Agent) AcceptEpoch(epoch uint64) (bool, error) {
	a.mu.Lock()
	known := a.epoch
	a.mu.Unlock()
	if epoch <= known {
		// Nothing to persist: the common case costs no commit.
		return epoch == known, nil
	}
	highest, err := a.store.SetEpoch(epoch)
	if err != nil {
		return false, err
	}
	a.mu.Lock()
	a.epoch = highest
	a.mu.Unlock()
	return epoch >= highest, nil
}

// Held returns the node's record for a sync: every unit, and for assigned
// ones the attachment and pod.
func (a *Agent) Held() []broker.HeldUnit {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]broker.HeldUnit, 0, len(a.units))
	for _, u := range a.units {
		h := broker.HeldUnit{Pool: u.Pool, Unit: broker.Unit{ID: u.ID, IPv4: u.IPv4, IPv6: u.IPv6}}
		if u.State == store.Assigned {
			h.Assigned, h.Attachment = true, u.Attachment
			if as, ok := a.assignments[u.Attachment]; ok {
				h.Pod = broker.Pod{Namespace: as.Pod.Namespace, Name: as.Pod.Name, UID: as.Pod.UID}
			}
		}
		out = append(out, h)
	}
	return out
}

// Reconcile makes the node's record agree with the allocator's after a
// sync: the warm units the allocator lists are granted (idempotently, and
// not those given back since), and warm or cooling units it does not list
// are dropped, unless they were granted at a newer generation than the
// reply (a grant that crossed it) or sent was the record the sync sent and
// said they were assigned: the allocator does not list an assigned unit,
// and a unit released since is still the node's (its release is reported
// next). Assigned units are never dropped.
func (a *Agent) Reconcile(leases []broker.Lease, sent []broker.HeldUnit) error {
	assignedWhenSent := map[store.Key]bool{}
	for _, h := range sent {
		if h.Assigned {
			assignedWhenSent[store.Key{Pool: h.Pool, ID: h.Unit.ID}] = true
		}
	}
	a.recordMu.Lock()
	defer a.recordMu.Unlock()
	listed := map[store.Key]bool{}
	genOf := map[string]int64{}
	for _, l := range leases {
		genOf[l.Pool.Name] = l.Gen
		units := make([]store.Unit, 0, len(l.Units))
		for _, u := range l.Units {
			units = append(units, store.Unit{Pool: l.Pool.Name, ID: u.ID, IPv4: u.IPv4, IPv6: u.IPv6})
			listed[store.Key{Pool: l.Pool.Name, ID: u.ID}] = true
		}
		if err := a.grantRecordLocked(StorePool(l.Pool), units, l.Gen); err != nil {
			return err
		}
	}
	a.mu.Lock()
	var drop []store.Key
	for k, u := range a.units {
		if !listed[k] && u.State != store.Assigned && !assignedWhenSent[k] && a.grantedAt[k] <= genOf[k.Pool] {
			drop = append(drop, k)
		}
	}
	a.mu.Unlock()
	if len(drop) == 0 {
		return nil
	}
	dropped, err := a.store.Drop(drop)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	a.forgetRecordLocked(dropped)
	a.log.Info("reconciled with the allocator", "dropped", len(dropped))
	return nil
}

// Forget removes units another node holds now, in any state, from the
// record and the cache: the allocator reclaimed them while this node was
// lost (an assignment's pod gone, its sandbox with the machine). replyGen
// is the generation of each pool's lease in the reply that named them: a
// unit granted here at a newer one crossed the reply and is kept.
//
// Warm ones leave the cache first, so no ADD pops them; assigned ones are
// voided under their attachment's lock, so no DEL or ADD of it crosses;
// a unit an ADD assigned meanwhile, to an attachment not locked here, is
// left for the next sync. A later DEL of a voided attachment succeeds as
// one of the unknown.
func (a *Agent) Forget(units []broker.ForeignUnit, replyGen map[string]int64) error {
	if len(units) == 0 {
		return nil
	}
	keys := make([]store.Key, 0, len(units))
	var attachments []string
	a.mu.Lock()
	drop := map[store.Key]bool{}
	addresses := map[store.Key]string{} // for the log: the record forgets them
	for _, f := range units {
		k := store.Key{Pool: f.Pool, ID: f.ID}
		if a.grantedAt[k] > replyGen[f.Pool] {
			continue
		}
		keys = append(keys, k)
		drop[k] = true
		addresses[k] = a.addressLocked(k)
		if u, ok := a.units[k]; ok && u.State == store.Assigned {
			attachments = append(attachments, u.Attachment)
		}
	}
	for pool, q := range a.warm {
		a.warm[pool] = slices.DeleteFunc(q, func(k store.Key) bool { return drop[k] })
	}
	a.mu.Unlock()
	if len(keys) == 0 {
		return nil
	}
	// Attachment locks before recordMu, in order: an ADD holds its
	// attachment's lock when a miss makes it take recordMu.
	slices.Sort(attachments)
	attachments = slices.Compact(attachments)
	for _, att := range attachments {
		defer a.locks.Lock(att)()
	}
	a.recordMu.Lock()
	defer a.recordMu.Unlock()
	voided, kept, err := a.store.Void(keys, attachments)
	if err != nil {
		return err
	}
	gone := slices.DeleteFunc(keys, func(k store.Key) bool { return slices.Contains(kept, k) })
	a.forgetRecordLocked(gone)
	a.mu.Lock()
	for _, as := range voided {
		delete(a.assignments, as.Attachment)
		a.log.Warn("assignment voided: its unit was reclaimed while this node was lost", "attachment", as.Attachment, "pool", as.Pool,
			"address", addresses[store.Key{Pool: as.Pool, ID: as.UnitID}], "pod", logkey.Pod(as.Pod.Namespace, as.Pod.Name), "pod_uid", as.Pod.UID)
	}
	a.mu.Unlock()
	a.log.Warn("units held by another node forgotten", "units", len(gone), "assignments", len(voided), "kept", len(kept))
	return nil
}

// forgetRecordLocked removes dropped units from memory; the caller holds
// recordMu.
func (a *Agent) forgetRecordLocked(dropped []store.Key) {
	a.mu.Lock()
	defer a.mu.Unlock()
	gone := map[store.Key]bool{}
	for _, k := range dropped {
		delete(a.units, k)
		delete(a.grantedAt, k)
		gone[k] = true
	}
	for pool, q := range a.warm {
		kept := q[:0]
		for _, k := range q {
			if !gone[k] {
				kept = append(kept, k)
			}
		}
		a.warm[pool] = kept
	}
}

// Revoke gives back the listed units of pool that are warm here, as of
// lease generation gen: they leave the cache at once (no ADD can take them
// any more), then the record, and no message listing them at a generation
// up to gen brings them back. It returns the IDs given back; units not
// warm here are kept.
func (a *Agent) Revoke(pool string, ids []string, gen int64) ([]string, error) {
	a.recordMu.Lock()
	defer a.recordMu.Unlock()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	a.mu.Lock()
	var taken []store.Key
	kept := a.warm[pool][:0]
	for _, k := range a.warm[pool] {
		if want[k.ID] {
			taken = append(taken, k)
		} else {
			kept = append(kept, k)
		}
	}
	a.warm[pool] = kept
	a.mu.Unlock()
	if len(taken) == 0 {
		return nil, nil
	}
	dropped, err := a.store.Drop(taken)
	if err != nil {
		// Nothing was dropped: the units are warm here again.
		a.mu.Lock()
		a.warm[pool] = append(a.warm[pool], taken...)
		a.mu.Unlock()
		return nil, fmt.Errorf("revoke: %w", err)
	}
	a.failpoint(FailpointRevokeAfterPersist)
	a.forgetRecordLocked(dropped)
	a.mu.Lock()
	out := make([]string, 0, len(dropped))
	for _, k := range dropped {
		a.revokedAt[k] = gen
		out = append(out, k.ID)
	}
	a.mu.Unlock()
	a.log.Info("units revoked", "pool", pool, "units", len(out), "gen", gen)
	return out, nil
}

// StorePool converts a pool's parameters from the bus to the store's form.
func StorePool(p broker.PoolInfo) store.Pool {
	sp := store.Pool{Name: p.Name, Prefix4: p.Prefix4, Prefix6: p.Prefix6, Gateway4: p.Gateway4, Gateway6: p.Gateway6}
	for _, r := range p.Routes {
		sp.Routes = append(sp.Routes, store.Route{Dst: r.Dst, GW: r.GW})
	}
	return sp
}

// Served returns this run's counts of assignments per pool.
func (a *Agent) Served() map[string]broker.Served {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.served)
}

// WarmCount returns how many units of pool are warm on the node.
func (a *Agent) WarmCount(pool string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.warm[pool])
}

// Handle serves one request of the plugin.
func (a *Agent) Handle(ctx context.Context, req *wire.Request) *wire.Response {
	resp := &wire.Response{V: wire.Version}
	if req.V != wire.Version {
		resp.Error = &wire.Error{Code: wire.CodeIncompatible,
			Msg: fmt.Sprintf("the plugin speaks protocol v%d, this agent v%d", req.V, wire.Version), Details: "upgrade the plugin and the agent together"}
		return resp
	}
	start := time.Now()
	switch req.Op {
	case wire.OpAdd:
		resp.Result, resp.Error = a.add(ctx, req)
		result := "error"
		if resp.Result != nil && resp.Result.Hit {
			result = "hit"
		} else if resp.Result != nil {
			result = "miss"
		}
		a.metrics.add.WithLabelValues(result).Observe(time.Since(start).Seconds())
	case wire.OpDel:
		resp.Error = a.del(req)
		a.metrics.del.Observe(time.Since(start).Seconds())
	case wire.OpCheck:
		resp.Result, resp.Error = a.check(req)
	case wire.OpGC:
		resp.Error = a.gc(req)
	case wire.OpStatus:
		resp.Error = a.status(req)
	default:
		resp.Error = &wire.Error{Code: wire.CodeInvalidConfig, Msg: fmt.Sprintf("unknown operation %q", req.Op)}
	}
	return resp
}

// lockAttachment checks the request's attachment and locks it: ADD, DEL
// and CHECK of one attachment never interleave.
func (a *Agent) lockAttachment(req *wire.Request) (string, func(), *wire.Error) {
	if req.ContainerID == "" || req.IfName == "" {
		return "", nil, &wire.Error{Code: wire.CodeInvalidEnv, Msg: "CNI_CONTAINERID and CNI_IFNAME are required"}
	}
	// skel checks both before the plugin runs; a raw client of the socket
	// must not record an attachment whose key cannot be split back (an
	// interface name with a '/' stopped every later GC of its network).
	for _, err := range []*cnitypes.Error{cniutils.ValidateContainerID(req.ContainerID), cniutils.ValidateInterfaceName(req.IfName)} {
		if err != nil {
			return "", nil, &wire.Error{Code: wire.CodeInvalidEnv, Msg: err.Msg, Details: err.Details}
		}
	}
	key := req.Attachment.String()
	return key, a.locks.Lock(key), nil
}

func (a *Agent) add(ctx context.Context, req *wire.Request) (_ *wire.Result, werr *wire.Error) {
	pool := req.Pool
	defer func() {
		// The runtime logs the error on its node too, but without the
		// pool and apart from the agent's lines: this is the line a search
		// by pod, node or pool finds.
		if werr != nil {
			a.log.Warn("ADD failed", "pod", logkey.Pod(req.Pod.Namespace, req.Pod.Name), "attachment", req.Attachment.String(),
				"pool", pool, "code", werr.Code, "err", werr.Error())
		}
	}()
	key, unlock, werr := a.lockAttachment(req)
	if werr != nil {
		return nil, werr
	}
	defer unlock()

	a.mu.Lock()
	if as, ok := a.assignments[key]; ok {
		// ADD is idempotent per attachment: a retried ADD (the runtime did
		// not see our answer) gets what was assigned, once it may.
		res, err := a.resultLocked(as)
		a.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return res, nil
	}
	a.mu.Unlock()

	pool, werr = a.cfg.Resolver.Resolve(ctx, req.Pod, req.Pool)
	if werr != nil {
		return nil, werr
	}
	var unit store.Unit
	var hit bool
	var as store.Assignment
	for attempt := 0; ; attempt++ {
		var werr *wire.Error
		unit, hit, werr = a.take(ctx, pool)
		if werr != nil {
			return nil, werr
		}
		as = store.Assignment{
			Attachment: key, Pool: pool, UnitID: unit.ID, Network: req.Network, At: a.cfg.Now(),
			Pod: store.Pod{Namespace: req.Pod.Namespace, Name: req.Pod.Name, UID: req.Pod.UID},
		}
		a.failpoint(FailpointAddBeforePersist)
		t0 := time.Now()
		err := a.store.Assign(as)
		a.metrics.persist.WithLabelValues("assign").Observe(time.Since(t0).Seconds())
		if err == nil {
			break
		}
		if errors.Is(err, store.ErrUnitNotWarm) && attempt < 3 {
			// The unit left the node between pop and commit (revoked or
			// reconciled away): take another.
			continue
		}
		// Nothing was recorded: the unit goes back to the cache.
		a.putBack(unit.Key())
		a.log.Error("persist assignment", "attachment", key, "pod", logkey.Pod(req.Pod.Namespace, req.Pod.Name), "pool", pool,
			"address", logkey.Address(unit.IPv4, unit.IPv6), "err", err)
		return nil, &wire.Error{Code: wire.CodeTryAgainLater, Msg: "the agent could not record the assignment", Details: err.Error()}
	}
	a.failpoint(FailpointAddAfterPersist)
	a.mu.Lock()
	unit.State, unit.Attachment = store.Assigned, key
	a.units[unit.Key()] = unit
	a.assignments[key] = as
	res, werr := a.resultLocked(as)
	if res != nil {
		res.Hit = hit
	}
	// Checked first: the arguments would be built on every ADD.
	if a.log.Enabled(ctx, slog.LevelDebug) {
		a.log.Debug("assigned", "attachment", key, "pool", pool, "address", logkey.Address(unit.IPv4, unit.IPv6),
			"pod", logkey.Pod(req.Pod.Namespace, req.Pod.Name), "pod_uid", req.Pod.UID, "hit", hit)
	}
	a.emit(broker.Event{Kind: broker.EventAssigned}, as)
	served := a.served[pool]
	if hit {
		served.Hits++
		a.metrics.hits.WithLabelValues(pool).Inc()
	} else {
		served.Misses++
		a.metrics.misses.WithLabelValues(pool).Inc()
	}
	a.served[pool] = served
	a.mu.Unlock()
	if werr != nil {
		return nil, werr
	}
	return res, nil
}

// take pops a warm unit of pool, or on a miss asks the allocator.
func (a *Agent) take(ctx context.Context, pool string) (store.Unit, bool, *wire.Error) {
	if a.cfg.Allocator != nil {
		if err := a.cfg.Allocator.Fenced(); err != nil {
			// Neither the cache nor a miss: a miss's grant would not make
			// the cached units trustworthy again, only a sync does.
			return store.Unit{}, false, &wire.Error{Code: wire.CodeTryAgainLater,
				Msg: fmt.Sprintf("node %s is not using its warm addresses of pool %s until it resynchronises with the allocator: %v", a.cfg.Node, pool, err), Details: "the runtime retries"}
		}
	}
	if u, ok := a.pop(pool); ok {
		return u, true, nil
	}
	if u, ok := a.awaitCooling(ctx, pool); ok {
		return u, true, nil
	}
	if a.cfg.Allocator != nil {
		// The wait may have outlasted the allocator's warm TTL: the miss
		// path below pops warm units too.
		if err := a.cfg.Allocator.Fenced(); err != nil {
			return store.Unit{}, false, &wire.Error{Code: wire.CodeTryAgainLater,
				Msg: fmt.Sprintf("node %s is not using its warm addresses of pool %s until it resynchronises with the allocator: %v", a.cfg.Node, pool, err), Details: "the runtime retries"}
		}
	}
	if a.cfg.Allocator == nil {
		return store.Unit{}, false, &wire.Error{Code: wire.CodeMissTimeout,
			Msg:     fmt.Sprintf("node %s holds no warm address of pool %s", a.cfg.Node, pool),
			Details: "no allocator is connected to refill it; the runtime retries"}
	}
	mctx, cancel := context.WithTimeout(ctx, a.cfg.MissTimeout)
	defer cancel()
	a.mu.Lock()
	a.missing[pool]++
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.missing[pool]--
		a.mu.Unlock()
	}()
	backoff := 20 * time.Millisecond
	for {
		// A refill another ADD shared, or a grant pushed meanwhile, may
		// have left a unit: take it before asking again.
		if u, ok := a.pop(pool); ok {
			return u, false, nil
		}
		err := a.refill(mctx, pool)
		// The refill, or a grant pushed meanwhile, may have left a unit
		// for this ADD; other ADDs of the same refill may have taken them.
		if u, ok := a.pop(pool); ok {
			return u, false, nil
		}
		var rec *recordError
		switch {
		case errors.Is(err, ErrPoolExhausted):
			return store.Unit{}, false, &wire.Error{Code: wire.CodePoolExhausted,
				Msg: fmt.Sprintf("pool %s has no free address left", pool), Details: "free addresses or add a pool with the same selectors"}
		case errors.As(err, &rec):
			return store.Unit{}, false, &wire.Error{Code: wire.CodeTryAgainLater, Msg: "the agent could not record the allocator's grant", Details: err.Error()}
		case err != nil && !errors.Is(err, ErrBusy):
			return store.Unit{}, false, &wire.Error{Code: wire.CodeMissTimeout,
				Msg: fmt.Sprintf("node %s holds no warm address of pool %s and the allocator did not answer in %s", a.cfg.Node, pool, a.cfg.MissTimeout), Details: err.Error()}
		}
		select {
		case <-mctx.Done():
			return store.Unit{}, false, &wire.Error{Code: wire.CodeMissTimeout,
				Msg:     fmt.Sprintf("node %s holds no warm address of pool %s and the allocator found none in %s", a.cfg.Node, pool, a.cfg.MissTimeout),
				Details: "units are being moved from other nodes; the runtime retries"}
		case <-time.After(backoff):
			backoff = min(2*backoff, 500*time.Millisecond)
		}
	}
}

// awaitCooling serves an ADD that found the cache empty from a unit of
// this node that is cooling after a DEL, once its reuse delay is over,
// when there are more such units than ADDs already waiting for them. It
// is what makes a re-creation at 1:1 scarcity local: the pods deleted on a
// node free the addresses its new pods get, without a miss to the
// allocator, which would find nothing free anyway. It is a hit: served
// from the node's own units. It gives up, and the ADD misses, when no
// unit is left to wait for.
func (a *Agent) awaitCooling(ctx context.Context, pool string) (store.Unit, bool) {
	for {
		a.mu.Lock()
		var due time.Time
		cooling := 0
		for _, u := range a.units {
			if u.Pool == pool && u.State == store.Cooling {
				cooling++
				if at := u.Since.Add(a.cfg.ReuseDelay); due.IsZero() || at.Before(due) {
					due = at
				}
			}
		}
		if cooling <= a.coolWaiters[pool] {
			a.mu.Unlock()
			return store.Unit{}, false
		}
		a.coolWaiters[pool]++
		a.mu.Unlock()
		ok := a.sleepUntil(ctx, due)
		if ok && a.cfg.Allocator != nil && a.cfg.Allocator.Fenced() != nil {
			ok = false // the cache was disabled meanwhile: so is this unit
		}
		if ok {
			if err := a.Recycle(a.cfg.Now()); err != nil {
				// The unit stays cooling: waiting again would spin.
				a.log.Error("recycle", "err", err)
				ok = false
			}
		}
		a.mu.Lock()
		a.coolWaiters[pool]--
		a.mu.Unlock()
		if !ok {
			return store.Unit{}, false
		}
		if u, ok := a.pop(pool); ok {
			a.metrics.coolingWaits.WithLabelValues(pool).Inc()
			return u, true
		}
		// Another ADD took it, or it left the node: look again.
	}
}

// sleepUntil waits until the agent's clock reaches t, or ctx ends (false).
func (a *Agent) sleepUntil(ctx context.Context, t time.Time) bool {
	for {
		if ctx.Err() != nil {
			return false
		}
		d := t.Sub(a.cfg.Now())
		if d <= 0 {
			return true
		}
		timer := time.NewTimer(min(d, 10*time.Millisecond))
		select {
		case <-ctx.Done():
			timer.Stop()
			return false
		case <-timer.C:
		}
	}
}

// recordError is a grant the agent could not persist.
type recordError struct{ err error }

func (e *recordError) Error() string { return e.err.Error() }
func (e *recordError) Unwrap() error { return e.err }

// refill asks the allocator for units of pool and records its grant. The
// ADDs that miss at the same time share one request, for as many units as
// there are of them: a burst on an empty node costs one round trip, not
// one per pod.
func (a *Agent) refill(ctx context.Context, pool string) error {
	ch := a.misses.DoChan(pool, func() (any, error) {
		// Not the first waiter's context: its ADD being cancelled must not
		// fail the others sharing the request.
		mctx, cancel := context.WithTimeout(context.Background(), a.cfg.MissTimeout)
		defer cancel()
		a.mu.Lock()
		count := max(a.missing[pool], 1)
		a.mu.Unlock()
		units, info, gen, err := a.cfg.Allocator.Miss(mctx, pool, count)
		if err != nil {
			return nil, err
		}
		if err := a.Grant(info, units, gen); err != nil {
			return nil, &recordError{err}
		}
		return nil, nil
	})
	select {
	case <-ctx.Done():
		return ctx.Err()
	case r := <-ch:
		if r.Shared {
			a.metrics.coalesced.WithLabelValues(pool).Inc()
		}
		return r.Err
	}
}

func (a *Agent) pop(pool string) (store.Unit, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.warm[pool]) > 0 {
		k := a.warm[pool][0]
		a.warm[pool] = a.warm[pool][1:]
		if u, ok := a.units[k]; ok && u.State == store.Warm {
			return u, true
		}
	}
	return store.Unit{}, false
}

// putBack returns a popped unit to the cache, unless it left the node
// meanwhile (revoked or reconciled away).
func (a *Agent) putBack(k store.Key) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if u, ok := a.units[k]; ok && u.State == store.Warm {
		a.warm[k.Pool] = append([]store.Key{k}, a.warm[k.Pool]...)
	}
}

// addressLocked is the log's address of a unit: its addresses, or its ID
// (its primary address) when the node no longer holds it.
func (a *Agent) addressLocked(k store.Key) string {
	if u, ok := a.units[k]; ok {
		return logkey.Address(u.IPv4, u.IPv6)
	}
	return k.ID
}

// resultLocked builds the plugin's answer for an assignment.
func (a *Agent) resultLocked(as store.Assignment) (*wire.Result, *wire.Error) {
	p, ok := a.pools[as.Pool]
	u, uok := a.units[store.Key{Pool: as.Pool, ID: as.UnitID}]
	if !ok || !uok {
		return nil, &wire.Error{Code: wire.CodeInternal, Msg: fmt.Sprintf("assignment %s refers to unknown pool or unit %s/%s", as.Attachment, as.Pool, as.UnitID)}
	}
	res := &wire.Result{Pool: as.Pool}
	if u.IPv4 != "" {
		res.IPs = append(res.IPs, wire.Address{CIDR: u.IPv4 + "/" + strconv.Itoa(p.Prefix4), Gateway: p.Gateway4})
	}
	if u.IPv6 != "" {
		res.IPs = append(res.IPs, wire.Address{CIDR: u.IPv6 + "/" + strconv.Itoa(p.Prefix6), Gateway: p.Gateway6})
	}
	for _, r := range p.Routes {
		res.Routes = append(res.Routes, wire.Route{Dst: r.Dst, GW: r.GW})
	}
	return res, nil
}

func (a *Agent) del(req *wire.Request) *wire.Error {
	_, werr := a.delIf(req, nil, "")
	if werr != nil {
		a.log.Warn("DEL failed", "pod", logkey.Pod(req.Pod.Namespace, req.Pod.Name), "attachment", req.Attachment.String(),
			"code", werr.Code, "err", werr.Error())
	}
	return werr
}

// delIf is DEL, only if the attachment's assignment satisfies match (nil:
// any), checked under the attachment's lock. It reports whether it
// released one, and logs the release: at Info with why as the message
// when the runtime did not ask for it (a reclaim, a GC), else at Debug.
func (a *Agent) delIf(req *wire.Request, match func(store.Assignment) bool, why string) (bool, *wire.Error) {
	key, unlock, werr := a.lockAttachment(req)
	if werr != nil {
		return false, werr
	}
	defer unlock()
	if match != nil {
		a.mu.Lock()
		as, ok := a.assignments[key]
		a.mu.Unlock()
		if !ok || !match(as) {
			return false, nil
		}
	}
	a.failpoint(FailpointDelBeforePersist)
	t0 := time.Now()
	as, found, err := a.store.Release(key, a.cfg.Now())
	a.metrics.persist.WithLabelValues("release").Observe(time.Since(t0).Seconds())
	if err != nil {
		return false, &wire.Error{Code: wire.CodeIOFailure, Msg: "the agent could not record the release", Details: err.Error()}
	}
	if !found {
		return false, nil // DEL of the unknown succeeds
	}
	a.failpoint(FailpointDelAfterPersist)
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.assignments, key)
	k := store.Key{Pool: as.Pool, ID: as.UnitID}
	if u, ok := a.units[k]; ok && u.State == store.Assigned && u.Attachment == key {
		u.State, u.Attachment, u.Since = store.Cooling, "", a.cfg.Now()
		a.units[k] = u
	}
	level, msg := slog.LevelDebug, "released"
	if why != "" {
		level, msg = slog.LevelInfo, why
	}
	// Checked first: the arguments would be built on every DEL.
	if a.log.Enabled(context.Background(), level) {
		a.log.Log(context.Background(), level, msg, "attachment", key, "pod", logkey.Pod(as.Pod.Namespace, as.Pod.Name), "pod_uid", as.Pod.UID,
			"pool", as.Pool, "address", a.addressLocked(k), "network", as.Network)
	}
	a.emit(broker.Event{Kind: broker.EventReleased}, as)
	return true, nil
}

func (a *Agent) check(req *wire.Request) (*wire.Result, *wire.Error) {
	key, unlock, werr := a.lockAttachment(req)
	if werr != nil {
		return nil, werr
	}
	defer unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	as, ok := a.assignments[key]
	if !ok {
		return nil, &wire.Error{Code: wire.CodeCheckMismatch, Msg: fmt.Sprintf("%s holds no address", key),
			Details: "the runtime should delete and re-create the sandbox"}
	}
	return a.resultLocked(as)
}

// gc releases the assignments of req.Network whose attachment the runtime
// no longer lists.
func (a *Agent) gc(req *wire.Request) *wire.Error {
	valid := make(map[string]bool, len(req.Valid))
	for _, v := range req.Valid {
		valid[v.String()] = true
	}
	a.mu.Lock()
	var stale []string
	for key, as := range a.assignments {
		if as.Network == req.Network && !valid[key] {
			stale = append(stale, key)
		}
	}
	a.mu.Unlock()
	for _, key := range stale {
		ctr, ifn := broker.SplitAttachment(key)
		if _, werr := a.delIf(&wire.Request{Attachment: wire.Attachment{ContainerID: ctr, IfName: ifn}}, nil,
			"released by the runtime's GC: the attachment is not among its valid ones"); werr != nil {
			return werr
		}
	}
	return nil
}

// status is ready when the node holds a warm unit of the pool (of any pool
// if none is named), or when the allocator can serve a miss of it.
func (a *Agent) status(req *wire.Request) *wire.Error {
	a.mu.Lock()
	warm := len(a.warm[req.Pool])
	if req.Pool == "" {
		for _, q := range a.warm {
			warm += len(q)
		}
	}
	a.mu.Unlock()
	if warm > 0 {
		return nil
	}
	what := "pool " + req.Pool
	if req.Pool == "" {
		what = "any pool"
	}
	switch {
	case a.cfg.Allocator == nil:
		return &wire.Error{Code: wire.CodeNotAvailable, Msg: fmt.Sprintf("node %s holds no warm address of %s and no allocator is connected", a.cfg.Node, what)}
	case !a.cfg.Allocator.CanServe(req.Pool):
		return &wire.Error{Code: wire.CodeNotAvailable, Msg: fmt.Sprintf("node %s holds no warm address of %s, and the allocator is unreachable or the pool exhausted", a.cfg.Node, what)}
	}
	return nil
}

// Recycle re-warms the units whose reuse delay has passed at now, persisted
// first. The agent's loop calls it; tests call it with a moved clock.
func (a *Agent) Recycle(now time.Time) error {
	// ADDs waiting for cooling units call it too: one at a time, or a
	// list of due units taken before another call re-warmed, assigned and
	// released one would re-warm it before its new delay.
	a.recycleMu.Lock()
	defer a.recycleMu.Unlock()
	a.mu.Lock()
	var due []store.Key
	for k, u := range a.units {
		if u.State == store.Cooling && !now.Before(u.Since.Add(a.cfg.ReuseDelay)) {
			due = append(due, k)
		}
	}
	a.mu.Unlock()
	if len(due) == 0 {
		return nil
	}
	if err := a.store.Rewarm(due); err != nil {
		return fmt.Errorf("recycle %d units: %w", len(due), err)
	}
	a.failpoint(FailpointRecycle)
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, k := range due {
		if u, ok := a.units[k]; ok && u.State == store.Cooling {
			u.State, u.Since = store.Warm, time.Time{}
			a.units[k] = u
			a.warm[k.Pool] = append(a.warm[k.Pool], k)
		}
	}
	return nil
}

// RunRecycler calls Recycle every interval until ctx ends.
func (a *Agent) RunRecycler(ctx context.Context, interval time.Duration) {
	every(ctx, interval, func() {
		if err := a.Recycle(a.cfg.Now()); err != nil {
			a.log.Error("recycle", "err", err)
		}
	})
}

// every calls f every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
