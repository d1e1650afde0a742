package broadcaster

import (
	"time"

	"trm-live/contract/ws"
)

// Subscription options (contract/ws options.go): max_hz and devices. A feed
// with options has limits; one without takes none of this code's paths, so
// the shared frames of clients that keep up are untouched. A feed with
// limits never takes a shared frame: its client gets per-client frames
// built from its slots, which is where the filter and the rate apply.
//
// Rate: per device, the writer records when it took the device's position
// (next = taken + interval). A position that becomes pending before next
// is held (pending in its slot, but not in dirty) and a timer moves it to
// dirty when next comes; meanwhile newer positions replace it, newest
// wins. So two positions of a device leave at least interval apart, and a
// position leaves at most interval after it arrived, or is replaced by a
// newer one that does.

// limits is the state of a feed's options. Set before the feed is
// attached; the fields after interval and want are guarded by mb.mu.
type limits struct {
	interval int64               // ns between two positions of a device; 0 = no cap
	want     map[string]struct{} // devices carried; nil = every device

	allow []int8  // by device index: 0 = not looked up yet, 1 = wanted, 2 = not
	next  []int64 // by device index: clock time before which it is held
	held  []int32 // pending devices waiting for their next
	// timer fires at timerAt to move due held devices to dirty; nil when
	// not armed.
	timer   func() bool
	timerAt int64
}

// newLimits returns the limits of o, or nil when o sets nothing.
func newLimits(o ws.SubscribeOptions) *limits {
	if o.IsZero() {
		return nil
	}
	return &limits{interval: int64(o.Interval()), want: o.DeviceSet()}
}

// admitsLocked reports whether f carries device idx. Under mb.mu.
func (f *feed) admitsLocked(idx int32) bool {
	l := f.lim
	if l == nil || l.want == nil {
		return true
	}
	if int(idx) >= len(l.allow) {
		l.allow = append(l.allow, make([]int8, int(idx)+1-len(l.allow))...)
	}
	switch l.allow[idx] {
	case 1:
		return true
	case 2:
		return false
	}
	// Only topic feeds filter by index: a replay filters by device id
	// itself (replay.go) and gives its feed no want set.
	_, ok := l.want[f.t.name(idx)]
	l.allow[idx] = 2
	if ok {
		l.allow[idx] = 1
	}
	return ok
}

// rated reports whether f has a rate cap.
func (f *feed) rated() bool { return f.lim != nil && f.lim.interval > 0 }

// pendLocked makes device idx's stored position pending: in dirty, or held
// until its next when f is rated and the device was sent less than an
// interval ago. now is mb.clk.now() for a rated feed (any value
// otherwise). Under mb.mu.
func (mb *mailbox) pendLocked(f *feed, idx int32, now int64) {
	f.slots[idx].pending = true
	if l := f.lim; l != nil && l.interval > 0 && int(idx) < len(l.next) && l.next[idx] > now {
		l.held = append(l.held, idx)
		mb.armLocked(f, l.next[idx], now)
		return
	}
	f.dirty = append(f.dirty, idx)
	if f.ready {
		mb.enqueueLocked(f)
	}
}

// nowFor reads the clock for a rated feed, and returns 0 for others.
func (mb *mailbox) nowFor(f *feed) int64 {
	if !f.rated() {
		return 0
	}
	return mb.clk.now()
}

// armLocked makes sure f's timer fires at or before at.
func (mb *mailbox) armLocked(f *feed, at, now int64) {
	l := f.lim
	if l.timer != nil && l.timerAt <= at {
		return
	}
	if l.timer != nil {
		l.timer()
	}
	l.timerAt = at
	l.timer = mb.clk.afterFunc(time.Duration(at-now), func() { mb.release(f) })
}

// release moves f's held devices whose next has come to dirty, and re-arms
// the timer for the others.
func (mb *mailbox) release(f *feed) {
	mb.mu.Lock()
	l := f.lim
	if f.closed || mb.closed || mb.closing != nil || l == nil {
		mb.mu.Unlock()
		return
	}
	l.timer = nil
	now := mb.clk.now()
	keep := l.held[:0]
	first := int64(0)
	for _, idx := range l.held {
		if !f.slots[idx].pending {
			continue // dropped by a reset
		}
		if at := l.next[idx]; at > now {
			keep = append(keep, idx)
			if first == 0 || at < first {
				first = at
			}
			continue
		}
		f.dirty = append(f.dirty, idx)
	}
	l.held = keep
	if first != 0 {
		mb.armLocked(f, first, now)
	}
	if f.head0 < len(f.dirty) && f.ready {
		mb.enqueueLocked(f)
	}
	mb.unlockSchedule()
}

// sentLocked records that devices idxs of f were taken at now: each is
// held for an interval from there. Under mb.mu.
func (f *feed) sentLocked(idxs []int32, now int64) {
	l := f.lim
	for _, idx := range idxs {
		if int(idx) >= len(l.next) {
			l.next = append(l.next, make([]int64, int(idx)+1-len(l.next))...)
		}
		l.next[idx] = now + l.interval
	}
}

// stopTimer stops f's timer, if any, once the session has ended.
func (mb *mailbox) stopTimer(f *feed) {
	mb.mu.Lock()
	if f.lim != nil {
		f.lim.stopLocked()
	}
	mb.mu.Unlock()
}

// resetLocked forgets the rate and filter state (a replay's seek: device
// indexes start over) and stops the timer. Under mb.mu.
func (l *limits) resetLocked() {
	l.stopLocked()
	clear(l.allow)
	clear(l.next)
	l.held = l.held[:0]
}

func (l *limits) stopLocked() {
	if l.timer != nil {
		l.timer()
		l.timer = nil
	}
}

// clock is the mailbox's time source: monotonic nanoseconds and timers.
// Tests drive a fake one.
type clock interface {
	now() int64
	afterFunc(d time.Duration, f func()) (stop func() bool)
}

type sysClock struct{ start time.Time }

func (c sysClock) now() int64 { return int64(time.Since(c.start)) }

func (sysClock) afterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// realClock starts at the process start; its now is never 0 after the
// first nanosecond, which limits use as "never sent".
var realClock clock = sysClock{start: time.Now().Add(-time.Second)}
