package export

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
	"trm-live/contract/streams"
)

// DefaultLateness is how far out of fix-time order a position may arrive
// in the stream and still be found by a range that ends at its fix time:
// the reader stops at the first fix time after To + Lateness.
const DefaultLateness = time.Hour

// window is one read of the POSITIONS stream: the positions on subject
// filter whose fix time lies in [from, to] (to zero: no upper bound), in
// stream order.
type window struct {
	filter   string
	from, to time.Time
	lateness time.Duration
	// lastSeq is the stream's last sequence when the export started: the
	// read never goes past it, so a live event still gives a finite file.
	lastSeq uint64
}

// scanStats counts what one read saw.
type scanStats struct {
	scanned   int64 // messages read from the stream
	matched   int64 // positions in the range, handed to fn
	malformed int64 // payloads that are not valid positions, skipped
	late      int64 // positions in the range stored after a newer one of their device
}

// inRange reports whether fix time ts lies in the window's range.
func (w window) inRange(ts time.Time) bool {
	return !ts.Before(w.from) && (w.to.IsZero() || !ts.After(w.to))
}

// scan calls fn for every position of w whose fix time is in the range,
// in fix-time order per device, in two reads of the window:
//
//  1. findLate reads it once and keeps the positions stored after a newer
//     position of their device (in the range): a publish re-sent after a
//     failure lands behind newer ones, and a reader in stream order would
//     write it out of order. Memory: one fix time per device and the late
//     positions themselves (few: one per failed publish).
//  2. The second read hands the positions to fn in stream order, except
//     that a late one goes just before the first position of its device
//     not older than it, instead of where it was stored.
//
// Devices are interleaved as stored; each device's positions are in
// fix-time order, every stored one exactly once (two stored with the same
// fix time both go, in stream order).
func scan(ctx context.Context, js jetstream.JetStream, w window, fn func(contract.Position) error, tick func(scanStats)) (scanStats, error) {
	late, err := findLate(ctx, js, w)
	if err != nil {
		return scanStats{}, err
	}
	// By device, in fix-time order (then stream order).
	held := make(map[string][]latePos)
	for _, lp := range late {
		held[lp.p.DeviceID] = append(held[lp.p.DeviceID], lp)
	}
	for _, q := range held {
		slices.SortFunc(q, func(a, b latePos) int {
			if c := a.p.TS.Compare(b.p.TS); c != 0 {
				return c
			}
			return cmp.Compare(a.seq, b.seq)
		})
	}
	isLate := make(map[uint64]bool, len(late))
	for _, lp := range late {
		isLate[lp.seq] = true
	}
	var st scanStats
	emit := func(p contract.Position) error {
		st.matched++
		return fn(p)
	}
	err = read(ctx, js, w, func(seq uint64, p contract.Position, ok bool) error {
		st.scanned++
		if tick != nil && st.scanned%1024 == 0 {
			tick(st)
		}
		switch {
		case !ok:
			st.malformed++
			return nil
		case !w.inRange(p.TS):
			return nil
		case len(late) == 0: // the usual case
			return emit(p)
		case isLate[seq]:
			return nil
		}
		if q := held[p.DeviceID]; len(q) > 0 {
			for len(q) > 0 && !q[0].p.TS.After(p.TS) {
				st.late++
				if err := emit(q[0].p); err != nil {
					return err
				}
				q = q[1:]
			}
			held[p.DeviceID] = q
		}
		return emit(p)
	})
	if err != nil {
		return st, err
	}
	// Late positions with no later one of their device in the second read
	// (it cannot happen: each was stored after a newer one of its device;
	// kept in case the stream changed between the reads), in device order.
	devices := slices.Sorted(maps.Keys(held))
	for _, dev := range devices {
		for _, lp := range held[dev] {
			st.late++
			if err := emit(lp.p); err != nil {
				return st, err
			}
		}
	}
	return st, nil
}

// latePos is a position stored after a newer one of its device.
type latePos struct {
	seq uint64
	p   contract.Position
}

// findLate reads w and returns its positions in the range stored after a
// newer position of their device in the range.
func findLate(ctx context.Context, js jetstream.JetStream, w window) ([]latePos, error) {
	newest := make(map[string]time.Time)
	var late []latePos
	err := read(ctx, js, w, func(seq uint64, p contract.Position, ok bool) error {
		if !ok || !w.inRange(p.TS) {
			return nil
		}
		if n, seen := newest[p.DeviceID]; seen && p.TS.Before(n) {
			late = append(late, latePos{seq: seq, p: p})
			return nil
		}
		newest[p.DeviceID] = p.TS
		return nil
	})
	return late, err
}

// read reads w with an ordered consumer and calls fn for every message,
// decoded (ok false: not a valid position), in stream order. Memory is
// constant: one message at a time (plus the client's pull buffer).
//
// The stream is in arrival order and can only be seeked by storage time, so
// the consumer starts at from − contract.MaxFutureSkew: the bridge refuses a
// fix time more than that ahead of its clock, so no position with a fix time
// at or after from was stored earlier. It stops at the first of: the
// stream's last sequence at start, a fix time after to + lateness (the
// stream is in arrival order, which follows fix order but for trackers
// that buffered and for jitter between devices: lateness is how far out of
// order a position may arrive and still be found), or no message pending
// for the filter. Storage time is no end: a bridge catching up on a Redis
// backlog stores an hour of fixes in a minute.
func read(ctx context.Context, js jetstream.JetStream, w window, fn func(seq uint64, p contract.Position, ok bool) error) error {
	if w.lastSeq == 0 {
		return nil
	}
	start := w.from.Add(-contract.MaxFutureSkew)
	cons, err := js.OrderedConsumer(ctx, streams.Positions, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{w.filter},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &start,
	})
	if err != nil {
		return fmt.Errorf("ordered consumer on %s: %w", w.filter, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(512))
	if err != nil {
		return fmt.Errorf("consume %s: %w", w.filter, err)
	}
	defer it.Stop()
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		return nil
	}
	var stopAt time.Time
	if !w.to.IsZero() {
		stopAt = w.to.Add(w.lateness)
	}
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("read %s: %w", w.filter, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("message metadata: %w", err)
		}
		if meta.Sequence.Stream > w.lastSeq {
			return nil
		}
		p, err := contract.DecodePosition(msg.Data())
		if err == nil && !stopAt.IsZero() && p.TS.After(stopAt) {
			// A fix lateness past the range's end: what is still to come
			// for the range would arrive that far out of order.
			return nil
		}
		if err := fn(meta.Sequence.Stream, p, err == nil); err != nil {
			return err
		}
		if meta.NumPending == 0 || meta.Sequence.Stream == w.lastSeq {
			return nil
		}
	}
}
