package bridge_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/bridge"
	"trm-live/contract/streams"
	"trm-live/testkit"
)

// readOrder is every POSITIONS message's Nats-Msg-Id in stream order.
func (e *env) readOrder(n int) []string {
	e.t.Helper()
	c, err := e.js.OrderedConsumer(context.Background(), streams.Positions, jetstream.OrderedConsumerConfig{})
	if err != nil {
		e.t.Fatal(err)
	}
	var got []string
	for len(got) < n {
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			e.t.Fatal(err)
		}
		k := 0
		for m := range batch.Messages() {
			got = append(got, m.Headers().Get(jetstream.MsgIDHeader))
			k++
		}
		if k == 0 {
			e.t.Fatalf("read %d of %d messages: %v", len(got), n, batch.Error())
		}
	}
	return got
}

// TestFastBatchStoresOnceInReadOrder: in batch mode every position is
// stored exactly once, in the order of the Redis stream, through
// fast-ingest batches (none failed), and the dead letters between them
// still reach POSITIONS_DLQ.
func TestFastBatchStoresOnceInReadOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, devices = 6000, 7
	var want []string
	for lo := 0; lo < n; lo += 1000 {
		e.add(lo, lo+1000, devices)
		for i := lo; i < lo+1000; i++ {
			want = append(want, msgIDOf(t, e.entry(i, devices)))
		}
		e.xadd(map[string]any{"device_id": "dev-bad", "ts": "yesterday"}) // a dead letter between batches
	}
	cfg, reg := e.config("a")
	cfg.PublishMode = bridge.PublishBatch
	cfg.Batch = 700 // batches straddle the dead letters
	e.start(cfg)
	e.waitAll(n, 60*time.Second)

	got := e.readOrder(n)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("message %d is %s, want %s: published out of read order", i, got[i], want[i])
		}
	}
	if d := e.msgs(streams.DLQ); d != n/1000 {
		t.Fatalf("POSITIONS_DLQ holds %d, want %d", d, n/1000)
	}
	if b := metric(t, reg, "bridge_fast_batches_total"); b < n/700 {
		t.Fatalf("%v fast batches committed, want at least %d", b, n/700)
	}
	for _, name := range []string{"bridge_fast_batch_failures_total", "bridge_fast_batch_fallbacks_total", "bridge_publish_retries_total"} {
		if v := metric(t, reg, name); v != 0 {
			t.Fatalf("%s = %v, want 0", name, v)
		}
	}
	if p := metric(t, reg, "bridge_positions_published_total"); p != n {
		t.Fatalf("bridge_positions_published_total = %v, want %d", p, n)
	}
}

// TestFastBatchNATSRestartMidRun: NATS restarted while fast batches are
// in flight: a failed batch's positions are re-published with the same
// Msg-Id, so nothing is lost, nothing stored twice, nothing left pending.
func TestFastBatchNATSRestartMidRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, devices = 15000, 100
	e.add(0, n, devices)
	cfg, reg := e.config("a")
	cfg.PublishMode = bridge.PublishBatch
	cfg.Batch = 200
	cfg.PublishTimeout = 2 * time.Second
	e.start(cfg)
	testkit.Eventually(t, 30*time.Second, func() error {
		if got := e.msgs(streams.Positions); got < 1000 {
			return fmt.Errorf("%d published", got)
		}
		return nil
	})
	e.nats.Restart()
	e.waitAll(n, 90*time.Second)
	seen := e.msgIDs()
	if len(seen) != n {
		t.Fatalf("%d distinct Msg-Ids, want %d", len(seen), n)
	}
	if metric(t, reg, "bridge_fast_batch_fallbacks_total") != 0 {
		t.Fatal("batch mode fell back to async after a restart; only a refusal of fast batches should")
	}
	if f := metric(t, reg, "bridge_fast_batch_failures_total"); f == 0 {
		t.Logf("no fast batch failed: the restart fell between batches")
	}
}

// TestFastBatchFallbackWithoutAllowBatched: a POSITIONS stream without
// allow_batched (configured by someone else) refuses fast batches; batch
// mode falls back to async publishes once (counted), and every position
// is still stored exactly once.
func TestFastBatchFallbackWithoutAllowBatched(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg, reg := e.config("a")
	cfg.PublishMode = bridge.PublishBatch
	cfg.Batch = 300
	e.start(cfg)
	ctx := context.Background()
	var sc jetstream.StreamConfig
	testkit.Eventually(t, 30*time.Second, func() error {
		s, err := e.js.Stream(ctx, streams.Positions)
		if err != nil {
			return err
		}
		sc = s.CachedInfo().Config
		return nil
	})
	if !sc.AllowBatchPublish {
		t.Fatal("the bridge ensured POSITIONS without allow_batched")
	}
	sc.AllowBatchPublish = false
	if _, err := e.js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	const n, devices = 3000, 10
	e.add(0, n, devices)
	e.waitAll(n, 60*time.Second)
	if len(e.msgIDs()) != n {
		t.Fatalf("not every position stored once")
	}
	if f := metric(t, reg, "bridge_fast_batch_fallbacks_total"); f != 1 {
		t.Fatalf("bridge_fast_batch_fallbacks_total = %v, want 1", f)
	}
	if b := metric(t, reg, "bridge_fast_batches_total"); b != 0 {
		t.Fatalf("%v fast batches committed into a stream without allow_batched", b)
	}
}
