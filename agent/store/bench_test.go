package store

import (
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkAssign measures one persisted assignment (fsync included), the
// durable part of a warm-hit ADD. With -cpu 1,2 and RunParallel, concurrent
// ADDs share commits through bbolt's Batch.
func BenchmarkAssign(b *testing.B) {
	s, _ := open(b)
	us := units("p", b.N)
	if err := s.Grant(Pool{Name: "p"}, us); err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1) - 1
			if err := s.Assign(assignment(fmt.Sprintf("c%d/eth0", i), us[i])); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
