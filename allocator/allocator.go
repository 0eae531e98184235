package allocator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

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
	// RoundGap is the least time from one round's start to the next's:
	// the kicks of a burst (every pod bound, every agent's report) that
	// arrive within it coalesce into one round, so that a round, which
	// reads every pod, does not run once per event.
	RoundGap time.Duration
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
	// DemandWindow is how far back a node's ADDs count towards its
	// headroom (see pace).
	DemandWindow time.Duration
	Clock        clock.WithTicker
	Logger       *slog.Logger
}

// Defaults of Config.
const (
	DefaultPlanInterval       = 5 * time.Second
	DefaultRetryInterval      = 100 * time.Millisecond
	DefaultRoundGap           = 50 * time.Millisecond
	DefaultNodeLossGrace      = 5 * time.Minute
	DefaultUnreachableBackoff = 10 * time.Second
	DefaultGCInterval         = 30 * time.Second
	DefaultStatusInterval     = 5 * time.Second
	DefaultWriteTimeout       = 10 * time.Second
	DefaultDemandWindow       = 30 * time.Second
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
	// gaveBack: per node, the units its last sync says its agent gave
	// back to revokes, for the next round to take out of its lease
	// (applyGaveBack).
	gaveBack map[string][]broker.GaveBack
	// lastContact: when each node's agent last sent a request; started:
	// when this allocator started (the contact assumed before any).
	lastContact map[string]time.Time
	started     time.Time
	// agents: each node's agent's last reported state.
	agents map[string]agentState
	// pace: each node's recent ADDs, per pool.
	pace map[poolNode]*pace

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
	if cfg.RoundGap == 0 {
		cfg.RoundGap = DefaultRoundGap
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
	if cfg.DemandWindow == 0 {
		cfg.DemandWindow = DefaultDemandWindow
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
		unreachableUntil: map[string]time.Time{}, gaveBack: map[string][]broker.GaveBack{}, lastContact: map[string]time.Time{}, agents: map[string]agentState{}, pace: map[poolNode]*pace{}, kicks: make(chan struct{}, 1), deposed: make(chan struct{}), writers: make(chan struct{}, cfg.Writers),
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
		a.conflictsLocked(leases.Items[i].Spec.Pool, leases.Items[i].Spec.Node, a.ledger.loadLeaseLocked(&leases.Items[i]))
	}
	a.log.Info("allocator loaded", "pools", len(pools.Items), "leases", len(leases.Items))
	return a, nil
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
				if err := m.Respond(broker.Encode(handle(ctx, m))); err != nil {
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

// Epoch returns the epoch the allocator serves with (raised above every
// lease's at New).
func (a *Allocator) Epoch() uint64 { return a.cfg.Epoch }
