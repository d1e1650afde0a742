package e2e

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/testkit"
)

// TestLazyFsyncLossReachesDatabase is the lazy-fsync test of issue 8 on
// the real binaries: JetStream loses the newest positions it had
// acknowledged (deleted behind the bridge's back before the persister
// stored them, then the NATS server restarts), and every position still
// reaches the database, exactly once, because the bridge re-publishes its
// window from Redis.
func TestLazyFsyncLossReachesDatabase(t *testing.T) {
	t.Parallel()
	const devices, first, second, lost = 10, 500, 500, 200
	p := newBase(t, devices)
	nsrv := testkit.StartNATS(t)
	p.natsURL = nsrv.URL
	js := nsrv.JetStream(t)
	free := testkit.FreeAddrs(t, 2)
	p.addrs["bridge"], p.addrs["persister"] = free[0], free[1]
	p.bridge = startProc(t, p.dir, "bridge", bin(t, "bridge"), map[string]string{
		"NATS_URL": p.natsURL, "REDIS_URL": redisURL(t), "DATABASE_URL": p.dbURL, "HTTP_ADDR": p.addrs["bridge"],
		"BRIDGE_STREAMS": p.stream, "BRIDGE_CONSUMER": "e2e-bridge",
		// Only the reconnect triggers the check.
		"BRIDGE_VERIFY_INTERVAL": "1h",
	})
	p.persister = startProc(t, p.dir, "persister", bin(t, "persister"), map[string]string{
		"NATS_URL": p.natsURL, "DATABASE_URL": p.dbURL, "HTTP_ADDR": p.addrs["persister"],
	})
	waitReady(t, p.bridge, p.addrs["bridge"], 60*time.Second)
	waitReady(t, p.persister, p.addrs["persister"], 60*time.Second)

	ctx := context.Background()
	base := time.Now().Add(-time.Minute).Truncate(time.Second).UTC()
	want := map[string]bool{}
	add := func(from, to int) {
		pipe := p.rdb.Pipeline()
		for i := from; i < to; i++ {
			dev := fmt.Sprintf("lazy-%02d", i%devices)
			ts := base.Add(time.Duration(i/devices) * 100 * time.Millisecond)
			want[contract.MsgID(dev, ts)] = true
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: p.stream, Values: map[string]any{
				"device_id": dev, "ts": strconv.FormatInt(ts.UnixMilli(), 10),
				"lat": "45.6", "lon": strconv.FormatFloat(9.28+float64(i)/1e5, 'f', 6, 64),
			}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	inStream := func(n uint64) {
		testkit.Eventually(t, 60*time.Second, func() error {
			s, err := js.Stream(ctx, streams.Positions)
			if err != nil {
				return err
			}
			if got := s.CachedInfo().State.Msgs; got != n {
				return fmt.Errorf("POSITIONS has %d messages, want %d", got, n)
			}
			return nil
		})
	}
	inDB := func(n int) {
		testkit.Eventually(t, 90*time.Second, func() error {
			ids, rows := p.dbRows(t)
			if rows != n || len(ids) != n {
				return fmt.Errorf("%d rows, %d distinct positions in the database, want %d", rows, len(ids), n)
			}
			return nil
		})
	}

	add(0, first)
	inStream(first)
	inDB(first)

	// The persister is away while the next positions are published, so the
	// ones JetStream then loses never reached the database.
	p.persister.Stop()
	add(first, first+second)
	inStream(first + second)
	s, err := js.Stream(ctx, streams.Positions)
	if err != nil {
		t.Fatal(err)
	}
	last := s.CachedInfo().State.LastSeq
	for seq := last; seq > last-lost; seq-- {
		if err := s.DeleteMsg(ctx, seq); err != nil {
			t.Fatalf("delete %d: %v", seq, err)
		}
	}
	nsrv.Restart()
	p.persister.Start()
	inStream(first + second)
	inDB(first + second)
	ids, _ := p.dbRows(t)
	for id := range want {
		if !ids[id] {
			t.Fatalf("position %s missing from the database", id)
		}
	}
	if got := metric(t, p.addrs["bridge"], "bridge_jetstream_loss_detected_total"); got != 1 {
		t.Errorf("bridge_jetstream_loss_detected_total %v, want 1", got)
	}
	// The PubAck of the last re-publish may be counted just after the
	// persister stored it.
	testkit.Eventually(t, 30*time.Second, func() error {
		if got := metric(t, p.addrs["bridge"], "bridge_republish_restored_total"); got != lost {
			return fmt.Errorf("bridge_republish_restored_total %v, want %d", got, lost)
		}
		return nil
	})
}
