package main

// The catch-up benchmark (-catchup): a bridge restarted after an outage
// finds Backlog of positions (Devices × Hz) waiting in its Redis stream
// while the devices keep sending Hz each. It measures how long the bridge
// takes to acknowledge the backlog and to catch up with the live head,
// and the latency (fix time → arrival on NATS) of the live positions
// written before it caught up and after. In one Redis stream read in order
// (which per-device order needs), a live position waits behind every entry
// before it: the first one written waits longest, the backlog over the
// bridge's rate; catching up takes the backlog over the rate less the live
// input.

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"trm-live/bridge"
	"trm-live/contract"
)

// catchupSampled is how many devices' subjects are timed (every position
// of theirs); timing all would add a subscriber's CPU to the bridge's.
const catchupSampled = 10

func (w *world) catchup(ctx context.Context, fl *fleet) error {
	cfg, out := w.cfg, w.cfg.Out
	interval := time.Duration(float64(time.Second) / cfg.Hz)
	ticks := int(cfg.Backlog / interval)
	start := time.Now().Truncate(time.Millisecond)
	at := start.Add(-time.Duration(ticks) * interval)
	var entries [][]string
	t0 := time.Now()
	backlog := 0
	for range ticks {
		entries = fl.tick(entries[:0], at)
		at = at.Add(interval)
		if err := xadd(ctx, w.rdb, w.stream, entries); err != nil {
			return err
		}
		backlog += len(entries)
	}
	fmt.Fprintf(out, "backlog: %d entries (%d devices × %.0f Hz × %s) XADDed in %s\n",
		backlog, cfg.Devices, cfg.Hz, cfg.Backlog, time.Since(t0).Round(time.Millisecond))

	// Time a few devices' positions as they arrive on NATS.
	nc, err := nats.Connect(w.natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	var mu sync.Mutex
	var during, after []time.Duration
	var caughtUp time.Time // zero until the bridge is within a second of the live head
	for _, d := range w.devices[:min(catchupSampled, len(w.devices))] {
		if _, err := nc.Subscribe(contract.PositionSubject(w.event, d), func(m *nats.Msg) {
			now := time.Now()
			p, err := contract.DecodePosition(m.Data)
			if err != nil || p.TS.Before(start) {
				return // a backlog position
			}
			mu.Lock()
			defer mu.Unlock()
			if caughtUp.IsZero() || p.TS.Before(caughtUp) {
				during = append(during, now.Sub(p.TS))
			} else {
				after = append(after, now.Sub(p.TS))
			}
		}); err != nil {
			return err
		}
	}
	if err := nc.Flush(); err != nil {
		return err
	}

	// The bridge restarts now; the devices keep sending.
	bcfg, reg, err := w.bridgeConfig(cfg.Default, "bench-catchup")
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	begin := time.Now()
	go func() { done <- bridge.Run(runCtx, bcfg) }()
	live := 0
	liveRate := float64(cfg.Devices) * cfg.Hz
	var drained time.Time // when the whole backlog is acknowledged
	var liveEntries [][]string
	next := begin
	const afterDrain = 5 * time.Second
	for {
		if d := time.Until(next); d > 0 {
			select {
			case err := <-done:
				return fmt.Errorf("bridge returned early: %v", err)
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
			}
		}
		now := time.Now().Truncate(time.Millisecond)
		liveEntries = fl.tick(liveEntries[:0], now)
		if err := xadd(ctx, w.rdb, w.stream, liveEntries); err != nil {
			return err
		}
		live += len(liveEntries)
		next = next.Add(interval)
		acked, err := reg.acked()
		if err != nil {
			return err
		}
		if drained.IsZero() && int(acked) >= backlog {
			drained = time.Now()
		}
		mu.Lock()
		if caughtUp.IsZero() && float64(acked) >= float64(backlog+live)-liveRate {
			caughtUp = time.Now()
		}
		c := caughtUp
		mu.Unlock()
		if !c.IsZero() && time.Since(c) > afterDrain {
			break
		}
		if time.Since(begin) > 15*time.Minute {
			return fmt.Errorf("backlog not drained after 15 minutes (%v of %d acked)", acked, backlog)
		}
	}
	cancel()
	if err := <-done; err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	drain, catch := drained.Sub(begin), caughtUp.Sub(begin)
	rate := float64(backlog) / drain.Seconds() // the live entries wait behind it
	fmt.Fprintf(out, "drain: backlog acknowledged %s after the restart (%.0f entries/s); caught up with the live head (within 1 s) after %s (live input %.0f/s)\n",
		drain.Round(time.Millisecond), rate, catch.Round(time.Millisecond), liveRate)
	fmt.Fprintf(out, "live latency (fix time → NATS), %d devices sampled: written before the catch-up %s; after it %s\n",
		min(catchupSampled, len(w.devices)), pcts(during), pcts(after))
	secs := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)).Round(time.Millisecond) }
	catchBound := "never: the bridge is not faster than the live input"
	if rate > liveRate {
		catchBound = secs(float64(backlog) / (rate - liveRate)).String()
	}
	fmt.Fprintf(out, "bound: a live position waits behind every entry before it in the stream (per-device order): at most backlog / rate = %s, the first one written; catching up takes backlog / (rate - live input) = %s\n",
		secs(float64(backlog)/rate), catchBound)
	return nil
}

func pcts(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	slices.Sort(ds)
	p := func(q float64) time.Duration { return ds[int(q*float64(len(ds)-1))].Round(time.Millisecond) }
	return fmt.Sprintf("n=%d p50 %s p99 %s max %s", len(ds), p(0.5), p(0.99), ds[len(ds)-1].Round(time.Millisecond))
}
