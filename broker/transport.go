package broker

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
)

// Transport carries the protocol's requests between the allocator and the
// agents: NATS in production (NATS), an in-memory network in tests
// (Network). Every exchange is a request with one reply.
//
// A Transport may be used from any goroutine. A subscription's handler is
// called for one message at a time, in arrival order, on a goroutine of the
// transport: a handler that blocks holds up that subscription only.
type Transport interface {
	// Request sends data on subject and returns the first reply, bounded
	// by ctx. It fails if no subscriber answers.
	Request(ctx context.Context, subject string, data []byte) ([]byte, error)
	// Handle subscribes h to subject, which may hold the wildcards "*"
	// (one token) and ">" (the rest).
	Handle(subject string, h func(Msg)) (Subscription, error)
	// Connected says whether requests can be sent now.
	Connected() bool
	// OnReconnect sets the function called each time the connection comes
	// back after a loss (one function; a later call replaces it).
	OnReconnect(func())
	// Flush returns once the server has processed what was sent so far,
	// subscriptions included.
	Flush() error
}

// Msg is a request as a handler receives it.
type Msg struct {
	Subject string
	Data    []byte
	// Respond sends the reply; call it at most once, from any goroutine.
	Respond func([]byte) error
}

// Subscription ends a Handle.
type Subscription interface {
	Unsubscribe() error
}

// NATS is the Transport over a NATS connection.
func NATS(nc *nats.Conn) Transport { return natsTransport{nc} }

type natsTransport struct{ nc *nats.Conn }

func (t natsTransport) Request(ctx context.Context, subject string, data []byte) ([]byte, error) {
	m, err := t.nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return nil, err
	}
	return m.Data, nil
}

func (t natsTransport) Handle(subject string, h func(Msg)) (Subscription, error) {
	sub, err := t.nc.Subscribe(subject, func(m *nats.Msg) {
		h(Msg{Subject: m.Subject, Data: m.Data, Respond: m.Respond})
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject, err)
	}
	return sub, nil
}

func (t natsTransport) Connected() bool { return t.nc.IsConnected() }

func (t natsTransport) OnReconnect(f func()) { t.nc.SetReconnectHandler(func(*nats.Conn) { f() }) }

func (t natsTransport) Flush() error { return t.nc.Flush() }
