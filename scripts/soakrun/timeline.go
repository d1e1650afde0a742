package soakrun

import (
	"math"
	"sync"
	"time"
)

// hist is a latency histogram with logarithmic buckets (about 4 % wide)
// from 100 µs to about 5 min.
type hist struct {
	counts []uint64
	n      uint64
	max    time.Duration
}

const (
	histMin     = 100 * time.Microsecond
	histBuckets = 400
	histGrowth  = 1.04
)

func newHist() *hist { return &hist{counts: make([]uint64, histBuckets)} }

func bucketOf(d time.Duration) int {
	if d <= histMin {
		return 0
	}
	b := int(math.Log(float64(d)/float64(histMin))/math.Log(histGrowth)) + 1
	return min(b, histBuckets-1)
}

// upper is the upper edge of bucket b.
func upper(b int) time.Duration {
	return time.Duration(float64(histMin) * math.Pow(histGrowth, float64(b)))
}

func (h *hist) add(d time.Duration) {
	h.counts[bucketOf(d)]++
	h.n++
	h.max = max(h.max, d)
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile is the upper edge of the bucket holding quantile q (at most max).
func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	want := uint64(math.Ceil(q * float64(h.n)))
	var acc uint64
	for b, c := range h.counts {
		acc += c
		if acc >= want {
			return min(upper(b), h.max)
		}
	}
	return h.max
}

// Timeline holds end-to-end latency per second of the run and the faults,
// for the report and the SVG. A second's histogram is folded into its
// count and quantiles once the clock is two seconds past it (deliveries
// are bucketed by receive time), so a run of hours stays small. Safe for
// concurrent use.
type Timeline struct {
	Start time.Time
	// WarmFrom and WarmTo bound the warm-up window whose p99 WarmP99 gives.
	WarmFrom, WarmTo time.Duration

	mu     sync.Mutex
	secs   []SecondStat
	open   map[int]*hist
	total  *hist
	warm   *hist
	events []Event
}

// Event is a fault injected, or a note, on the timeline.
type Event struct {
	At, End time.Duration // End: when the target was back (0: instant)
	Label   string
}

// NewTimeline starts a timeline at start.
func NewTimeline(start time.Time) *Timeline {
	return &Timeline{Start: start, total: newHist(), warm: newHist(), open: map[int]*hist{}}
}

// Observe records one delivery received at at with latency d.
func (t *Timeline) Observe(at time.Time, d time.Duration) {
	rel := at.Sub(t.Start)
	s := int(rel / time.Second)
	if s < 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.open[s]
	if h == nil {
		h = newHist()
		t.open[s] = h
		t.fold(s - 2)
	}
	h.add(d)
	t.total.add(d)
	if rel >= t.WarmFrom && rel < t.WarmTo {
		t.warm.add(d)
	}
}

// fold turns the open seconds up to last into stats.
func (t *Timeline) fold(last int) {
	for s, h := range t.open {
		if s > last {
			continue
		}
		for len(t.secs) <= s {
			t.secs = append(t.secs, SecondStat{})
		}
		t.secs[s] = SecondStat{N: h.n, P50: h.quantile(0.5), P99: h.quantile(0.99)}
		delete(t.open, s)
	}
}

// Mark records a fault or note.
func (t *Timeline) Mark(e Event) {
	t.mu.Lock()
	t.events = append(t.events, e)
	t.mu.Unlock()
}

// SecondStat is one second of the run.
type SecondStat struct {
	N        uint64
	P50, P99 time.Duration
}

// Seconds returns every second's count and quantiles.
func (t *Timeline) Seconds() []SecondStat {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.fold(1 << 30)
	return append([]SecondStat(nil), t.secs...)
}

// WarmP99 is the p99 of the warm-up window.
func (t *Timeline) WarmP99() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.warm.quantile(0.99)
}

// Total returns the quantiles over the whole run: p50, p99, max and count.
func (t *Timeline) Total() (p50, p99, maxD time.Duration, n uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.total.quantile(0.5), t.total.quantile(0.99), t.total.max, t.total.n
}

// Events returns the marks.
func (t *Timeline) Events() []Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Event(nil), t.events...)
}

// LatencyBack is the first second at or after from whose p99 is under
// target with deliveries in it, and the second before the next in a row
// of quiet: -1 when none before limit.
func LatencyBack(secs []SecondStat, from, limit time.Duration, target time.Duration) time.Duration {
	for s := int(from / time.Second); s < len(secs) && time.Duration(s)*time.Second < limit; s++ {
		if secs[s].N > 0 && secs[s].P99 < target {
			return time.Duration(s) * time.Second
		}
	}
	return -1
}
