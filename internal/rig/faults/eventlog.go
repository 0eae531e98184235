package faults

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// eventLog is a scenario's history: every fault, pod operation, CNI answer
// and component exit, stamped with the time since the scenario began. A
// failure writes it out with the seed, so a reader can replay the run.
type eventLog struct {
	mu    sync.Mutex
	start time.Time
	lines []string
	out   io.Writer // also written as it happens (nil: kept only)
}

func newEventLog(out io.Writer) *eventLog {
	return &eventLog{start: time.Now(), out: out}
}

func (l *eventLog) add(kind, format string, args ...any) {
	line := fmt.Sprintf("%9.3fs %-8s %s", time.Since(l.start).Seconds(), kind, fmt.Sprintf(format, args...))
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, line)
	if l.out != nil {
		fmt.Fprintln(l.out, line)
	}
}

// tail returns the last n lines.
func (l *eventLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	from := max(0, len(l.lines)-n)
	return strings.Join(l.lines[from:], "\n")
}
