package testenv

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// JSONLogs captures a logger's JSON lines, for tests of what a log line
// carries (the fields docs/operator-guide.md promises). Safe for
// concurrent writers.
type JSONLogs struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Logger returns a JSON logger writing to l at every level.
func (l *JSONLogs) Logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (l *JSONLogs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Want finds the first line whose message is msg and checks that it has
// fields (numbers decode as float64), and that none of its keys is there
// twice: a logger given a key its caller's logger already carries.
func (l *JSONLogs) Want(t testing.TB, msg string, fields map[string]any) {
	t.Helper()
	l.mu.Lock()
	out := l.b.String()
	l.mu.Unlock()
	for _, raw := range strings.Split(strings.TrimSpace(out), "\n") {
		m := map[string]any{}
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			t.Fatalf("log line %s: %v", raw, err)
		}
		if m["msg"] != msg {
			continue
		}
		for k := range m {
			if n := strings.Count(raw, `"`+k+`":`); n != 1 {
				t.Errorf("key %q %d times in %s", k, n, raw)
			}
		}
		for k, v := range fields {
			if m[k] != v {
				t.Errorf("%q: %s is %v, want %v (line %s)", msg, k, m[k], v, raw)
			}
		}
		return
	}
	t.Errorf("no log line %q in\n%s", msg, out)
}
