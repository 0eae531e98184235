// What the node holds, as the allocator changes it: grants, sync
// replies (Reconcile), revokes, and the epoch that fences a
// deposed leader. Each persists before it changes memory.

package agent

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/logkey"
)

// Grant adds units of pool, granted at lease generation gen, to the node's
// cache, persisted first. Units the node gave back at a generation not
// older than gen are stale and skipped. It is the allocator's push; tests
// call it directly (gen 0 is "no generation").
func (a *Agent) Grant(pool store.Pool, units []store.Unit, gen int64) error {
	a.recordMu.Lock()
	defer a.recordMu.Unlock()
	a.mu.Lock()
	at, listed := a.listedAt[pool.Name]
	a.mu.Unlock()
	if listed && gen > 0 && gen <= at {
		a.log.Info("grant older than the last sync reply ignored", "pool", pool.Name, "gen", gen, "listed_gen", at, "units", len(units))
		return nil
	}
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
	if err := a.store.Grant(pool, fresh); err != nil {
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

// HeldUnit is a unit as the agent's record has it.
type HeldUnit struct {
	Pool       string
	Unit       broker.Unit
	Assigned   bool
	Attachment string
	Pod        wire.Pod
}

// Held returns the node's record: every unit, and for assigned ones the
// attachment and pod. Tests read it to see what a node holds.
func (a *Agent) Held() []HeldUnit {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]HeldUnit, 0, len(a.units))
	for _, u := range a.units {
		h := HeldUnit{Pool: u.Pool, Unit: broker.Unit{ID: u.ID, IPv4: u.IPv4, IPv6: u.IPv6}}
		if u.State == store.Assigned {
			h.Assigned, h.Attachment = true, u.Attachment
			if as, ok := a.assignments[u.Attachment]; ok {
				h.Pod = wire.Pod{Namespace: as.Pod.Namespace, Name: as.Pod.Name, UID: as.Pod.UID}
			}
		}
		out = append(out, h)
	}
	return out
}

// Addressed returns what a report or sync tells the allocator of the
// node's units: per pool, how many are assigned and to which pods. The
// allocator counts a pod with an address as served (not demand), and a
// node's warm units as its lease less the assigned ones; it needs no
// unit ID, address or attachment, and a report goes out after every ADD
// and DEL.
func (a *Agent) Addressed() map[string]broker.Addressed {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]broker.Addressed{}
	seen := map[[2]string]bool{} // pool and pod key: a pod with two attachments of a pool is one pod
	for _, u := range a.units {
		if u.State != store.Assigned {
			continue
		}
		p := out[u.Pool]
		p.Assigned++
		if as, ok := a.assignments[u.Attachment]; ok {
			key := broker.PodKey(as.Pod.Namespace, as.Pod.Name, as.Pod.UID)
			if k := [2]string{u.Pool, key}; !seen[k] {
				seen[k] = true
				p.Pods = append(p.Pods, key)
			}
		}
		out[u.Pool] = p
	}
	return out
}

// GaveBack lists the units the node gave back to a revoke and does not
// hold again, whose pool's last listing was not newer than the revoke:
// for all this agent knows, the allocator never had the revoke's answer
// and still lists them to this node, which refuses them at that
// generation. The sync carries them, so that the answer is not lost with
// the reply (a listing at a newer generation means the allocator wrote
// the lease since: without them, or with them to be taken back).
func (a *Agent) GaveBack() []broker.GaveBack {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []broker.GaveBack
	for k, gen := range a.revokedAt {
		if _, held := a.units[k]; held || gen < a.listedAt[k.Pool] {
			continue
		}
		out = append(out, broker.GaveBack{Pool: k.Pool, ID: k.ID, Gen: gen})
	}
	slices.SortFunc(out, func(x, y broker.GaveBack) int { return cmp.Or(cmp.Compare(x.Pool, y.Pool), cmp.Compare(x.ID, y.ID)) })
	return out
}

// Reconcile makes the node's record what the allocator's sync reply says
// the node holds: the listed units are granted (idempotently, and not
// those given back since), and every other unit is forgotten, unless it
// was granted at a newer generation than the reply's lease of its pool (a
// grant that crossed the reply). An assigned unit the reply does not list
// is voided: only a lost node's units leave its lease while assigned, once
// every pod bound to it before its fence is gone.
func (a *Agent) Reconcile(leases []broker.Lease) error {
	listed := map[store.Key]bool{}
	genOf := map[string]int64{}
	a.recordMu.Lock()
	for _, l := range leases {
		genOf[l.Pool.Name] = l.Gen
		units := make([]store.Unit, 0, len(l.Units))
		for _, u := range l.Units {
			units = append(units, store.Unit{Pool: l.Pool.Name, ID: u.ID, IPv4: u.IPv4, IPv6: u.IPv6})
			listed[store.Key{Pool: l.Pool.Name, ID: u.ID}] = true
		}
		if err := a.grantRecordLocked(StorePool(l.Pool), units, l.Gen); err != nil {
			a.recordMu.Unlock()
			return err
		}
		a.mu.Lock()
		a.listedAt[l.Pool.Name] = l.Gen // replies come one at a time: the last is the newest
		a.mu.Unlock()
	}
	a.recordMu.Unlock()
	a.mu.Lock()
	var unlisted []store.Key
	for k := range a.units {
		if !listed[k] && a.grantedAt[k] <= genOf[k.Pool] {
			unlisted = append(unlisted, k)
		}
	}
	a.mu.Unlock()
	return a.forget(unlisted, genOf)
}

// forget removes units the node's leases no longer list, in any state,
// from the record and the cache. replyGen is the generation of each
// pool's lease in the reply that left them out: a unit granted here at a
// newer one crossed the reply and is kept.
//
// Warm ones leave the cache first, so no ADD pops them; assigned ones are
// voided under their attachment's lock, so no DEL or ADD of it crosses;
// a unit an ADD assigned meanwhile, to an attachment not locked here, is
// left for the next sync. A later DEL of a voided attachment succeeds as
// one of the unknown.
func (a *Agent) forget(units []store.Key, replyGen map[string]int64) error {
	if len(units) == 0 {
		return nil
	}
	keys := make([]store.Key, 0, len(units))
	var attachments []string
	a.mu.Lock()
	drop := map[store.Key]bool{}
	addresses := map[store.Key]string{} // for the log: the record forgets them
	for _, k := range units {
		if a.grantedAt[k] > replyGen[k.Pool] {
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
		return fmt.Errorf("forget units the leases no longer list: %w", err)
	}
	gone := slices.DeleteFunc(keys, func(k store.Key) bool { return slices.Contains(kept, k) })
	a.forgetRecordLocked(gone)
	a.mu.Lock()
	for _, as := range voided {
		delete(a.assignments, as.Attachment)
		a.metrics.voided.WithLabelValues(as.Pool).Inc()
		a.log.Error("assignment voided: its node's lease no longer lists the unit (the node was declared lost and its pods deleted)",
			"attachment", as.Attachment, "pool", as.Pool, "address", addresses[store.Key{Pool: as.Pool, ID: as.UnitID}],
			"pod", logkey.Pod(as.Pod.Namespace, as.Pod.Name), "pod_uid", as.Pod.UID)
	}
	a.mu.Unlock()
	a.log.Info("reconciled with the allocator: units its leases no longer list forgotten", "units", len(gone), "assignments", len(voided), "kept", len(kept))
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

// Revoke gives back up to count of the listed units of pool that are warm
// here, as of lease generation gen: they leave the cache at once (no ADD
// can take them any more), then the record, and no message listing them
// at a generation up to gen brings them back. It returns the IDs given
// back; units not warm here are kept. The newest warm are given first:
// the oldest are next in line for an ADD.
func (a *Agent) Revoke(pool string, ids []string, count int, gen int64) ([]string, error) {
	a.recordMu.Lock()
	defer a.recordMu.Unlock()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	a.mu.Lock()
	var taken []store.Key
	q := a.warm[pool]
	for i := len(q) - 1; i >= 0 && len(taken) < count; i-- {
		if want[q[i].ID] {
			taken = append(taken, q[i])
		}
	}
	a.warm[pool] = slices.DeleteFunc(q, func(k store.Key) bool { return slices.Contains(taken, k) })
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
