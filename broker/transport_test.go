package broker_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/warmpool/warmpool/broker"
)

// transports gives a pair of connected transports (an allocator's and an
// agent's) of each kind, so that both meet the same contract.
func transports(t *testing.T) map[string]func(t *testing.T) (alloc, agent broker.Transport) {
	return map[string]func(t *testing.T) (broker.Transport, broker.Transport){
		"inmem": func(t *testing.T) (broker.Transport, broker.Transport) {
			n := broker.NewNetwork()
			return n.Endpoint("allocator"), n.Endpoint("agent-a")
		},
		"nats": func(t *testing.T) (broker.Transport, broker.Transport) {
			srv, err := broker.StartServer(broker.ServerOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(srv.Shutdown)
			conn := func(name string) broker.Transport {
				nc, err := broker.Connect(context.Background(), srv.ClientURL(), name)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(nc.Close)
				return broker.NATS(nc)
			}
			return conn("allocator"), conn("agent-a")
		},
	}
}

// TestTransportContract: a request reaches the subscription whose
// wildcard matches and gets its reply; a handler may reply from another
// goroutine; one subscription's messages are handled one at a time in
// order; a subject nobody serves fails with nats.ErrNoResponders; a
// reply that never comes ends with the context; after Unsubscribe
// nobody answers.
func TestTransportContract(t *testing.T) {
	for kind, pair := range transports(t) {
		t.Run(kind, func(t *testing.T) {
			alloc, agent := pair(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var mu sync.Mutex
			var seen []string
			var active atomic.Int32
			sub, err := alloc.Handle(broker.SubjectReportAll, func(m broker.Msg) {
				if active.Add(1) > 1 {
					t.Errorf("two messages of one subscription handled at once")
				}
				mu.Lock()
				seen = append(seen, string(m.Data))
				mu.Unlock()
				runtime.Gosched() // give a second delivery the chance to overlap, if it could
				active.Add(-1)
				go func() { _ = m.Respond([]byte("ack " + m.Subject + " " + string(m.Data))) }()
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := alloc.Flush(); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for i := range 20 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					body := fmt.Sprint(i)
					got, err := agent.Request(ctx, broker.SubjectReportFrom("node.a"), []byte(body))
					if want := "ack " + broker.SubjectReportFrom("node.a") + " " + body; err != nil || string(got) != want {
						t.Errorf("request %d: %q, %v; want %q", i, got, err, want)
					}
				}()
			}
			wg.Wait()
			mu.Lock()
			handled := len(seen)
			mu.Unlock()
			if handled != 20 {
				t.Fatalf("handled %d requests, want 20", handled)
			}
			if _, err := agent.Request(ctx, broker.SubjectMissFrom("node.a"), nil); !errors.Is(err, nats.ErrNoResponders) {
				t.Fatalf("request nobody serves: %v, want %v", err, nats.ErrNoResponders)
			}
			silent, err := alloc.Handle(broker.SubjectSyncAll, func(broker.Msg) {})
			if err != nil {
				t.Fatal(err)
			}
			_ = alloc.Flush()
			short, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer scancel()
			if _, err := agent.Request(short, broker.SubjectSyncFrom("node.a"), nil); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("request never answered: %v, want the context's deadline", err)
			}
			_ = silent.Unsubscribe()
			if err := sub.Unsubscribe(); err != nil {
				t.Fatal(err)
			}
			_ = alloc.Flush()
			if _, err := agent.Request(ctx, broker.SubjectReportFrom("node.a"), nil); !errors.Is(err, nats.ErrNoResponders) {
				t.Fatalf("request after Unsubscribe: %v, want %v", err, nats.ErrNoResponders)
			}
			if !agent.Connected() {
				t.Fatal("a connected transport says it is not")
			}
		})
	}
}

// TestNetworkPartition: a cut endpoint's requests fail at once, nobody
// reaches its subscriptions, a reply across the cut is lost, and Heal
// reconnects it and calls its OnReconnect.
func TestNetworkPartition(t *testing.T) {
	n := broker.NewNetwork()
	alloc, agent := n.Endpoint("allocator"), n.Endpoint("agent-a")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	echo := func(m broker.Msg) { _ = m.Respond(m.Data) }
	if _, err := alloc.Handle(broker.SubjectSyncAll, echo); err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Handle(broker.SubjectGrant("a"), echo); err != nil {
		t.Fatal(err)
	}
	reconnected := make(chan struct{}, 1)
	agent.OnReconnect(func() { reconnected <- struct{}{} })

	n.Partition("agent-a")
	if agent.Connected() {
		t.Fatal("a cut endpoint says it is connected")
	}
	if _, err := agent.Request(ctx, broker.SubjectSyncFrom("a"), []byte("x")); !errors.Is(err, broker.ErrPartitioned) {
		t.Fatalf("request from a cut endpoint: %v, want %v", err, broker.ErrPartitioned)
	}
	if _, err := alloc.Request(ctx, broker.SubjectGrant("a"), []byte("x")); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("request to a cut endpoint: %v, want %v", err, nats.ErrNoResponders)
	}
	n.Heal("agent-a")
	select {
	case <-reconnected:
	default:
		t.Fatal("Heal did not call OnReconnect")
	}
	// Two subscriptions match (a deposed allocator and its successor
	// during a handover): both hear the request, the first reply wins.
	successor := n.Endpoint("allocator-2")
	heard := make(chan string, 2)
	if _, err := successor.Handle(broker.SubjectSyncAll, func(m broker.Msg) { heard <- "successor"; _ = m.Respond([]byte("successor")) }); err != nil {
		t.Fatal(err)
	}
	if got, err := agent.Request(ctx, broker.SubjectSyncFrom("a"), []byte("x")); err != nil || string(got) != "x" && string(got) != "successor" {
		t.Fatalf("request heard by two subscriptions: %q, %v", got, err)
	}
	if who := <-heard; who != "successor" {
		t.Fatalf("the second subscription did not hear the request")
	}
	successor.Close()
	if got, err := alloc.Request(ctx, broker.SubjectGrant("a"), []byte("g")); err != nil || string(got) != "g" {
		t.Fatalf("request after Heal: %q, %v", got, err)
	}

	// A reply across a cut made while the request was being handled is
	// lost: the requester sees its context end.
	handling, release := make(chan struct{}), make(chan struct{})
	if _, err := agent.Handle(broker.SubjectRevoke("a"), func(m broker.Msg) {
		close(handling)
		<-release
		_ = m.Respond(m.Data)
	}); err != nil {
		t.Fatal(err)
	}
	short, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer scancel()
	errc := make(chan error, 1)
	go func() {
		_, err := alloc.Request(short, broker.SubjectRevoke("a"), []byte("r"))
		errc <- err
	}()
	<-handling
	n.Partition("agent-a")
	close(release)
	if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("reply across a partition: %v, want it lost", err)
	}
	agent.Close()
	if _, err := agent.Request(ctx, broker.SubjectSyncFrom("a"), nil); !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("request from a closed endpoint: %v", err)
	}
}
