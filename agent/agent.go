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
	// OnChange is told that an assignment or a release was persisted: the
	// bus reports the agent's state to the allocator. It must not block.
	OnChange func()
	// Failpoint, if set, is called at the named steps (the Failpoint*
	// constants) of ADD, DEL, recycling, grants and revokes: the fault
	// suite kills the agent there.
	Failpoint func(name string)
}

// The failpoints: each names the step after which a crash is the hardest
// to recover from.
const (
	FailpointAddBeforePersist   = "add-before-persist"   // a unit popped, nothing recorded
	FailpointAddAfterPersist    = "add-after-persist"    // assignment committed, ADD not answered
	FailpointDelBeforePersist   = "del-before-persist"   // DEL received, release not recorded
	FailpointDelAfterPersist    = "del-after-persist"    // release committed, DEL not answered, not reported
	FailpointGrantAfterPersist  = "grant-after-persist"  // grant recorded, not acknowledged
	FailpointRevokeAfterPersist = "revoke-after-persist" // units dropped, the allocator not told
)

// Failpoints lists every failpoint.
var Failpoints = []string{FailpointAddBeforePersist, FailpointAddAfterPersist, FailpointDelBeforePersist,
	FailpointDelAfterPersist, FailpointGrantAfterPersist, FailpointRevokeAfterPersist}

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
	// listedAt is, per pool, the lease generation of the last sync reply
	// applied. A grant at a generation not newer adds nothing the reply
	// did not list, and may list a unit the lease was giving back: a push
	// that crossed a revoke and an agent restart (which forgets
	// revokedAt) is refused on it.
	listedAt map[string]int64
	// missing counts the ADDs of each pool waiting on a miss; misses
	// shares one request among them.
	missing map[string]int
	misses  singleflight.Group
	// coolWaiters counts the ADDs of each pool waiting for a cooling unit.
	coolWaiters map[string]int
	// cooled wakes the recycler when a release cools a unit: it sleeps
	// until the next unit is due, not on a ticker.
	cooled chan struct{}
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
		listedAt:    map[string]int64{},
		missing:     map[string]int{},
		coolWaiters: map[string]int{},
		cooled:      make(chan struct{}, 1),
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

// changed tells the bus that the node's state changed (OnChange).
func (a *Agent) changed() {
	if a.cfg.OnChange != nil {
		a.cfg.OnChange()
	}
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

// Handle serves one request of the CNI layer (package cni), which the
// server runs for each exec the plugin forwards.
func (a *Agent) Handle(ctx context.Context, req *wire.Request) *wire.Response {
	resp := &wire.Response{}
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
	a.changed()
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
		select {
		case a.cooled <- struct{}{}:
		default: // the recycler has a wake-up pending already
		}
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
	a.changed()
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

// Recycle warms the units whose reuse delay is over at now, and returns
// when the next of those still cooling is due (zero: none is). It writes
// nothing: the record keeps a cooling unit's release time, and whether its
// delay is over is the clock's to say, again after a restart. The
// recycler calls it; tests call it with a moved clock.
func (a *Agent) Recycle(now time.Time) (next time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, u := range a.units {
		if u.State != store.Cooling {
			continue
		}
		due := u.Since.Add(a.cfg.ReuseDelay)
		if !now.Before(due) {
			u.State, u.Since = store.Warm, time.Time{}
			a.units[k] = u
			a.warm[k.Pool] = append(a.warm[k.Pool], k)
		} else if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	return next
}

// RunRecycler warms each cooling unit once its reuse delay is over, until
// ctx ends. It sleeps until the next one is due, or until a release cools
// another: an idle agent is not woken ten times a second for nothing.
func (a *Agent) RunRecycler(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		timer.Stop()
		if next := a.Recycle(a.cfg.Now()); !next.IsZero() {
			timer.Reset(max(next.Sub(a.cfg.Now()), time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return
		case <-a.cooled:
		case <-timer.C:
		}
	}
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
