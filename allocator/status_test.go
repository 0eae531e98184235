package allocator

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/warmpool/warmpool/broker"
)

// TestServedIsCountedOnce: the hit and miss counts come from the agents'
// cumulative counts, so a report whose answer was lost, a retried request
// overtaken by a later one, a sync, an agent restart and a leader change
// neither repeat nor lose an ADD (a leader change may lose what a run
// served between its last message to the old leader and its first to the
// new one; never count it twice).
func TestServedIsCountedOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	old, _, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 1})
	next, _, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 2})
	send := func(a *Allocator, kind, run string, seq uint64, served map[string]broker.Served) {
		t.Helper()
		var errText string
		if kind == "sync" {
			m := broker.Msg{Subject: broker.SubjectSyncFrom("n1"), Data: broker.Encode(&broker.SyncRequest{V: broker.ProtocolVersion, Node: "n1", Run: run, Seq: seq, Served: served})}
			errText = a.handleSync(ctx, m).(*broker.SyncReply).Error
		} else {
			m := broker.Msg{Subject: broker.SubjectReportFrom("n1"), Data: broker.Encode(&broker.Report{V: broker.ProtocolVersion, Node: "n1", Run: run, Seq: seq, Served: served})}
			errText = a.handleReport(ctx, m).(*broker.ReportReply).Error
		}
		if errText != "" && errText != "stale sync: a newer report or sync of this agent was applied" {
			t.Fatalf("%s %s/%d: %s", kind, run, seq, errText)
		}
	}
	for _, step := range []struct {
		name               string
		a                  *Allocator
		kind, run          string
		seq                uint64
		hits, misses       int64
		wantHits, wantMiss int64
	}{
		{"a run's first sync", old, "sync", "r1", 1, 0, 0, 0, 0},
		{"a report", old, "report", "r1", 2, 3, 1, 3, 1},
		{"the next report after a lost answer repeats the counts and adds to them", old, "report", "r1", 3, 5, 1, 5, 1},
		{"the retried report, overtaken", old, "report", "r1", 2, 3, 1, 5, 1},
		{"a sync", old, "sync", "r1", 4, 6, 2, 6, 2},
		{"the same counts again", old, "report", "r1", 5, 6, 2, 6, 2},
		{"a restart: the new run counts from zero", old, "report", "r2", 2, 1, 0, 7, 2},
		{"the new leader hears of a run begun before it: counted by the old one", next, "sync", "r2", 7, 4, 0, 0, 0},
		{"then counts what grows", next, "report", "r2", 8, 6, 1, 2, 1},
		{"a run's first message on the new leader counts from zero", next, "sync", "r3", 1, 2, 2, 4, 3},
	} {
		send(step.a, step.kind, step.run, step.seq, map[string]broker.Served{"p": {Hits: step.hits, Misses: step.misses}})
		hits, misses := counted(step.a)
		metricHits := testutil.ToFloat64(step.a.metrics.adds.WithLabelValues("p", "n1", "hit"))
		metricMisses := testutil.ToFloat64(step.a.metrics.adds.WithLabelValues("p", "n1", "miss"))
		if hits != step.wantHits || misses != step.wantMiss || metricHits != float64(hits) || metricMisses != float64(misses) {
			t.Errorf("%s: %d hits %d misses (metric %v/%v), want %d/%d", step.name, hits, misses, metricHits, metricMisses, step.wantHits, step.wantMiss)
		}
	}

	// A run first heard of after its first message (lost, or sent before
	// this leader served) that had served nothing yet: what it serves
	// next is all counted. The run's counts were remembered as nil, which
	// read as "a run not heard of" and took its first ADD as counted by
	// an earlier leader (one hit short on a real node).
	third, _, _ := memAllocator(t, ctx, "10.0.0.0/29", Config{Epoch: 3})
	hits, misses := counted(third)
	send(third, "report", "r4", 2, nil)
	send(third, "report", "r4", 3, map[string]broker.Served{"p": {Hits: 1}})
	if h, m := counted(third); h != hits+1 || m != misses {
		t.Errorf("a run heard of at its second message, before it served, then serving one hit: %d hits %d misses, want %d/%d", h, m, hits+1, misses)
	}
}

// counted is the pool's hit and miss counts.
func counted(a *Allocator) (hits, misses int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ps := a.ledger.pools["p"]
	return ps.hits, ps.misses
}
