package streams

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
)

// DefaultLateness is how far out of fix-time order a position may arrive in
// POSITIONS and still count for a range, unless the reader is told
// otherwise: the replay's reorder window (BROADCASTER_REPLAY_LATENESS) and
// the export's --lateness. A read with an end stops at the first fix time
// after To + Lateness.
const DefaultLateness = time.Minute

// maxReorder bounds the positions a SkipLate read holds back to put them
// in fix-time order (about 35 MB): past it the oldest goes on early.
// Lateness × the event's rate is what it needs (1 min × 500 devices at
// 1 Hz: 30,000).
const maxReorder = 100_000

// Range is the positions of one event whose fix times lie in [From, To],
// both inclusive. Fix times, not storage times: "the race from 10:00 to
// 12:00" means that.
type Range struct {
	// EventID is the event, a canonical lowercase UUID.
	EventID string
	// From is the first fix time included. Required.
	From time.Time
	// To is the last fix time included; zero means no end.
	To time.Time
	// Lateness is how far out of fix-time order a position may arrive in
	// the stream and still count. Zero means DefaultLateness.
	Lateness time.Duration
}

// Validate names the first bad field.
func (r Range) Validate() error {
	switch {
	case r.EventID == "":
		return errors.New("event is required")
	case !contract.ValidUUID(r.EventID):
		return fmt.Errorf("event %q is not a lowercase UUID", r.EventID)
	case r.From.IsZero():
		return errors.New("from is required")
	case !r.To.IsZero() && r.To.Before(r.From):
		return fmt.Errorf("from %s is after to %s", r.From.UTC().Format(contract.TimeLayout), r.To.UTC().Format(contract.TimeLayout))
	case r.Lateness < 0:
		return fmt.Errorf("lateness %s is negative", r.Lateness)
	}
	return nil
}

// Start is the storage time a read of r starts at: From −
// contract.MaxFutureSkew. The stream is in arrival order and can only be
// seeked by storage time; the bridge refuses a fix time more than
// MaxFutureSkew ahead of its clock, so no position with a fix time at or
// after From was stored earlier.
func (r Range) Start() time.Time { return r.From.Add(-contract.MaxFutureSkew) }

// Filter is the subject filter of the event's positions.
func (r Range) Filter() string { return contract.EventSubject(r.EventID) }

func (r Range) lateness() time.Duration {
	if r.Lateness == 0 {
		return DefaultLateness
	}
	return r.Lateness
}

// Late is what a read does with a position stored after a newer one of its
// device (a tracker that buffered offline, a publish the bridge re-sent
// after a failure).
type Late int

const (
	// SkipLate reads once and reorders in a heap over the lateness: a
	// position is handed on once a fix time Lateness after it was read (or
	// nothing more is pending), so one stored up to the lateness behind
	// newer ones of its device overtakes them. One stored later than that
	// behind a newer one already handed on is skipped and counted
	// (ReadStats.Late): a device never goes back. Of two positions of a
	// device with the same fix time the first stored goes. Devices are
	// interleaved by fix time. The replay's choice: it must pace in
	// fix-time order from the first position on.
	SkipLate Late = iota
	// PlaceLate reads twice: the first read finds the positions stored
	// after a newer one of their device (memory: one fix time per device
	// and those positions), the second yields in stream order except that
	// each of those goes just before the first position of its device
	// that is not older. Every late position the read meets is placed,
	// however late, and counted (ReadStats.Late); devices stay interleaved
	// as stored; two positions of a device with the same fix time both go.
	// The export's choice: a file has room for every position.
	PlaceLate
)

// Reader is one read of a Range from POSITIONS.
type Reader struct {
	Range
	// Late is what to do with late-stored positions.
	Late Late
	// Open returns a consumer of the caller's making, filtered on
	// Range.Filter() and delivering from storage time Range.Start()
	// (DeliverByStartTimePolicy); its name, permissions and lifetime are
	// the caller's. A PlaceLate read calls it twice, for two reads from
	// the start.
	Open func(ctx context.Context) (jetstream.Consumer, error)
	// Pull is the number of messages pulled ahead. Zero means 512.
	Pull int
	// LastSeq is the stream's last sequence when the read began: the read
	// ends there, so a live event still gives a finite read. Zero: the
	// stream held nothing, there is nothing to read.
	LastSeq uint64
	// Follow makes a read that never ends by itself (a replay that turns
	// live): it reads on as positions arrive; LastSeq, To + Lateness and
	// "nothing pending" end nothing. SkipLate only.
	Follow bool
	// Earlier also yields the positions with fix times before From that
	// the read meets (from Start() on), through the same reorder: a
	// replay builds each device's state at From from them.
	Earlier bool
	// Tick, when set, is called after each message read with the totals
	// so far (the first read of a PlaceLate read is not reported), and
	// when a read that was Idle receives a message.
	Tick func(ReadStats)
}

// ReadStats count what a read saw.
type ReadStats struct {
	// Read is the number of stream messages read (by the second read of a
	// PlaceLate read).
	Read int64
	// Yielded is the number of positions handed to the callback.
	Yielded int64
	// Malformed is the number of messages that were not valid positions
	// of the event on their subject, skipped.
	Malformed int64
	// Late counts the positions stored after a newer one of their device:
	// skipped (SkipLate) or placed (PlaceLate).
	Late int64
	// Seq is the stream sequence of the last message whose positions were
	// all handed on.
	Seq uint64
	// Idle is true when the last read found nothing pending and every
	// position read was handed on.
	Idle bool
}

// Pos is one position of a read.
type Pos struct {
	// Seq is its stream sequence.
	Seq uint64
	// Position is the decoded position.
	Position contract.Position
	// Data is its payload in Encode's layout: the stored bytes when they
	// are (the bridge writes that layout), else re-encoded once.
	Data []byte
	ts   int64 // fix time, Unix ms
}

// Read calls fn with the positions of the range, each device's in
// fix-time order (see Late). It stops at the first of: LastSeq, a fix time
// after To + Lateness (To given), nothing pending (not Follow), fn's error,
// ctx's end (then ctx.Err()).
func (rd Reader) Read(ctx context.Context, fn func(Pos) error) (ReadStats, error) {
	if err := rd.Validate(); err != nil {
		return ReadStats{}, err
	}
	if rd.Follow && rd.Late != SkipLate {
		return ReadStats{}, errors.New("a followed read skips late positions")
	}
	if rd.Pull <= 0 {
		rd.Pull = 512
	}
	if rd.Late == PlaceLate {
		return rd.place(ctx, fn)
	}
	ro := newReorder(rd.lateness())
	var st ReadStats
	emit := func(all bool) error {
		for p, ok := ro.next(all); ok; p, ok = ro.next(all) {
			st.Yielded++
			if err := fn(p); err != nil {
				return err
			}
		}
		return nil
	}
	err := rd.scan(ctx, &st, func(seq uint64, p *Pos, ok, caughtUp bool) error {
		switch {
		case !ok:
			st.Malformed++
		case !rd.inRange(p.ts):
		case !ro.push(p):
			st.Late++
		}
		if err := emit(caughtUp); err != nil {
			return err
		}
		st.Seq, st.Idle = seq, caughtUp && ro.len() == 0
		return nil
	}, func() error { return emit(true) })
	return st, err
}

// place is the PlaceLate read (see PlaceLate).
func (rd Reader) place(ctx context.Context, fn func(Pos) error) (ReadStats, error) {
	// The first read: positions stored after a newer one of their device.
	newest := make(map[string]int64)
	held := make(map[string][]Pos)
	isLate := make(map[uint64]bool)
	first := rd
	first.Tick = nil
	err := first.scan(ctx, &ReadStats{}, func(_ uint64, p *Pos, ok, _ bool) error {
		if !ok || !rd.inRange(p.ts) {
			return nil
		}
		dev := p.Position.DeviceID
		if n, seen := newest[dev]; seen && p.ts < n {
			held[dev] = append(held[dev], *p)
			isLate[p.Seq] = true
			return nil
		}
		newest[dev] = p.ts
		return nil
	}, nil)
	if err != nil {
		return ReadStats{}, err
	}
	for _, q := range held { // by fix time, then stream order
		slices.SortFunc(q, func(a, b Pos) int { return cmp.Or(cmp.Compare(a.ts, b.ts), cmp.Compare(a.Seq, b.Seq)) })
	}
	var st ReadStats
	emit := func(p Pos) error {
		st.Yielded++
		return fn(p)
	}
	err = rd.scan(ctx, &st, func(seq uint64, p *Pos, ok, _ bool) error {
		st.Seq = seq
		switch {
		case !ok:
			st.Malformed++
			return nil
		case !rd.inRange(p.ts), isLate[seq]:
			return nil
		}
		if q := held[p.Position.DeviceID]; len(q) > 0 {
			for len(q) > 0 && q[0].ts <= p.ts {
				st.Late++
				if err := emit(q[0]); err != nil {
					return err
				}
				q = q[1:]
			}
			held[p.Position.DeviceID] = q
		}
		return emit(*p)
	}, nil)
	if err != nil {
		return st, err
	}
	// Late positions with no later one of their device in the second read
	// (it cannot happen: each was stored after a newer one of its device;
	// kept in case the stream changed between the reads), in device order.
	for _, dev := range slices.Sorted(maps.Keys(held)) {
		for _, p := range held[dev] {
			st.Late++
			if err := emit(p); err != nil {
				return st, err
			}
		}
	}
	return st, nil
}

// inRange reports whether fix time ts (Unix ms) is in the range (Earlier:
// not after To).
func (rd Reader) inRange(ts int64) bool {
	return (rd.Earlier || ts >= rd.From.UnixMilli()) && (rd.To.IsZero() || ts <= rd.To.UnixMilli())
}

// scan opens a consumer and calls fn for every message in stream order,
// decoded (ok false: not a valid position of the event on its subject),
// with caughtUp when nothing more is pending; it calls end (when set) when
// the read ends by itself at LastSeq or To + Lateness. Memory is constant:
// one message at a time plus the pull buffer.
func (rd Reader) scan(ctx context.Context, st *ReadStats, fn func(seq uint64, p *Pos, ok, caughtUp bool) error, end func() error) error {
	finish := func() error {
		if end == nil {
			return nil
		}
		return end()
	}
	if rd.LastSeq == 0 && !rd.Follow {
		return nil
	}
	cons, err := rd.Open(ctx)
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(rd.Pull))
	if err != nil {
		return fmt.Errorf("consume %s: %w", rd.Filter(), err)
	}
	defer it.Stop()
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		if !rd.Follow {
			return nil
		}
		st.Idle = true
		if rd.Tick != nil {
			rd.Tick(*st)
		}
	}
	var stopAt int64
	if !rd.To.IsZero() {
		stopAt = rd.To.Add(rd.lateness()).UnixMilli()
	}
	var p Pos
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !rd.Follow && errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return finish()
			}
			return fmt.Errorf("read %s: %w", rd.Filter(), err)
		}
		if st.Idle && rd.Tick != nil {
			st.Idle = false
			rd.Tick(*st)
		}
		st.Idle = false
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("message metadata: %w", err)
		}
		seq := meta.Sequence.Stream
		if !rd.Follow && seq > rd.LastSeq {
			return finish()
		}
		ok := rd.decode(msg, &p)
		p.Seq = seq
		if ok && !rd.Follow && stopAt != 0 && p.ts > stopAt {
			// A fix Lateness past the range's end: what is still to come
			// for the range would arrive that far out of order.
			return finish()
		}
		st.Read++
		caughtUp := meta.NumPending == 0
		if !rd.Follow && (caughtUp || seq >= rd.LastSeq) {
			if err := fn(seq, &p, ok, true); err != nil {
				return err
			}
			return finish()
		}
		if err := fn(seq, &p, ok, caughtUp); err != nil {
			return err
		}
		if rd.Tick != nil {
			rd.Tick(*st)
		}
	}
}

// decode validates a message: a position of the event, on the subject of
// its device.
func (rd Reader) decode(msg jetstream.Msg, p *Pos) bool {
	*p = Pos{}
	ev, device, ok := contract.ParseSubject(msg.Subject())
	if !ok || ev != rd.EventID {
		return false
	}
	var exact bool
	var err error
	p.Data = msg.Data()
	p.Position, exact, err = contract.DecodePayload(p.Data)
	if err != nil || p.Position.DeviceID != device || p.Position.EventID != ev {
		return false
	}
	if !exact {
		p.Data = p.Position.Encode()
	}
	p.ts = p.Position.TSMillis()
	return true
}

// reorder puts positions read in stream order into fix-time order: a
// position is handed on once a fix time Lateness after it was read (or,
// with all, at once in order), so a late-stored one overtakes newer ones
// still held. Per device it never goes back: a position not newer than
// the last one handed on of its device is refused (too late).
type reorder struct {
	h        posHeap
	slab     []Pos   // the positions held, by slot
	free     []int32 // free slots of slab
	lateness int64   // ms
	maxTS    int64
	last     map[string]int64
}

func newReorder(lateness time.Duration) *reorder {
	return &reorder{lateness: lateness.Milliseconds(), last: make(map[string]int64)}
}

func (ro *reorder) len() int { return len(ro.h) }

// push holds p; false means p is too late (see reorder).
func (ro *reorder) push(p *Pos) bool {
	if last, ok := ro.last[p.Position.DeviceID]; ok && p.ts <= last {
		return false
	}
	var slot int32
	if n := len(ro.free); n > 0 {
		slot = ro.free[n-1]
		ro.free = ro.free[:n-1]
		ro.slab[slot] = *p
	} else {
		slot = int32(len(ro.slab))
		ro.slab = append(ro.slab, *p)
	}
	ro.h.push(heapEntry{ts: p.ts, seq: p.Seq, slot: slot})
	ro.maxTS = max(ro.maxTS, p.ts)
	return true
}

// next returns the oldest position held if it may go: all, or its fix
// time is Lateness behind the newest read, or too many are held.
func (ro *reorder) next(all bool) (Pos, bool) {
	for len(ro.h) > 0 && (all || ro.h[0].ts+ro.lateness <= ro.maxTS || len(ro.h) > maxReorder) {
		e := ro.h.pop()
		p := ro.slab[e.slot]
		ro.slab[e.slot] = Pos{}
		ro.free = append(ro.free, e.slot)
		if last, ok := ro.last[p.Position.DeviceID]; ok && p.ts <= last {
			continue // an equal fix time of the device: the first stored goes
		}
		ro.last[p.Position.DeviceID] = p.ts
		return p, true
	}
	return Pos{}, false
}

// heapEntry is a held position's place in the heap: its fix time, stream
// sequence and slot in the slab (small, so the heap's swaps are cheap).
type heapEntry struct {
	ts   int64
	seq  uint64
	slot int32
}

// posHeap orders positions by fix time, then stream sequence (a binary
// heap without container/heap's interface boxing: one allocation less per
// position on the replay's hot path).
type posHeap []heapEntry

func (h posHeap) less(i, j int) bool {
	if h[i].ts != h[j].ts {
		return h[i].ts < h[j].ts
	}
	return h[i].seq < h[j].seq
}

func (h *posHeap) push(e heapEntry) {
	*h = append(*h, e)
	a := *h
	for i := len(a) - 1; i > 0; {
		parent := (i - 1) / 2
		if !a.less(i, parent) {
			break
		}
		a[i], a[parent] = a[parent], a[i]
		i = parent
	}
}

func (h *posHeap) pop() heapEntry {
	a := *h
	e := a[0]
	n := len(a) - 1
	a[0] = a[n]
	a = a[:n]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < n && a.less(l, m) {
			m = l
		}
		if r := l + 1; r < n && a.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		a[i], a[m] = a[m], a[i]
		i = m
	}
	*h = a
	return e
}
