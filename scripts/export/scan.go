package export

import (
	"context"
	"errors"
	"fmt"
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
}

// scan reads w with an ordered consumer and calls fn for every position
// whose fix time is in the range. Memory is constant: one message at a time
// (plus the client's pull buffer).
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
func scan(ctx context.Context, js jetstream.JetStream, w window, fn func(contract.Position) error, tick func(scanStats)) (scanStats, error) {
	var st scanStats
	if w.lastSeq == 0 {
		return st, nil
	}
	start := w.from.Add(-contract.MaxFutureSkew)
	cons, err := js.OrderedConsumer(ctx, streams.Positions, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{w.filter},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &start,
	})
	if err != nil {
		return st, fmt.Errorf("ordered consumer on %s: %w", w.filter, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(512))
	if err != nil {
		return st, fmt.Errorf("consume %s: %w", w.filter, err)
	}
	defer it.Stop()
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		return st, nil
	}
	var stopAt time.Time
	if !w.to.IsZero() {
		stopAt = w.to.Add(w.lateness)
	}
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return st, ctx.Err()
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return st, nil
			}
			return st, fmt.Errorf("read %s: %w", w.filter, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return st, fmt.Errorf("message metadata: %w", err)
		}
		if meta.Sequence.Stream > w.lastSeq {
			return st, nil
		}
		st.scanned++
		p, err := contract.DecodePosition(msg.Data())
		if err == nil && !stopAt.IsZero() && p.TS.After(stopAt) {
			// A fix lateness past the range's end: what is still to come
			// for the range would arrive that far out of order.
			return st, nil
		}
		if err != nil {
			st.malformed++
		} else if !p.TS.Before(w.from) && (w.to.IsZero() || !p.TS.After(w.to)) {
			st.matched++
			if err := fn(p); err != nil {
				return st, err
			}
		}
		if tick != nil && st.scanned%1024 == 0 {
			tick(st)
		}
		if meta.NumPending == 0 || meta.Sequence.Stream == w.lastSeq {
			return st, nil
		}
	}
}
