package bridge

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// The publish modes (BRIDGE_PUBLISH_MODE).
const (
	// PublishAsync publishes each position asynchronously and waits for
	// its own PubAck.
	PublishAsync = "async"
	// PublishBatch publishes the positions of a read batch as one
	// fast-ingest batch (nats-server 2.14+, allow_batched on POSITIONS):
	// one flow ack per flow of messages and one ack at the commit.
	PublishBatch = "batch"
)

// minFastBatch is the fewest positions worth a fast batch; fewer are
// published asynchronously.
const minFastBatch = 2

// publishItems publishes the prepared items of one read batch in read
// order. In batch mode the positions go as one fast-ingest batch first;
// what is left (dead letters, dropped entries, and every position of a
// batch that failed) goes through submit, the asynchronous path.
func (b *bridge) publishItems(ctx context.Context, items []*item) error {
	if b.cfg.PublishMode == PublishBatch && !b.fastOff.Load() {
		var err error
		if items, err = b.fastBatch(ctx, items); err != nil {
			return err
		}
	}
	for _, it := range items {
		if err := b.submit(ctx, it); err != nil {
			return err
		}
	}
	return nil
}

// fastBatch publishes the positions among items, in read order, as one
// fast-ingest batch committed with its last position, and returns the
// items left for submit. Nothing is XACKed before the commit's ack: it
// says every message of the batch is stored (gap mode "fail": the server
// abandons a batch with a gap). The ack's sequence and the last
// Nats-Msg-Id feed the lazy-fsync loss check as one PubAck would. Any
// error (a gap, a refused message, a timeout, a lost connection) fails
// the whole batch: every position of it is returned for submit, which
// re-publishes it with the same Nats-Msg-Id, so JetStream's dedup drops
// those the batch did store. A stream or server without fast batches
// turns batch mode off for good (logged once, counted).
func (b *bridge) fastBatch(ctx context.Context, items []*item) ([]*item, error) {
	batch := make([]*item, 0, len(items))
	rest := make([]*item, 0)
	for _, it := range items {
		if it.msg != nil && it.reason == "" && !it.republish {
			batch = append(batch, it)
		} else {
			rest = append(rest, it)
		}
	}
	if len(batch) < minFastBatch {
		return items, nil
	}
	var (
		mu       sync.Mutex
		asyncErr error // reported by the server beside the acks: a gap or a refused message
	)
	fp, err := jetstreamext.NewFastPublisher(b.js,
		jetstreamext.FastPublishFlowControl{Flow: b.cfg.fastFlow, AckTimeout: b.cfg.PublishTimeout},
		jetstreamext.WithFastPublisherErrorHandler(func(err error) {
			mu.Lock()
			if asyncErr == nil {
				asyncErr = err
			}
			mu.Unlock()
		}))
	if err != nil {
		return nil, err // options only: a programming error
	}
	start := time.Now()
	last := batch[len(batch)-1]
	h := msgIDHeaders.Get().(*msgIDHeader)
	for _, it := range batch[:len(batch)-1] {
		m := withMsgID(it, h)
		if _, err = fp.AddMsg(&m); err != nil {
			break
		}
	}
	var ack *jetstreamext.BatchAck
	if err == nil {
		m := withMsgID(last, h)
		ack, err = fp.CommitMsg(ctx, &m)
	}
	msgIDHeaders.Put(h)
	if !fp.IsClosed() {
		// Ended early: tell the server no more is coming.
		cctx, cancel := context.WithTimeout(ctx, b.cfg.PublishTimeout)
		_, _ = fp.Close(cctx)
		cancel()
	}
	mu.Lock()
	if err == nil && asyncErr != nil {
		err = asyncErr
	}
	mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if fastUnsupported(err) {
			b.fastOff.Store(true)
			b.m.fastFallback.Inc()
			b.log.Warn("jetstream refused a fast-ingest batch (server below 2.14 or stream without allow_batched); publishing each message asynchronously from now on",
				"err", err)
			return items, nil
		}
		b.m.fastFailed.Inc()
		if b.fastFailing.CompareAndSwap(false, true) {
			b.log.Warn("fast-ingest batch failed; re-publishing its positions asynchronously with the same Nats-Msg-Id", "err", err, "positions", len(batch))
		}
		return items, nil
	}
	b.fastFailing.Store(false)
	now := time.Now()
	b.watch.record(ack.Stream, ack.Sequence, last.msgID, now)
	b.full.clear(last.msg.Subject)
	b.m.fastBatches.Inc()
	for _, it := range batch {
		b.m.latency.Observe(now.Sub(start).Seconds())
		b.m.published.Inc()
		if it.unassigned {
			b.m.unassigned.Inc()
		}
		if err := b.ack(ctx, ackRef{it.stream, it.id}); err != nil {
			return nil, err
		}
	}
	return rest, nil
}

// fastUnsupported reports whether err says fast batches cannot work here:
// the stream lacks allow_batched, or the server answered the batch's first
// message with a plain PubAck (a server that predates fast ingest).
func fastUnsupported(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstreamext.JSErrCodeFastBatchNotEnabled {
		return true
	}
	return errors.Is(err, jetstreamext.ErrInvalidBatchAck)
}
