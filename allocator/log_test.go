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

// TestConflictAndRefusalLogTheirFields: a unit another node holds, and a
// request speaking for another node, are logged with the epoch, the
// nodes, the pool, the pod and the unit's addresses under the keys
// docs/operator-guide.md gives, each once.
func TestConflictAndRefusalLogTheirFields(t *testing.T) {
	var logs testenv.JSONLogs
	a := newAllocator(Config{Epoch: 7, Logger: logs.Logger()})
	pool := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: v1alpha1.IPPoolSpec{
		IPv4: &v1alpha1.Subnet{CIDR: "10.0.0.0/29"}, IPv6: &v1alpha1.Subnet{CIDR: "fd00::/125"}}}
	a.mu.Lock()
	if err := a.ledger.upsertPoolLocked(pool); err != nil {
		t.Fatal(err)
	}
	ps := a.ledger.pools["p"]
	u := ps.units[0]
	ps.holder[0] = "node-b"
	a.mu.Unlock()

	foreign, _, err := a.applyEvents(context.Background(), "p", "node-a", []broker.Event{{Kind: broker.EventAssigned, Pool: "p", UnitID: u.ID(),
		Attachment: "c1/eth0", Pod: broker.Pod{Namespace: "default", Name: "web-0", UID: "uid-1"}}})
	if err != nil || len(foreign) != 1 {
		t.Fatalf("applyEvents: foreign %v, %v; want the unit named foreign", foreign, err)
	}
	logs.Want(t, "unit held by another node", map[string]any{"level": "ERROR", "epoch": float64(7),
		"node": "node-a", "holder": "node-b", "pool": "p", "pod": "default/web-0", "attachment": "c1/eth0",
		"address": u.IPv4.String() + "," + u.IPv6.String()})

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
