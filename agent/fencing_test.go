package agent

import (
	"context"
	"testing"
	"time"

	"github.com/warmpool/warmpool/broker"
)

// TestGrantsOfADeposedLeaderAreRefused: once the agent has seen epoch 2,
// a grant or revoke of epoch 1 is refused and changes nothing, also after
// the agent restarts (the epoch is persisted).
func TestGrantsOfADeposedLeaderAreRefused(t *testing.T) {
	srv, err := broker.StartServer(broker.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := newFixture(t, 0)
	leader, err := broker.Connect(ctx, srv.ClientURL(), "leader")
	if err != nil {
		t.Fatal(err)
	}
	defer leader.Close()

	run := func() (stop func()) {
		conn, err := broker.Connect(ctx, srv.ClientURL(), "agent")
		if err != nil {
			t.Fatal(err)
		}
		bus := NewBus(f.agent, conn, time.Second)
		bctx, bcancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { _ = bus.Run(bctx); close(done) }()
		// Run subscribes before its first sync request; wait for the sync
		// (nobody answers it here) as the sign that grants are heard.
		sub, err := leader.SubscribeSync(broker.SubjectSync)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sub.NextMsg(5 * time.Second); err != nil {
			t.Fatalf("the agent never asked to sync: %v", err)
		}
		_ = sub.Unsubscribe()
		return func() { bcancel(); <-done; conn.Close() }
	}
	grant := func(epoch uint64, id string) broker.Ack {
		t.Helper()
		msg := broker.Encode(&broker.Grant{V: broker.ProtocolVersion, Epoch: epoch, Node: "node-1",
			Pool: broker.PoolInfo{Name: "dual", Prefix4: 24}, Units: []broker.Unit{{ID: id, IPv4: id}}})
		resp, err := leader.RequestWithContext(ctx, broker.SubjectGrant("node-1"), msg)
		if err != nil {
			t.Fatal(err)
		}
		var ack broker.Ack
		if err := broker.Decode(resp.Data, &ack); err != nil {
			t.Fatal(err)
		}
		return ack
	}
	revoke := func(epoch uint64, id string) broker.Revoked {
		t.Helper()
		resp, err := leader.RequestWithContext(ctx, broker.SubjectRevoke("node-1"),
			broker.Encode(&broker.Revoke{V: broker.ProtocolVersion, Epoch: epoch, Pool: "dual", IDs: []string{id}}))
		if err != nil {
			t.Fatal(err)
		}
		var r broker.Revoked
		if err := broker.Decode(resp.Data, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}

	stop := run()
	if ack := grant(2, "10.0.0.2"); ack.Error != "" {
		t.Fatalf("grant of epoch 2: %s", ack.Error)
	}
	if ack := grant(1, "10.0.0.1"); ack.Error == "" {
		t.Fatal("grant of epoch 1 accepted after epoch 2")
	}
	if r := revoke(1, "10.0.0.2"); r.Error == "" || len(r.IDs) != 0 {
		t.Fatalf("revoke of epoch 1 after epoch 2: %+v", r)
	}
	if got := f.agent.WarmCount("dual"); got != 1 {
		t.Fatalf("warm = %d, want only epoch 2's unit", got)
	}
	stop()

	f.reopen(t)
	stop = run()
	defer stop()
	if ack := grant(1, "10.0.0.3"); ack.Error == "" {
		t.Fatal("after a restart, a grant of epoch 1 was accepted")
	}
	if r := revoke(3, "10.0.0.2"); r.Error != "" || len(r.IDs) != 1 {
		t.Fatalf("revoke of a newer epoch 3: %+v", r)
	}
	if got := f.agent.WarmCount("dual"); got != 0 {
		t.Fatalf("warm = %d after the revoke, want 0", got)
	}
}
