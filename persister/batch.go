package persister

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/contract/streams"
)

// handleBatch decodes a batch, dead-letters what is not a position and
// writes the rest. ctx bounds the database and NATS calls (it outlives the
// worker's context by ShutdownTimeout); stop is the worker's context and
// ends the waits for a database that is down.
func (p *persister) handleBatch(ctx, stop context.Context, msgs []jetstream.Msg) {
	good := make([]jetstream.Msg, 0, len(msgs))
	ps := make([]contract.Position, 0, len(msgs))
	for _, msg := range msgs {
		pos, err := contract.DecodePosition(msg.Data())
		if err != nil {
			p.deadLetter(ctx, msg, contract.ReasonUndecodable, err.Error())
			continue
		}
		good = append(good, msg)
		ps = append(ps, pos)
	}
	if len(ps) > 0 {
		p.store(ctx, stop, good, ps, true)
	}
}

// store writes ps (decoded from msgs, same order) and acknowledges msgs
// after the commit. On failure nothing is acknowledged: schema errors are
// repaired and retried at once, a row the database refuses is isolated by
// halving and dead-lettered, anything else hands the batch back with a
// growing delay and waits for the database.
func (p *persister) store(ctx, stop context.Context, msgs []jetstream.Msg, ps []contract.Position, checkSchema bool) {
	if p.heldBack.Load() != nil {
		// The table may lose what is written into it (a planted trigger,
		// a rule): nothing is written or acknowledged until a person has
		// fixed it and a verification comes back clean.
		p.nakAll(msgs)
		sleep(stop, p.cfg.BackoffMax)
		return
	}
	gen := p.schemaGen.Load()
	start := time.Now()
	n, err := p.w.write(ctx, ps, false)
	if err == nil {
		p.committed(msgs, n, start)
		return
	}
	kind := classify(err)
	p.m.writeErrors.WithLabelValues(kind.String()).Inc()
	if kind == errData && checkSchema {
		// A column whose type was altered makes every row "bad data":
		// make sure the schema is right before blaming the rows.
		if problems, verr := p.mig.Verify(ctx); verr == nil && len(problems) > 0 {
			kind = errSchema
		}
	}
	switch kind {
	case errSchema:
		p.log.Warn("insert met a missing schema object: verifying and repairing now", "err", err)
		if rerr := p.repair(ctx, gen, "insert failed: "+err.Error()); rerr != nil {
			p.nakAll(msgs)
			return
		}
		start = time.Now()
		n, err = p.w.write(ctx, ps, false)
		if err == nil {
			p.committed(msgs, n, start)
			return
		}
		p.m.writeErrors.WithLabelValues(classify(err).String()).Inc()
		p.log.Warn("insert still failing after schema repair: batch handed back", "err", err)
		p.nakAll(msgs)
	case errData:
		if len(ps) == 1 {
			p.deadLetter(ctx, msgs[0], contract.ReasonUnstorable, err.Error())
			return
		}
		h := len(ps) / 2
		p.store(ctx, stop, msgs[:h], ps[:h], false)
		p.store(ctx, stop, msgs[h:], ps[h:], false)
	default:
		p.nakAll(msgs)
		if ctx.Err() != nil {
			return
		}
		p.setWriteFailing(true, err)
		p.waitDB(stop)
		// A database that answers pings but keeps refusing writes must not
		// be hammered: pause with the same backoff as the Naks.
		sleep(stop, backoff(p.cfg.BackoffMin, p.cfg.BackoffMax, int(p.writeFailures.Load())))
	}
}

func (p *persister) committed(msgs []jetstream.Msg, inserted int64, start time.Time) {
	p.m.commitSeconds.Observe(time.Since(start).Seconds())
	p.m.batchSize.Observe(float64(len(msgs)))
	p.m.rowsInserted.Add(float64(inserted))
	p.m.duplicates.Add(float64(int64(len(msgs)) - inserted))
	p.setDB(true, nil)
	p.setWriteFailing(false, nil)
	for _, msg := range msgs {
		// Fire-and-forget: a lost ack means a redelivery, which the
		// primary key absorbs.
		_ = msg.Ack() //nolint:errcheck // see above
	}
}

// waitDB blocks until the database answers a ping, or stop ends.
func (p *persister) waitDB(stop context.Context) {
	for attempt := 1; ; attempt++ {
		pctx, cancel := context.WithTimeout(stop, time.Second)
		err := p.pool.Ping(pctx)
		cancel()
		if err == nil {
			p.setDB(true, nil)
			return
		}
		p.setDB(false, err)
		if !sleep(stop, backoff(p.cfg.BackoffMin, p.cfg.BackoffMax, attempt)) {
			return
		}
	}
}

// nakAll hands messages back, each with a delay growing with its delivery
// count, never a bare Nak.
func (p *persister) nakAll(msgs []jetstream.Msg) {
	for _, msg := range msgs {
		p.nak(msg)
	}
}

func (p *persister) nak(msg jetstream.Msg) {
	n := 1
	if md, err := msg.Metadata(); err == nil {
		n = int(md.NumDelivered)
	}
	_ = msg.NakWithDelay(backoff(p.cfg.BackoffMin, p.cfg.BackoffMax, n)) //nolint:errcheck // AckWait redelivers anyway
	p.m.naks.Inc()
}

// deadLetter copies msg to the DLQ stream with the reason in headers, then
// terminates it. When the copy cannot be published the message is handed
// back instead: a dead letter is never lost.
func (p *persister) deadLetter(ctx context.Context, msg jetstream.Msg, reason contract.Reason, detail string) {
	seq := "0"
	if md, err := msg.Metadata(); err == nil {
		seq = strconv.FormatUint(md.Sequence.Stream, 10)
	}
	h := nats.Header{}
	h.Set(contract.HeaderReason, string(reason))
	h.Set(contract.HeaderDetail, headerValue(detail))
	h.Set(contract.HeaderSourceStream, streams.Positions)
	h.Set(contract.HeaderSourceID, seq)
	h.Set(contract.HeaderSourceSubject, msg.Subject())
	h.Set(contract.HeaderWorker, Worker)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// The id makes a re-delivered poison message one dead letter.
	_, err := p.js.PublishMsg(pctx, &nats.Msg{Subject: contract.DLQSubject, Data: msg.Data(), Header: h},
		jetstream.WithMsgID(Worker+":"+streams.Positions+":"+seq))
	if err != nil {
		if n, ok := p.dlFailLog.allow(time.Now()); ok {
			p.log.Warn("dead letter not published: message handed back", "err", err, "seq", seq, "reason", string(reason),
				"not_logged_since_last", n)
		}
		p.nak(msg)
		return
	}
	_ = msg.TermWithReason(string(reason)) //nolint:errcheck // the copy is safe; a lost Term redelivers into the same dead letter id
	p.m.deadLetters.WithLabelValues(string(reason)).Inc()
	if n, ok := p.dlLog.allow(time.Now()); ok {
		p.log.Warn("message dead-lettered", "reason", string(reason), "seq", seq, "subject", msg.Subject(),
			"detail", headerValue(detail), "not_logged_since_last", n)
	}
}

// limiter lets one log line through per second and counts the rest, so a
// flood of bad messages costs one line a second, not one per message.
type limiter struct {
	mu      sync.Mutex
	last    time.Time
	dropped int
}

func (l *limiter) allow(now time.Time) (dropped int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.last) < time.Second {
		l.dropped++
		return 0, false
	}
	l.last, dropped, l.dropped = now, l.dropped, 0
	return dropped, true
}

// headerValue makes s a single line of bounded length.
func headerValue(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > 512 {
		s = s[:512] + "…"
	}
	return s
}
