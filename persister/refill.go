package persister

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract"
	"trm-live/contract/streams"
)

// startRefill (re)starts the refill of positions from the stream, in the
// background, beside live writing. A refill already running is cancelled
// first: the table it was filling is gone again.
func (p *persister) startRefill(why string) {
	p.refillMu.Lock()
	defer p.refillMu.Unlock()
	if p.refillCancel != nil {
		p.refillCancel()
	}
	ctx, cancel := context.WithCancel(p.runCtx)
	p.refillCancel = cancel
	p.m.refills.Inc()
	p.log.Warn("refilling positions from the stream", "reason", why)
	p.refilling.Add(1)
	p.refillWG.Go(func() {
		defer p.refilling.Add(-1)
		defer cancel()
		start := time.Now()
		// The table this refill fills: only its own marker is cleared.
		oid, _, merr := p.mig.RefillPending(ctx)
		n, err := p.refill(ctx, time.Time{})
		switch {
		case err == nil:
			p.log.Info("refill done", "rows_inserted", n, "took", time.Since(start).Round(time.Millisecond).String())
			if merr == nil && oid != 0 {
				if err := p.mig.ClearRefill(ctx, oid); err != nil {
					p.log.Warn("refill done, its marker stays (the next verification refills again)", "err", err)
				}
			}
		case ctx.Err() != nil:
			p.log.Info("refill stopped", "rows_inserted", n)
		default:
			p.log.Error("refill failed: run `persister rebuild` to replay the stream", "err", err, "rows_inserted", n)
		}
	})
}

// refillIfPending starts a refill when none runs and positions still
// carries migrate.RefillMarker: it was created and its refill never
// finished (the persister filling it was killed, or the refill failed).
func (p *persister) refillIfPending(ctx context.Context) {
	if p.refilling.Load() > 0 {
		return
	}
	if _, pending, err := p.mig.RefillPending(ctx); err == nil && pending {
		p.startRefill("positions was created and its refill never finished")
	}
}

func (p *persister) stopRefill() {
	p.refillMu.Lock()
	defer p.refillMu.Unlock()
	if p.refillCancel != nil {
		p.refillCancel()
	}
}

// refill replays the stream into positions, idempotently: every position
// the stream retains (since is zero) or those stored since a time, up to
// the last message at the moment it starts. It returns the rows inserted.
// Undecodable messages are skipped: the live path dead-letters them.
func (p *persister) refill(ctx context.Context, since time.Time) (int64, error) {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	stream, err := p.js.Stream(sctx, streams.Positions)
	if err != nil {
		cancel()
		return 0, fmt.Errorf("stream %s: %w", streams.Positions, err)
	}
	info, err := stream.Info(sctx)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("stream info: %w", err)
	}
	if info.State.Msgs == 0 {
		return 0, nil
	}
	last := info.State.LastSeq

	occ := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if !since.IsZero() {
		occ.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		occ.OptStartTime = &since
	}
	oc, err := stream.OrderedConsumer(ctx, occ)
	if err != nil {
		return 0, fmt.Errorf("ordered consumer: %w", err)
	}
	if ci, err := oc.Info(ctx); err == nil && ci.NumPending == 0 {
		return 0, nil // nothing stored since that time
	}
	it, err := oc.Messages(jetstream.PullMaxMessages(2 * p.cfg.BatchSize))
	if err != nil {
		return 0, fmt.Errorf("ordered consumer: %w", err)
	}
	defer it.Stop()

	var total int64
	ps := make([]contract.Position, 0, p.cfg.BatchSize)
	for done := false; !done; {
		ps = ps[:0]
		deadline := time.Now().Add(p.cfg.FetchMaxWait)
		for len(ps) < p.cfg.BatchSize && !done {
			wait := time.Until(deadline)
			if len(ps) == 0 {
				wait = 30 * time.Second // the first of a batch: the stream has it
			}
			msg, err := it.Next(jetstream.NextMaxWait(max(wait, time.Millisecond)))
			if err != nil {
				if ctx.Err() != nil {
					return total, ctx.Err()
				}
				if errors.Is(err, nats.ErrTimeout) && len(ps) > 0 {
					break
				}
				return total, fmt.Errorf("read stream: %w", err)
			}
			md, err := msg.Metadata()
			if err == nil && (md.Sequence.Stream >= last || md.NumPending == 0) {
				done = true
			}
			if pos, err := contract.DecodePosition(msg.Data()); err == nil {
				ps = append(ps, pos)
			}
		}
		if len(ps) == 0 {
			continue
		}
		n, err := p.writeRetry(ctx, ps)
		total += n
		p.m.refillRows.Add(float64(n))
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// writeRetry writes a refill batch until it succeeds: transient errors wait
// with backoff, schema errors repair, rows the database refuses are skipped
// (the live path dead-letters them).
func (p *persister) writeRetry(ctx context.Context, ps []contract.Position) (int64, error) {
	for attempt := 1; ; attempt++ {
		gen := p.schemaGen.Load()
		n, err := p.w.write(ctx, ps, true)
		if err == nil {
			p.setWriteFailing(false, nil)
			return n, nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		switch classify(err) {
		case errSchema:
			if rerr := p.repair(ctx, gen, "refill insert failed: "+err.Error()); rerr != nil && fatalSchema(rerr) {
				return 0, rerr
			}
		case errData:
			if len(ps) == 1 {
				return 0, nil
			}
			h := len(ps) / 2
			a, err := p.writeRetry(ctx, ps[:h])
			if err != nil {
				return a, err
			}
			b, err := p.writeRetry(ctx, ps[h:])
			return a + b, err
		default:
			p.setWriteFailing(true, err)
		}
		if !sleep(ctx, backoff(p.cfg.BackoffMin, p.cfg.BackoffMax, attempt)) {
			return 0, ctx.Err()
		}
	}
}

// Rebuild replays every position the stream POSITIONS holds since the
// given time into positions, idempotently (existing rows, and their faulty
// flags, are left alone), after applying and verifying the schema. It is
// the operator's "persister rebuild --since" and returns the rows inserted.
func Rebuild(ctx context.Context, cfg Config, since time.Time) (int64, error) {
	if err := cfg.Validate(); err != nil {
		return 0, err
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		return 0, err
	}
	p, err := open(ctx, cfg, m)
	if err != nil {
		return 0, err
	}
	defer p.close()
	if _, err := p.mig.Apply(ctx); err != nil {
		return 0, fmt.Errorf("schema: %w", err)
	}
	p.schemaGen.Add(1)
	cfg.Logger.Info("rebuild: replaying the stream into positions", "since", since.UTC().Format(time.RFC3339))
	n, err := p.refill(ctx, since)
	p.stopRefill() // a repair during the replay may have started one
	p.refillWG.Wait()
	return n, err
}
