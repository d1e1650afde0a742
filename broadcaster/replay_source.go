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
//     or before T that the reader hands on before the first one after T
//     (it reads them too, Reader.Earlier, and hands them on first: fix-time
//     order);
//   - the reader (streams.Reader, SkipLate, the one reader of a range of
//     fix times, shared with the export) hands positions on in fix-time
//     order, not in stream order: it holds each position until it has
//     read a fix time Lateness after it (or found nothing more pending),
//     so a position stored late, after newer ones of its device (a
//     publish re-sent after a failure), still comes before them. One
//     stored later than that behind a newer one of its device is skipped
//     and counted (broadcaster_replay_too_late_total): a device never
//     goes back.

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
	go src.read(sctx, streams.Reader{
		Range:   streams.Range{EventID: r.eventID, From: at, To: r.opts.To, Lateness: srv.cfg.Replay.Lateness},
		Late:    streams.SkipLate,
		Open:    func(context.Context) (jetstream.Consumer, error) { return cons, nil },
		Pull:    srv.cfg.Replay.Buffer,
		LastSeq: r.lastSeq,
		Follow:  r.live,
		Earlier: true, // for the snapshot at at
	})

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
			// The schedule waits for the first position after at, which
			// comes out of the reorder window: anchored earlier, the
			// first ones would be late by that read.
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

// read hands the positions of rd, in fix-time order, to s.ch until the
// read ends, ctx ends or it fails; it keeps the reader's state (a rewind's
// switch to live needs it) and counts malformed and too-late positions.
func (s *source) read(ctx context.Context, rd streams.Reader) {
	defer close(s.done)
	defer close(s.ch)
	var counted streams.ReadStats
	count := func(st streams.ReadStats) {
		for ; counted.Malformed < st.Malformed; counted.Malformed++ {
			s.invalid()
		}
		for ; counted.Late < st.Late; counted.Late++ {
			s.tooLate()
		}
	}
	rd.Tick = func(st streams.ReadStats) {
		count(st)
		if rd.Follow {
			s.setState(st.Seq, st.Idle)
		}
	}
	st, err := rd.Read(ctx, func(p streams.Pos) error {
		select {
		case s.ch <- srcPos{device: p.Position.DeviceID, ts: p.Position.TSMillis(), data: p.Data, seq: p.Seq}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	count(st)
	if err != nil && ctx.Err() == nil {
		s.err = fmt.Errorf("read replay: %w", err)
	}
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
