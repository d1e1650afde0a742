package broadcaster

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
//   - positions with a fix time at or before T read after that (arrival
//     jitter between devices, trackers that buffered) are delivered at
//     once, and a client's mailbox drops any older than what it holds.

// srcPos is one position read by a source.
type srcPos struct {
	device string
	ts     int64 // fix time, Unix ms
	data   []byte
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
}

// window bounds a source: it ends at the first of the stream's last
// sequence when the replay started, a fix time after stopAt (zero: none),
// or nothing left pending for the filter.
type window struct {
	eventID string
	lastSeq uint64
	to      time.Time // last fix time delivered; zero: none
	stopAt  time.Time
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
	src := &source{js: srv.js, name: name, ch: make(chan srcPos, min(srv.cfg.Replay.Buffer, 256)), cancel: cancel,
		done: make(chan struct{}), invalid: srv.m.messagesInvalid.Inc}
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		close(src.ch)
		close(src.done)
	} else {
		it, err := cons.Messages(jetstream.PullMaxMessages(srv.cfg.Replay.Buffer))
		if err != nil {
			cancel()
			src.deleteConsumer(srv)
			return nil, nil, fmt.Errorf("consume replay: %w", err)
		}
		go src.read(sctx, it, r.window)
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
			if p.ts > atMS {
				head = &p
				break
			}
			if old, ok := snap[p.device]; !ok || p.ts > old.ts {
				snap[p.device] = p
			}
		case <-ctx.Done():
			src.close(srv)
			return nil, nil, ctx.Err()
		}
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

// read forwards the consumer's messages, decoded, until the window ends,
// ctx ends or the read fails.
func (s *source) read(ctx context.Context, it jetstream.MessagesContext, w window) {
	defer close(s.done)
	defer close(s.ch)
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				s.err = fmt.Errorf("read replay: %w", err)
			}
			return
		}
		meta, err := msg.Metadata()
		if err != nil {
			s.err = fmt.Errorf("replay message metadata: %w", err)
			return
		}
		if meta.Sequence.Stream > w.lastSeq {
			return
		}
		ev, device, ok := contract.ParseSubject(msg.Subject())
		ts, item, valid := int64(0), []byte(nil), false
		if ok && ev == w.eventID {
			ts, item, valid = payload(msg.Data(), ev, device)
		}
		if valid && !w.stopAt.IsZero() && ts > w.stopAt.UnixMilli() {
			// A fix Lateness past the range's end: what is still to come
			// for the range would arrive that far out of order.
			return
		}
		switch {
		case !valid:
			s.invalid()
		case !w.to.IsZero() && ts > w.to.UnixMilli():
			// After the range: skipped, but later messages may still be
			// late arrivals inside it.
		default:
			select {
			case s.ch <- srcPos{device: device, ts: ts, data: item}:
			case <-ctx.Done():
				return
			}
		}
		if meta.NumPending == 0 || meta.Sequence.Stream >= w.lastSeq {
			return
		}
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
