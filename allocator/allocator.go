package allocator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/keyed"
	"github.com/warmpool/warmpool/internal/logkey"
)

// Config configures an allocator.
type Config struct {
	// Client is the API client of warmpool's objects: the leases and pools
	// below default to its, and the pool informer uses it. Tests of the
	// ledger alone leave it nil and set Leases and Pools (and no Kube).
	Client *client.Clientset
	Leases Leases
	Pools  Pools
	// Bus carries the requests to and from the agents (broker.NATS over a
	// connection, or a broker.Network's endpoint in tests).
	Bus broker.Transport
	// Kube feeds the informers on pods, nodes and namespaces that drive
	// pre-warming. Nil plans without them: no pod demand, and every node
	// that syncs is eligible (tests of the bus alone).
	Kube kubernetes.Interface
	// Epoch is this leader's epoch; every message it sends carries it.
	Epoch uint64
	// PushTimeout bounds a grant pushed to an agent and a revoke; an agent
	// that does not answer a grant gets its units at its next sync.
	PushTimeout time.Duration
	// Handlers bounds the bus requests served at once.
	Handlers int
	// Writers bounds the lease writes and revokes a planning round runs at
	// once.
	Writers int
	// PlanInterval is how often a round runs without a kick; RetryInterval
	// how soon one runs again after a round that left work undone (doubling
	// up to PlanInterval).
	PlanInterval  time.Duration
	RetryInterval time.Duration
	// NodeLossGrace is how long a node may be NotReady before it is lost:
	// its warm units are reclaimed.
	NodeLossGrace time.Duration
	// GCInterval is how often lost nodes are checked for units to return
	// (the leak GC is the agents').
	GCInterval time.Duration
	// WriteTimeout bounds one NodeLease write (with its re-read).
	WriteTimeout time.Duration
	// StatusInterval is how often pools' status is written (when changed).
	StatusInterval time.Duration
	// UnreachableBackoff is how long a node whose agent did not answer a
	// revoke is left out of planning.
	UnreachableBackoff time.Duration
	Clock              clock.WithTicker
	Logger             *slog.Logger
}

// Defaults of Config.
const (
	DefaultPlanInterval       = 5 * time.Second
	DefaultRetryInterval      = 100 * time.Millisecond
	DefaultNodeLossGrace      = 5 * time.Minute
	DefaultUnreachableBackoff = 10 * time.Second
	DefaultGCInterval         = 30 * time.Second
	DefaultStatusInterval     = 5 * time.Second
	DefaultWriteTimeout       = 10 * time.Second
)

// Allocator serves the bus while it leads. Its ledger is guarded by mu,
// never held across an API write or a bus round trip; writes of one
// NodeLease are serialised by leaseLocks.
type Allocator struct {
	cfg Config
	log *slog.Logger

	// deposed is closed when a write found a newer leader's epoch.
	deposed     chan struct{}
	deposedOnce sync.Once

	leaseLocks keyed.Mutex

	mu      sync.Mutex
	ledger  *ledger
	lastSeq map[string]runSeq // per node: the newest report or sync applied

	// unreachableUntil: nodes left out of planning, and until when.
	unreachableUntil map[string]time.Time
	// lastContact: when each node's agent last sent a request; started:
	// when this allocator started (the contact assumed before any).
	lastContact map[string]time.Time
	started     time.Time
	// orphans: units a donor gave back whose removal from its lease
	// failed, by pool and node; each round retries the write.
	orphans map[poolNode][]string
	// unsettled: lease writes whose outcome is unknown.
	unsettled map[poolNode]*unsettledWrite

	watch   *watcher // nil without Config.Kube
	kicks   chan struct{}
	writers chan struct{}
	cancel  context.CancelFunc

	metrics *metrics
	sem     chan struct{}
	wg      sync.WaitGroup
	subs    []broker.Subscription
	// stopped, guarded by stopMu, refuses new requests once Stop began.
	stopMu  sync.Mutex
	stopped bool
}

// Errors of a grant.
var (
	errUnknownPool = errors.New("unknown pool")
	errExhausted   = errors.New("pool exhausted")
	// errBusy: nothing is free, but other nodes hold warm units that could
	// not be taken this time (their agents had just assigned them, say).
	errBusy = errors.New("pool busy")
	// ErrDeposed means a newer leader has written: this allocator must stop.
	ErrDeposed = errors.New("allocator deposed by a newer epoch")
)

// newAllocator fills in Config's defaults and builds an allocator with
// an empty ledger.
func newAllocator(cfg Config) *Allocator {
	if cfg.Client != nil {
		if cfg.Leases == nil {
			cfg.Leases = cfg.Client.NodeLeases()
		}
		if cfg.Pools == nil {
			cfg.Pools = cfg.Client.IPPools()
		}
	}
	if cfg.PushTimeout == 0 {
		cfg.PushTimeout = 2 * time.Second
	}
	if cfg.Handlers == 0 {
		cfg.Handlers = 64
	}
	if cfg.Writers == 0 {
		cfg.Writers = 32
	}
	if cfg.PlanInterval == 0 {
		cfg.PlanInterval = DefaultPlanInterval
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	if cfg.NodeLossGrace == 0 {
		cfg.NodeLossGrace = DefaultNodeLossGrace
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.StatusInterval == 0 {
		cfg.StatusInterval = DefaultStatusInterval
	}
	if cfg.GCInterval == 0 {
		cfg.GCInterval = DefaultGCInterval
	}
	if cfg.UnreachableBackoff == 0 {
		cfg.UnreachableBackoff = DefaultUnreachableBackoff
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a := &Allocator{cfg: cfg, log: cfg.Logger.With("epoch", cfg.Epoch), ledger: newLedger(), lastSeq: map[string]runSeq{},
		unreachableUntil: map[string]time.Time{}, lastContact: map[string]time.Time{}, orphans: map[poolNode][]string{}, unsettled: map[poolNode]*unsettledWrite{}, kicks: make(chan struct{}, 1), deposed: make(chan struct{}), writers: make(chan struct{}, cfg.Writers),
		sem: make(chan struct{}, cfg.Handlers)}
	a.metrics = newMetrics(a)
	return a
}

// New loads every pool and NodeLease from the API (not a cache: the
// leader starts from what is persisted) into a new allocator.
func New(ctx context.Context, cfg Config) (*Allocator, error) {
	if cfg.Client == nil && (cfg.Leases == nil || cfg.Pools == nil) || cfg.Bus == nil || cfg.Epoch == 0 {
		return nil, errors.New("allocator: Client (or Leases and Pools), Bus and a non-zero Epoch are required")
	}
	a := newAllocator(cfg)
	pools, err := a.cfg.Pools.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	leases, err := a.cfg.Leases.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list node leases: %w", err)
	}
	// An epoch must exceed every epoch that wrote a lease: if the election
	// Lease was recreated (its transitions restart at 0), agents that saw
	// the old epochs would refuse this leader forever.
	for _, nl := range leases.Items {
		if e := uint64(nl.Spec.Epoch); e >= a.cfg.Epoch {
			a.log.Warn("leader epoch below a lease's; raising it", "lease", nl.Name, "pool", nl.Spec.Pool, "node", nl.Spec.Node, "lease_epoch", e)
			a.cfg.Epoch = e + 1
		}
	}
	a.log = a.cfg.Logger.With("epoch", a.cfg.Epoch)
	if err := a.fence(ctx, leases.Items); err != nil {
		return nil, err
	}
	if err := a.claim(ctx, pools.Items, leases.Items); err != nil {
		return nil, err
	}
	if leases, err = a.cfg.Leases.List(ctx, metav1.ListOptions{}); err != nil {
		return nil, fmt.Errorf("list node leases: %w", err)
	}
	for _, nl := range leases.Items {
		if uint64(nl.Spec.Epoch) > a.cfg.Epoch {
			return nil, fmt.Errorf("lease %s: %w: it was written at epoch %d after this allocator fenced at %d", nl.Name, ErrDeposed, nl.Spec.Epoch, a.cfg.Epoch)
		}
	}
	a.metrics.epochMetric.Set(float64(a.cfg.Epoch))
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range pools.Items {
		if err := a.ledger.upsertPoolLocked(&pools.Items[i]); err != nil {
			a.log.Error("pool not served", "pool", pools.Items[i].Name, "err", err)
		}
	}
	for i := range leases.Items {
		for _, err := range a.ledger.loadLeaseLocked(&leases.Items[i]) {
			a.log.Error("inconsistent lease", "lease", leases.Items[i].Name, "pool", leases.Items[i].Spec.Pool, "node", leases.Items[i].Spec.Node, "err", err)
			a.metrics.conflicts.Inc()
		}
	}
	a.log.Info("allocator loaded", "pools", len(pools.Items), "leases", len(leases.Items))
	return a, nil
}

// fence rewrites every lease at this leader's epoch before it loads them:
// a write of an older leader still in flight (a process paused past its
// term, a request held up in the network) then fails on its
// resourceVersion instead of landing over what this leader loaded, and
// its author re-reads, finds the newer epoch and steps down. A lease that
// changed since the list is fenced as it now is: nothing has been decided
// on it yet. It costs one write per lease at each takeover, Writers at a
// time.
func (a *Allocator) fence(ctx context.Context, leases []v1alpha1.NodeLease) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(a.cfg.Writers)
	for i := range leases {
		g.Go(func() error { return a.fenceOne(gctx, leases[i].Name, leases[i].DeepCopy()) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	a.log.Info("leases fenced at this epoch", "leases", len(leases))
	return nil
}

// fenceOne writes this leader's epoch into lease name (nl: as last read,
// nil to read it), re-reading it on a conflict; errors that may pass (a
// timeout, the API throttling or restarting) are retried until ctx ends.
func (a *Allocator) fenceOne(ctx context.Context, name string, nl *v1alpha1.NodeLease) error {
	api := a.cfg.Leases
	return retryTransient(ctx, func() error {
		if nl == nil {
			cur, err := api.Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return nil // deleted (its node went): nothing to fence
			}
			if err != nil {
				return err
			}
			nl = cur
		}
		switch e := uint64(nl.Spec.Epoch); {
		case e > a.cfg.Epoch:
			return fmt.Errorf("fence lease %s: %w: it was written at epoch %d, this allocator's is %d", name, ErrDeposed, e, a.cfg.Epoch)
		case e == a.cfg.Epoch:
			return nil
		}
		next := nl.DeepCopy()
		next.Spec.Epoch = int64(a.cfg.Epoch)
		_, err := api.Update(ctx, next, metav1.UpdateOptions{})
		if err != nil {
			nl = nil // re-read before trying again
		}
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return errRetryNow
		}
		return err
	})
}

// errRetryNow asks retryTransient for another attempt at once.
var errRetryNow = errors.New("retry now")

// retryTransient runs op until it succeeds, fails for good, or ctx ends,
// waiting between attempts that failed for reasons that pass.
func retryTransient(ctx context.Context, op func() error) error {
	backoff := 100 * time.Millisecond
	for {
		err := op()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errRetryNow):
			continue
		case errors.Is(err, ErrDeposed):
			// Not the API's error but our verdict: stop at once (outcomeUnknown
			// would call any error that is not the API's a transport one).
			return err
		case !(outcomeUnknown(err) || apierrors.IsTooManyRequests(err) || apierrors.IsServiceUnavailable(err)):
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// claim creates, empty and at this leader's epoch, the lease of every
// node a pool may grant to that has none yet: a deposed leader's create of
// one (held up in the network past the takeover) then fails as one that
// exists, and its author steps down on the epoch it finds. Nodes that
// register later get theirs from this leader only.
func (a *Allocator) claim(ctx context.Context, pools []v1alpha1.IPPool, leases []v1alpha1.NodeLease) error {
	if a.cfg.Kube == nil {
		return nil
	}
	nodes, err := a.cfg.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	have := map[string]bool{}
	for _, nl := range leases {
		have[nl.Name] = true
	}
	var created atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(a.cfg.Writers)
	for _, p := range pools {
		for _, n := range nodes.Items {
			name := v1alpha1.NodeLeaseName(p.Name, n.Name)
			if have[name] || !v1alpha1.Selects(p.Spec.NodeSelector, n.Labels) {
				continue
			}
			nl := &v1alpha1.NodeLease{ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: v1alpha1.NodeLeaseSpec{Pool: p.Name, Node: n.Name, Epoch: int64(a.cfg.Epoch)}}
			g.Go(func() error {
				err := retryTransient(gctx, func() error {
					_, err := a.cfg.Leases.Create(gctx, nl, metav1.CreateOptions{})
					if apierrors.IsAlreadyExists(err) {
						// Created since the list (by a deposed leader, or by
						// our own create whose answer was lost): fence it.
						return a.fenceOne(gctx, name, nil)
					}
					return err
				})
				if err == nil {
					created.Add(1)
				}
				return err
			})
		}
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("claim leases: %w", err)
	}
	if n := created.Load(); n > 0 {
		a.log.Info("leases claimed for nodes that had none", "leases", n)
	}
	return nil
}

// Start starts the informers (with Config.Kube) and waits for their
// caches, subscribes to the agents' requests, and starts planning.
func (a *Allocator) Start(ctx context.Context) error {
	ctx, a.cancel = context.WithCancel(ctx)
	a.started = a.cfg.Clock.Now()
	if a.cfg.Kube != nil {
		if a.cfg.Client == nil {
			a.cancel()
			return errors.New("allocator: the informers (Kube) need Client for the pools' informer")
		}
		a.watch = newWatcher(a.cfg.Kube, a.cfg.Client, a.cfg.Clock.Now, a.upsertPool, a.kick)
		if err := a.watch.run(ctx); err != nil {
			a.cancel()
			return err
		}
	}
	for subject, handle := range map[string]func(context.Context, broker.Msg) any{
		broker.SubjectMissAll:   a.handleMiss,
		broker.SubjectReportAll: a.handleReport,
		broker.SubjectSyncAll:   a.handleSync,
	} {
		kind := subject[strings.LastIndex(subject, ".")+1:]
		sub, err := a.cfg.Bus.Handle(subject, func(m broker.Msg) {
			a.metrics.requests.WithLabelValues(kind).Inc()
			// A callback already running when Stop unsubscribes must not
			// add to the wait group Stop is waiting on.
			a.stopMu.Lock()
			if a.stopped {
				a.stopMu.Unlock()
				return
			}
			a.wg.Add(1)
			a.stopMu.Unlock()
			// NATS calls a subscription's handler in order on one goroutine;
			// an API write must not hold up every other node's request.
			a.sem <- struct{}{}
			go func() {
				defer func() { <-a.sem; a.wg.Done() }()
				var reply any
				if err := a.checkSender(m); err != nil {
					a.metrics.refused.WithLabelValues(kind).Inc()
					reply = &refusal{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch, Error: err.Error()}
				} else {
					reply = handle(ctx, m)
				}
				if err := m.Respond(broker.Encode(reply)); err != nil {
					a.log.Warn("respond", "subject", m.Subject, "node", subjectNode(m.Subject), "err", err)
				}
			}()
		})
		if err != nil {
			a.Stop()
			return fmt.Errorf("subscribe %s: %w", subject, err)
		}
		a.subs = append(a.subs, sub)
	}
	a.wg.Add(2)
	go a.runPlanner(ctx)
	go a.runStatus(ctx)
	if a.watch != nil {
		a.wg.Add(1)
		go a.runGC(ctx)
	}
	a.kick()
	return a.cfg.Bus.Flush()
}

// upsertPool takes a pool's spec from the informer.
func (a *Allocator) upsertPool(p *v1alpha1.IPPool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.ledger.upsertPoolLocked(p); err != nil {
		a.log.Error("pool not served", "pool", p.Name, "err", err)
	}
}

// Deposed is closed once the allocator has found a lease written by a
// newer leader: it must stop serving (and its process exit), whatever the
// election says.
func (a *Allocator) Deposed() <-chan struct{} { return a.deposed }

func (a *Allocator) depose(newer int64) {
	a.deposedOnce.Do(func() {
		a.log.Error("deposed: a newer leader wrote a lease; stepping down", "newer_epoch", newer)
		close(a.deposed)
	})
}

// Stop stops planning and the informers, unsubscribes, and waits for the
// requests in flight.
func (a *Allocator) Stop() {
	a.stopMu.Lock()
	a.stopped = true
	a.stopMu.Unlock()
	if a.cancel != nil {
		a.cancel()
	}
	for _, s := range a.subs {
		_ = s.Unsubscribe()
	}
	a.subs = nil
	a.wg.Wait()
	if a.watch != nil {
		a.watch.shutdown()
	}
}

func (a *Allocator) handleMiss(ctx context.Context, m broker.Msg) any {
	var req broker.MissRequest
	reply := &broker.MissReply{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch}
	if err := broker.Decode(m.Data, &req); err != nil {
		reply.Error = err.Error()
		return reply
	}
	a.mu.Lock()
	a.heardFromLocked(req.Node)
	a.mu.Unlock()
	units, info, gen, err := a.grant(ctx, req.Pool, req.Node, max(req.Count, 1))
	if errors.Is(err, errExhausted) {
		units, info, gen, err = a.steal(ctx, req.Pool, req.Node, max(req.Count, 1))
	}
	reply.Pool, reply.Units, reply.Gen = info, units, gen
	switch {
	case errors.Is(err, errBusy):
		reply.Retry = true
	case errors.Is(err, errExhausted):
		reply.Exhausted = true
	case err != nil:
		reply.Error = err.Error()
	default:
		a.log.Debug("miss served", "node", req.Node, "pool", req.Pool, "units", len(units))
		// The miss drained the node's cache: refill it in the background.
		a.kick()
	}
	return reply
}

func (a *Allocator) handleReport(ctx context.Context, m broker.Msg) any {
	var r broker.Report
	reply := &broker.ReportReply{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch}
	if err := broker.Decode(m.Data, &r); err != nil {
		reply.Error = err.Error()
		return reply
	}
	reply.Seq = r.Seq
	unlock, fresh := a.inOrder(r.Node, r.Run, r.Seq, r.Served)
	defer unlock()
	if !fresh {
		a.log.Debug("report overtaken", "node", r.Node, "run", r.Run, "seq", r.Seq, "events", len(r.Events))
		return reply // overtaken by a newer report or sync: what it said is applied
	}
	// Events of units in flight are skipped: the agent's next sync settles
	// them.
	_, _, err := a.applyByPool(ctx, r.Node, r.Events)
	a.log.Debug("report applied", "node", r.Node, "run", r.Run, "seq", r.Seq, "events", len(r.Events), "err", err)
	if err != nil {
		reply.Error = err.Error()
		return reply
	}
	a.kick()
	return reply
}

// inOrder serialises a node's reports and syncs and tells whether one is
// newer than every one applied from the same agent run: a request retried
// after a timeout may arrive after the later request that superseded it.
// A new run (an agent restart) starts afresh.
// The counts of what the run served are taken from a fresh one.
func (a *Allocator) inOrder(node, run string, seq uint64, served map[string]broker.Served) (unlock func(), fresh bool) {
	unlock = a.lockOrder(node)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.heardFromLocked(node)
	last, ok := a.lastSeq[node]
	if ok && last.run == run && seq <= last.seq {
		return unlock, false
	}
	var prev map[string]broker.Served
	if ok && last.run == run {
		prev = last.served
	} else if ok {
		prev = map[string]broker.Served{} // a restart this allocator saw: the new run counts from zero
	}
	a.lastSeq[node] = runSeq{run, seq, a.countServedLocked(node, prev, seq, served)}
	return unlock, true
}

// heardFromLocked records that a node's agent is alive: it is planned for
// again, and its units are not reclaimed as a lost node's.
func (a *Allocator) heardFromLocked(node string) {
	delete(a.unreachableUntil, node)
	a.lastContact[node] = a.cfg.Clock.Now()
}

// lockLease serialises the writes of one NodeLease.
func (a *Allocator) lockLease(pool, node string) (unlock func()) {
	return a.leaseLocks.Lock(pool + "\x00" + node)
}

// lockOrder serialises a node's reports and syncs (and what must not
// cross them); taken before any of the node's lease locks.
func (a *Allocator) lockOrder(node string) (unlock func()) {
	return a.leaseLocks.Lock("order\x00" + node)
}

type runSeq struct {
	run    string
	seq    uint64
	served map[string]broker.Served // the run's counts as last applied
}

// applyByPool applies a node's events, one lease write per pool, and
// returns the units the events named that another node holds now, and
// those reserved without a holder (being granted, or unconfirmed for
// another node). Events of a pool that no longer exists are logged and
// skipped: they must not block the node's other pools.
func (a *Allocator) applyByPool(ctx context.Context, node string, events []broker.Event) (foreign, inFlight []broker.ForeignUnit, _ error) {
	byPool := map[string][]broker.Event{}
	var pools []string
	for _, e := range events {
		if _, ok := byPool[e.Pool]; !ok {
			pools = append(pools, e.Pool)
		}
		byPool[e.Pool] = append(byPool[e.Pool], e)
	}
	for _, pool := range pools {
		ids, reserved, err := a.applyEvents(ctx, pool, node, byPool[pool])
		if errors.Is(err, errUnknownPool) {
			a.log.Warn("events for a pool that does not exist", "node", node, "pool", pool, "events", len(byPool[pool]))
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		for _, id := range ids {
			foreign = append(foreign, broker.ForeignUnit{Pool: pool, ID: id})
		}
		for _, id := range reserved {
			inFlight = append(inFlight, broker.ForeignUnit{Pool: pool, ID: id})
		}
	}
	return foreign, inFlight, nil
}

func (a *Allocator) handleSync(ctx context.Context, m broker.Msg) any {
	var req broker.SyncRequest
	// Half the grace period: the agent stops using warm units well before
	// this allocator may reclaim them from a silent node.
	reply := &broker.SyncReply{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch, WarmTTLMillis: (a.cfg.NodeLossGrace / 2).Milliseconds()}
	if err := broker.Decode(m.Data, &req); err != nil {
		reply.Error = err.Error()
		return reply
	}
	unlock, fresh := a.inOrder(req.Node, req.Run, req.Seq, req.Served)
	if !fresh {
		unlock()
		reply.Error = "stale sync: a newer report or sync of this agent was applied"
		return reply
	}
	// The agent's record says which of its units are assigned: it made the
	// assignments, and reports of them may have been lost.
	events := make([]broker.Event, 0, len(req.Units))
	for _, h := range req.Units {
		kind := broker.EventReleased
		if h.Assigned {
			kind = broker.EventAssigned
		}
		events = append(events, broker.Event{Kind: kind, Pool: h.Pool, UnitID: h.Unit.ID, Attachment: h.Attachment, Pod: h.Pod})
	}
	foreign, inFlight, err := a.applyByPool(ctx, req.Node, events)
	if err == nil && len(inFlight) > 0 {
		// The agent's record holds a unit reserved without a holder: a
		// grant to another node in flight (after this node was lost), or
		// one a reload keeps for another node until its sync. Neither can
		// be named foreign yet, nor left with this agent: it would hold
		// it alongside the next holder. It syncs again once the
		// reservation has ended (fault-suite seed 34).
		err = fmt.Errorf("%d units the agent holds are being granted to or confirmed for another node (%s of pool %s first): sync again",
			len(inFlight), inFlight[0].ID, inFlight[0].Pool)
	}
	holds := heldByPool(req.Units)
	if err == nil {
		err = a.dropUnheldAssignments(ctx, req.Node, holds)
	}
	if err == nil {
		a.releaseUnconfirmed(req.Node, holds)
	}
	unlock()
	a.log.Debug("sync applied", "node", req.Node, "run", req.Run, "seq", req.Seq, "units", len(req.Units), "err", err)
	if err != nil {
		reply.Error = err.Error()
		return reply
	}
	// Units the agent holds that another node holds now were taken while
	// this node was lost: the agent forgets them.
	reply.Foreign = foreign
	a.mu.Lock()
	defer a.mu.Unlock()
	// Top-ups go out as grants after the reply, not inline: a sync must
	// answer within the agent's timeout.
	a.kick()
	for _, ps := range a.ledger.pools {
		ls, ok := ps.leases[req.Node]
		if !ok {
			continue
		}
		lease := broker.Lease{Pool: ps.info, Gen: ls.generation}
		orphans := a.orphans[poolNode{ps.name, req.Node}]
		for _, u := range leaseUnits(ls.units) {
			// An orphan was given up by this agent: listing it would give
			// it back (the agent's memory of giving it up is lost on a
			// restart) just before the allocator frees it.
			if u.State == v1alpha1.UnitWarm && !slices.Contains(orphans, u.ID()) {
				lease.Units = append(lease.Units, broker.Unit{ID: u.ID(), IPv4: u.IPv4, IPv6: u.IPv6})
			}
		}
		reply.Leases = append(reply.Leases, lease)
	}
	return reply
}

// heldByPool is a sync's units as pool -> unit ID -> held.
func heldByPool(held []broker.HeldUnit) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, h := range held {
		if out[h.Pool] == nil {
			out[h.Pool] = map[string]bool{}
		}
		out[h.Pool][h.Unit.ID] = true
	}
	return out
}

// dropUnheldAssignments frees the units a node's leases list as assigned
// that its agent's sync does not hold in any state. Only the agent makes
// and ends assignments, and a sync is applied only if no newer report of
// the agent was, so such a unit left the node (released and dropped by a
// reconcile, say) with the news lost; kept, it would be asked back by the
// leak GC forever and never used again. The caller holds the node's order
// lock.
func (a *Allocator) dropUnheldAssignments(ctx context.Context, node string, holds map[string]map[string]bool) error {
	a.mu.Lock()
	var pools []string
	for name, ps := range a.ledger.pools {
		if ls := ps.leases[node]; ls != nil {
			for id, u := range ls.units {
				if u.State == v1alpha1.UnitAssigned && !holds[name][id] {
					pools = append(pools, name)
					break
				}
			}
		}
	}
	a.mu.Unlock()
	for _, pool := range pools {
		dropped, err := a.dropFromLease(ctx, pool, node, func(id string, u v1alpha1.LeasedUnit) bool {
			return u.State == v1alpha1.UnitAssigned && !holds[pool][id]
		})
		if err != nil {
			return err
		}
		for _, u := range dropped {
			a.log.Warn("assignment its node no longer holds freed", "pool", pool, "node", node, "address", logkey.Address(u.IPv4, u.IPv6),
				"pod", podName(u.Pod), "pod_uid", podUID(u.Pod))
		}
	}
	return nil
}

// releaseUnconfirmed frees the units unconfirmed for node (taken off its
// lease by a reload) that its sync does not hold: its agent does not have
// them, so no agent does. Those it holds were adopted back by the sync's
// events; one still unconfirmed (taken by a reload since) waits for the
// next sync. The caller holds the node's order lock.
func (a *Allocator) releaseUnconfirmed(node string, holds map[string]map[string]bool) {
	a.mu.Lock()
	var pools []string
	for name, ps := range a.ledger.pools {
		for _, p := range ps.unconfirmed {
			if p == node {
				pools = append(pools, name)
				break
			}
		}
	}
	a.mu.Unlock()
	for _, pool := range pools {
		// Under the lease lock: no reload of this lease while we look.
		unlock := a.lockLease(pool, node)
		a.mu.Lock()
		n := a.ledger.pools[pool].releaseUnconfirmedLocked(node, func(id string) bool { return holds[pool][id] })
		a.mu.Unlock()
		unlock()
		if n > 0 {
			a.log.Info("units taken off a node's lease by a reload freed: its agent's sync does not hold them", "pool", pool, "node", node, "units", n)
		}
	}
}

// podName and podUID are the log's pod and pod_uid of a leased unit's pod.
func podName(p *v1alpha1.PodRef) string {
	if p == nil {
		return ""
	}
	return logkey.Pod(p.Namespace, p.Name)
}

func podUID(p *v1alpha1.PodRef) string {
	if p == nil {
		return ""
	}
	return p.UID
}

// address is the log's address of the unit id of pool: its addresses, or
// id (its primary address) if the pool does not know it.
func (a *Allocator) address(pool, id string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ps, ok := a.ledger.pools[pool]; ok {
		if i, ok := ps.byID[id]; ok {
			return ps.units[i].address()
		}
	}
	return id
}

// address is the log's address of a unit.
func (u Unit) address() string {
	bu := brokerUnit(u)
	return logkey.Address(bu.IPv4, bu.IPv6)
}

// push sends a grant to the node's agent. A lost push is not lost units:
// they are in the node's lease, and the agent's next sync returns them.
func (a *Allocator) push(ctx context.Context, node, pool string, gen int64, units []broker.Unit) {
	a.mu.Lock()
	info := a.ledger.pools[pool].info
	a.mu.Unlock()
	msg := broker.Encode(&broker.Grant{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch, Node: node, Gen: gen, Pool: info, Units: units})
	rctx, cancel := context.WithTimeout(ctx, a.cfg.PushTimeout)
	defer cancel()
	resp, err := a.cfg.Bus.Request(rctx, broker.SubjectGrant(node), msg)
	if err != nil {
		a.log.Warn("push grant", "node", node, "pool", pool, "units", len(units), "err", err)
		return
	}
	var ack broker.Ack
	if err := broker.Decode(resp, &ack); err != nil || ack.Error != "" {
		a.log.Warn("grant refused", "node", node, "pool", pool, "err", err, "reason", ack.Error)
	}
}

// grant reserves up to n free units of pool for node and grants them.
func (a *Allocator) grant(ctx context.Context, pool, node string, n int) ([]broker.Unit, broker.PoolInfo, int64, error) {
	if err := a.ensurePool(ctx, pool); err != nil {
		return nil, broker.PoolInfo{}, 0, err
	}
	unlock := a.lockLease(pool, node)
	defer unlock()
	a.mu.Lock()
	ps := a.ledger.pools[pool]
	info := ps.info
	idx := ps.reserveLocked(n)
	a.mu.Unlock()
	if len(idx) == 0 {
		return nil, info, 0, fmt.Errorf("pool %s: %w", pool, errExhausted)
	}
	return a.grantReservedHeld(ctx, pool, node, idx)
}

func (a *Allocator) ensurePool(ctx context.Context, pool string) error {
	a.mu.Lock()
	_, ok := a.ledger.pools[pool]
	a.mu.Unlock()
	if ok {
		return nil
	}
	return a.loadPool(ctx, pool)
}

// grantReservedHeld persists reserved units (by index) in the node's
// lease, and only then commits them to the ledger and returns them with
// the lease's new generation. The units are unreserved either way. The
// caller holds the node's lease lock.
func (a *Allocator) grantReservedHeld(ctx context.Context, pool, node string, idx []int) ([]broker.Unit, broker.PoolInfo, int64, error) {
	a.mu.Lock()
	ps := a.ledger.pools[pool]
	info := ps.info
	next, name, rv := a.leaseCopyLocked(ps, node)
	var units []broker.Unit
	for _, i := range idx {
		lu := leasedUnit(ps.units[i])
		next[lu.ID()] = lu
		units = append(units, brokerUnit(ps.units[i]))
	}
	a.mu.Unlock()

	newRV, gen, err := a.writeLease(ctx, pool, node, name, rv, next)
	a.mu.Lock()
	defer a.mu.Unlock()
	if errors.Is(err, errUnsettled) {
		a.keepReservedLocked(pool, node, idx)
		return nil, info, 0, err
	}
	ps.unreserveLocked(idx)
	if err != nil {
		return nil, info, 0, err
	}
	for _, i := range idx {
		ps.holder[i] = node
	}
	a.commitLeaseLocked(ps, node, &leaseState{name: name, resourceVersion: newRV, generation: gen, units: next})
	return units, info, gen, nil
}

// steal serves a miss on an exhausted pool from other nodes' surplus: the
// nodes holding the most warm units, in turn, give back what they still
// hold warm of what is asked (each agent drops them from cache and record
// before it answers), their leases are rewritten without them, and the
// units are granted to node. It fails with errExhausted when no other node
// holds a warm unit, and errBusy when some do but none could be taken now.
func (a *Allocator) steal(ctx context.Context, pool, node string, n int) ([]broker.Unit, broker.PoolInfo, int64, error) {
	a.mu.Lock()
	ps, ok := a.ledger.pools[pool]
	if !ok {
		a.mu.Unlock()
		return nil, broker.PoolInfo{}, 0, fmt.Errorf("pool %s: %w", pool, errUnknownPool)
	}
	info := ps.info
	type donor struct {
		node string
		warm int
	}
	var donors []donor
	for other, ls := range ps.leases {
		if warm := a.warmHeldLocked(ps, other, ls); other != node && warm > 0 {
			donors = append(donors, donor{other, warm})
		}
	}
	// Units on their way (reserved for a grant in flight, or already in
	// this node's lease but not yet pushed to its agent) mean "ask again",
	// not "exhausted".
	inFlight := slices.Contains(ps.reserved, true) || a.warmHeldLocked(ps, node, ps.leases[node]) > 0
	a.mu.Unlock()
	if len(donors) == 0 {
		if inFlight {
			return nil, info, 0, fmt.Errorf("pool %s: %w", pool, errBusy)
		}
		return nil, info, 0, fmt.Errorf("pool %s: %w", pool, errExhausted)
	}
	slices.SortFunc(donors, func(x, y donor) int { return y.warm - x.warm })
	var idx []int
	for _, d := range donors {
		if len(idx) == n {
			break
		}
		taken, err := a.takeFrom(ctx, ps, d.node, n-len(idx))
		if err != nil {
			a.log.Warn("revoke for a miss", "pool", pool, "node", d.node, "for_node", node, "err", err)
		}
		idx = append(idx, taken...)
	}
	if len(idx) == 0 {
		return nil, info, 0, fmt.Errorf("pool %s: %w", pool, errBusy)
	}
	a.log.Info("units moved under scarcity", "pool", pool, "node", node, "units", len(idx))
	a.metrics.moved.Add(float64(len(idx)))
	unlock := a.lockLease(pool, node)
	defer unlock()
	return a.grantReservedHeld(ctx, pool, node, idx)
}

// takeFrom revokes up to n warm units from donor and rewrites its lease
// without those it gave back. They are returned reserved (by index), for
// the caller to grant. A donor that does not answer in time keeps its
// units.
func (a *Allocator) takeFrom(ctx context.Context, ps *poolState, donor string, n int) ([]int, error) {
	unlock := a.lockLease(ps.name, donor)
	defer unlock()
	a.mu.Lock()
	var ids []string
	var gen int64
	if ls := ps.leases[donor]; ls != nil {
		gen = ls.generation
		orphans := a.orphans[poolNode{ps.name, donor}]
		for id, u := range ls.units {
			if u.State == v1alpha1.UnitWarm && len(ids) < n && !slices.Contains(orphans, id) {
				ids = append(ids, id)
			}
		}
	}
	a.mu.Unlock()
	if len(ids) == 0 {
		return nil, nil
	}
	released, err := a.revoke(ctx, donor, ps.name, gen, ids)
	if len(released) == 0 {
		return nil, err
	}
	a.mu.Lock()
	next, name, rv := a.leaseCopyLocked(ps, donor)
	var idx []int
	for _, id := range released {
		if i, ok := ps.byID[id]; ok && ps.holder[i] == donor {
			delete(next, id)
			idx = append(idx, i)
			ps.reserved[i] = true // kept for the taker while the donor's lease is rewritten
		}
	}
	a.mu.Unlock()
	newRV, newGen, werr := a.writeLease(ctx, ps.name, donor, name, rv, next)
	a.mu.Lock()
	defer a.mu.Unlock()
	if werr != nil {
		// The donor's agent dropped them for good (it refuses listings up
		// to gen), but its lease still lists them. They stay out of every
		// grant (held by the donor in the ledger) until a later round
		// rewrites the lease without them.
		ps.unreserveLocked(idx)
		for _, i := range idx {
			a.orphanLocked(ps.name, donor, ps.units[i].ID())
		}
		return nil, werr
	}
	for _, i := range idx {
		ps.holder[i] = ""
	}
	a.commitLeaseLocked(ps, donor, &leaseState{name: name, resourceVersion: newRV, generation: newGen, units: next})
	return idx, err
}

// revoke asks a node's agent to give back warm units and returns those it
// gave back.
func (a *Allocator) revoke(ctx context.Context, node, pool string, gen int64, ids []string) ([]string, error) {
	msg := broker.Encode(&broker.Revoke{V: broker.ProtocolVersion, Epoch: a.cfg.Epoch, Pool: pool, Gen: gen, IDs: ids})
	rctx, cancel := context.WithTimeout(ctx, a.cfg.PushTimeout)
	defer cancel()
	resp, err := a.cfg.Bus.Request(rctx, broker.SubjectRevoke(node), msg)
	if err != nil {
		return nil, fmt.Errorf("revoke from %s: %w", node, err)
	}
	var r broker.Revoked
	if err := broker.Decode(resp, &r); err != nil {
		return nil, err
	}
	if r.Error != "" {
		return r.IDs, fmt.Errorf("revoke from %s: %s", node, r.Error)
	}
	return r.IDs, nil
}

// applyEvents records assignments and releases of a node's units of one
// pool in its lease. An assigned unit the node does not hold is adopted if
// free (the agent assigned it, so it is in use there); if another node
// holds it, the conflict is logged and the event skipped: that is an
// invariant violation no event may paper over.
func (a *Allocator) applyEvents(ctx context.Context, pool, node string, events []broker.Event) (foreign, inFlight []string, err error) {
	unlock := a.lockLease(pool, node)
	defer unlock()
	a.mu.Lock()
	ps, ok := a.ledger.pools[pool]
	if !ok {
		a.mu.Unlock()
		return nil, nil, fmt.Errorf("pool %s: %w", pool, errUnknownPool)
	}
	next, name, rv := a.leaseCopyLocked(ps, node)
	var adopt []int
	changed := false
	for _, e := range events {
		i, known := ps.byID[e.UnitID]
		if !known {
			a.log.Error("event for a unit not in the pool", "node", node, "pool", pool, "address", e.UnitID,
				"pod", logkey.Pod(e.Pod.Namespace, e.Pod.Name), "attachment", e.Attachment, "event", e.Kind)
			continue
		}
		u, held := next[e.UnitID]
		if !held && ps.unconfirmed[i] == node {
			// Taken off this node's lease by a reload, and kept reserved
			// for it: its agent holds it, in whatever state the event
			// says, so it is the node's again. (A unit without a holder
			// but reserved may be a grant in flight to another node: only
			// an unconfirmed one is known to be this node's.)
			u = leasedUnit(ps.units[i])
			adopt = append(adopt, i)
		} else if !held {
			if h := ps.holder[i]; h != "" || ps.reserved[i] {
				// Held by another node: the agent is told to forget it. A
				// reservation without a holder is not settled yet: the
				// caller decides.
				switch {
				case h != "" && h != node:
					foreign = append(foreign, e.UnitID)
				case h == "":
					inFlight = append(inFlight, e.UnitID)
				}
				a.log.Error("unit held by another node", "node", node, "holder", h, "pool", pool, "address", ps.units[i].address(),
					"pod", logkey.Pod(e.Pod.Namespace, e.Pod.Name), "attachment", e.Attachment, "event", e.Kind)
				a.metrics.conflicts.Inc()
				continue
			}
			if e.Kind != broker.EventAssigned {
				continue // a release of what the node no longer holds
			}
			u = leasedUnit(ps.units[i])
			adopt = append(adopt, i)
		}
		switch e.Kind {
		case broker.EventAssigned:
			ctr, ifname := broker.SplitAttachment(e.Attachment)
			u.State = v1alpha1.UnitAssigned
			u.Pod = &v1alpha1.PodRef{Namespace: e.Pod.Namespace, Name: e.Pod.Name, UID: e.Pod.UID, ContainerID: ctr, Interface: ifname}
		case broker.EventReleased:
			u.State, u.Pod = v1alpha1.UnitWarm, nil
		}
		if old, ok := next[e.UnitID]; !ok || old.State != u.State || (old.Pod == nil) != (u.Pod == nil) || old.Pod != nil && *old.Pod != *u.Pod {
			changed = true
		}
		next[e.UnitID] = u
	}
	for _, i := range adopt {
		ps.reserved[i] = true
	}
	a.mu.Unlock()
	if !changed {
		return foreign, inFlight, nil
	}
	newRV, gen, err := a.writeLease(ctx, pool, node, name, rv, next)
	a.mu.Lock()
	defer a.mu.Unlock()
	if errors.Is(err, errUnsettled) {
		a.keepReservedLocked(pool, node, adopt)
		return foreign, inFlight, err
	}
	ps.unreserveLocked(adopt) // unconfirmed ones stay reserved if the write failed
	if err != nil {
		return foreign, inFlight, err
	}
	for _, i := range adopt {
		ps.holdLocked(i, node)
	}
	a.commitLeaseLocked(ps, node, &leaseState{name: name, resourceVersion: newRV, generation: gen, units: next})
	return foreign, inFlight, nil
}

// leaseCopyLocked returns a copy of a node's lease units to modify, with
// the lease's name and resourceVersion. Orphans (units the node gave back
// whose removal has not been written yet) are left out: every write of the
// lease removes them.
func (a *Allocator) leaseCopyLocked(ps *poolState, node string) (map[string]v1alpha1.LeasedUnit, string, string) {
	next := map[string]v1alpha1.LeasedUnit{}
	name, rv := v1alpha1.NodeLeaseName(ps.name, node), ""
	if ls := ps.leases[node]; ls != nil {
		name, rv = ls.name, ls.resourceVersion
		orphans := a.orphans[poolNode{ps.name, node}]
		for id, u := range ls.units {
			if !slices.Contains(orphans, id) {
				next[id] = *u.DeepCopy()
			}
		}
	}
	return next, name, rv
}

// warmHeldLocked counts the warm units a node's lease lists that its agent
// still holds: orphans (given back, removal not yet written) are not.
func (a *Allocator) warmHeldLocked(ps *poolState, node string, ls *leaseState) int {
	if ls == nil {
		return 0
	}
	n := ls.warmCount()
	for _, id := range a.orphans[poolNode{ps.name, node}] {
		if u, ok := ls.units[id]; ok && u.State == v1alpha1.UnitWarm {
			n--
		}
	}
	return n
}

// commitLeaseLocked records a written lease in the ledger. Orphans of the
// node that the write left out are free from now on.
func (a *Allocator) commitLeaseLocked(ps *poolState, node string, ls *leaseState) {
	ps.leases[node] = ls
	for _, id := range a.orphans[poolNode{ps.name, node}] {
		if _, listed := ls.units[id]; listed {
			continue
		}
		if i, ok := ps.byID[id]; ok && ps.holder[i] == node {
			ps.holder[i] = ""
		}
	}
	delete(a.orphans, poolNode{ps.name, node})
}

// writeLease persists a node's lease of a pool: create it, or update it at
// the resourceVersion we last wrote. The leader is the only writer, so a
// conflict means our resourceVersion is stale (our own write's answer was
// lost): re-read it and write again, once.
func (a *Allocator) writeLease(ctx context.Context, pool, node, name, rv string, units map[string]v1alpha1.LeasedUnit) (string, int64, error) {
	nl := &v1alpha1.NodeLease{
		ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: rv},
		Spec:       v1alpha1.NodeLeaseSpec{Pool: pool, Node: node, Epoch: int64(a.cfg.Epoch), Units: leaseUnits(units)},
	}
	leases := a.cfg.Leases
	// A new write on top of one whose outcome is unknown would be built on
	// the wrong state: settle that one first.
	if err := a.settleHeld(ctx, pool, node); err != nil {
		return "", 0, err
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, a.cfg.WriteTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		var out *v1alpha1.NodeLease
		var err error
		start := time.Now()
		if nl.ResourceVersion == "" {
			out, err = leases.Create(ctx, nl, metav1.CreateOptions{})
		} else {
			out, err = leases.Update(ctx, nl, metav1.UpdateOptions{})
		}
		a.metrics.writeTime.Observe(time.Since(start).Seconds())
		if err == nil {
			a.metrics.writes.WithLabelValues("ok").Inc()
			return out.ResourceVersion, out.Generation, nil
		}
		a.metrics.writes.WithLabelValues("error").Inc()
		if outcomeUnknown(err) {
			// The write may have landed with its answer lost, or may still
			// land: find out by sending it again (below).
			return a.settle(parent, pool, node, nl, err)
		}
		if attempt > 0 || !(apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)) {
			return "", 0, fmt.Errorf("write lease %s: %w", name, err)
		}
		cur, gerr := leases.Get(ctx, name, metav1.GetOptions{})
		if gerr != nil {
			return "", 0, fmt.Errorf("write lease %s: %w (re-read: %w)", name, err, gerr)
		}
		if uint64(cur.Spec.Epoch) > a.cfg.Epoch {
			// A newer leader wrote it: this allocator is deposed and must
			// not overwrite its successor's record.
			a.depose(cur.Spec.Epoch)
			return "", 0, fmt.Errorf("write lease %s: %w: it was written at epoch %d, this allocator's is %d", name, ErrDeposed, cur.Spec.Epoch, a.cfg.Epoch)
		}
		if !sameUnits(cur.Spec.Units, a.committedUnits(pool, node)) {
			// The lease holds something the ledger does not (a write whose
			// answer was lost, or a predecessor's after we loaded):
			// writing our map would lose it. Take the lease as it is into
			// the ledger and fail this change; its caller's next trigger
			// recomputes from the truth.
			a.reload(cur)
			return "", 0, fmt.Errorf("write lease %s: it changed behind this allocator, reloaded (conflict %w)", name, err)
		}
		nl.ResourceVersion = cur.ResourceVersion
	}
}

// outcomeUnknown tells a failed write that may have been applied from one
// the apiserver refused.
func outcomeUnknown(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return true // transport error, our own timeout
	}
	return apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) || apierrors.IsInternalError(err) || apierrors.IsUnexpectedServerError(err)
}

// loadPool reads a pool the ledger does not know yet from the API.
func (a *Allocator) loadPool(ctx context.Context, pool string) error {
	p, err := a.cfg.Pools.Get(ctx, pool, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("pool %s: %w", pool, errUnknownPool)
	}
	if err != nil {
		return fmt.Errorf("pool %s: %w", pool, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ledger.upsertPoolLocked(p)
}

// committedUnits returns the units the ledger has committed for a node's
// lease, as the API object lists them.
func (a *Allocator) committedUnits(pool, node string) []v1alpha1.LeasedUnit {
	a.mu.Lock()
	defer a.mu.Unlock()
	ps := a.ledger.pools[pool]
	if ps == nil || ps.leases[node] == nil {
		return nil
	}
	return leaseUnits(ps.leases[node].units)
}

func sameUnits(x, y []v1alpha1.LeasedUnit) bool {
	if len(x) != len(y) {
		return false
	}
	seen := map[string]v1alpha1.LeasedUnit{}
	for _, u := range x {
		seen[u.ID()] = u
	}
	for _, u := range y {
		v, ok := seen[u.ID()]
		if !ok || v.State != u.State {
			return false
		}
	}
	return true
}

// Epoch returns the epoch the allocator serves with (raised above every
// lease's at New).
func (a *Allocator) Epoch() uint64 { return a.cfg.Epoch }

// reload replaces the ledger's record of a node's lease with the stored
// object. Units the ledger's record listed that the stored lease lacks are
// not freed: they become unconfirmed for the node (reserved) until its
// sync says whether its agent holds them. The stored lease may be a drop
// whose answer was lost, and a sync applied while that write was
// unsettled was answered from the ledger's record, listing them to the
// agent, which uses them (fault-suite seed 93: freed here, then granted
// to another node while the first one's agent held them).
func (a *Allocator) reload(cur *v1alpha1.NodeLease) {
	if uint64(cur.Spec.Epoch) > a.cfg.Epoch {
		a.depose(cur.Spec.Epoch) // written by a newer leader: not ours to load
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	ps := a.ledger.pools[cur.Spec.Pool]
	if ps == nil {
		return
	}
	node := cur.Spec.Node
	stored := make(map[string]bool, len(cur.Spec.Units))
	for _, u := range cur.Spec.Units {
		stored[u.ID()] = true
	}
	var taken []int
	if old := ps.leases[node]; old != nil {
		for id := range old.units {
			if i, ok := ps.byID[id]; ok && ps.holder[i] == node {
				ps.holder[i] = ""
				if !stored[id] {
					ps.reserved[i] = true
					ps.unconfirmed[i] = node
					taken = append(taken, i)
				}
			}
		}
	}
	delete(ps.leases, node)
	for _, err := range a.ledger.loadLeaseLocked(cur) {
		a.log.Error("inconsistent lease on reload", "lease", cur.Name, "pool", cur.Spec.Pool, "node", node, "err", err)
		a.metrics.conflicts.Inc()
	}
	slices.Sort(taken)
	for _, i := range taken {
		a.log.Warn("the stored lease lacks a unit the node held; it stays reserved for the node until its agent's sync says whether it holds it",
			"lease", cur.Name, "pool", cur.Spec.Pool, "node", node, "address", ps.units[i].address())
	}
}
