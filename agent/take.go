// Taking a unit for an ADD: a warm one, else a cooling one once its reuse
// delay is over, else a miss to the allocator, shared by the ADDs of a
// pool that miss at once.

package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
)

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
			a.Recycle(a.cfg.Now())
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
