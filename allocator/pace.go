package allocator

import (
	"math"
	"time"
)

// pace counts a node's ADDs of a pool with an exponential decay over
// Config.DemandWindow: with ADDs coming at a steady rate its value is
// the ADDs of about the last window. A node serving a stream keeps that
// many warm on top of its bound pods (the headroom, never less than
// warmTarget), so that it is topped up in batches, not every few ADDs.
// Soft state: an allocator starts with none, and a node's first reports
// build it up.
type pace struct {
	value float64
	at    time.Time
	// since is when the stream began: the first ADD after the count had
	// decayed to nothing.
	since time.Time
}

// add counts n ADDs at now.
func (p *pace) add(now time.Time, window time.Duration, n int) {
	v := p.valueAt(now, window)
	if p.gone(now, window) {
		v, p.since = 0, now
	}
	p.value = v + float64(n)
	p.at = now
}

// perWindow estimates the ADDs of the next window at the stream's rate.
// A stream younger than the window has a count biased low by the decay
// of what it never had (a steady rate r for a time a counts
// r·W·(1-e^(-a/W))): corrected, a burst's first ADDs predict the rest of
// it, and the node is topped up for it at once, not by doublings. The
// first ADD only starts the stream (one ADD is no rate: it predicts
// itself), and the age is taken as at least a thirtieth of the window,
// so each ADD that follows at once predicts at most 30 more.
func (p *pace) perWindow(now time.Time, window time.Duration) float64 {
	v := p.valueAt(now, window)
	if v <= 1 {
		return v
	}
	age := max(now.Sub(p.since), window/30)
	return 1 + (v-1)/-math.Expm1(-age.Seconds()/window.Seconds())
}

// gone tells a pace decayed to nothing: a new ADD starts a new stream,
// and the allocator forgets it.
func (p *pace) gone(now time.Time, window time.Duration) bool {
	return p.valueAt(now, window) < 0.5
}

// expected is perWindow rounded, 0 once the pace is gone: a node's
// recent ADDs as plan reads them.
func (p *pace) expected(now time.Time, window time.Duration) int {
	if p.gone(now, window) {
		return 0
	}
	return int(math.Round(p.perWindow(now, window)))
}

// valueAt is the decayed count at now.
func (p *pace) valueAt(now time.Time, window time.Duration) float64 {
	if p.at.IsZero() || window <= 0 {
		return 0
	}
	return p.value * math.Exp(-max(now.Sub(p.at), 0).Seconds()/window.Seconds())
}

// addPaceLocked counts n ADDs of pool served by node.
func (a *Allocator) addPaceLocked(pool, node string, n int) {
	if n <= 0 {
		return
	}
	k := poolNode{pool, node}
	p := a.pace[k]
	if p == nil {
		p = &pace{}
		a.pace[k] = p
	}
	p.add(a.cfg.Clock.Now(), a.cfg.DemandWindow, n)
}

// recentLocked returns node's ADDs of pool expected in the next window
// at its recent rate, rounded, and forgets a pace that has decayed to
// nothing.
func (a *Allocator) recentLocked(pool, node string, now time.Time) int {
	k := poolNode{pool, node}
	p := a.pace[k]
	if p == nil {
		return 0
	}
	if p.gone(now, a.cfg.DemandWindow) {
		delete(a.pace, k)
		return 0
	}
	return p.expected(now, a.cfg.DemandWindow)
}
