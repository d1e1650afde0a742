package bridge

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// newEntries is the XREADGROUP id of entries never delivered to the group;
// any other cursor pages through this consumer's own pending list.
const newEntries = ">"

// readLoop reads every stream through the consumer group until intake
// ends: one reader per read group (all streams together on one server, one
// reader per hash slot on a cluster). A stream belongs to one reader, so
// its entries (and a device's, which the ingestion service keeps on one
// stream) are handled in order.
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
	var wg sync.WaitGroup
	for _, g := range b.readGroups {
		wg.Go(func() { b.readStreams(intake, ctx, g) })
	}
	wg.Wait()
	return nil
}

// readStreams reads the streams of one read group (indexes into
// Config.Streams) with one XREADGROUP at a time. It first re-reads this
// consumer's own pending entries ("0", paging by the last id), then new
// ones (">"). A missing group (NOGROUP: Redis restarted without its data,
// or the group was deleted) is recreated from "0". Errors are retried with
// backoff; the bridge is not ready meanwhile.
func (b *bridge) readStreams(intake, ctx context.Context, group []int) {
	// The next XREADGROUP runs while the previous batch is processed, so
	// Redis round trips overlap with parsing and publishing.
	batches := make(chan []streamRead, 1)
	processed := make(chan struct{})
	go func() {
		defer close(processed)
		b.processBatches(ctx, batches)
	}()
	defer func() {
		close(batches)
		<-processed
	}()

	n := len(group)
	pos := make(map[string]int, n) // stream name -> index in group
	cursors := make([]string, n)
	args := make([]string, 2*n)
	for i, si := range group {
		cursors[i] = "0"
		args[i] = b.cfg.Streams[si]
		pos[b.cfg.Streams[si]] = i
	}
	seen := make([]bool, n)
	failures := 0
	ok := true // this reader's last read succeeded
	defer func() {
		if !ok {
			b.readersFailing.Add(-1)
		}
	}()
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
		res, err := b.xreadgroup(ctx, args, b.cfg.Batch, block)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			b.redisError()
			if isNoGroup(err) {
				b.log.Warn("consumer group missing; recreating it from the start of the streams", "group", b.cfg.Group, "err", err)
				if !b.ensureGroups(intake) {
					return
				}
				for i := range cursors {
					cursors[i] = "0"
				}
				continue
			}
			if ok {
				ok = false
				b.readersFailing.Add(1)
				b.log.Warn("redis read failed; retrying with backoff", "streams", args[:n], "err", err)
			}
			// Redis may have delivered the batch whose reply was lost: it is
			// pending under our name. Re-read our pending list (entries in
			// flight are skipped by handle).
			for i := range cursors {
				cursors[i] = "0"
			}
			if sleep(intake, backoff(failures)) != nil {
				return
			}
			failures++
			continue
		}
		failures = 0
		if !ok {
			ok = true
			b.readersFailing.Add(-1)
			b.log.Info("redis reads resumed", "streams", args[:n])
		}
		clear(seen)
		for _, xs := range res {
			i, ok := pos[xs.stream]
			if !ok {
				continue
			}
			seen[i] = true
			if cursors[i] != newEntries {
				if len(xs.entries) == 0 {
					cursors[i] = newEntries
				} else {
					cursors[i] = xs.entries[len(xs.entries)-1].id
				}
			}
		}
		for i := range cursors {
			if !seen[i] {
				cursors[i] = newEntries
			}
		}
		if len(res) > 0 {
			select {
			case batches <- res:
			case <-processed:
				return // the pipeline is stopping
			}
		}
	}
}

// processBatches handles the batches of one reader in read order until
// batches is closed (every entry in hand is then published) or the
// pipeline stops. With ParseWorkers 1 each entry is parsed, routed,
// encoded and published in turn on this goroutine. With more, it is a
// pipeline: this goroutine prepares batch n+1 (in parallel, see
// prepareBatch) while another publishes batch n in order, so the publish
// order is the read order either way.
func (b *bridge) processBatches(ctx context.Context, batches <-chan []streamRead) {
	if b.cfg.ParseWorkers <= 1 && b.cfg.PublishMode != PublishBatch {
		for res := range batches {
			for _, xs := range res {
				si := b.streamIndex[xs.stream]
				for _, e := range xs.entries {
					if b.handle(ctx, si, e, false) != nil {
						return // the pipeline is stopping
					}
				}
			}
		}
		return
	}
	prepared := make(chan []*item, 1)
	published := make(chan struct{})
	go func() {
		defer close(published)
		for items := range prepared {
			if b.publishItems(ctx, items) != nil {
				return // the pipeline is stopping
			}
		}
	}()
	defer func() {
		close(prepared)
		<-published
	}()
	for res := range batches {
		items, err := b.prepareBatch(ctx, res)
		if err != nil {
			return
		}
		select {
		case prepared <- items:
		case <-published:
			return
		}
	}
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
		b.redisError()
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
						b.redisError()
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
					if b.handle(ctx, si, entryOf(msg), false) != nil {
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
			b.redisError()
			return
		}
		b.m.consumersDeleted.Inc()
		b.log.Info("deleted idle consumer", "stream", s, "consumer", c.Name, "idle", c.Idle.Round(time.Second), "pending_dropped", n)
	}
}
