package bridge

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// newEntries is the XREADGROUP id of entries never delivered to the group;
// any other cursor pages through this consumer's own pending list.
const newEntries = ">"

// readLoop reads every stream through the consumer group until intake ends.
// It first re-reads this consumer's own pending entries ("0", paging by the
// last id), then new ones (">"). A missing group (NOGROUP: Redis restarted
// without its data, or the group was deleted) is recreated from "0". Errors
// are retried with backoff; the bridge is not ready meanwhile.
func (b *bridge) readLoop(intake, ctx context.Context) error {
	// Route nothing before the routing table and the streams exist: a
	// position published as unassigned for want of a table is misrouted.
	for _, ch := range []<-chan struct{}{b.router.loaded, b.ensured} {
		select {
		case <-ch:
		case <-intake.Done():
			return nil
		}
	}
	if !b.ensureGroups(intake) {
		return nil
	}
	// The next XREADGROUP runs while the previous batch is processed, so
	// Redis round trips overlap with parsing and publishing.
	batches := make(chan []redis.XStream, 1)
	processed := make(chan struct{})
	go func() {
		defer close(processed)
		for res := range batches {
			for _, xs := range res {
				si := b.streamIndex[xs.Stream]
				for _, msg := range xs.Messages {
					if b.handle(ctx, si, msg, false) != nil {
						return // the pipeline is stopping
					}
				}
			}
		}
	}()
	defer func() {
		close(batches)
		<-processed
	}()

	n := len(b.cfg.Streams)
	cursors := make([]string, n)
	for i := range cursors {
		cursors[i] = "0"
	}
	args := make([]string, 2*n)
	copy(args, b.cfg.Streams)
	seen := make([]bool, n)
	failures := 0
	for intake.Err() == nil {
		pending := false
		for i, c := range cursors {
			args[n+i] = c
			pending = pending || c != newEntries
		}
		block := b.cfg.Block
		if pending {
			block = -1 // history reads answer at once; omit BLOCK
		}
		res, err := b.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: b.cfg.Group, Consumer: b.cfg.Consumer, Streams: args,
			Count: int64(b.cfg.Batch), Block: block,
		}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			if ctx.Err() != nil {
				return nil
			}
			b.m.redisErrors.Inc()
			if isNoGroup(err) {
				b.log.Warn("consumer group missing; recreating it from the start of the streams", "group", b.cfg.Group, "err", err)
				if !b.ensureGroups(intake) {
					return nil
				}
				for i := range cursors {
					cursors[i] = "0"
				}
				continue
			}
			if b.redisOK.Swap(false) {
				b.log.Warn("redis read failed; retrying with backoff", "err", err)
			}
			// Redis may have delivered the batch whose reply was lost: it is
			// pending under our name. Re-read our pending list (entries in
			// flight are skipped by handle).
			for i := range cursors {
				cursors[i] = "0"
			}
			if sleep(intake, backoff(failures)) != nil {
				return nil
			}
			failures++
			continue
		}
		failures = 0
		if !b.redisOK.Swap(true) {
			b.log.Info("redis reads resumed")
		}
		clear(seen)
		for _, xs := range res {
			si, ok := b.streamIndex[xs.Stream]
			if !ok {
				continue
			}
			seen[si] = true
			if cursors[si] != newEntries {
				if len(xs.Messages) == 0 {
					cursors[si] = newEntries
				} else {
					cursors[si] = xs.Messages[len(xs.Messages)-1].ID
				}
			}
		}
		for si := range cursors {
			if !seen[si] {
				cursors[si] = newEntries
			}
		}
		if len(res) > 0 {
			select {
			case batches <- res:
			case <-processed:
				return nil // the pipeline is stopping
			}
		}
	}
	return nil
}

// ensureGroups creates the consumer group on every stream (and the stream
// when missing), from "0" so that nothing already written is skipped. It
// retries until it succeeds; false means intake ended first.
func (b *bridge) ensureGroups(intake context.Context) bool {
	for attempt := 0; ; attempt++ {
		var err error
		for _, s := range b.cfg.Streams {
			cerr := b.rdb.XGroupCreateMkStream(intake, s, b.cfg.Group, "0").Err()
			if cerr != nil && !redis.HasErrorPrefix(cerr, "BUSYGROUP") {
				err = cerr
				break
			}
		}
		if err == nil {
			return true
		}
		if intake.Err() != nil {
			return false
		}
		b.m.redisErrors.Inc()
		if b.redisOK.Swap(false) {
			b.log.Warn("cannot create consumer group yet; retrying", "group", b.cfg.Group, "err", err)
		}
		if sleep(intake, backoff(attempt)) != nil {
			return false
		}
	}
}

// claimLoop takes over, every ClaimInterval, the entries that stayed
// pending longer than ClaimMinIdle under any consumer of the group (a dead
// bridge's, or our own when it is not in flight). Entries deleted while
// pending are acknowledged and counted.
func (b *bridge) claimLoop(intake, ctx context.Context) {
	select {
	case <-b.ensured:
	case <-intake.Done():
		return
	}
	t := time.NewTicker(b.cfg.ClaimInterval)
	defer t.Stop()
	for {
		select {
		case <-intake.Done():
			return
		case <-t.C:
		}
		if !b.router.ready() {
			continue
		}
		for si, s := range b.cfg.Streams {
			claimed, deleted := 0, 0
			start := "0-0"
			for intake.Err() == nil {
				// Under ackMu, no XACK runs between the claim and the
				// in-flight check: an entry of ours acked meanwhile would
				// otherwise look claimable (pending in the reply, gone from
				// the in-flight set) and be published twice.
				b.ackMu.Lock()
				msgs, next, deletedIDs, err := b.rdb.XAutoClaimWithDeleted(ctx, &redis.XAutoClaimArgs{
					Stream: s, Group: b.cfg.Group, Consumer: b.cfg.Consumer,
					MinIdle: b.cfg.ClaimMinIdle, Start: start, Count: int64(b.cfg.Batch),
				}).Result()
				fresh := msgs[:0]
				for _, msg := range msgs {
					if !b.inflight.contains(si, msg.ID) {
						fresh = append(fresh, msg)
					}
				}
				b.ackMu.Unlock()
				if err != nil {
					if !isNoGroup(err) && ctx.Err() == nil {
						b.m.redisErrors.Inc()
						b.log.Debug("xautoclaim failed", "stream", s, "err", err)
					}
					break
				}
				for _, id := range deletedIDs {
					// Redis already dropped them from the pending list; the
					// XACK is a harmless no-op kept for older servers.
					b.m.read.Inc()
					b.m.deletedPending.Inc()
					if b.ack(ctx, ackRef{si, id}) != nil {
						return
					}
				}
				deleted += len(deletedIDs)
				for _, msg := range fresh {
					b.m.claimed.Inc()
					claimed++
					if b.handle(ctx, si, msg, false) != nil {
						return
					}
				}
				if next == "" || next == "0-0" {
					break
				}
				start = next
			}
			if claimed > 0 || deleted > 0 {
				b.log.Info("claimed idle pending entries", "stream", s, "claimed", claimed, "deleted", deleted,
					"min_idle", b.cfg.ClaimMinIdle)
			}
			b.pruneConsumers(intake, s)
		}
	}
}

func isNoGroup(err error) bool { return redis.HasErrorPrefix(err, "NOGROUP") }

// pruneConsumers deletes the consumers of the group on stream s that own
// no pending entry and have been idle longer than ConsumerMaxIdle: each
// restarted container leaves its name behind otherwise. A live bridge
// touches the group every BRIDGE_BLOCK, and XGROUP DELCONSUMER of a name
// that reads again only recreates it at the next read, so nothing is
// lost even in a race; an entry pending under a dead name is claimed
// first (XAUTOCLAIM moves it), then the name goes at a later pass.
func (b *bridge) pruneConsumers(ctx context.Context, s string) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	consumers, err := b.rdb.XInfoConsumers(qctx, s, b.cfg.Group).Result()
	if err != nil {
		return // NOGROUP or Redis down: the reader deals with both
	}
	for _, c := range consumers {
		if c.Name == b.cfg.Consumer || c.Pending > 0 || c.Idle < b.cfg.ConsumerMaxIdle {
			continue
		}
		// Only a reading consumer gains pending entries (a claim moves them
		// to the claimer), and a reading one is never idle this long, so
		// DELCONSUMER drops nothing; its answer is logged to prove it.
		n, err := b.rdb.XGroupDelConsumer(qctx, s, b.cfg.Group, c.Name).Result()
		if err != nil {
			b.m.redisErrors.Inc()
			return
		}
		b.m.consumersDeleted.Inc()
		b.log.Info("deleted idle consumer", "stream", s, "consumer", c.Name, "idle", c.Idle.Round(time.Second), "pending_dropped", n)
	}
}
