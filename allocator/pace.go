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
}

// add counts n ADDs at now.
func (p *pace) add(now time.Time, window time.Duration, n int) {
	p.value = p.valueAt(now, window) + float64(n)
	p.at = now
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

// recentLocked returns node's recent ADDs of pool, rounded, and forgets
// a pace that has decayed to nothing.
func (a *Allocator) recentLocked(pool, node string, now time.Time) int {
	k := poolNode{pool, node}
	p := a.pace[k]
	if p == nil {
		return 0
	}
	v := p.valueAt(now, a.cfg.DemandWindow)
	if v < 0.5 {
		delete(a.pace, k)
		return 0
	}
	return int(math.Round(v))
}
