package perf

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress shows what the harness is doing: set-up steps as lines, and a
// bar per phase. A nil writer shows nothing.
type progress struct {
	w  io.Writer
	mu sync.Mutex
}

func newProgress(w io.Writer) *progress { return &progress{w: w} }

func (p *progress) say(format string, args ...any) {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// phaseBar is one phase's bar: pods Running, or pods gone for a delete
// (countdown: the tracker counts those left).
type phaseBar struct {
	p         *progress
	bar       *progressbar.ProgressBar
	total     int
	countdown bool
	label     string
}

func (p *progress) start(label string, total int, countdown bool) *phaseBar {
	b := &phaseBar{p: p, total: total, countdown: countdown, label: label}
	if p.w != nil {
		unit := " pods Running"
		if countdown {
			unit = " pods gone"
		}
		b.bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(p.w), progressbar.OptionSetDescription(label),
			progressbar.OptionShowCount(), progressbar.OptionSetItsString(unit), progressbar.OptionSetWidth(30),
			progressbar.OptionSetPredictTime(false), progressbar.OptionSetElapsedTime(true),
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
	}
	return b
}

func (b *phaseBar) set(n int) {
	if b.bar == nil {
		return
	}
	if b.countdown {
		n = b.total - n
	}
	_ = b.bar.Set(n)
}

// finish replaces the bar with a line saying how the phase ended.
func (b *phaseBar) finish(d time.Duration, ok bool) {
	if b.bar == nil {
		return
	}
	_ = b.bar.Finish()
	state := "done"
	if !ok {
		state = "FAILED"
	}
	b.p.say("%s: %s in %s", b.label, state, d.Round(time.Millisecond))
}
