package bridge_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"trm-live/contract/streams"
	"trm-live/testkit"
)

// deleteNewest deletes the newest k messages of POSITIONS behind the
// bridge's back, as a power loss erases the unsynced tail of the store.
func (e *env) deleteNewest(k int) {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, streams.Positions)
	if err != nil {
		e.t.Fatal(err)
	}
	last := s.CachedInfo().State.LastSeq
	for seq := last; seq > last-uint64(k); seq-- {
		if err := s.DeleteMsg(ctx, seq); err != nil {
			e.t.Fatalf("delete %d: %v", seq, err)
		}
	}
}

// JetStream loses the newest acknowledged messages (deleted behind the
// bridge's back, then the server restarts and rebuilds its dedup state
// from what it holds): the bridge notices after the reconnect and
// re-publishes the window from Redis, so every position is in the stream
// again, exactly once, and the group's acks are untouched.
func TestLostAcknowledgedMessagesAreRepublished(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, devices, k = 2000, 20, 300
	e.add(0, n, devices)
	cfg, reg := e.config("a")
	cfg.VerifyInterval = time.Hour // only the reconnect triggers the check
	e.start(cfg)
	e.waitAll(n, 60*time.Second)

	e.deleteNewest(k)
	if got := e.msgs(streams.Positions); got != n-k {
		t.Fatalf("after deleting %d, POSITIONS has %d messages, want %d", k, got, n-k)
	}
	e.nats.Restart()
	testkit.Eventually(t, 60*time.Second, func() error {
		got, err := e.msgsErr(streams.Positions)
		if err != nil {
			return err
		}
		if d := metric(t, reg, "bridge_jetstream_loss_detected_total"); d != 1 || got != n {
			return fmt.Errorf("%v losses detected (want 1), POSITIONS has %d of %d", d, got, n)
		}
		if r := metric(t, reg, "bridge_republished_total"); r != n {
			return fmt.Errorf("%v re-published, want the whole window (%d)", r, n)
		}
		return nil
	})
	if got := metric(t, reg, "bridge_republish_restored_total"); got != k {
		t.Errorf("%v re-published positions stored anew, want the %d lost ones", got, k)
	}
	seen := e.msgIDs()
	if len(seen) != n {
		t.Fatalf("%d distinct Nats-Msg-Ids in POSITIONS, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("Nats-Msg-Id %s stored %d times", id, c)
		}
	}
	if got := metric(t, reg, "bridge_entries_acked_total"); got != n {
		t.Errorf("%v entries XACKed, want %d: a re-publish must not touch the group", got, n)
	}
	if p := e.pending(); p != 0 {
		t.Errorf("%d entries pending after the re-publish", p)
	}
}

// A NATS restart that lost nothing: the check runs after the reconnect,
// finds every acknowledged message, and nothing is re-published.
func TestNoLossNoRepublish(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, devices = 500, 10
	e.add(0, n, devices)
	cfg, reg := e.config("a")
	cfg.VerifyInterval = time.Hour
	e.start(cfg)
	e.waitAll(n, 60*time.Second)
	// The start-up check has run (nothing saved yet: nothing to find).
	testkit.Eventually(t, 30*time.Second, func() error {
		if c := metric(t, reg, "bridge_jetstream_loss_checks_total"); c < 1 {
			return fmt.Errorf("the start-up check has not run")
		}
		return nil
	})
	before := metric(t, reg, "bridge_jetstream_loss_checks_total")
	e.nats.Restart()
	testkit.Eventually(t, 30*time.Second, func() error {
		if c := metric(t, reg, "bridge_jetstream_loss_checks_total"); c <= before {
			return fmt.Errorf("no loss check completed after the reconnect")
		}
		return nil
	})
	if d := metric(t, reg, "bridge_jetstream_loss_detected_total"); d != 0 {
		t.Fatalf("%v losses detected, want 0", d)
	}
	if r := metric(t, reg, "bridge_republished_total"); r != 0 {
		t.Fatalf("%v entries re-published, want 0", r)
	}
	if got := e.msgs(streams.Positions); got != n {
		t.Fatalf("POSITIONS has %d, want %d", got, n)
	}
}

// The periodic check also catches a stream that came back empty (deleted
// and recreated: its last sequence is below the highest acknowledged, and
// new publishes reuse the old sequence numbers).
func TestRecreatedStreamIsRefilled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, devices = 400, 10
	e.add(0, n, devices)
	cfg, reg := e.config("a")
	cfg.VerifyInterval = 200 * time.Millisecond
	e.start(cfg)
	e.waitAll(n, 60*time.Second)
	e.recreateStream()
	e.waitAll(n, 60*time.Second)
	if d := metric(t, reg, "bridge_jetstream_loss_detected_total"); d < 1 {
		t.Fatalf("%v losses detected, want at least 1", d)
	}
	if seen := e.msgIDs(); len(seen) != n {
		t.Fatalf("%d distinct Nats-Msg-Ids, want %d", len(seen), n)
	}
}

// Consumers with no pending entries idle longer than
// BRIDGE_CONSUMER_MAX_IDLE are deleted from the group; the live bridge and
// a dead one that still owns a pending entry are kept.
func TestIdleConsumersArePruned(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	e.add(0, 2, 1)
	if err := e.rdb.XGroupCreateMkStream(ctx, e.stream, e.group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	read := func(consumer string) redis.XMessage {
		res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: e.group, Consumer: consumer,
			Streams: []string{e.stream, ">"}, Count: 1, Block: -1}).Result()
		if err != nil {
			t.Fatal(err)
		}
		return res[0].Messages[0]
	}
	done := read("ghost-empty")
	if err := e.rdb.XAck(ctx, e.stream, e.group, done.ID).Err(); err != nil {
		t.Fatal(err)
	}
	read("ghost-pending") // stays pending: ClaimMinIdle is long
	cfg, reg := e.config("a")
	cfg.ClaimInterval = 200 * time.Millisecond
	cfg.ClaimMinIdle = time.Hour
	cfg.ConsumerMaxIdle = 2 * time.Second
	e.start(cfg)
	testkit.Eventually(t, 30*time.Second, func() error {
		cs, err := e.rdb.XInfoConsumers(ctx, e.stream, e.group).Result()
		if err != nil {
			return err
		}
		names := map[string]bool{}
		for _, c := range cs {
			names[c.Name] = true
		}
		if names["ghost-empty"] || !names["ghost-pending"] || !names["a"] {
			return fmt.Errorf("consumers %v: want a and ghost-pending only", names)
		}
		return nil
	})
	if got := metric(t, reg, "bridge_consumers_deleted_total"); got != 1 {
		t.Fatalf("%v consumers deleted, want 1", got)
	}
}

// The whole host loses power: the bridge is down too, and restarts with
// an empty memory. What it saved in Redis before (the newest acknowledged
// messages) is checked at start, and the window is re-published.
func TestLossWhileBridgeDownIsRepublished(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, devices, k = 1000, 10, 100
	e.add(0, n, devices)
	cfg, _ := e.config("a")
	cfg.VerifyInterval = time.Hour
	run := e.start(cfg)
	e.waitAll(n, 60*time.Second)
	key := "bridge:" + e.group + ":jetstream-acks:" + e.stream
	testkit.Eventually(t, 30*time.Second, func() error {
		v, err := e.rdb.HGet(context.Background(), key, "a").Result()
		if err != nil {
			return err
		}
		if !strings.Contains(v, fmt.Sprintf(`"q":%d,`, n)) {
			return fmt.Errorf("saved acks %s do not reach sequence %d yet", v, n)
		}
		return nil
	})
	if err := run.stop(t); err != nil {
		t.Fatal(err)
	}

	e.deleteNewest(k)
	e.nats.Restart()
	cfg2, reg2 := e.config("a")
	cfg2.VerifyInterval = time.Hour
	e.start(cfg2)
	e.waitAll(n, 60*time.Second)
	if d := metric(t, reg2, "bridge_jetstream_loss_detected_total"); d != 1 {
		t.Fatalf("%v losses detected at start, want 1", d)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		if got := metric(t, reg2, "bridge_republish_restored_total"); got != k {
			return fmt.Errorf("%v positions stored anew, want %d", got, k)
		}
		return nil
	})
	if seen := e.msgIDs(); len(seen) != n {
		t.Fatalf("%d distinct Nats-Msg-Ids, want %d", len(seen), n)
	}
}

// After a truncation new publishes reuse the lost sequence numbers, so the
// stream's last sequence is no longer behind: the check compares the
// Nats-Msg-Id at each remembered sequence and still sees the loss.
func TestReusedSequencesAreSeenByMsgID(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, devices, foreign = 300, 10, 350
	e.add(0, n, devices)
	cfg, reg := e.config("a")
	cfg.VerifyInterval = time.Hour
	e.start(cfg)
	e.waitAll(n, 60*time.Second)
	e.recreateStream()
	ctx := context.Background()
	for i := range foreign {
		if _, err := e.js.Publish(ctx, "pos.unassigned.other", []byte(`{}`),
			jetstream.WithMsgID(fmt.Sprintf("other:%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	e.nats.Restart()
	e.waitAll(n+foreign, 60*time.Second)
	if d := metric(t, reg, "bridge_jetstream_loss_detected_total"); d != 1 {
		t.Fatalf("%v losses detected, want 1", d)
	}
	seen := e.msgIDs()
	for i := range n {
		if id := msgIDOf(t, e.entry(i, devices)); seen[id] != 1 {
			t.Fatalf("%s stored %d times, want 1", id, seen[id])
		}
	}
}
