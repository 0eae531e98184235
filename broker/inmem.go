package broker

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
)

// ErrPartitioned is what an endpoint cut off by Network.Partition gets
// for its requests.
var ErrPartitioned = errors.New("in-memory bus: this endpoint is cut off")

// Network is an in-memory bus for tests: endpoints exchange requests
// through it as NATS clients through a server, and a test can cut any of
// them off and heal them, without sockets or timers. It keeps NATS's
// semantics where the protocol leans on them: a request reaches every
// live subscription its subject matches (two allocators during a handover
// both hear it) and the first reply wins, a request with no live
// subscriber fails with nats.ErrNoResponders, a subscription's handler
// takes one message at a time in order, and a reply to a requester that
// gave up, or across a partition, is lost. Unlike NATS, a cut endpoint's
// requests fail at once rather than wait in a reconnect buffer.
type Network struct {
	mu        sync.Mutex
	endpoints map[string]*Endpoint
	subs      []*inmemSub
	cut       map[string]bool
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{endpoints: map[string]*Endpoint{}, cut: map[string]bool{}}
}

// Endpoint returns the endpoint called name, made on first use: one per
// component, as one NATS connection each.
func (n *Network) Endpoint(name string) *Endpoint {
	n.mu.Lock()
	defer n.mu.Unlock()
	e, ok := n.endpoints[name]
	if !ok {
		e = &Endpoint{net: n, name: name}
		n.endpoints[name] = e
	}
	return e
}

// Partition cuts the named endpoints off: their requests fail with
// ErrPartitioned, requests reach none of their subscriptions, and
// replies to or from them are lost.
func (n *Network) Partition(names ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, name := range names {
		n.cut[name] = true
	}
}

// Heal reconnects the named endpoints and calls their OnReconnect
// functions, as a NATS client's reconnection does.
func (n *Network) Heal(names ...string) {
	var calls []func()
	n.mu.Lock()
	for _, name := range names {
		if !n.cut[name] {
			continue
		}
		delete(n.cut, name)
		if e := n.endpoints[name]; e != nil && !e.closed && e.onReconnect != nil {
			calls = append(calls, e.onReconnect)
		}
	}
	n.mu.Unlock()
	for _, f := range calls {
		f()
	}
}

// Endpoint is one component's connection to a Network: a Transport.
type Endpoint struct {
	net         *Network
	name        string
	onReconnect func() // guarded by net.mu
	closed      bool   // guarded by net.mu
}

var _ Transport = (*Endpoint)(nil)

// Request implements Transport.
func (e *Endpoint) Request(ctx context.Context, subject string, data []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n := e.net
	n.mu.Lock()
	switch {
	case e.closed:
		n.mu.Unlock()
		return nil, nats.ErrConnectionClosed
	case n.cut[e.name]:
		n.mu.Unlock()
		return nil, ErrPartitioned
	}
	var to []*inmemSub
	for _, s := range n.subs {
		if !n.cut[s.owner.name] && subjectMatches(s.subject, subject) {
			to = append(to, s)
		}
	}
	n.mu.Unlock()
	if len(to) == 0 {
		return nil, nats.ErrNoResponders
	}
	reply := make(chan []byte, 1) // the first reply; later ones are dropped
	for _, s := range to {
		responder := s.owner
		respond := func(b []byte) error {
			n.mu.Lock()
			closed, lost := responder.closed, n.cut[e.name] || n.cut[responder.name]
			n.mu.Unlock()
			if closed {
				return nats.ErrConnectionClosed
			}
			if !lost {
				select {
				case reply <- append([]byte(nil), b...):
				default:
				}
			}
			return nil
		}
		s.deliver(Msg{Subject: subject, Data: append([]byte(nil), data...), Respond: respond})
	}
	select {
	case b := <-reply:
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Handle implements Transport.
func (e *Endpoint) Handle(subject string, h func(Msg)) (Subscription, error) {
	s := &inmemSub{owner: e, subject: subject, h: h, wake: make(chan struct{}, 1), done: make(chan struct{})}
	n := e.net
	n.mu.Lock()
	if e.closed {
		n.mu.Unlock()
		return nil, nats.ErrConnectionClosed
	}
	n.subs = append(n.subs, s)
	n.mu.Unlock()
	go s.run()
	return s, nil
}

// Connected implements Transport: false while cut off or once closed.
func (e *Endpoint) Connected() bool {
	e.net.mu.Lock()
	defer e.net.mu.Unlock()
	return !e.closed && !e.net.cut[e.name]
}

// OnReconnect implements Transport.
func (e *Endpoint) OnReconnect(f func()) {
	e.net.mu.Lock()
	defer e.net.mu.Unlock()
	e.onReconnect = f
}

// Flush implements Transport: delivery is synchronous, nothing is in
// flight.
func (e *Endpoint) Flush() error { return nil }

// Close ends the endpoint's subscriptions; its later requests fail.
func (e *Endpoint) Close() {
	n := e.net
	n.mu.Lock()
	e.closed = true
	var mine []*inmemSub
	for _, s := range n.subs {
		if s.owner == e {
			mine = append(mine, s)
		}
	}
	n.mu.Unlock()
	for _, s := range mine {
		_ = s.Unsubscribe()
	}
}

// inmemSub is one Handle: its own goroutine calls h for each message in
// order, as a NATS subscription does.
type inmemSub struct {
	owner   *Endpoint
	subject string
	h       func(Msg)
	mu      sync.Mutex
	queue   []Msg
	wake    chan struct{}
	done    chan struct{}
	once    sync.Once
}

func (s *inmemSub) deliver(m Msg) {
	s.mu.Lock()
	s.queue = append(s.queue, m)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *inmemSub) run() {
	for {
		select {
		case <-s.done:
			return
		case <-s.wake:
		}
		for {
			s.mu.Lock()
			if len(s.queue) == 0 {
				s.mu.Unlock()
				break
			}
			m := s.queue[0]
			s.queue = s.queue[1:]
			s.mu.Unlock()
			select {
			case <-s.done:
				return // what is left is lost, as on a closed subscription
			default:
			}
			s.h(m)
		}
	}
}

// Unsubscribe implements Subscription: messages not yet handled are lost.
func (s *inmemSub) Unsubscribe() error {
	n := s.owner.net
	n.mu.Lock()
	for i, x := range n.subs {
		if x == s {
			n.subs = append(n.subs[:i:i], n.subs[i+1:]...)
			break
		}
	}
	n.mu.Unlock()
	s.once.Do(func() { close(s.done) })
	return nil
}

// subjectMatches applies NATS's subject wildcards: "*" matches one token,
// a final ">" one or more.
func subjectMatches(pattern, subject string) bool {
	pt, st := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, p := range pt {
		if p == ">" && i == len(pt)-1 {
			return len(st) > i
		}
		if i >= len(st) || p != "*" && p != st[i] {
			return false
		}
	}
	return len(pt) == len(st)
}
