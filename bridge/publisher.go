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
	stream     int             // index in Config.Streams
	id         string          // Redis entry id
	fields     []string        // name, value pairs
	msg        *nats.Msg       // nil once dropped: a dead letter that cannot be published
	m          nats.Msg        // a position's message (msg points here): no allocation of its own
	msgID      string          // a position's message has no Header: see withMsgID
	reason     contract.Reason // set for a dead letter
	unassigned bool
	republish  bool // a lazy-fsync re-publish: never XACKed, not in the in-flight set
	start      time.Time
	sent       time.Time // the latest publish of msg (under pubAcks.mu)
	seq        uint64    // the latest publish's sequence (under pubAcks.mu)
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
	b.prepare(it, nil, b.cfg.Now())
	return b.submit(ctx, it)
}

// prepare parses, routes and encodes it: its message is the position, or
// its dead letter (it.msg nil when even that cannot be sent). It touches
// nothing shared but the routing snapshot and counters, so the entries of
// a batch are prepared in parallel (see prepareBatch). A position's JSON
// goes into *arena when given (one allocation for many positions; a
// message's bytes never change once written), else into its own slice.
func (b *bridge) prepare(it *item, arena *[]byte, now time.Time) {
	var dec contract.Decimals // the entry's own number text, copied into the JSON
	pos, err := contract.ParseFieldsDecimals(it.fields, now, &dec)
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
		a = pos.AppendJSONDecimals(a, &dec)
		data, *arena = a[start:len(a):len(a)], a
	} else {
		data = pos.AppendJSONDecimals(make([]byte, 0, 320+len(pos.Attrs)), &dec)
	}
	it.m = nats.Msg{Subject: pos.Subject(), Data: data}
	it.msg = &it.m
}

// msgIDHeader is a Nats-Msg-Id header lent for one publish. A position's
// message carries no header map of its own: making and filling one per
// message was a sixth of prepare's CPU. Each publish borrows one of these
// (withMsgID), sets the position's Msg-Id in it, and gives it back once
// nats.go has copied the header into its buffer: PublishMsg does before it
// returns, and so do the fast publisher's AddMsg and CommitMsg, which
// publish through it.
type msgIDHeader struct {
	h nats.Header
	v []string // h's only value
}

var msgIDHeaders = sync.Pool{New: func() any {
	v := make([]string, 1)
	return &msgIDHeader{h: nats.Header{jetstream.MsgIDHeader: v}, v: v}
}}

// withMsgID returns m to publish for it: a dead letter's message as it is
// (its headers are its own), a position's as a copy whose header is h set
// to the position's Msg-Id. h is valid until the caller puts it back.
func withMsgID(it *item, h *msgIDHeader) nats.Msg {
	m := *it.msg
	if m.Header == nil {
		h.v[0] = it.msgID
		m.Header = h.h
	}
	return m
}

// arenaChunk is the size of one block of encoded positions (about 200).
const arenaChunk = 64 << 10

// submit publishes a prepared item; its reply completes it (onReply).
// It blocks while MaxInFlight publishes await their ack.
func (b *bridge) submit(ctx context.Context, it *item) error {
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	b.open.Add(1)
	it.start = time.Now()
	sent, err := b.publish(ctx, it)
	if err != nil {
		return err
	}
	if !sent {
		return b.drop(ctx, it)
	}
	return nil
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
	now := b.cfg.Now() // the future-time rule's clock, once per read
	if workers <= 1 {
		var arena []byte
		for _, it := range items {
			b.prepare(it, &arena, now)
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
				b.prepare(it, &arena, now)
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
// refuses at once for a reason that can pass (connection closed, reconnect
// buffer full). A refusal that cannot pass is handled by send: the entry
// is dead-lettered, or dropped (false: it.msg nil).
func (b *bridge) publish(ctx context.Context, it *item) (bool, error) {
	for attempt, now := 0, it.start; ; attempt, now = attempt+1, time.Now() {
		sent, err := b.send(it, now)
		if err == nil {
			return sent, nil
		}
		b.m.retries.Inc()
		if attempt == 0 {
			b.log.Warn("publish refused; retrying with backoff", "err", err)
		}
		if err := sleep(ctx, backoff(attempt)); err != nil {
			return false, err
		}
	}
}

// send publishes it once, with the Msg-Id header set by prepare or
// toDeadLetter and a reply subject of its own. Sent (true), it belongs to
// the reply handler, or to the completer should it time out first: the
// caller must not touch it again. A refusal that no retry can change (see
// permanent) turns a position into its dead letter, sent at once, and a
// dead letter into a dropped item (false, nil error; it.msg nil). The
// error returned is a refusal worth retrying.
func (b *bridge) send(it *item, now time.Time) (bool, error) {
	for it.msg != nil {
		seq := b.pa.register(it, now)
		h := msgIDHeaders.Get().(*msgIDHeader)
		m := withMsgID(it, h)
		err := b.nc.PublishMsg(&m)
		msgIDHeaders.Put(h)
		if err == nil {
			return true, nil
		}
		if b.pa.take(seq) == nil {
			// The completer took it meanwhile (the connection dropped): it
			// re-sends it.
			return true, nil
		}
		if !permanent(err) {
			return false, err
		}
		b.refused(it, err)
	}
	return false, nil
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

// drop acknowledges the entry of an item that will not be published and
// frees its in-flight slot.
func (b *bridge) drop(ctx context.Context, it *item) error {
	var err error
	if !it.republish {
		err = b.ack(ctx, ackRef{it.stream, it.id})
	}
	b.release()
	return err
}

// release frees the in-flight slot of an item whose entry, if any, is
// with the acker.
func (b *bridge) release() {
	<-b.sem
	b.open.Add(-1) // after the ack: the completer's end (open 0) closes acks
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

// onReply is the handler of the publishes' replies (see pubAcks). A
// PubAck completes its item here: counted, its entry handed to the acker,
// its in-flight slot freed. Any other reply goes to the completer.
func (b *bridge) onReply(m *nats.Msg) {
	seq, ok := b.pa.seqOf(m.Subject)
	if !ok {
		return
	}
	it := b.pa.take(seq)
	if it == nil {
		return // no longer pending: timed out or cut off, and re-sent
	}
	pa, err := parsePubAck(m)
	if err != nil {
		b.pa.failures <- pubFailure{it, err} // never blocks: see pubAcks.failures
		return
	}
	if !b.pa.acked.Load() {
		b.pa.acked.Store(true)
	}
	if !pa.duplicate { // a duplicate says nothing about room
		b.full.clear(it.msg.Subject)
	}
	b.done(it, pa)
}

// completeLoop handles the publishes that did not get a PubAck: an error
// reply, no reply within PublishTimeout (checked every tick), or pending
// when the connection dropped (nats-server's reply to them is lost). Each
// is dead-lettered when the refusal is for good, else re-sent with the
// same Nats-Msg-Id after a backoff; its Redis entry is not acknowledged
// meanwhile. It returns when the producers are done and every item is
// acknowledged or dropped, or when ctx ends.
func (b *bridge) completeLoop(ctx context.Context, status <-chan nats.Status) error {
	var (
		failed   []*item // awaiting re-send, oldest first
		round    int     // consecutive failure rounds, for the backoff
		resendAt time.Time
		produced = b.produced
	)
	tick := time.NewTicker(expiryTick(b.cfg.PublishTimeout))
	defer tick.Stop()
	resendT := time.NewTimer(time.Hour)
	defer resendT.Stop()

	fail := func(it *item, err error) error {
		b.full.check(it.msg.Subject, err)
		if permanent(err) || b.denied.since(it.msg.Subject, it.sent) {
			if !permanent(err) {
				// The server refused it (reported to the error handler);
				// the publish only timed out.
				err = fmt.Errorf("%w for publish to %s", nats.ErrPermissionViolation, it.msg.Subject)
			}
			b.refused(it, err)
			sent, serr := b.send(it, time.Now())
			if serr == nil {
				if !sent {
					return b.drop(ctx, it)
				}
				return nil
			}
			// The dead letter was refused for now: re-sent below.
		}
		if len(failed) == 0 {
			if b.pa.acked.Swap(false) {
				round = 0 // acks came since the last failure
			}
			if round == 0 {
				b.log.Warn("publish not acknowledged; re-sending with the same Nats-Msg-Id", "err", err)
			}
			round++
			resendAt = time.Now().Add(backoff(round - 1))
		}
		failed = append(failed, it)
		return nil
	}
	resend := func() error {
		for len(failed) > 0 {
			it := failed[0]
			sent, err := b.send(it, time.Now())
			if err != nil {
				round++
				resendAt = time.Now().Add(backoff(round))
				return nil // try the rest later
			}
			b.m.retries.Inc()
			failed = failed[1:]
			if !sent {
				if err := b.drop(ctx, it); err != nil {
					return err
				}
			}
		}
		failed = nil
		return nil
	}

	for {
		if produced == nil && b.open.Load() == 0 {
			return nil
		}
		var resendC <-chan time.Time
		if len(failed) > 0 {
			resendT.Reset(time.Until(resendAt))
			resendC = resendT.C
		}
		var err error
		select {
		case f := <-b.pa.failures:
			err = fail(f.it, f.err)
		case now := <-tick.C:
			for _, it := range b.pa.expired(now.Add(-b.cfg.PublishTimeout)) {
				if err = fail(it, jetstream.ErrAsyncPublishTimeout); err != nil {
					break
				}
			}
		case st, ok := <-status:
			if !ok {
				status = nil
				continue
			}
			if st != nats.RECONNECTING {
				continue
			}
			for _, it := range b.pa.all() {
				if err = fail(it, nats.ErrDisconnected); err != nil {
					break
				}
			}
		case <-resendC:
			err = resend()
		case <-produced:
			produced = nil
			tick.Reset(5 * time.Millisecond) // draining: look for the end often
		case <-ctx.Done():
			return ctx.Err()
		}
		if err != nil {
			return err
		}
	}
}

// expiryTick is how often the completer looks for publishes without a
// reply: a quarter of PublishTimeout, within 5 to 250 ms. A publish times
// out at most one tick after PublishTimeout.
func expiryTick(timeout time.Duration) time.Duration {
	return min(max(timeout/4, 5*time.Millisecond), 250*time.Millisecond)
}

// done accounts for one acked publish, hands its entry to the acker and
// frees its in-flight slot.
func (b *bridge) done(it *item, pa pubAck) {
	now := time.Now()
	b.m.latency.Observe(now.Sub(it.start).Seconds())
	if !pa.duplicate {
		b.watch.record(pa.stream, pa.seq, it.msgID, now)
	}
	if it.republish {
		b.m.republished.Inc()
		if !pa.duplicate {
			b.m.republishStored.Inc()
		}
	} else {
		switch {
		case it.reason != "":
			b.m.deadLettered.WithLabelValues(string(it.reason)).Inc()
		default:
			b.m.published.Inc()
			if it.unassigned {
				b.m.unassigned.Inc()
			}
		}
		if pa.duplicate {
			b.m.duplicates.Inc()
		}
		// An error here is the pipeline's end: the entry stays pending.
		_ = b.ack(b.pipeCtx, ackRef{it.stream, it.id})
	}
	b.release()
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
	ids := s.ids[si]
	for i, e := range entries {
		// One hash per entry: an insert that does not grow the map found
		// the id already there.
		n := len(ids)
		ids[e.id] = struct{}{}
		if len(ids) == n {
			if fresh == nil {
				fresh = make([]entry, i, len(entries))
				copy(fresh, entries[:i])
			}
			continue
		}
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
