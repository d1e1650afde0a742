package soakrun

import (
	"sync"
	"time"

	"trm-live/testkit/benchenv"
)

// Timeline holds end-to-end latency per second of the run and the faults,
// for the report and the SVG. A second's histogram is folded into its
// count and quantiles once the clock is two seconds past it (deliveries
// are bucketed by receive time), so a run of hours stays small: only the
// last few seconds hold a histogram (34 KiB each, benchenv.Hist's 4,352
// buckets), besides the run's and the warm-up's. Safe for concurrent use.
type Timeline struct {
	Start time.Time
	// WarmFrom and WarmTo bound the warm-up window whose p99 WarmP99 gives.
	WarmFrom, WarmTo time.Duration

	mu     sync.Mutex
	secs   []SecondStat
	open   map[int]*benchenv.Hist
	total  *benchenv.Hist
	warm   *benchenv.Hist
	events []Event
}

// Event is a fault injected, or a note, on the timeline.
type Event struct {
	At, End time.Duration // End: when the target was back (0: instant)
	Label   string
}

// NewTimeline starts a timeline at start.
func NewTimeline(start time.Time) *Timeline {
	return &Timeline{Start: start, total: benchenv.NewHist(), warm: benchenv.NewHist(), open: map[int]*benchenv.Hist{}}
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
		h = benchenv.NewHist()
		t.open[s] = h
		t.fold(s - 2)
	}
	h.Add(d)
	t.total.Add(d)
	if rel >= t.WarmFrom && rel < t.WarmTo {
		t.warm.Add(d)
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
		t.secs[s] = SecondStat{N: h.N, P50: h.Quantile(0.5), P99: h.Quantile(0.99)}
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
	return t.warm.Quantile(0.99)
}

// Total returns the quantiles over the whole run: p50, p99, max and count.
func (t *Timeline) Total() (p50, p99, maxD time.Duration, n uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.total.Quantile(0.5), t.total.Quantile(0.99), t.total.Max, t.total.N
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
