package broadcaster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"trm-live/contract"
	"trm-live/contract/streams"
)

// A replay reads the event's positions from the POSITIONS stream with its
// own ephemeral pull consumer: filtered on pos.<event>.*, starting by time,
// AckNone, memory storage, and an InactiveThreshold so that a crashed
// broadcaster leaves nothing behind. It paces delivery itself (replay.go):
// the server's ReplayOriginal cannot pause, seek or change speed.
//
// The stream is in arrival order and can be seeked by storage time only,
// while a replay is about fix times. Starting at T (fix time):
//   - the consumer starts at storage time T − contract.MaxFutureSkew: the
//     bridge refuses fix times more than that ahead of its clock, so no
//     position with a fix time after T was stored earlier;
//   - the snapshot starts from a batch direct get of each device's last
//     message stored at or before that same instant (up_to_time), whose fix
//     times are all before T, then takes every position with a fix time at
//     or before T that the consumer reads before the first one after T;
//   - the reader hands positions on in fix-time order, not in stream
//     order (reorder): it holds each position until it has read a fix
//     time Lateness after it (or found nothing more pending), so a
//     position stored late, after newer ones of its device (a publish
//     re-sent after a failure), still comes before them. One stored later
//     than that behind a newer one of its device is skipped and counted
//     (broadcaster_replay_too_late_total): a device never goes back.

// srcPos is one position read by a source.
type srcPos struct {
	device string
	ts     int64 // fix time, Unix ms
	data   []byte
	seq    uint64 // stream sequence (order of equal fix times)
}

// source is one replay consumer and the goroutine reading it.
type source struct {
	js      jetstream.JetStream
	name    string
	ch      chan srcPos // closed when the source ends
	err     error       // set before ch is closed, when the read failed
	cancel  context.CancelFunc
	done    chan struct{}
	invalid func()
	tooLate func()

	// Where the reader stands (a rewind's switch to live needs it).
	mu      sync.Mutex
	readSeq uint64        // stream sequence of the last message fully handed on
	idle    bool          // the last read found nothing pending and everything read is in ch
	idleCh  chan struct{} // cap 1: idle became true
}

// state returns the reader's position: the stream sequence it read
// through and whether it is idle (caught up with the stream, everything
// read handed to ch).
func (s *source) state() (readSeq uint64, idle bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readSeq, s.idle
}

func (s *source) setState(seq uint64, idle bool) {
	s.mu.Lock()
	if seq > 0 {
		s.readSeq = seq
	}
	was := s.idle
	s.idle = idle
	s.mu.Unlock()
	if idle && !was {
		select {
		case s.idleCh <- struct{}{}:
		default:
		}
	}
}

// window bounds a source: it ends at the first of the stream's last
// sequence when the replay started, a fix time after stopAt (zero: none),
// or nothing left pending for the filter.
type window struct {
	eventID  string
	lastSeq  uint64
	to       time.Time // last fix time delivered; zero: none
	stopAt   time.Time
	lateness time.Duration // reorder window (fix time)
	// live: a rewind's source, which never ends by itself: it reads on
	// as positions arrive (lastSeq and stopAt unused).
	live bool
}

// openSource creates the consumer starting at fix time at and reads the
// snapshot at that time; the returned source continues after it.
func (r *replay) openSource(ctx context.Context, at time.Time) (*source, []srcPos, error) {
	srv := r.srv
	start := at.Add(-contract.MaxFutureSkew)
	base, err := r.baseSnapshot(ctx, start)
	if err != nil {
		return nil, nil, err
	}
	stream, err := srv.js.Stream(ctx, streams.Positions)
	if err != nil {
		return nil, nil, fmt.Errorf("stream %s: %w", streams.Positions, err)
	}
	name := "replay_" + nuid.Next()
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Name:              name,
		Description:       "broadcaster replay of event " + r.eventID,
		FilterSubject:     contract.EventSubject(r.eventID),
		DeliverPolicy:     jetstream.DeliverByStartTimePolicy,
		OptStartTime:      &start,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: srv.cfg.Replay.InactiveThreshold,
		MemoryStorage:     true,
		Replicas:          1,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("create replay consumer: %w", err)
	}
	srv.replayMetrics.consumers.Inc()
	sctx, cancel := context.WithCancel(context.Background())
	src := &source{js: srv.js, name: name, ch: make(chan srcPos, srv.cfg.Replay.Buffer), cancel: cancel,
		done: make(chan struct{}), invalid: srv.m.messagesInvalid.Inc, tooLate: srv.replayMetrics.tooLate.Inc,
		idleCh: make(chan struct{}, 1)}
	info := cons.CachedInfo()
	if info != nil && info.NumPending == 0 {
		src.setState(0, true)
	}
	if info != nil && info.NumPending == 0 && !r.window.live {
		close(src.ch)
		close(src.done)
	} else {
		it, err := cons.Messages(jetstream.PullMaxMessages(srv.cfg.Replay.Buffer))
		if err != nil {
			cancel()
			src.deleteConsumer(srv)
			return nil, nil, fmt.Errorf("consume replay: %w", err)
		}
		go src.read(sctx, it, r.window, at.UnixMilli())
	}

	// The snapshot: the base, then what the consumer reads up to the first
	// position after at.
	snap := make(map[string]srcPos, len(base))
	atMS := at.UnixMilli()
	for _, p := range base {
		// Always true for what the bridge stored (no fix more than
		// MaxFutureSkew ahead of its storage); a message published around
		// it could break it, and would be missing from the replay.
		if p.ts <= atMS {
			snap[p.device] = p
		}
	}
	var head *srcPos
	for head == nil {
		select {
		case p, ok := <-src.ch:
			if !ok {
				if src.err != nil {
					err := src.err
					src.close(srv)
					return nil, nil, err
				}
				head = &srcPos{} // ended: no head
				break
			}
			if p.device == "" {
				// The reader passed at: the snapshot is complete. The
				// schedule still waits for the first position after at,
				// which comes out of the reorder window: anchored
				// earlier, the first ones would be late by that read.
				continue
			}
			if p.ts > atMS {
				head = &p
				break
			}
			if old, ok := snap[p.device]; !ok || p.ts > old.ts {
				snap[p.device] = p
			}
		case <-src.idleCh:
			// A rewind's source does not end: caught up with the stream
			// and nothing after at yet, the snapshot is complete.
			if _, idle := src.state(); idle && len(src.ch) == 0 {
				head = &srcPos{}
			}
		case <-ctx.Done():
			src.close(srv)
			return nil, nil, ctx.Err()
		}
	}
	if head.device != "" {
		src.headStart(ctx)
	}
	out := make([]srcPos, 0, len(snap))
	for _, p := range snap {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b srcPos) int { return int(a.ts - b.ts) })
	if head.device != "" && r.wants(head.device) {
		r.head = head
	}
	return src, out, nil
}

// headStartMax bounds how long a replay's start waits for its reader to
// get ahead (headStart).
const headStartMax = 100 * time.Millisecond

// headStart waits, at most headStartMax, until the reader has a quarter of
// its hand-off channel ready, or is idle or done. The reorder hands a
// position on only once the reader has read a lateness past it, so at the
// first position the reader has no lead; a schedule anchored then would
// make the first positions wait for every read (measured: the pacing tail
// of a 60× replay grew from about 30 to 85 ms).
func (s *source) headStart(ctx context.Context) {
	deadline := time.Now().Add(headStartMax)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for len(s.ch) < cap(s.ch)/4 && time.Now().Before(deadline) {
		if _, idle := s.state(); idle {
			return
		}
		select {
		case <-s.done:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// read forwards the consumer's messages, decoded, until the window ends,
// ctx ends or the read fails. Positions at or before snapAt (Unix ms, the
// replay's start) go at once, for the snapshot, until the first one after
// it is read; then an empty srcPos marks the snapshot's end, and every
// later position goes in fix-time order (reorder).
func (s *source) read(ctx context.Context, it jetstream.MessagesContext, w window, snapAt int64) {
	defer close(s.done)
	defer close(s.ch)
	defer it.Stop()
	ro := newReorder(w.lateness)
	passed := false
	send := func(p srcPos) bool {
		select {
		case s.ch <- p:
			return true
		case <-ctx.Done():
			return false
		}
	}
	flush := func() {
		for p, ok := ro.next(true); ok; p, ok = ro.next(true) {
			if !send(p) {
				return
			}
		}
	}
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			// A rewind's read never ends by itself.
			if ctx.Err() == nil && (w.live || !errors.Is(err, jetstream.ErrMsgIteratorClosed)) {
				s.err = fmt.Errorf("read replay: %w", err)
			}
			return
		}
		if w.live {
			s.setState(0, false)
		}
		meta, err := msg.Metadata()
		if err != nil {
			s.err = fmt.Errorf("replay message metadata: %w", err)
			return
		}
		if !w.live && meta.Sequence.Stream > w.lastSeq {
			flush()
			return
		}
		ev, device, ok := contract.ParseSubject(msg.Subject())
		ts, item, valid := int64(0), []byte(nil), false
		if ok && ev == w.eventID {
			ts, item, valid = payload(msg.Data(), ev, device)
		}
		if valid && !w.live && !w.stopAt.IsZero() && ts > w.stopAt.UnixMilli() {
			// A fix Lateness past the range's end: what is still to come
			// for the range would arrive that far out of order.
			flush()
			return
		}
		switch {
		case !valid:
			s.invalid()
		case !w.to.IsZero() && ts > w.to.UnixMilli():
			// After the range: skipped, but later messages may still be
			// late arrivals inside it.
		case !passed && ts <= snapAt:
			if !send(srcPos{device: device, ts: ts, data: item, seq: meta.Sequence.Stream}) {
				return
			}
		default:
			if !passed {
				passed = true
				if !send(srcPos{}) {
					return
				}
			}
			if !ro.push(srcPos{device: device, ts: ts, data: item, seq: meta.Sequence.Stream}) {
				s.tooLate()
			}
		}
		caughtUp := meta.NumPending == 0
		if !w.live && (caughtUp || meta.Sequence.Stream >= w.lastSeq) {
			flush()
			return
		}
		for p, ok := ro.next(caughtUp); ok; p, ok = ro.next(caughtUp) {
			if !send(p) {
				return
			}
		}
		if w.live {
			s.setState(meta.Sequence.Stream, caughtUp && ro.len() == 0)
		}
	}
}

// maxReorder bounds the positions a replay's reader holds back to put
// them in fix-time order (about 35 MB): past it the oldest goes on early.
// Lateness × the event's rate is what it needs (1 min × 500 devices at
// 1 Hz: 30,000).
const maxReorder = 100_000

// reorder puts positions read in stream order into fix-time order: a
// position is handed on once a fix time Lateness after it was read (or,
// with all, at once in order), so a late-stored one overtakes newer ones
// still held. Per device it never goes back: a position not newer than
// the last one handed on of its device is refused (too late).
type reorder struct {
	h        posHeap
	lateness int64 // ms
	maxTS    int64
	last     map[string]int64
}

func newReorder(lateness time.Duration) *reorder {
	return &reorder{lateness: lateness.Milliseconds(), last: make(map[string]int64)}
}

func (ro *reorder) len() int { return len(ro.h) }

// push holds p; false means p is too late (see reorder).
func (ro *reorder) push(p srcPos) bool {
	if last, ok := ro.last[p.device]; ok && p.ts <= last {
		return false
	}
	ro.h.push(p)
	ro.maxTS = max(ro.maxTS, p.ts)
	return true
}

// next returns the oldest position held if it may go: all, or its fix
// time is Lateness behind the newest read, or too many are held.
func (ro *reorder) next(all bool) (srcPos, bool) {
	for len(ro.h) > 0 && (all || ro.h[0].ts+ro.lateness <= ro.maxTS || len(ro.h) > maxReorder) {
		p := ro.h.pop()
		if last, ok := ro.last[p.device]; ok && p.ts <= last {
			continue // an equal fix time of the device: the first stored goes
		}
		ro.last[p.device] = p.ts
		return p, true
	}
	return srcPos{}, false
}

// posHeap orders positions by fix time, then stream sequence (a binary
// heap without container/heap's interface boxing: one allocation less per
// position on the replay's hot path).
type posHeap []srcPos

func (h posHeap) less(i, j int) bool {
	if h[i].ts != h[j].ts {
		return h[i].ts < h[j].ts
	}
	return h[i].seq < h[j].seq
}

func (h *posHeap) push(p srcPos) {
	*h = append(*h, p)
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

func (h *posHeap) pop() srcPos {
	a := *h
	p := a[0]
	n := len(a) - 1
	a[0] = a[n]
	a[n] = srcPos{}
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
	return p
}

// close stops the reader and deletes the consumer (the InactiveThreshold
// would, later).
func (s *source) close(srv *server) {
	s.cancel()
	<-s.done
	s.deleteConsumer(srv)
}

func (s *source) deleteConsumer(srv *server) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := srv.js.DeleteConsumer(ctx, streams.Positions, s.name)
	srv.replayMetrics.consumers.Dec()
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		srv.log.Warn("delete replay consumer; the server drops it after the inactive threshold",
			"consumer", s.name, "err", err)
	}
}

// baseSnapshot is the last position of every device of the event among
// the messages stored at or before upTo.
func (r *replay) baseSnapshot(ctx context.Context, upTo time.Time) ([]srcPos, error) {
	snap := r.srv.hub.snap
	ctx, cancel := context.WithTimeout(ctx, snap.timeout)
	defer cancel()
	got, err := snap.multiLastUpTo(ctx, r.eventID, []string{contract.EventSubject(r.eventID)}, upTo)
	if errors.Is(err, errTooMany) {
		// More than 1,024 devices: ask per chunk of explicit subjects.
		got, err = nil, nil
		stream, serr := r.srv.js.Stream(ctx, streams.Positions)
		if serr != nil {
			return nil, fmt.Errorf("%w: stream: %v", errSnapshot, serr)
		}
		info, serr := stream.Info(ctx, jetstream.WithSubjectFilter(contract.EventSubject(r.eventID)))
		if serr != nil {
			return nil, fmt.Errorf("%w: list subjects: %v", errSnapshot, serr)
		}
		subjects := make([]string, 0, len(info.State.Subjects))
		for subj := range info.State.Subjects {
			subjects = append(subjects, subj)
		}
		slices.Sort(subjects)
		for len(subjects) > 0 && err == nil {
			n := min(len(subjects), maxMultiLast)
			var part []snapPosition
			part, err = snap.multiLastUpTo(ctx, r.eventID, subjects[:n], upTo)
			got = append(got, part...)
			subjects = subjects[n:]
		}
	}
	if err != nil {
		return nil, err
	}
	out := make([]srcPos, len(got))
	for i, p := range got {
		out[i] = srcPos{device: p.device, ts: p.ts, data: p.data}
	}
	return out, nil
}

// retained returns the fix times of the event's first and last stored
// positions; ok is false when nothing of the event is retained.
func (srv *server) retained(ctx context.Context, eventID string) (first, last time.Time, lastSeq uint64, ok bool, err error) {
	stream, err := srv.js.Stream(ctx, streams.Positions)
	if err != nil {
		return first, last, 0, false, fmt.Errorf("stream %s: %w", streams.Positions, err)
	}
	lastSeq = stream.CachedInfo().State.LastSeq
	filter := contract.EventSubject(eventID)
	fm, err := stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(filter))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return first, last, lastSeq, false, nil
	}
	if err != nil {
		return first, last, 0, false, fmt.Errorf("first message of %s: %w", filter, err)
	}
	lm, err := stream.GetLastMsgForSubject(ctx, filter)
	if err != nil {
		return first, last, 0, false, fmt.Errorf("last message of %s: %w", filter, err)
	}
	first, last = fm.Time, lm.Time
	if p, err := contract.DecodePosition(fm.Data); err == nil {
		first = p.TS
	}
	if p, err := contract.DecodePosition(lm.Data); err == nil {
		last = p.TS
	}
	return first, last, max(lastSeq, lm.Sequence), true, nil
}
