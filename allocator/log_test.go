package allocator

import (
	"context"
	"testing"

	"github.com/warmpool/warmpool/api/v1alpha1"
	"github.com/warmpool/warmpool/broker"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// TestConflictAndRefusalLogTheirFields: a unit two stored leases list,
// and a request speaking for another node, are logged with the epoch,
// the nodes, the pool and the unit under the keys docs/operator-guide.md
// gives, each once.
func TestConflictAndRefusalLogTheirFields(t *testing.T) {
	var logs testenv.JSONLogs
	ctx := context.Background()
	leases := newMemLeases()
	storeLeases(t, ctx, leases, map[string][]string{"node-a": {"10.0.0.1"}, "node-b": {"10.0.0.1"}})
	a, _ := memAllocatorOn(t, ctx, leases, "10.0.0.0/29", Config{Epoch: 7, Logger: logs.Logger()})
	logs.Want(t, "inconsistent lease", map[string]any{"level": "ERROR", "epoch": float64(7), "pool": "p", "node": "node-b",
		"err": "lease " + v1alpha1.NodeLeaseName("p", "node-b") + ": unit 10.0.0.1 is also listed for node node-a"})

	if a.refuseSender(broker.SubjectMissFrom("node-a.example"), "node-b") == nil {
		t.Fatal("a request naming another node was not refused")
	}
	logs.Want(t, "request refused: its body names another node than its subject", map[string]any{
		"level": "WARN", "epoch": float64(7), "node": "node-a.example", "body_node": "node-b"})
}

// TestARoundLogsWhyItWrites: at debug level, each node a round grants
// to or revokes from is logged with what the plan saw, so that an
// operator can tell why a lease was written.
func TestARoundLogsWhyItWrites(t *testing.T) {
	var logs testenv.JSONLogs
	ctx := context.Background()
	a, _, _ := memAllocator(t, ctx, "10.0.0.0/24", Config{Epoch: 1, Logger: logs.Logger()})
	if _, _, _, err := a.grant(ctx, "p", "n1", 1); err != nil {
		t.Fatal(err)
	}
	a.round(ctx)
	logs.Want(t, "plan step", map[string]any{"level": "DEBUG", "pool": "p", "node": "n1", "grant": float64(3), "revoke": float64(0),
		"share": float64(4), "target": float64(4), "warm": float64(1), "bound": float64(0), "recent": float64(0), "free": float64(253), "unbound": float64(0)})
}
