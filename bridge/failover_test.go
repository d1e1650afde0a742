package bridge_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/testkit"
)

// A device re-assigned to another event while the bridge runs is routed
// to it within 5 s (default refresh); a fix outside every window goes to
// unassigned; of overlapping windows the latest assigned_from wins.
func TestRoutingReassignmentAndWindows(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	evA, evB := e.seedEvent("A"), e.seedEvent("B")
	now := time.Now().UTC()
	at := func(d time.Duration) *time.Time { v := now.Add(d); return &v }
	e.assign(evA, "moving", nil, nil)
	e.assign(evA, "windowed", at(-time.Hour), at(time.Hour))
	e.assign(evA, "overlap", at(-3*time.Hour), nil)
	e.assign(evB, "overlap", at(-2*time.Hour), nil)
	cfg, _ := e.config("a") // default BRIDGE_ROUTING_REFRESH
	e.start(cfg)

	fix := func(dev string, ts time.Time) map[string]any {
		return map[string]any{"device_id": dev, "ts": ts.Format(time.RFC3339Nano), "lat": "45.6", "lon": "9.28"}
	}
	e.xadd(fix("windowed", now.Add(-2*time.Hour)))    // before its window
	e.xadd(fix("windowed", now.Add(-30*time.Minute))) // inside
	e.xadd(fix("overlap", now.Add(-150*time.Minute))) // only A's window
	e.xadd(fix("overlap", now.Add(-90*time.Minute)))  // both: B is later
	e.xadd(fix("moving", now.Add(-time.Second)))      // A
	e.waitAll(5, 30*time.Second)
	for subj, want := range map[string]uint64{
		contract.PositionSubject("", "windowed"):  1,
		contract.PositionSubject(evA, "windowed"): 1,
		contract.PositionSubject(evA, "overlap"):  1,
		contract.PositionSubject(evB, "overlap"):  1,
		contract.PositionSubject(evA, "moving"):   1,
	} {
		if got := e.subjects(subj)[subj]; got != want {
			t.Errorf("%s: %d messages, want %d", subj, got, want)
		}
	}

	// Re-assign "moving" to B and keep it reporting: within 5 s its fixes
	// are routed to B.
	if _, err := e.pool.Exec(context.Background(), `UPDATE event_devices SET event_id = $1 WHERE device_id = 'moving'`, evB); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	subjB := contract.PositionSubject(evB, "moving")
	last := time.Time{}
	testkit.Eventually(t, 5*time.Second, func() error {
		if time.Since(last) > 100*time.Millisecond {
			last = time.Now()
			e.xadd(fix("moving", last))
		}
		if got := e.subjects(subjB)[subjB]; got == 0 {
			return fmt.Errorf("nothing on %s %s after the re-assignment", subjB, time.Since(changed).Round(time.Millisecond))
		}
		return nil
	})
	t.Logf("re-assignment visible after %s", time.Since(changed).Round(time.Millisecond))
}

// Redis restarted mid-run (data kept in its append-only file): the bridge
// resumes, catches up, and every entry is in JetStream exactly once.
func TestRedisRestartMidRun(t *testing.T) {
	t.Parallel()
	r := testkit.StartRedis(t)
	e := newEnvWithRedis(t, r)
	const n, devices = 8000, 100
	e.add(0, n/2, devices)
	cfg, reg := e.config("a")
	cfg.Batch = 200
	cfg.ClaimInterval = time.Hour // no safety net: the reader itself must recover
	e.start(cfg)
	testkit.Eventually(t, 30*time.Second, func() error {
		if got := e.msgs(streams.Positions); got == 0 {
			return fmt.Errorf("nothing published yet")
		}
		return nil
	})
	r.Stop()
	testkit.Eventually(t, 30*time.Second, func() error {
		if metric(t, reg, "bridge_redis_errors_total") == 0 {
			return fmt.Errorf("the bridge has not noticed Redis is down")
		}
		return nil
	})
	r.Start()
	e.add(n/2, n, devices)
	e.waitAll(n, 90*time.Second)
	seen := e.msgIDs()
	if len(seen) != n {
		t.Fatalf("%d distinct Msg-Ids, want %d", len(seen), n)
	}
}

// NATS restarted mid-run: pending publishes fail, are re-sent with the
// same Msg-Id, and every entry ends in JetStream exactly once.
func TestNATSRestartMidRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, devices = 15000, 100
	e.add(0, n, devices)
	cfg, reg := e.config("a")
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
	if r := metric(t, reg, "bridge_publish_retries_total"); r == 0 {
		t.Logf("no publish was re-sent: the restart fell between batches")
	}
}

// PostgreSQL down after the first load: the last routing table stays in
// use, positions keep flowing to their events, and the bridge stays ready.
func TestPostgresDownKeepsLastRoutingTable(t *testing.T) {
	t.Parallel()
	pg := testkit.StartPostgres(t)
	e := newEnv(t)
	e.dsn = pg.NewDatabase(t)
	testkit.SeedDirectusTables(t, e.dsn)
	e.pool = testkit.Pool(t, e.dsn)
	ev := e.seedEvent("kept")
	e.assign(ev, "dev-000", nil, nil)
	cfg, reg := e.config("a")
	cfg.RoutingRefresh = 100 * time.Millisecond
	run := e.start(cfg)
	e.add(0, 10, 1)
	e.waitAll(10, 30*time.Second)
	e.pool.Close()
	pg.Stop()
	testkit.Eventually(t, 10*time.Second, func() error {
		if metric(t, reg, "bridge_routing_refresh_errors_total") == 0 {
			return fmt.Errorf("no failed refresh yet")
		}
		return nil
	})
	e.add(10, 20, 1)
	e.waitAll(20, 30*time.Second)
	subj := contract.PositionSubject(ev, "dev-000")
	if got := e.subjects(subj)[subj]; got != 20 {
		t.Fatalf("%d of 20 positions routed to the event with PostgreSQL down", got)
	}
	resp, err := http.Get("http://" + run.addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz %d with PostgreSQL down after a first load, want 200", resp.StatusCode)
	}
}

// The consumer group deleted under a running bridge (as after a Redis
// restart without its data): NOGROUP, the group is recreated from "0",
// everything is re-read, and dedup keeps exactly one copy of each entry.
func TestGroupDeletedIsRecreated(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, devices = 1000, 10
	e.add(0, n, devices)
	cfg, reg := e.config("a")
	e.start(cfg)
	e.waitAll(n, 30*time.Second)
	if err := e.rdb.XGroupDestroy(context.Background(), e.stream, e.group).Err(); err != nil {
		t.Fatal(err)
	}
	e.add(n, 2*n, devices)
	e.waitAll(2*n, 30*time.Second)
	testkit.Eventually(t, 30*time.Second, func() error {
		if d := metric(t, reg, "bridge_publish_duplicates_total"); d != n {
			return fmt.Errorf("%v duplicates, want %d (the first entries re-read from 0)", d, n)
		}
		return nil
	})
	if got := e.msgs(streams.Positions); got != 2*n {
		t.Fatalf("POSITIONS has %d, want %d", got, 2*n)
	}
}
