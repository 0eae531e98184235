package agent

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/warmpool/warmpool/agent/store"
	"github.com/warmpool/warmpool/agent/wire"
	"github.com/warmpool/warmpool/internal/rig/testenv"
)

// exhaustedAllocator answers every miss: the pool is exhausted.
type exhaustedAllocator struct{}

func (exhaustedAllocator) Miss(context.Context, string, int) ([]store.Unit, store.Pool, int64, error) {
	return nil, store.Pool{}, 0, ErrPoolExhausted
}
func (exhaustedAllocator) CanServe(string) bool { return false }
func (exhaustedAllocator) Fenced() error        { return nil }

// TestADDPathLogsItsFields: the lines of an ADD served, an ADD that finds
// the pool exhausted and a DEL carry the node, the pod, the attachment,
// the pool and the unit's addresses under the keys docs/operator-guide.md
// gives, each once.
func TestADDPathLogsItsFields(t *testing.T) {
	var logs testenv.JSONLogs
	s, err := store.Open(filepath.Join(t.TempDir(), "agent.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	a, err := New(Config{Node: "node-1", Store: s, Resolver: StaticResolver{Default: "dual", Known: map[string]bool{"dual": true}},
		Allocator: exhaustedAllocator{}, Logger: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Grant(dualPool, dualUnits(1), 0); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if resp := a.Handle(ctx, req(wire.OpAdd, "c1")); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	if resp := a.Handle(ctx, req(wire.OpAdd, "c2")); resp.Error == nil || resp.Error.Code != wire.CodePoolExhausted {
		t.Fatalf("second ADD: %+v, want code %d", resp.Error, wire.CodePoolExhausted)
	}
	if resp := a.Handle(ctx, req(wire.OpDel, "c1")); resp.Error != nil {
		t.Fatal(resp.Error)
	}
	logs.Want(t, "assigned", map[string]any{"level": "DEBUG", "node": "node-1", "pod": "default/pod-c1", "pod_uid": "uid-c1",
		"attachment": "c1/eth0", "pool": "dual", "address": "10.0.0.10,fd00::10", "hit": true})
	logs.Want(t, "ADD failed", map[string]any{"level": "WARN", "node": "node-1", "pod": "default/pod-c2",
		"attachment": "c2/eth0", "pool": "dual", "code": float64(wire.CodePoolExhausted)})
	logs.Want(t, "released", map[string]any{"node": "node-1", "pod": "default/pod-c1", "attachment": "c1/eth0",
		"pool": "dual", "address": "10.0.0.10,fd00::10"})
}
