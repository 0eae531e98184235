package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/broker"
)

// Bus connects an agent to the allocator over NATS: it answers the
// allocator's grants and revokes, asks it on a cache miss, reports the
// node's state (soft: what it holds warm and assigned) after changes, and
// resynchronises with the node's leases on start, on every reconnection
// and periodically. While the bus is down the agent keeps serving ADD
// from its cache and DEL into it, as long as the allocator or a live read
// of the node vouches for it (Fenced); the sync on reconnect settles the
// rest.
type Bus struct {
	agent *Agent
	conn  broker.Transport
	node  string
	log   *slog.Logger
	// RequestTimeout bounds one request to the allocator.
	timeout time.Duration

	// run identifies this agent process to the allocator; seq numbers its
	// reports and syncs, so that a retried request overtaken by a later
	// one (an older state) is not applied after it.
	run string
	seq atomic.Uint64

	mu   sync.Mutex
	kick chan struct{} // the state changed: a report is due

	syncDue chan struct{}

	// exhausted records when the allocator last called a pool exhausted;
	// a grant of the pool clears it. Guarded by mu.
	exhausted map[string]time.Time

	// heard is when a request of this agent was last answered by the
	// allocator (unix ns); warmTTL how long warm units may be used after
	// that (ns), as the last sync reply said. unsynced is set at start and
	// whenever the TTL ran out: only a sync, which reconciles the warm
	// units with the node's lease, clears it.
	heard    atomic.Int64
	warmTTL  atomic.Int64
	unsynced atomic.Bool
	// syncedEpoch is the epoch of the allocator that answered the last sync.
	syncedEpoch atomic.Uint64

	// NodeReady, if set, reads the node's Ready condition live from the
	// API (nil error: Ready). While the allocator is silent the agent asks
	// it every TTL/3: a node the API shows Ready cannot be declared lost
	// within the TTL, so its warm units stay usable through a bus outage.
	NodeReady func(ctx context.Context) error
	readyAt   atomic.Int64 // when NodeReady last said Ready (unix ns)
	// syncEvery, if set, replaces the periodic sync's interval
	// (min(SyncInterval, TTL/3)): tests that move the agent's clock by
	// hand set it beyond their length, as its ticker runs in real time.
	syncEvery time.Duration
}

// DefaultWarmTTL bounds the use of warm units without news from the
// allocator until a sync reply gives the allocator's own figure.
const DefaultWarmTTL = 150 * time.Second

// heardFrom records an answer of the allocator to a request sent at sent.
func (b *Bus) heardFrom(sent time.Time) { b.vouch(&b.heard, sent) }

// vouch records that the allocator (heard) or the API (readyAt) vouched
// for the node, as of when it was asked (sent): the allocator counts a
// node's silence from the requests it handles, so an answer that took
// long must not stretch the agent's TTL past the allocator's. If nothing
// vouched for longer than the warm TTL before now, the node may have been
// declared lost meanwhile, even if no ADD noticed: the cache is unusable
// until a sync reconciles it.
func (b *Bus) vouch(at *atomic.Int64, sent time.Time) {
	now := b.agent.cfg.Now()
	last := time.Unix(0, max(b.heard.Load(), b.readyAt.Load()))
	if now.Sub(last) > time.Duration(b.warmTTL.Load()) && !b.unsynced.Load() {
		b.unsynced.Store(true)
		b.Resync()
		b.log.Warn("warm units fenced: nothing vouched for the node for longer than the warm TTL", "since", last)
	}
	for {
		old := at.Load()
		if sent.UnixNano() <= old || at.CompareAndSwap(old, sent.UnixNano()) {
			return
		}
	}
}

// probeIfSilent asks the API whether the node is Ready when the allocator
// has been silent for a third of the warm TTL, without holding up the
// loop.
func (b *Bus) probeIfSilent(ctx context.Context) {
	ttl := time.Duration(b.warmTTL.Load())
	if b.NodeReady == nil || b.agent.cfg.Now().Sub(time.Unix(0, b.heard.Load())) < ttl/3 {
		return
	}
	go func() {
		pctx, cancel := context.WithTimeout(ctx, ttl/3)
		defer cancel()
		sent := b.agent.cfg.Now()
		if err := b.NodeReady(pctx); err != nil {
			b.log.Warn("allocator silent and the node not confirmed Ready by the API", "err", err)
			return
		}
		b.vouch(&b.readyAt, sent)
	}()
}

// Fenced implements Allocator. Warm units may be used only after a sync
// since the agent started, and while the allocator answered within the
// warm TTL: past it the node may be declared lost and its warm units
// given to other nodes, so the agent asks for a sync and uses none until
// that sync has reconciled its cache with its lease.
func (b *Bus) Fenced() error {
	silence, err := b.fence()
	if err == nil {
		return nil
	}
	if silence {
		b.unsynced.Store(true)
		b.log.Warn("warm units fenced", "err", err)
	}
	b.Resync()
	return err
}

// Fencing is Fenced's answer without acting on it (no sync asked, no
// state changed): for the agent's state endpoint.
func (b *Bus) Fencing() error {
	_, err := b.fence()
	return err
}

// fence says why warm units may not be used now (nil: they may), and
// whether the cause is a silence past the warm TTL, which unsyncs the
// agent once Fenced notices it.
func (b *Bus) fence() (silence bool, err error) {
	if b.unsynced.Load() {
		return false, errors.New("the agent has not synchronised with the allocator since it started or since a silence")
	}
	now, ttl := b.agent.cfg.Now(), time.Duration(b.warmTTL.Load())
	silent := now.Sub(time.Unix(0, b.heard.Load()))
	if ready := b.readyAt.Load(); ready != 0 && now.Sub(time.Unix(0, ready)) <= ttl {
		return false, nil // the API vouches for the node
	}
	if silent > ttl {
		return true, fmt.Errorf("no answer from the allocator for %s (warm addresses are usable for %s without one: the node may have been declared lost)", silent.Round(time.Second), ttl)
	}
	return false, nil
}

// ExhaustedFor is how long an "exhausted" answer keeps STATUS not-ready
// without news from the allocator.
const ExhaustedFor = 10 * time.Second

// CanServe implements Allocator: the bus is connected and the pool was not
// called exhausted in the last ExhaustedFor.
func (b *Bus) CanServe(pool string) bool {
	if !b.conn.Connected() {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	at, ok := b.exhausted[pool]
	return !ok || b.agent.cfg.Now().Sub(at) > ExhaustedFor
}

func (b *Bus) setExhausted(pool string, yes bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if yes {
		b.exhausted[pool] = b.agent.cfg.Now()
	} else {
		delete(b.exhausted, pool)
	}
}

// SyncInterval is how often an agent resynchronises without a reason.
const SyncInterval = 30 * time.Second

// NewBus wires an agent to a bus connection: the agent's cache misses go
// to the allocator through it, its changes trigger reports, and every
// reconnection triggers a sync. Call it before the agent serves ADDs.
func NewBus(a *Agent, conn broker.Transport, timeout time.Duration) *Bus {
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	runID := make([]byte, 8)
	_, _ = rand.Read(runID)
	b := &Bus{agent: a, conn: conn, node: a.cfg.Node, log: a.log, timeout: timeout, run: hex.EncodeToString(runID),
		kick: make(chan struct{}, 1), syncDue: make(chan struct{}, 1), exhausted: map[string]time.Time{}}
	b.warmTTL.Store(int64(DefaultWarmTTL))
	b.unsynced.Store(true)
	a.cfg.OnChange = b.changed
	a.cfg.Allocator = b
	conn.OnReconnect(b.Resync)
	return b
}

// changed asks for a report of the node's state. Changes while one is
// in flight coalesce into the next.
func (b *Bus) changed() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Resync asks for a full sync, as after a reconnection.
func (b *Bus) Resync() {
	select {
	case b.syncDue <- struct{}{}:
	default:
	}
}

// Run subscribes to grants, syncs, and then reports until ctx ends.
func (b *Bus) Run(ctx context.Context) error {
	sub, err := b.conn.Handle(broker.SubjectGrant(b.node), func(m broker.Msg) {
		b.agent.metrics.bus.WithLabelValues("grant", "received").Inc()
		_ = m.Respond(broker.Encode(b.handleGrant(m.Data)))
	})
	if err != nil {
		return fmt.Errorf("subscribe to grants: %w", err)
	}
	defer sub.Unsubscribe()
	rsub, err := b.conn.Handle(broker.SubjectRevoke(b.node), func(m broker.Msg) {
		b.agent.metrics.bus.WithLabelValues("revoke", "received").Inc()
		_ = m.Respond(broker.Encode(b.handleRevoke(m.Data)))
	})
	if err != nil {
		return fmt.Errorf("subscribe to revokes: %w", err)
	}
	defer rsub.Unsubscribe()
	b.Resync()
	retry := time.NewTimer(0)
	<-retry.C
	// A periodic sync heals what a lost message left behind (a grant that
	// crossed a sync reply, say) even without a reconnection.
	periodic := time.NewTicker(b.periodicSync())
	defer periodic.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-b.syncDue:
			if err := b.sync(ctx); err != nil {
				b.log.Warn("sync with the allocator", "err", err)
				b.Resync()
				retry.Reset(time.Second)
				select {
				case <-ctx.Done():
					return nil
				case <-retry.C:
				}
				continue
			}
			// An idle agent must be heard from well within its warm TTL,
			// or it would fence itself for want of traffic.
			periodic.Reset(b.periodicSync())
		case <-b.kick:
			if err := b.report(ctx); err != nil {
				b.log.Warn("report to the allocator", "err", err)
				retry.Reset(500 * time.Millisecond)
				select {
				case <-ctx.Done():
					return nil
				case <-retry.C:
				}
				b.rearm()
			}
		case <-periodic.C:
			b.Resync()
			b.probeIfSilent(ctx)
		}
	}
}

// periodicSync is how often an idle agent syncs: well within its warm TTL,
// or it would fence itself for want of traffic.
func (b *Bus) periodicSync() time.Duration {
	if b.syncEvery > 0 {
		return b.syncEvery
	}
	return min(SyncInterval, time.Duration(b.warmTTL.Load())/3)
}

// rearm makes the report loop try again without a new event.
func (b *Bus) rearm() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

func (b *Bus) handleGrant(data []byte) *broker.Ack {
	ack := &broker.Ack{V: broker.ProtocolVersion}
	var g broker.Grant
	if err := broker.Decode(data, &g); err != nil {
		ack.Error = err.Error()
		return ack
	}
	ok, err := b.agent.AcceptEpoch(g.Epoch)
	switch {
	case err != nil:
		ack.Error = err.Error()
		return ack
	case !ok:
		ack.Error = fmt.Sprintf("epoch %d is older than one this node has seen: ignored", g.Epoch)
		b.log.Warn("grant from a deposed allocator ignored", "epoch", g.Epoch, "pool", g.Pool.Name)
		return ack
	}
	if err := b.agent.Grant(StorePool(g.Pool), storeUnits(g.Pool.Name, g.Units), g.Gen); err != nil {
		ack.Error = err.Error()
		return ack
	}
	b.setExhausted(g.Pool.Name, false)
	return ack
}

func (b *Bus) handleRevoke(data []byte) *broker.Revoked {
	out := &broker.Revoked{V: broker.ProtocolVersion}
	var r broker.Revoke
	if err := broker.Decode(data, &r); err != nil {
		out.Error = err.Error()
		return out
	}
	if ok, err := b.agent.AcceptEpoch(r.Epoch); err != nil || !ok {
		out.Error = fmt.Sprintf("revoke of epoch %d refused (stale or unrecorded: %v)", r.Epoch, err)
		return out
	}
	ids, err := b.agent.Revoke(r.Pool, r.IDs, r.Count, r.Gen)
	if err != nil {
		out.Error = err.Error()
	}
	out.IDs = ids
	return out
}

func storeUnits(pool string, us []broker.Unit) []store.Unit {
	out := make([]store.Unit, 0, len(us))
	for _, u := range us {
		out = append(out, store.Unit{Pool: pool, ID: u.ID, IPv4: u.IPv4, IPv6: u.IPv6})
	}
	return out
}

// Miss implements Allocator: one request for units of pool.
func (b *Bus) Miss(ctx context.Context, pool string, count int) ([]store.Unit, store.Pool, int64, error) {
	msg := broker.Encode(&broker.MissRequest{V: broker.ProtocolVersion, Node: b.node, Pool: pool, Count: count})
	b.agent.metrics.bus.WithLabelValues("miss", "sent").Inc()
	sent := b.agent.cfg.Now()
	resp, err := b.conn.Request(ctx, broker.SubjectMissFrom(b.node), msg)
	if errors.Is(err, nats.ErrNoResponders) {
		// No allocator is subscribed at this instant (a failover, or the
		// bus just came back and it has not resubscribed yet): ask again.
		return nil, store.Pool{}, 0, fmt.Errorf("%w: %w", ErrBusy, err)
	}
	if err != nil {
		// The allocator may have granted before the answer was lost: the
		// next sync brings what the node's lease holds.
		b.Resync()
		return nil, store.Pool{}, 0, fmt.Errorf("miss request: %w", err)
	}
	var r broker.MissReply
	if err := broker.Decode(resp, &r); err != nil {
		return nil, store.Pool{}, 0, err
	}
	if ok, err := b.agent.AcceptEpoch(r.Epoch); err != nil || !ok {
		return nil, store.Pool{}, 0, fmt.Errorf("miss answered by a deposed allocator (epoch %d): %w", r.Epoch, err)
	}
	b.heardFrom(sent)
	b.setExhausted(pool, r.Exhausted)
	switch {
	case r.Exhausted:
		return nil, store.Pool{}, 0, ErrPoolExhausted
	case r.Retry:
		return nil, store.Pool{}, 0, ErrBusy
	case r.Error != "":
		return nil, store.Pool{}, 0, errors.New(r.Error)
	}
	return storeUnits(pool, r.Units), StorePool(r.Pool), r.Gen, nil
}

// report sends the node's state. It is soft: a lost one costs only
// freshness, and the next change or sync sends it again.
func (b *Bus) report(ctx context.Context) error {
	var r broker.ReportReply
	sent := b.agent.cfg.Now()
	seq := b.nextSeq()
	if err := b.request(ctx, broker.SubjectReportFrom(b.node), &broker.Report{V: broker.ProtocolVersion, Node: b.node, Run: b.run, Seq: seq,
		Pools: b.agent.Addressed(), Served: b.agent.Served()}, &r); err != nil {
		return err
	}
	if r.Error != "" {
		return errors.New(r.Error)
	}
	if ok, err := b.agent.AcceptEpoch(r.Epoch); err != nil || !ok {
		return fmt.Errorf("report acknowledged by a deposed allocator (epoch %d): %w", r.Epoch, err)
	}
	b.heardFrom(sent)
	return nil
}

// sync sends the node's state and makes its record what the allocator's
// answer lists.
func (b *Bus) sync(ctx context.Context) error {
	var r broker.SyncReply
	seq := b.nextSeq()
	addressed, served, gaveBack := b.agent.Addressed(), b.agent.Served(), b.agent.GaveBack()
	sent := b.agent.cfg.Now()
	if err := b.request(ctx, broker.SubjectSyncFrom(b.node), &broker.SyncRequest{V: broker.ProtocolVersion, Node: b.node, Run: b.run, Seq: seq, Pools: addressed,
		Served: served, GaveBack: gaveBack}, &r); err != nil {
		return err
	}
	if r.Error != "" {
		return errors.New(r.Error)
	}
	if ok, err := b.agent.AcceptEpoch(r.Epoch); err != nil || !ok {
		return fmt.Errorf("sync answered by a deposed allocator (epoch %d): %w", r.Epoch, err)
	}
	if err := b.agent.Reconcile(r.Leases); err != nil {
		return err
	}
	if r.WarmTTLMillis > 0 {
		b.warmTTL.Store(int64(time.Duration(r.WarmTTLMillis) * time.Millisecond))
	}
	b.heardFrom(sent)
	// The periodic sync of a node in step is not news: Info only when the
	// node was out of step (its first sync, a fence) or the allocator is
	// a new one.
	wasUnsynced, lastEpoch := b.unsynced.Swap(false), b.syncedEpoch.Swap(r.Epoch)
	level := slog.LevelDebug
	if wasUnsynced || lastEpoch != r.Epoch {
		level = slog.LevelInfo
	}
	b.log.Log(ctx, level, "synced with the allocator", "epoch", r.Epoch, "pools", len(r.Leases))
	return nil
}

// request sends msg to subject and decodes the reply, bounded by the bus
// timeout.
func (b *Bus) request(ctx context.Context, subject string, msg, reply any) error {
	rctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	b.agent.metrics.bus.WithLabelValues(subject[strings.LastIndex(subject, ".")+1:], "sent").Inc()
	resp, err := b.conn.Request(rctx, subject, broker.Encode(msg))
	if err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	return broker.Decode(resp, reply)
}

func (b *Bus) nextSeq() uint64 { return b.seq.Add(1) }
