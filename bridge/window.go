package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"trm-live/contract/streams"
)

// The lazy-fsync window (docs/DEPLOY.md, DECISIONS #52): JetStream may
// acknowledge a publish that a power loss then erases, while the bridge
// has already XACKed the entry. Redis still holds it, so the bridge checks
// what JetStream acknowledged and, when some of it is gone, re-publishes
// the last RepublishWindow of every input stream.

// ringSize is how many of the newest acknowledged POSITIONS messages are
// checked. A lazy-fsync loss erases the tail of the store, so the newest
// acks are the ones to look at.
const ringSize = 16

// ackRecord is one acknowledged publish: where JetStream stored it.
type ackRecord struct {
	seq   uint64
	msgID string
	at    time.Time
}

// lossWatch remembers the newest acknowledged POSITIONS messages and the
// highest acknowledged sequence of each stream. The completer records;
// the NATS connection handlers freeze and wake; the verifier reads. All
// under mu.
type lossWatch struct {
	mu      sync.Mutex
	ring    [ringSize]ackRecord
	next    int
	highest map[string]ackRecord // per JetStream stream: highest seq acked
	// frozen is the ring as it was when the connection dropped: publishes
	// re-sent after the reconnect push newer records in before the check
	// runs, and it is the records from before the outage that matter.
	frozen        []ackRecord
	frozenHighest map[string]ackRecord
	wake          chan struct{} // cap 1: a check is due
	changed       bool          // recorded since the last save
}

func newLossWatch() *lossWatch {
	return &lossWatch{highest: map[string]ackRecord{}, wake: make(chan struct{}, 1)}
}

// record notes one PubAck (never a duplicate's: its sequence is the
// original's, which says nothing about this publish).
func (w *lossWatch) record(stream string, seq uint64, msgID string, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if stream == streams.Positions {
		w.ring[w.next] = ackRecord{seq, msgID, at}
		w.next = (w.next + 1) % ringSize
	}
	if seq > w.highest[stream].seq {
		w.highest[stream] = ackRecord{seq: seq, at: at}
	}
	w.changed = true
}

// disconnected freezes what was acknowledged before the outage.
func (w *lossWatch) disconnected() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.frozen != nil {
		return // still the first outage's view
	}
	w.frozen = w.records()
	w.frozenHighest = make(map[string]ackRecord, len(w.highest))
	for k, v := range w.highest {
		w.frozenHighest[k] = v
	}
}

// check asks the verifier to run now.
func (w *lossWatch) check() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// records is the ring's non-empty records; mu held.
func (w *lossWatch) records() []ackRecord {
	out := make([]ackRecord, 0, ringSize)
	for _, r := range w.ring {
		if r.seq != 0 {
			out = append(out, r)
		}
	}
	return out
}

// snapshot is what to verify: the frozen records and the current ones,
// and the highest sequences, each no older than since.
func (w *lossWatch) snapshot(since time.Time) ([]ackRecord, map[string]ackRecord, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var recs []ackRecord
	seen := map[uint64]bool{}
	for _, r := range append(w.frozen, w.records()...) {
		if r.at.After(since) && !seen[r.seq] {
			seen[r.seq] = true
			recs = append(recs, r)
		}
	}
	high := map[string]ackRecord{}
	for _, m := range []map[string]ackRecord{w.frozenHighest, w.highest} {
		for k, v := range m {
			if v.at.After(since) && v.seq > high[k].seq {
				high[k] = v
			}
		}
	}
	return recs, high, w.frozen != nil
}

// verified drops the frozen view once it has been checked.
func (w *lossWatch) verified(frozenChecked bool) {
	if !frozenChecked {
		return
	}
	w.mu.Lock()
	w.frozen, w.frozenHighest = nil, nil
	w.mu.Unlock()
}

// reset forgets everything after a loss was repaired: the store now has
// new sequences, and the old highest would raise the alarm forever.
func (w *lossWatch) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ring = [ringSize]ackRecord{}
	w.next = 0
	w.highest = map[string]ackRecord{}
	w.frozen, w.frozenHighest = nil, nil
	w.changed = true
}

// savedRecord is one ackRecord as kept in Redis (JSON), so that a bridge
// that starts after a power loss of the whole host still knows what
// JetStream acknowledged before. s is the JetStream stream; m is empty
// for a highest-sequence record.
type savedRecord struct {
	S string `json:"s"`
	Q uint64 `json:"q"`
	M string `json:"m,omitempty"`
	T int64  `json:"t"`
}

// export is the current records to save, or nil when nothing changed.
func (w *lossWatch) export() []savedRecord {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.changed {
		return nil
	}
	w.changed = false
	out := []savedRecord{}
	for _, r := range w.records() {
		out = append(out, savedRecord{streams.Positions, r.seq, r.msgID, r.at.UnixMilli()})
	}
	for name, h := range w.highest {
		out = append(out, savedRecord{S: name, Q: h.seq, T: h.at.UnixMilli()})
	}
	return out
}

// load adds saved records (this bridge's and its peers') to the frozen
// view, to be checked like those of an outage.
func (w *lossWatch) load(saved []savedRecord) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.frozenHighest == nil {
		w.frozenHighest = map[string]ackRecord{}
	}
	if w.frozen == nil {
		w.frozen = []ackRecord{}
	}
	for _, r := range saved {
		at := time.UnixMilli(r.T)
		if r.M == "" {
			if r.Q > w.frozenHighest[r.S].seq {
				w.frozenHighest[r.S] = ackRecord{seq: r.Q, at: at}
			}
			continue
		}
		if r.S == streams.Positions {
			w.frozen = append(w.frozen, ackRecord{r.Q, r.M, at})
		}
	}
}

// errInconclusive means the check could not ask JetStream (NATS down,
// stream missing); it is tried again at the next wake or tick.
var errInconclusive = errors.New("cannot verify now")

// verifyLoop checks, after every NATS reconnect and every VerifyInterval,
// that the newest acknowledged messages are still in JetStream, and
// re-publishes the window from Redis when they are not. It is a producer
// of the pipeline, like the reader and the claimer.
func (b *bridge) verifyLoop(intake, ctx context.Context) {
	// A re-publish routes: not before the routing table is loaded.
	for _, ch := range []<-chan struct{}{b.router.loaded, b.ensured} {
		select {
		case <-ch:
		case <-intake.Done():
			return
		}
	}
	b.loadSaved(intake)
	b.watch.check() // at start: what the saved records say
	t := time.NewTicker(b.cfg.VerifyInterval)
	defer t.Stop()
	save := time.NewTicker(saveEvery)
	defer save.Stop()
	// The records of a clean stop are saved for the next start; not when a
	// re-publish was cut short: the saved pre-loss records then make the
	// next start detect the loss again and finish the job.
	interrupted := false
	defer func() {
		if !interrupted {
			b.save(context.Background())
		}
	}()
	var retry <-chan time.Time
	failures := 0
	for {
		select {
		case <-intake.Done():
			return
		case <-save.C:
			b.save(intake)
			continue
		case <-t.C:
		case <-b.watch.wake:
		case <-retry:
		}
		retry = nil
		lost, err := b.verify(intake)
		if err != nil {
			// NATS down or the stream not back yet after a restart: try
			// again soon rather than at the next tick.
			b.log.Debug("jetstream loss check postponed", "err", err)
			retry = time.After(min(backoff(failures+4), b.cfg.VerifyInterval))
			failures++
			continue
		}
		failures = 0
		b.m.lossChecks.Inc()
		if lost == "" {
			continue
		}
		b.m.lossDetected.Inc()
		b.log.Warn("jetstream lost acknowledged messages; re-publishing the window from redis",
			"found", lost, "window", b.cfg.RepublishWindow)
		b.watch.reset()
		if err := b.republish(intake, ctx); err != nil {
			interrupted = true
			b.log.Warn("re-publish interrupted by the stop; the next start repeats it", "err", err)
			return
		}
	}
}

// saveEvery is how often the newest acknowledged records are saved to
// Redis (one HSET when anything changed).
const saveEvery = time.Second

// savedKey is the Redis hash holding the saved records of every bridge of
// the group reading these streams, one field per consumer. The streams
// are part of the name: two deployments (or tests) sharing a Redis and a
// group name but not the streams have different JetStreams.
func (b *bridge) savedKey() string {
	return "bridge:" + b.cfg.Group + ":jetstream-acks:" + strings.Join(b.cfg.Streams, ",")
}

// save writes this bridge's records to Redis; the key expires a window
// after the last write, when the records are too old to matter.
func (b *bridge) save(ctx context.Context) {
	recs := b.watch.export()
	if recs == nil {
		return
	}
	data, _ := json.Marshal(recs) // plain structs always marshal
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	pipe := b.rdb.TxPipeline()
	pipe.HSet(qctx, b.savedKey(), b.cfg.Consumer, data)
	pipe.Expire(qctx, b.savedKey(), b.cfg.RepublishWindow+time.Minute)
	if _, err := pipe.Exec(qctx); err != nil {
		b.watch.mu.Lock()
		b.watch.changed = true // try again next time
		b.watch.mu.Unlock()
	}
}

// loadSaved reads what every bridge of the group saved (this one before a
// restart included), to be checked at once.
func (b *bridge) loadSaved(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	fields, err := b.rdb.HGetAll(qctx, b.savedKey()).Result()
	if err != nil {
		b.log.Warn("cannot read the saved jetstream acks; the start-up loss check only covers what this run sees", "err", err)
		return
	}
	var all []savedRecord
	for consumer, v := range fields {
		var recs []savedRecord
		if err := json.Unmarshal([]byte(v), &recs); err != nil {
			b.log.Warn("ignoring unreadable saved jetstream acks", "consumer", consumer, "err", err)
			continue
		}
		all = append(all, recs...)
	}
	b.watch.load(all)
}

// verify returns what shows a loss ("" when none), or errInconclusive.
func (b *bridge) verify(ctx context.Context) (string, error) {
	recs, high, frozen := b.watch.snapshot(time.Now().Add(-b.cfg.RepublishWindow))
	if !b.nc.IsConnected() {
		return "", errInconclusive
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for name, h := range high {
		s, err := b.js.Stream(qctx, name)
		if err != nil {
			return "", fmt.Errorf("%w: stream %s: %v", errInconclusive, name, err)
		}
		if last := s.CachedInfo().State.LastSeq; last < h.seq {
			return fmt.Sprintf("stream %s last sequence %d, below the acknowledged %d", name, last, h.seq), nil
		}
	}
	for _, r := range recs {
		// A regular get, answered by the stream leader: a direct get may be
		// answered by a replica that has not applied the newest writes yet.
		msg, err := b.jsLegacy.GetMsg(streams.Positions, r.seq, nats.Context(qctx))
		switch {
		case errors.Is(err, nats.ErrMsgNotFound):
			return fmt.Sprintf("%s sequence %d (Nats-Msg-Id %s) missing", streams.Positions, r.seq, r.msgID), nil
		case err != nil:
			return "", fmt.Errorf("%w: get %d: %v", errInconclusive, r.seq, err)
		}
		if got := msg.Header.Get(jetstream.MsgIDHeader); got != r.msgID {
			// After a truncation new publishes reuse the lost sequences.
			return fmt.Sprintf("%s sequence %d holds Nats-Msg-Id %q, acknowledged as %q", streams.Positions, r.seq, got, r.msgID), nil
		}
	}
	b.watch.verified(frozen)
	return "", nil
}

// republish reads the last RepublishWindow of every input stream with
// XRANGE, in pages of Batch, and publishes each entry again through the
// normal parse, route and publish path with its usual Nats-Msg-Id. The
// consumer group is not touched: nothing is XACKed, nothing claimed.
func (b *bridge) republish(intake, ctx context.Context) error {
	from := time.Now().Add(-b.cfg.RepublishWindow).UnixMilli()
	for si, s := range b.cfg.Streams {
		start := strconv.FormatInt(from, 10) + "-0"
		n := 0
		for attempt := 0; ; {
			msgs, err := b.rdb.XRangeN(intake, s, start, "+", int64(b.cfg.Batch)).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				if intake.Err() != nil {
					return intake.Err()
				}
				b.redisError()
				if attempt == 0 {
					b.log.Warn("xrange for re-publish failed; retrying", "stream", s, "err", err)
				}
				if err := sleep(intake, backoff(attempt)); err != nil {
					return err
				}
				attempt++
				continue
			}
			attempt = 0
			if intake.Err() != nil {
				return intake.Err()
			}
			for _, msg := range msgs {
				if err := b.handle(ctx, si, entryOf(msg), true); err != nil {
					return err
				}
			}
			n += len(msgs)
			if len(msgs) < b.cfg.Batch {
				break
			}
			start = "(" + msgs[len(msgs)-1].ID
		}
		b.log.Info("re-published the window", "stream", s, "entries", n, "since", time.UnixMilli(from).UTC())
	}
	return nil
}
