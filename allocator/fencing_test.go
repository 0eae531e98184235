package allocator

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/nats-io/nats.go"

	"github.com/warmpool/warmpool/api/client"
	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/testenv"
)

// TestDeposedAllocatorCannotOverwrite: allocator 1 grants to a node; its
// successor (epoch 2) rewrites the node's lease; allocator 1, unaware,
// grants again: its write conflicts, it sees epoch 2 on the lease, and it
// stops with ErrDeposed instead of overwriting its successor's record.
func TestDeposedAllocatorCannotOverwrite(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs, conn, _ := newRig(t, ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/24"}}})
	quiet := slog.New(slog.DiscardHandler)
	old, err := New(ctx, Config{Client: cs, Conn: conn, Epoch: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := old.grant(ctx, "p", "node-1", 2); err != nil {
		t.Fatal(err)
	}
	successor, err := New(ctx, Config{Client: cs, Conn: conn, Epoch: 2, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := successor.grant(ctx, "p", "node-1", 1); err != nil {
		t.Fatal(err)
	}
	_, _, _, err = old.grant(ctx, "p", "node-1", 1)
	if !errors.Is(err, ErrDeposed) {
		t.Fatalf("the deposed allocator's grant: %v, want ErrDeposed", err)
	}
	nl, err := cs.NodeLeases().Get(ctx, v1alpha1.NodeLeaseName("p", "node-1"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nl.Spec.Epoch != 2 || len(nl.Spec.Units) != 3 {
		t.Fatalf("lease after the deposed write: epoch %d, %d units; want the successor's epoch 2 and 3 units", nl.Spec.Epoch, len(nl.Spec.Units))
	}
}

// newRig starts an apiserver with the CRDs and an embedded NATS server,
// creates pool, and returns the clients.
func newRig(t *testing.T, ctx context.Context, pool *v1alpha1.IPPool) (*client.Clientset, *nats.Conn, *rest.Config) {
	t.Helper()
	rc := testenv.APIServerWithCRDs(t)
	cs, err := client.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.IPPools().Create(ctx, pool, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	srv, err := broker.StartServer(broker.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	conn, err := broker.Connect(ctx, srv.ClientURL(), "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	return cs, conn, rc
}
