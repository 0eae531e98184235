// Package keyed serialises work per key (an attachment, a pool and node)
// while letting different keys proceed in parallel.
package keyed

import "sync"

// Mutex serialises operations per key. Entries live only while held or
// awaited, so the map does not grow with the number of keys ever seen. The
// zero value is ready to use.
type Mutex struct {
	mu    sync.Mutex
	locks map[string]*entry
}

type entry struct {
	mu   sync.Mutex
	refs int // holders and waiters; guarded by Mutex.mu
}

// Lock locks key and returns its unlock function.
func (k *Mutex) Lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*entry{}
	}
	e := k.locks[key]
	if e == nil {
		e = &entry{}
		k.locks[key] = e
	}
	e.refs++
	k.mu.Unlock()

	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		e.refs--
		if e.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

// Held returns the number of keys with holders or waiters.
func (k *Mutex) Held() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.locks)
}
