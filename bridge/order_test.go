package bridge_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract/streams"
)

// TestPublishOrderIsReadOrder: with several parse workers preparing each
// read batch in parallel, POSITIONS still receives the entries in exactly
// the order of the Redis stream (so every device's positions keep their
// order), across batch boundaries and around dead letters.
func TestPublishOrderIsReadOrder(t *testing.T) {
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
	cfg, _ := e.config("a")
	cfg.ParseWorkers = 8
	cfg.Batch = 700 // batches straddle the dead letters
	e.start(cfg)
	e.waitAll(n, 60*time.Second)

	c, err := e.js.OrderedConsumer(context.Background(), streams.Positions, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < n {
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for m := range batch.Messages() {
			got = append(got, m.Headers().Get(jetstream.MsgIDHeader))
			k++
		}
		if k == 0 {
			t.Fatalf("read %d of %d messages: %v", len(got), n, batch.Error())
		}
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("message %d is %s, want %s: published out of read order", i, got[i], want[i])
		}
	}
	if d := e.msgs(streams.DLQ); d != n/1000 {
		t.Fatalf("POSITIONS_DLQ holds %d, want %d", d, n/1000)
	}
}
