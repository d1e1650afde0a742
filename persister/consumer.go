package persister

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract/streams"
)

// consumeLoop waits for the stream, creates or updates the durable
// consumer and consumes until ctx ends, recreating the consumer with
// backoff when it is deleted or the iterator fails. refillIfExisting asks
// for a refill when the consumer already existed: positions was created at
// start while the consumer had moved past messages the table no longer has.
func (p *persister) consumeLoop(ctx context.Context, refillIfExisting bool) error {
	attempt := 0
	waiting := false
	for {
		cons, existed, err := p.ensureConsumer(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.consumerOK.Store(false)
			attempt++
			d := backoff(p.cfg.BackoffMin, p.cfg.BackoffMax, attempt)
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				if !waiting {
					p.log.Info("waiting for stream POSITIONS (the bridge creates it): not ready meanwhile")
					waiting = true
				}
			} else if attempt == 1 || attempt%10 == 0 {
				p.log.Warn("consumer not available; retrying", "err", err, "attempt", attempt, "retry_in", d.String())
			}
			if !sleep(ctx, d) {
				return nil
			}
			continue
		}
		if waiting || attempt > 0 {
			p.log.Info("consumer ready", "stream", streams.Positions, "consumer", p.cfg.Consumer)
		}
		waiting = false
		if refillIfExisting && existed {
			p.startRefill("positions was created at start while the consumer already existed")
		}
		refillIfExisting = false
		p.consumerOK.Store(true)
		started := time.Now()
		err = p.consume(ctx, cons)
		p.consumerOK.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > time.Minute {
			attempt = 0 // a healthy stretch resets the backoff
		}
		attempt++
		d := backoff(p.cfg.BackoffMin, p.cfg.BackoffMax, attempt)
		p.log.Warn("consumer stopped; recreating", "err", err, "retry_in", d.String())
		if !sleep(ctx, d) {
			return nil
		}
	}
}

// consumerConfig is the durable pull consumer every instance shares.
func (p *persister) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       p.cfg.Consumer,
		Description:   "trm-live persister: positions into PostgreSQL",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.cfg.AckWait,
		// Never give up on a position: a long database outage must not
		// lose data. Poison is terminated explicitly after dead-lettering.
		MaxDeliver:    -1,
		MaxAckPending: p.cfg.MaxAckPending,
	}
}

func (p *persister) ensureConsumer(ctx context.Context) (jetstream.Consumer, bool, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, err := p.js.Stream(cctx, streams.Positions)
	if err != nil {
		return nil, false, err
	}
	_, err = stream.Consumer(cctx, p.cfg.Consumer)
	existed := err == nil
	cons, err := stream.CreateOrUpdateConsumer(cctx, p.consumerConfig())
	if err != nil {
		return nil, false, fmt.Errorf("consumer %s: %w", p.cfg.Consumer, err)
	}
	return cons, existed, nil
}

// consume reads batches and hands them to Writers goroutines. On shutdown
// the batch being assembled is still written, writers finish within
// ShutdownTimeout, and messages buffered but never handed out are Nak'ed
// at once so another instance takes them.
func (p *persister) consume(ctx context.Context, cons jetstream.Consumer) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(min(2*p.cfg.BatchSize, p.cfg.MaxAckPending)))
	if err != nil {
		return fmt.Errorf("messages: %w", err)
	}
	defer it.Stop()

	// Writers keep working past ctx for at most ShutdownTimeout, so a
	// batch in hand is committed and acknowledged rather than abandoned.
	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer wcancel()
	stopTimer := context.AfterFunc(ctx, func() { time.AfterFunc(p.cfg.ShutdownTimeout, wcancel) })
	defer stopTimer()

	batches := make(chan []jetstream.Msg)
	var wg sync.WaitGroup
	for range p.cfg.Writers {
		wg.Go(func() {
			for b := range batches {
				p.handleBatch(wctx, ctx, b)
			}
		})
	}
	var loopErr error
	for {
		batch, err := p.nextBatch(ctx, it)
		if len(batch) > 0 {
			batches <- batch
		}
		if err != nil {
			loopErr = err
			break
		}
	}
	close(batches)
	wg.Wait()
	if ctx.Err() != nil {
		it.Drain()
		for {
			msg, err := it.Next(jetstream.NextMaxWait(50 * time.Millisecond))
			if err != nil {
				break
			}
			_ = msg.Nak() //nolint:errcheck // best effort: AckWait redelivers anyway
		}
		return nil
	}
	return loopErr
}

// nextBatch blocks for the first message, then collects up to BatchSize
// messages for at most FetchMaxWait. It returns what it has with the error
// that ended it (ctx ended, iterator closed).
func (p *persister) nextBatch(ctx context.Context, it jetstream.MessagesContext) ([]jetstream.Msg, error) {
	first, err := it.Next(jetstream.NextContext(ctx))
	if err != nil {
		return nil, err
	}
	batch := make([]jetstream.Msg, 1, p.cfg.BatchSize)
	batch[0] = first
	if p.cfg.BatchSize == 1 {
		return batch, nil
	}
	bctx, cancel := context.WithTimeout(ctx, p.cfg.FetchMaxWait)
	defer cancel()
	for len(batch) < p.cfg.BatchSize {
		msg, err := it.Next(jetstream.NextContext(bctx))
		if err != nil {
			if ctx.Err() != nil {
				return batch, ctx.Err()
			}
			if bctx.Err() != nil {
				return batch, nil // the batch is as full as it gets in time
			}
			return batch, err
		}
		batch = append(batch, msg)
	}
	return batch, nil
}

// statsLoop publishes the consumer's pending and ack-pending counts and the
// readiness gauge every few seconds.
func (p *persister) statsLoop(ctx context.Context) error {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		p.m.ready.Set(b2f(p.ready()))
		if p.consumerOK.Load() {
			ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if c, err := p.js.Consumer(ictx, streams.Positions, p.cfg.Consumer); err == nil {
				if info, err := c.Info(ictx); err == nil {
					p.m.pending.Set(float64(info.NumPending))
					p.m.ackPending.Set(float64(info.NumAckPending))
				}
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (p *persister) ready() bool {
	return p.dbOK.Load() && !p.writeFailing.Load() && p.schemaOK.Load() && p.consumerOK.Load() && p.nc.IsConnected()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
