package allocator

import (
	"context"
	"encoding/json"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
	for _, node := range []string{"node-a", "node-b"} {
		nl := &v1alpha1.NodeLease{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.NodeLeaseName("p", node)},
			Spec: v1alpha1.NodeLeaseSpec{Pool: "p", Node: node, Epoch: 1, Units: []v1alpha1.LeasedUnit{{IPv4: "10.0.0.1"}}}}
		if _, err := leases.Create(ctx, nl, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pools := newMemPools(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/29"}}})
	a, err := New(ctx, Config{Leases: leases, Pools: pools, Bus: broker.NewNetwork().Endpoint("allocator"), Epoch: 7, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	logs.Want(t, "inconsistent lease", map[string]any{"level": "ERROR", "epoch": float64(7), "pool": "p", "node": "node-b",
		"err": "lease " + v1alpha1.NodeLeaseName("p", "node-b") + ": unit 10.0.0.1 is also listed for node node-a"})

	body, err := json.Marshal(broker.MissRequest{V: broker.ProtocolVersion, Node: "node-b", Pool: "p", Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.checkSender(broker.Msg{Subject: broker.SubjectMissFrom("node-a.example"), Data: body}); err == nil {
		t.Fatal("a request naming another node was not refused")
	}
	logs.Want(t, "request refused: its body names another node than its subject", map[string]any{
		"level": "WARN", "epoch": float64(7), "node": "node-a.example", "body_node": "node-b"})
}
