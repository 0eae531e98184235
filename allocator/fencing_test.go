package allocator

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/nats-io/nats.go"

	"github.com/warmpool/warmpool/agent"
	"github.com/warmpool/warmpool/agent/store"
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

// TestAgentIgnoresADeposedLeadersGrant: leader 1 grants a unit to node A;
// leader 2 takes over and moves that unit to node B (A gives it up on
// leader 2's revoke); leader 1, unaware, pushes its grant of the unit to
// A again. A refuses it: the unit stays only on B.
func TestAgentIgnoresADeposedLeadersGrant(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs, conn, _ := newRig(t, ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/24"}}})
	quiet := slog.New(slog.DiscardHandler)
	agents := startAgents(t, ctx, conn, "p", "node-a", "node-b")
	old, err := New(ctx, Config{Client: cs, Conn: conn, Epoch: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	units, _, gen, err := old.grant(ctx, "p", "node-a", 1)
	if err != nil {
		t.Fatal(err)
	}
	old.push(ctx, "node-a", "p", gen, units)
	if agents["node-a"].WarmCount("p") != 1 {
		t.Fatal("node A did not take leader 1's grant")
	}

	successor, err := New(ctx, Config{Client: cs, Conn: conn, Epoch: 2, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	moved, _, newGen, err := successor.steal(ctx, "p", "node-b", 1)
	if err != nil || len(moved) != 1 || moved[0].ID != units[0].ID {
		t.Fatalf("leader 2 moving the unit to B: %v, %v", moved, err)
	}
	successor.push(ctx, "node-b", "p", newGen, moved)

	old.push(ctx, "node-a", "p", gen+5, units) // deposed, and with a generation that looks new
	for node, want := range map[string]int{"node-a": 0, "node-b": 1} {
		if got := agents[node].WarmCount("p"); got != want {
			t.Errorf("%s holds %d warm units, want %d", node, got, want)
		}
	}
	for _, h := range agents["node-a"].Held() {
		if h.Unit.ID == units[0].ID {
			t.Fatalf("node A holds %s again after the deposed leader's grant", h.Unit.ID)
		}
	}
}

// waitSubscribed waits until each node's agent answers on its grant
// subject.
func waitSubscribed(t *testing.T, conn *nats.Conn, nodes ...string) {
	t.Helper()
	for _, n := range nodes {
		for i := 0; ; i++ {
			_, err := conn.Request(broker.SubjectGrant(n), []byte("{}"), time.Second)
			if err == nil {
				break
			}
			if i == 100 {
				t.Fatalf("agent of %s never subscribed: %v", n, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// startAgents runs an in-process agent with its bus client for each node,
// knowing pool, and waits until each answers on its grant subject.
func startAgents(t *testing.T, ctx context.Context, conn *nats.Conn, pool string, nodes ...string) map[string]*agent.Agent {
	t.Helper()
	agents := map[string]*agent.Agent{}
	for _, node := range nodes {
		s, err := store.Open(filepath.Join(t.TempDir(), "agent.db"), store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		ag, err := agent.New(agent.Config{Node: node, Store: s, Logger: slog.New(slog.DiscardHandler), Resolver: agent.StaticResolver{Known: map[string]bool{pool: true}}})
		if err != nil {
			t.Fatal(err)
		}
		bus := agent.NewBus(ag, conn, time.Second)
		bctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- bus.Run(bctx) }()
		t.Cleanup(func() { stop(); <-done })
		agents[node] = ag
	}
	waitSubscribed(t, conn, nodes...)
	return agents
}

// TestDonorLeaseWriteFailureIsRetried: a donor gives units back on a
// revoke, but the write of its lease without them fails. They must not be
// lost (listed in the donor's lease, held by no agent) nor handed out
// while the lease lists them: the next round rewrites the lease and they
// are free.
func TestDonorLeaseWriteFailureIsRetried(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, conn, rc := newRig(t, ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/29"}}})
	cs, api := flakyClient(t, rc)
	agents := startAgents(t, ctx, conn, "p", "node-a")
	a, err := New(ctx, Config{Client: cs, Conn: conn, Epoch: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	units, _, gen, err := a.grant(ctx, "p", "node-a", 6) // the whole pool
	if err != nil {
		t.Fatal(err)
	}
	a.push(ctx, "node-a", "p", gen, units)
	a.mu.Lock()
	ps := a.ledger.pools["p"]
	a.mu.Unlock()

	api.mode.Store(refuseWrites)
	if idx, err := a.takeFrom(ctx, ps, "node-a", 2); err == nil || len(idx) != 0 {
		t.Fatalf("takeFrom with failing writes: %v, %v; want an error and nothing taken", idx, err)
	}
	if got := agents["node-a"].WarmCount("p"); got != 4 {
		t.Fatalf("node A holds %d warm units after the revoke, want 4", got)
	}
	if _, _, _, err := a.grant(ctx, "p", "node-b", 1); !errors.Is(err, errExhausted) {
		t.Fatalf("a grant while the donor's lease still lists the units: %v, want exhausted", err)
	}
	if a.flushOrphans(ctx) {
		t.Fatal("flushOrphans reported success with failing writes")
	}

	api.mode.Store(normal)
	if !a.flushOrphans(ctx) {
		t.Fatal("flushOrphans failed with working writes")
	}
	if got := len(a.committedUnits("p", "node-a")); got != 4 {
		t.Fatalf("donor's lease lists %d units, want 4", got)
	}
	got, _, _, err := a.grant(ctx, "p", "node-b", 2)
	if err != nil || len(got) != 2 {
		t.Fatalf("grant of the freed units: %v, %v", got, err)
	}
}

// TestOrphansAreNeverListedBack: units a donor gave back, whose lease
// rewrite failed, must not reach the donor again through a sync (at a new
// generation, after another write of its lease) before they are freed and
// granted elsewhere.
func TestOrphansAreNeverListedBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, conn, rc := newRig(t, ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/29"}}})
	cs, api := flakyClient(t, rc)
	agents := startAgents(t, ctx, conn, "p", "node-a")
	a, err := New(ctx, Config{Client: cs, Conn: conn, Epoch: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	units, _, gen, err := a.grant(ctx, "p", "node-a", 6)
	if err != nil {
		t.Fatal(err)
	}
	a.push(ctx, "node-a", "p", gen, units)
	a.mu.Lock()
	ps := a.ledger.pools["p"]
	a.mu.Unlock()
	api.mode.Store(refuseWrites)
	if _, err := a.takeFrom(ctx, ps, "node-a", 2); err == nil {
		t.Fatal("takeFrom with refused writes succeeded")
	}
	api.mode.Store(normal)
	ag := agents["node-a"]
	// node A syncs; its record differs from the lease on one unit (an assignment whose report was lost)
	held := ag.Held()
	held[0].Assigned, held[0].Attachment, held[0].Pod = true, "ctr/eth0", broker.Pod{Namespace: "d", Name: "x", UID: "u"}
	m := &nats.Msg{Data: broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: "node-a", Run: "r", Seq: 1, Units: held})}
	reply := a.handleSync(ctx, m).(*broker.SyncReply)
	if reply.Error != "" {
		t.Fatal(reply.Error)
	}
	if err := ag.Reconcile(reply.Leases); err != nil {
		t.Fatal(err)
	}
	for _, l := range reply.Leases {
		if len(l.Units) != 3 {
			t.Errorf("sync listed %d warm units, want the 3 the agent kept (not the 2 it gave back)", len(l.Units))
		}
	}
	if !a.flushOrphans(ctx) {
		t.Fatal("flush failed")
	}
	got, _, _, err := a.grant(ctx, "p", "node-b", 2)
	if err != nil {
		t.Fatal(err)
	}
	held = ag.Held()
	for _, g := range got {
		for _, h := range held {
			if h.Unit.ID == g.ID && !h.Assigned {
				t.Errorf("unit %s granted to node-b is warm on node-a too", g.ID)
			}
		}
	}
}

// flaky wraps the API transport of a test allocator: it can refuse lease
// writes (as an admission webhook would) or apply them and lose the answer.
type flaky struct {
	next http.RoundTripper
	mode atomic.Int32
}

const (
	normal int32 = iota
	refuseWrites
	loseAnswers
)

func (f *flaky) RoundTrip(r *http.Request) (*http.Response, error) {
	write := (r.Method == http.MethodPut || r.Method == http.MethodPost) && strings.Contains(r.URL.Path, "/nodeleases")
	switch mode := f.mode.Load(); {
	case write && mode == refuseWrites:
		body := `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"refused by the test","reason":"Forbidden","code":403}`
		return &http.Response{StatusCode: http.StatusForbidden, Header: http.Header{"Content-Type": {"application/json"}},
			Body: io.NopCloser(strings.NewReader(body)), Request: r}, nil
	case write && mode == loseAnswers:
		resp, err := f.next.RoundTrip(r)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return nil, errors.New("connection reset by peer (the test lost the answer)")
	}
	return f.next.RoundTrip(r)
}

// flakyClient is a warmpool client whose lease writes go through a flaky.
func flakyClient(t *testing.T, rc *rest.Config) (*client.Clientset, *flaky) {
	t.Helper()
	f := &flaky{}
	cfg := rest.CopyConfig(rc)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { f.next = rt; return f }
	cs, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs, f
}

// TestLostWriteAnswerKeepsTheUnits: a lease write lands but its answer is
// lost. The allocator reads the lease back and counts the write as done:
// the units are the node's, not free for another node while that lease
// lists them.
func TestLostWriteAnswerKeepsTheUnits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, conn, rc := newRig(t, ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/29"}}})
	cs, api := flakyClient(t, rc)
	a, err := New(ctx, Config{Client: cs, Conn: conn, Epoch: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for i, node := range []string{"node-a", "node-a", "node-b"} {
		api.mode.Store(loseAnswers)
		units, _, _, err := a.grant(ctx, "p", node, 2)
		if err != nil || len(units) != 2 {
			t.Fatalf("grant %d to %s with its answer lost: %v, %v; want it settled as done", i, node, units, err)
		}
	}
	api.mode.Store(normal)
	leases, err := cs.NodeLeases().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	holder := map[string]string{}
	for _, l := range leases.Items {
		for _, u := range l.Spec.Units {
			if h, ok := holder[u.IPv4]; ok {
				t.Errorf("%s in the leases of %s and %s", u.IPv4, h, l.Spec.Node)
			}
			holder[u.IPv4] = l.Spec.Node
		}
	}
	if len(holder) != 6 {
		t.Errorf("%d units in leases, want all 6", len(holder))
	}
}
