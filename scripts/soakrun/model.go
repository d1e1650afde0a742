package soakrun

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Check is the verdict of one model check.
type Check struct {
	Name   string
	Pass   bool
	Detail string
}

func (c Check) String() string {
	v := "PASS"
	if !c.Pass {
		v = "FAIL"
	}
	return fmt.Sprintf("%s  %-28s %s", v, c.Name, c.Detail)
}

// Key is one position: a device and its fix time in Unix milliseconds.
type Key struct {
	Device string
	TS     int64
}

// Ledger is what the producer wrote: every tick's fix time for every
// device, minus the entries it replaced by a bad one. It is compact (one
// byte per device and tick) so a run of hours fits.
type Ledger struct {
	Devices []string
	Ticks   []int64 // fix times, Unix ms, increasing

	devIndex  map[string]int
	tickIndex map[int64]int
	bad       map[Key]bool      // valid device id and tick, replaced by a bad entry
	BadByID   map[string]string // Redis entry id -> reason, every bad entry written
	seen      []uint8           // rows counted per (tick, device), saturating
	extra     []Key             // rows that were never sent (first few)
	extraN    int
}

// NewLedger starts a ledger for these devices.
func NewLedger(devices []string) *Ledger {
	l := &Ledger{Devices: devices, devIndex: map[string]int{}, tickIndex: map[int64]int{}, bad: map[Key]bool{}, BadByID: map[string]string{}}
	for i, d := range devices {
		l.devIndex[d] = i
	}
	return l
}

// AddTick records that every device was written at fix time ts.
func (l *Ledger) AddTick(ts int64) {
	if _, ok := l.tickIndex[ts]; ok {
		return
	}
	l.tickIndex[ts] = len(l.Ticks)
	l.Ticks = append(l.Ticks, ts)
}

// AddBad records that the entry of device at tick ts was replaced by a bad
// one, written with Redis id and rejected for reason.
func (l *Ledger) AddBad(device string, ts int64, id, reason string) {
	l.bad[Key{device, ts}] = true
	l.BadByID[id] = reason
}

// Valid is the number of valid positions written.
func (l *Ledger) Valid() int { return len(l.Ticks)*len(l.Devices) - len(l.bad) }

// Latest is the fix time of the newest valid position of every device
// (devices never written validly are absent).
func (l *Ledger) Latest() map[string]int64 {
	out := map[string]int64{}
	for _, d := range l.Devices {
		for t := len(l.Ticks) - 1; t >= 0; t-- {
			if !l.bad[Key{d, l.Ticks[t]}] {
				out[d] = l.Ticks[t]
				break
			}
		}
	}
	return out
}

// ResetRows forgets the rows counted so far.
func (l *Ledger) ResetRows() {
	l.seen = make([]uint8, len(l.Ticks)*len(l.Devices))
	l.extra, l.extraN = nil, 0
}

// AddRow counts one row of the positions table.
func (l *Ledger) AddRow(device string, ts int64) {
	if l.seen == nil {
		l.ResetRows()
	}
	d, ok1 := l.devIndex[device]
	t, ok2 := l.tickIndex[ts]
	if !ok1 || !ok2 || l.bad[Key{device, ts}] {
		l.extraN++
		if len(l.extra) < 5 {
			l.extra = append(l.extra, Key{device, ts})
		}
		return
	}
	if i := t*len(l.Devices) + d; l.seen[i] < 255 {
		l.seen[i]++
	}
}

// CheckRows is "every valid position exactly once in the table", over the
// rows added since ResetRows.
func (l *Ledger) CheckRows() Check {
	if l.seen == nil {
		l.ResetRows()
	}
	var missing, dup int
	var missEx, dupEx []string
	for t, ts := range l.Ticks {
		for d, dev := range l.Devices {
			if l.bad[Key{dev, ts}] {
				continue
			}
			switch n := l.seen[t*len(l.Devices)+d]; {
			case n == 0:
				missing++
				if len(missEx) < 3 {
					missEx = append(missEx, fmt.Sprintf("%s@%d", dev, ts))
				}
			case n > 1:
				dup++
				if len(dupEx) < 3 {
					dupEx = append(dupEx, fmt.Sprintf("%s@%d×%d", dev, ts, n))
				}
			}
		}
	}
	c := Check{Name: "positions exactly once", Pass: missing == 0 && dup == 0 && l.extraN == 0}
	c.Detail = fmt.Sprintf("%d valid written; %d missing, %d duplicated, %d rows never written", l.Valid(), missing, dup, l.extraN)
	if len(missEx) > 0 {
		c.Detail += "; missing e.g. " + strings.Join(missEx, " ")
	}
	if len(dupEx) > 0 {
		c.Detail += "; duplicated e.g. " + strings.Join(dupEx, " ")
	}
	for _, k := range l.extra {
		c.Detail += fmt.Sprintf("; extra %s@%d", k.Device, k.TS)
	}
	return c
}

// DeadLetter is one message of POSITIONS_DLQ, by its headers.
type DeadLetter struct {
	SourceID, Reason, Worker string
}

// CheckDLQ is "every bad entry in POSITIONS_DLQ with its reason, and
// nothing else there". A bad entry dead-lettered twice (the bridge died
// between the dead letter and the XACK) is at-least-once delivery, counted
// but not a violation.
func CheckDLQ(badByID map[string]string, dlq []DeadLetter) Check {
	got := map[string][]string{}
	var extra []string
	for _, d := range dlq {
		if _, ok := badByID[d.SourceID]; !ok {
			extra = append(extra, fmt.Sprintf("%s(%s by %s)", d.SourceID, d.Reason, d.Worker))
			continue
		}
		got[d.SourceID] = append(got[d.SourceID], d.Reason)
	}
	var missing, wrong, dup int
	var ex []string
	ids := make([]string, 0, len(badByID))
	for id := range badByID {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		want := badByID[id]
		rs := got[id]
		switch {
		case len(rs) == 0:
			missing++
			if len(ex) < 3 {
				ex = append(ex, "missing "+id+" "+want)
			}
			continue
		case len(rs) > 1:
			dup++
		}
		for _, r := range rs {
			if r != want {
				wrong++
				if len(ex) < 3 {
					ex = append(ex, fmt.Sprintf("%s: reason %s, want %s", id, r, want))
				}
				break
			}
		}
	}
	c := Check{Name: "bad entries dead-lettered", Pass: missing == 0 && wrong == 0 && len(extra) == 0}
	c.Detail = fmt.Sprintf("%d bad written, %d dead letters; %d missing, %d with a wrong reason, %d not from a bad entry, %d dead-lettered twice (allowed)",
		len(badByID), len(dlq), missing, wrong, len(extra), dup)
	if len(extra) > 3 {
		extra = extra[:3]
	}
	ex = append(ex, extra...)
	if len(ex) > 0 {
		c.Detail += "; e.g. " + strings.Join(ex, "; ")
	}
	return c
}

// ViewerResult is what one viewer saw over the run.
type ViewerResult struct {
	Name string
	// Connected: subscribed at the end of the drain.
	Connected bool
	// Held is the fix time the viewer holds for every device at the end
	// (its last subscription's snapshot and live positions).
	Held map[string]int64
	// TimeTravel lists positions older than the one held for their device
	// in the same subscription.
	TimeTravel []string
	// Requests is how many control requests it sent, MissingReplies how
	// many got no reply although the connection stayed open for 10 s.
	Requests, MissingReplies int
	// MissingExamples names the first missing replies; SlowestReply is
	// the longest a reply that came took.
	MissingExamples []string
	SlowestReply    time.Duration
	SlowestExample  string
	// LoggedOut: its session was revoked; CloseCode is the close code
	// that ended it afterwards (0: never closed).
	LoggedOut bool
	CloseCode int
	// Unexpected4401 counts 4401 closes while its session was valid.
	Unexpected4401 int
}

// CheckViewers checks every viewer against the latest valid positions.
func CheckViewers(latest map[string]int64, vs []ViewerResult) []Check {
	var stale, notConn, travel, reqs, missing, logged, not4401, unexp int
	var staleEx, travelEx, logEx, missingEx []string
	var slowest time.Duration
	var slowestEx string
	connected := 0
	for _, v := range vs {
		reqs += v.Requests
		missing += v.MissingReplies
		missingEx = append(missingEx, v.MissingExamples...)
		if v.SlowestReply > slowest {
			slowest, slowestEx = v.SlowestReply, v.SlowestExample
		}
		unexp += v.Unexpected4401
		travel += len(v.TimeTravel)
		if len(v.TimeTravel) > 0 && len(travelEx) < 3 {
			travelEx = append(travelEx, v.Name+": "+v.TimeTravel[0])
		}
		if v.LoggedOut {
			logged++
			if v.CloseCode != 4401 {
				not4401++
				logEx = append(logEx, fmt.Sprintf("%s closed with %d", v.Name, v.CloseCode))
			}
			continue
		}
		if !v.Connected {
			notConn++
			continue
		}
		connected++
		bad := 0
		for d, ts := range latest {
			if v.Held[d] != ts {
				bad++
				if len(staleEx) < 3 {
					staleEx = append(staleEx, fmt.Sprintf("%s holds %s@%d, latest %d", v.Name, d, v.Held[d], ts))
				}
			}
		}
		if bad > 0 {
			stale++
		}
	}
	cs := []Check{
		{Name: "viewers end on the latest", Pass: stale == 0 && notConn == 0,
			Detail: fmt.Sprintf("%d viewers connected at the end, %d of them missing a device's latest position, %d not connected", connected, stale, notConn)},
		{Name: "no time travel", Pass: travel == 0, Detail: fmt.Sprintf("%d positions older than one already held", travel)},
		{Name: "every control frame", Pass: missing == 0, Detail: fmt.Sprintf("%d requests, %d replies missing (no reply within %s on an open connection); slowest reply %.1f s", reqs, missing, replyWait, slowest.Seconds())},
		{Name: "logged out closed 4401", Pass: not4401 == 0 && unexp == 0,
			Detail: fmt.Sprintf("%d logged out, %d not closed with 4401; %d 4401 closes of valid sessions", logged, not4401, unexp)},
	}
	if len(staleEx) > 0 {
		cs[0].Detail += "; e.g. " + strings.Join(staleEx, "; ")
	}
	if slowestEx != "" {
		cs[2].Detail += " (" + slowestEx + ")"
	}
	if len(missingEx) > 0 {
		cs[2].Detail += "; " + strings.Join(missingEx[:min(len(missingEx), 5)], "; ")
	}
	if len(travelEx) > 0 {
		cs[1].Detail += "; e.g. " + strings.Join(travelEx, "; ")
	}
	if len(logEx) > 0 {
		cs[3].Detail += "; " + strings.Join(logEx, "; ")
	}
	return cs
}

// Pending is what is left unprocessed at the end.
type Pending struct {
	// ConsumerPending and ConsumerAckPending are the persister durable's
	// NumPending and NumAckPending.
	ConsumerPending, ConsumerAckPending uint64
	// GroupPending is the Redis consumer group's pending entries, GroupLag
	// the entries after its last-delivered id (at most 1000 counted).
	GroupPending, GroupLag int64
}

// CheckPending is "no consumer left pending".
func CheckPending(p Pending) Check {
	return Check{Name: "no consumer pending", Pass: p.ConsumerPending == 0 && p.ConsumerAckPending == 0 && p.GroupPending == 0 && p.GroupLag == 0,
		Detail: fmt.Sprintf("persister durable: %d pending, %d ack pending; Redis group: %d pending, %d undelivered",
			p.ConsumerPending, p.ConsumerAckPending, p.GroupPending, p.GroupLag)}
}

// Usage is one worker's RSS and goroutines, from its /metrics.
type Usage struct {
	RSS        float64 // bytes
	Goroutines float64
}

// Bounds are how much a worker may grow from warm-up to the end:
// end ≤ warm-up × Factor + Slack.
type Bounds struct {
	RSSFactor       float64
	RSSSlack        float64 // bytes
	GoroutineFactor float64
	GoroutineSlack  float64
}

// DefaultBounds are the bounds of docs/soak.md.
var DefaultBounds = Bounds{RSSFactor: 1.5, RSSSlack: 48 << 20, GoroutineFactor: 1.5, GoroutineSlack: 20}

// WorkerUsage is a worker instance's usage after warm-up and at the end.
type WorkerUsage struct {
	Name      string
	Warm, End Usage
}

// CheckUsage is "no worker leaks": each instance's end within Bounds of its
// warm-up value.
func CheckUsage(b Bounds, ws []WorkerUsage) Check {
	var over []string
	var lines []string
	for _, w := range ws {
		rssMax := w.Warm.RSS*b.RSSFactor + b.RSSSlack
		gMax := w.Warm.Goroutines*b.GoroutineFactor + b.GoroutineSlack
		lines = append(lines, fmt.Sprintf("%s %.0f→%.0f MiB, %.0f→%.0f goroutines", w.Name, w.Warm.RSS/(1<<20), w.End.RSS/(1<<20), w.Warm.Goroutines, w.End.Goroutines))
		if w.Warm.RSS == 0 || w.End.RSS == 0 {
			over = append(over, w.Name+" not measured")
			continue
		}
		if w.End.RSS > rssMax {
			over = append(over, fmt.Sprintf("%s RSS %.0f MiB > %.0f", w.Name, w.End.RSS/(1<<20), rssMax/(1<<20)))
		}
		if w.End.Goroutines > gMax {
			over = append(over, fmt.Sprintf("%s goroutines %.0f > %.0f", w.Name, w.End.Goroutines, gMax))
		}
	}
	c := Check{Name: "no worker leaks", Pass: len(over) == 0,
		Detail: fmt.Sprintf("bound end ≤ warm-up × %.2g + %.0f MiB RSS, × %.2g + %.0f goroutines; %s",
			b.RSSFactor, b.RSSSlack/(1<<20), b.GoroutineFactor, b.GoroutineSlack, strings.Join(lines, "; "))}
	if len(over) > 0 {
		c.Detail = "over: " + strings.Join(over, "; ") + "; " + c.Detail
	}
	return c
}
