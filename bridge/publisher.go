package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
)

// item is one Redis entry on its way to JetStream.
type item struct {
	stream     int       // index in Config.Streams
	id         string    // Redis entry id
	fields     []string  // name, value pairs
	msg        *nats.Msg // nil once dropped: a dead letter that cannot be published
	m          nats.Msg  // a position's message (msg points here): no allocation of its own
	hdr        [1]string // m's Msg-Id header value
	msgID      string
	reason     contract.Reason // set for a dead letter
	unassigned bool
	republish  bool // a lazy-fsync re-publish: never XACKed, not in the in-flight set
	start      time.Time
	sent       time.Time // the latest publish of msg
	fut        jetstream.PubAckFuture
}

// ackRef names one entry to XACK.
type ackRef struct {
	stream int
	id     string
}

// handle takes one entry read or claimed from Redis: a deleted entry is
// acknowledged at once; any other is parsed, routed and published (a bad
// one to the dead-letter subject). It blocks while MaxInFlight publishes
// await their ack. ctx is the pipeline's context. A re-published entry
// (republish, read with XRANGE after a JetStream loss) takes the same path
// but leaves the consumer group alone: not in the in-flight set, not
// counted as read, never XACKed.
func (b *bridge) handle(ctx context.Context, si int, e entry, republish bool) error {
	if !republish {
		if !b.inflight.add(si, e.id) {
			return nil // already on its way (a claim of our own entry)
		}
		b.m.read.Inc()
	}
	if e.deleted {
		if republish {
			return nil // XRANGE returns no deleted entries; be safe anyway
		}
		// Deleted from the stream (XDEL or trimming) while pending: nothing
		// to publish, and retrying would never end.
		b.m.deletedPending.Inc()
		return b.ack(ctx, ackRef{si, e.id})
	}
	it := &item{stream: si, id: e.id, fields: e.fields, republish: republish}
	b.prepare(it, nil)
	return b.submit(ctx, it)
}

// prepare parses, routes and encodes it: its message is the position, or
// its dead letter (it.msg nil when even that cannot be sent). It touches
// nothing shared but the routing snapshot and counters, so the entries of
// a batch are prepared in parallel (see prepareBatch). A position's JSON
// goes into *arena when given (one allocation for many positions; a
// message's bytes never change once written), else into its own slice.
func (b *bridge) prepare(it *item, arena *[]byte) {
	pos, err := contract.ParseFields(it.fields, b.cfg.Now())
	if err != nil {
		reason := contract.ReasonOf(err)
		if reason == "" {
			reason = contract.ReasonNotAnEntry
		}
		b.toDeadLetter(it, reason, err.Error())
		return
	}
	pos.EventID = b.router.event(pos.DeviceID, pos.TS)
	it.unassigned = pos.EventID == ""
	it.msgID = pos.MsgID()
	var data []byte
	if arena != nil {
		a := *arena
		if room := 320 + len(pos.Attrs); cap(a)-len(a) < room {
			a = make([]byte, 0, max(arenaChunk, room))
		}
		start := len(a)
		a = pos.AppendJSON(a)
		data, *arena = a[start:len(a):len(a)], a
	} else {
		data = pos.Encode()
	}
	// The Msg-Id header is built here rather than by WithMsgID on the
	// publishing goroutine, which has the least time to spare.
	it.hdr[0] = it.msgID
	it.m = nats.Msg{Subject: pos.Subject(), Data: data, Header: nats.Header{jetstream.MsgIDHeader: it.hdr[:]}}
	it.msg = &it.m
}

// arenaChunk is the size of one block of encoded positions (about 200).
const arenaChunk = 64 << 10

// submit publishes a prepared item and hands it to the completer. It
// blocks while MaxInFlight publishes await their ack.
func (b *bridge) submit(ctx context.Context, it *item) error {
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	b.m.inFlight.Inc()
	it.start = time.Now()
	if err := b.publish(ctx, it); err != nil {
		return err
	}
	if it.msg == nil {
		return b.drop(ctx, it)
	}
	select {
	case b.items <- it: // never blocks for long: cap(items) == cap(sem)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// prepareBatch takes the entries of one read in stream order: those
// already in flight are skipped, deleted ones acknowledged, and the rest
// are prepared by up to ParseWorkers goroutines, each a contiguous share,
// and returned in read order for submit.
func (b *bridge) prepareBatch(ctx context.Context, res []streamRead) ([]*item, error) {
	n := 0
	for _, xs := range res {
		n += len(xs.entries)
	}
	slab := make([]item, n) // one allocation for the batch's items
	items := make([]*item, 0, n)
	for _, xs := range res {
		si := b.streamIndex[xs.stream]
		fresh := b.inflight.addAll(si, xs.entries)
		b.m.read.Add(float64(len(fresh)))
		for _, e := range fresh {
			if e.deleted {
				b.m.deletedPending.Inc()
				if err := b.ack(ctx, ackRef{si, e.id}); err != nil {
					return nil, err
				}
				continue
			}
			it := &slab[len(items)]
			it.stream, it.id, it.fields = si, e.id, e.fields
			items = append(items, it)
		}
	}
	const minShare = 64 // fewer entries are not worth a goroutine
	workers := min(b.cfg.ParseWorkers, (len(items)+minShare-1)/minShare)
	if workers <= 1 {
		var arena []byte
		for _, it := range items {
			b.prepare(it, &arena)
		}
		return items, nil
	}
	var wg sync.WaitGroup
	share := (len(items) + workers - 1) / workers
	for lo := 0; lo < len(items); lo += share {
		part := items[lo:min(lo+share, len(items))]
		wg.Go(func() {
			var arena []byte
			for _, it := range part {
				b.prepare(it, &arena)
			}
		})
	}
	wg.Wait()
	return items, nil
}

// toDeadLetter makes it the dead letter of its entry: the original fields
// as a flat JSON object (cut to fit the connection's max payload, see
// contract.DeadLetterFields), the reason and source in headers. When not
// even the headers fit, it.msg is nil: the entry is dropped (counted,
// logged, acknowledged).
func (b *bridge) toDeadLetter(it *item, reason contract.Reason, detail string) {
	it.reason = reason
	it.msgID = "dlq:" + b.cfg.Streams[it.stream] + ":" + it.id
	h := nats.Header{}
	h.Set(contract.HeaderReason, string(reason))
	h.Set(contract.HeaderDetail, detail)
	h.Set(contract.HeaderSourceStream, b.cfg.Streams[it.stream])
	h.Set(contract.HeaderSourceID, it.id)
	h.Set(contract.HeaderWorker, "bridge")
	// The Msg-Id header (dedup) counts in the size, as does the longest
	// Trm-Truncated header.
	h.Set(jetstream.MsgIDHeader, it.msgID)
	budget := b.maxPayload() - headerLen(h) - (len(contract.HeaderTruncated) + 4 + contract.DeadLetterMaxTruncated)
	fields := make(map[string]string, len(it.fields)/2)
	for i := 0; i+1 < len(it.fields); i += 2 {
		fields[it.fields[i]] = it.fields[i+1] // the last of a repeated name, as ParseFields
	}
	data, truncated, ok := contract.DeadLetterFields(fields, budget)
	if !ok {
		b.m.dlqDropped.Inc()
		b.log.Error("dead letter cannot fit the nats max payload even without its fields; entry acknowledged without one",
			"stream", b.cfg.Streams[it.stream], "entry_id", it.id, "reason", reason, "max_payload", b.maxPayload())
		it.msg = nil
		return
	}
	if truncated != "" {
		h.Set(contract.HeaderTruncated, truncated)
	}
	it.msg = &nats.Msg{Subject: contract.DLQSubject, Header: h, Data: data}
}

// maxPayload is the largest message (headers and data) the server takes.
func (b *bridge) maxPayload() int {
	if n := b.nc.MaxPayload(); n > 0 {
		return int(n)
	}
	return 1 << 20 // not connected yet: the server default
}

// headerLen is at least the encoded size of h ("NATS/1.0\r\n", one
// "key: value\r\n" per value, "\r\n"), which counts in the max payload.
func headerLen(h nats.Header) int {
	n := len("NATS/1.0\r\n") + 2
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n
}

// publish sends it asynchronously, retrying with backoff while the client
// refuses at once for a reason that can pass (connection closed or
// reconnecting, too many stalled). A refusal that cannot pass is handled by
// send: the entry is dead-lettered, or dropped (it.msg nil).
func (b *bridge) publish(ctx context.Context, it *item) error {
	for attempt := 0; ; attempt++ {
		err := b.send(it)
		if err == nil {
			return nil
		}
		b.m.retries.Inc()
		if attempt == 0 {
			b.log.Warn("publish refused; retrying with backoff", "err", err)
		}
		if err := sleep(ctx, backoff(attempt)); err != nil {
			return err
		}
	}
}

// send publishes it once. A refusal that no retry can change (see
// permanent) turns a position into its dead letter, sent at once, and a
// dead letter into a dropped item (it.msg nil, nil error). The error
// returned is a refusal worth retrying.
func (b *bridge) send(it *item) error {
	for it.msg != nil {
		fut, err := b.js.PublishMsgAsync(it.msg) // Msg-Id header set by prepare or toDeadLetter
		if err == nil {
			it.fut, it.sent = fut, time.Now()
			return nil
		}
		if !permanent(err) {
			return err
		}
		b.refused(it, err)
	}
	return nil
}

// refused handles a publish of it that can never succeed: a position
// becomes its dead letter (reason unpublishable); a dead letter is dropped,
// counted and logged with its entry id, so that its entry is acknowledged
// and never blocks the ones behind it.
func (b *bridge) refused(it *item, err error) {
	if it.reason == "" {
		b.toDeadLetter(it, contract.ReasonUnpublishable, fmt.Sprintf("publish to %s refused: %v", it.msg.Subject, err))
		return
	}
	b.m.dlqDropped.Inc()
	b.log.Error("dead letter refused by nats; entry acknowledged without one",
		"stream", b.cfg.Streams[it.stream], "entry_id", it.id, "reason", it.reason, "err", err)
	it.msg = nil
}

// drop frees the in-flight slot of an item that will not be published and
// acknowledges its entry.
func (b *bridge) drop(ctx context.Context, it *item) error {
	<-b.sem
	b.m.inFlight.Dec()
	if it.republish {
		return nil
	}
	return b.ack(ctx, ackRef{it.stream, it.id})
}

// permanent reports whether a publish error is a refusal that a retry of
// the same message cannot change: larger than the max payload (client
// check) or the stream's max message size, a subject or header the
// client rejects, or a publish the server does not permit.
func permanent(err error) bool {
	if errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadSubject) ||
		errors.Is(err, nats.ErrBadHeaderMsg) || errors.Is(err, nats.ErrPermissionViolation) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}

// completeLoop waits for each publish's ack in publishing order (acks come
// back nearly in order on one connection, so waiting on the oldest costs
// nothing). An acked entry goes to the acker. A failed or timed-out one
// (every pending future fails when the connection drops) is re-sent with
// the same Nats-Msg-Id after a backoff, and its Redis entry is not acked
// meanwhile. It returns when the producers are done and every item is
// acked, or when ctx ends.
func (b *bridge) completeLoop(ctx context.Context) error {
	var (
		redo      []*item // re-sent, awaiting their new ack
		failed    []*item // awaiting re-send
		round     int     // consecutive failure rounds, for the backoff
		resendAt  time.Time
		itemsOpen = true
	)
	resend := func() error {
		if err := sleep(ctx, time.Until(resendAt)); err != nil {
			return err
		}
		for len(failed) > 0 {
			it := failed[0]
			if err := b.send(it); err != nil {
				round++
				resendAt = time.Now().Add(backoff(round))
				return nil // try the rest later
			}
			b.m.retries.Inc()
			failed = failed[1:]
			if it.msg == nil {
				if err := b.drop(ctx, it); err != nil {
					return err
				}
				continue
			}
			redo = append(redo, it)
		}
		failed = nil
		return nil
	}
	for {
		var it *item
		switch {
		case len(redo) > 0:
			it, redo = redo[0], redo[1:]
		case len(failed) > 0 && (!itemsOpen || len(b.items) == 0 || !time.Now().Before(resendAt)):
			// Nothing else to wait for, nothing ready, or the re-send is
			// due: wait for the next item only until the re-send is due.
			if itemsOpen && time.Now().Before(resendAt) {
				t := time.NewTimer(time.Until(resendAt))
				select {
				case next, ok := <-b.items:
					t.Stop()
					if !ok {
						itemsOpen = false
						continue
					}
					it = next
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				}
			}
			if it == nil {
				if err := resend(); err != nil {
					return err
				}
				continue
			}
		case !itemsOpen:
			return nil
		default:
			select {
			case next, ok := <-b.items:
				if !ok {
					itemsOpen = false
					continue
				}
				it = next
			case <-ctx.Done():
				return ctx.Err()
			}
		}

		select {
		case pa := <-it.fut.Ok():
			round = 0
			if pa != nil && !pa.Duplicate { // a duplicate says nothing about room
				b.full.clear(it.msg.Subject)
			}
			b.done(it, pa)
			if it.republish {
				continue
			}
			if err := b.ack(ctx, ackRef{it.stream, it.id}); err != nil {
				return err
			}
		case err := <-it.fut.Err():
			b.full.check(it.msg.Subject, err)
			if permanent(err) || b.denied.since(it.msg.Subject, it.sent) {
				if !permanent(err) {
					// The server refused it (reported to the error handler);
					// the future only timed out.
					err = fmt.Errorf("%w for publish to %s", nats.ErrPermissionViolation, it.msg.Subject)
				}
				b.refused(it, err)
				if b.send(it) == nil {
					if it.msg == nil {
						if err := b.drop(ctx, it); err != nil {
							return err
						}
					} else {
						redo = append(redo, it)
					}
					continue
				}
				// The dead letter was refused for now: re-sent below.
			}
			if len(failed) == 0 {
				if round == 0 {
					b.log.Warn("publish not acknowledged; re-sending with the same Nats-Msg-Id", "err", err)
				}
				round++
				resendAt = time.Now().Add(backoff(round - 1))
			}
			failed = append(failed, it)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// done accounts for one acked publish and frees its in-flight slot.
func (b *bridge) done(it *item, pa *jetstream.PubAck) {
	<-b.sem
	b.m.inFlight.Dec()
	b.m.latency.Observe(time.Since(it.start).Seconds())
	if pa != nil && !pa.Duplicate {
		b.watch.record(pa.Stream, pa.Sequence, it.msgID, time.Now())
	}
	if it.republish {
		b.m.republished.Inc()
		if pa != nil && !pa.Duplicate {
			b.m.republishStored.Inc()
		}
		return
	}
	switch {
	case it.reason != "":
		b.m.deadLettered.WithLabelValues(string(it.reason)).Inc()
	default:
		b.m.published.Inc()
		if it.unassigned {
			b.m.unassigned.Inc()
		}
	}
	if pa != nil && pa.Duplicate {
		b.m.duplicates.Inc()
	}
}

func (b *bridge) ack(ctx context.Context, r ackRef) error {
	select {
	case b.acks <- r:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ackLoop XACKs in batches: it takes what is waiting (up to 4096 entries),
// acknowledges it in one pipelined round trip, and retries with backoff
// while Redis is down. It returns when the completer is done and every
// entry is acknowledged, or when ctx ends.
func (b *bridge) ackLoop(ctx context.Context) error {
	const maxBatch = 4096
	byStream := make([][]string, len(b.cfg.Streams))
	for {
		var r ackRef
		var ok bool
		select {
		case r, ok = <-b.acks:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			return nil
		}
		n, closed := 1, false
		byStream[r.stream] = append(byStream[r.stream], r.id)
	drain:
		for n < maxBatch {
			select {
			case r, ok = <-b.acks:
				if !ok {
					closed = true
					break drain
				}
				byStream[r.stream] = append(byStream[r.stream], r.id)
				n++
			default:
				break drain
			}
		}
		if b.cfg.crashBeforeAck != nil && b.cfg.crashBeforeAck(n) {
			return errCrash
		}
		for attempt := 0; ; attempt++ {
			b.ackMu.Lock()
			err := b.xack(ctx, byStream)
			if err == nil {
				for si, ids := range byStream {
					b.inflight.remove(si, ids)
				}
			}
			b.ackMu.Unlock()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.redisError()
			if attempt == 0 {
				b.log.Warn("xack failed; retrying with backoff", "err", err, "entries", n)
			}
			if err := sleep(ctx, backoff(attempt)); err != nil {
				return err
			}
		}
		b.m.acked.Add(float64(n))
		for si, ids := range byStream {
			byStream[si] = ids[:0]
		}
		if closed {
			return nil
		}
	}
}

func (b *bridge) xack(ctx context.Context, byStream [][]string) error {
	pipe := b.rdb.Pipeline()
	for si, ids := range byStream {
		if len(ids) > 0 {
			pipe.XAck(ctx, b.cfg.Streams[si], b.cfg.Group, ids...)
		}
	}
	_, err := pipe.Exec(ctx)
	return err
}

// inflightSet holds the entries between read and XACK, per stream, so that
// a claim of one of our own idle entries does not publish it twice.
type inflightSet struct {
	mu  sync.Mutex
	ids []map[string]struct{}
}

func newInflightSet(n int) *inflightSet {
	s := &inflightSet{ids: make([]map[string]struct{}, n)}
	for i := range s.ids {
		s.ids[i] = make(map[string]struct{})
	}
	return s
}

// add reports false when id is already in flight.
func (s *inflightSet) add(si int, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.ids[si][id]; ok {
		return false
	}
	s.ids[si][id] = struct{}{}
	return true
}

// addAll adds the entries of stream si and returns those that were not in
// flight yet (the others are a claim's), in order, under one lock.
func (s *inflightSet) addAll(si int, entries []entry) []entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var fresh []entry // nil while every entry so far is new
	for i, e := range entries {
		if _, ok := s.ids[si][e.id]; ok {
			if fresh == nil {
				fresh = make([]entry, i, len(entries))
				copy(fresh, entries[:i])
			}
			continue
		}
		s.ids[si][e.id] = struct{}{}
		if fresh != nil {
			fresh = append(fresh, e)
		}
	}
	if fresh == nil {
		return entries
	}
	return fresh
}

func (s *inflightSet) contains(si int, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ids[si][id]
	return ok
}

func (s *inflightSet) remove(si int, ids []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		delete(s.ids[si], id)
	}
}
