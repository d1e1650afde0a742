package persister_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/persister"
	"trm-live/persister/migrate"
	"trm-live/testkit"
)

// flow publishes positions in small chunks until stopped, as a bridge
// would during a race, and remembers what it published.
type flow struct {
	mu    sync.Mutex
	sent  []contract.Position
	stopc chan struct{}
	done  chan struct{}
}

func startFlow(t *testing.T, js jetstream.JetStream, chunk int, every time.Duration) *flow {
	t.Helper()
	fl := &flow{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(fl.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for off := 0; ; off += chunk {
			ps := positions(chunk, 50, off)
			if err := publishQuiet(js, ps); err != nil {
				t.Errorf("publish: %v", err)
				return
			}
			fl.mu.Lock()
			fl.sent = append(fl.sent, ps...)
			fl.mu.Unlock()
			select {
			case <-fl.stopc:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { fl.stop() })
	return fl
}

func (fl *flow) count() int {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return len(fl.sent)
}

// stop ends the flow and returns everything it published.
func (fl *flow) stop() []contract.Position {
	select {
	case <-fl.stopc:
	default:
		close(fl.stopc)
	}
	<-fl.done
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.sent
}

func publishQuiet(js jetstream.JetStream, ps []contract.Position) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range ps {
		if _, err := js.Publish(ctx, ps[i].Subject(), ps[i].Encode(), jetstream.WithMsgID(ps[i].MsgID())); err != nil {
			return err
		}
	}
	return nil
}

// DROP TABLE positions out of band while positions flow: the next insert
// meets undefined_table, the schema is repaired at once, the table is
// refilled from the stream, and at the end it holds every position the
// stream holds.
func TestDropTableWhileFlowing(t *testing.T) {
	t.Parallel()
	forPaths(t, testDropTableWhileFlowing)
}

func testDropTableWhileFlowing(t *testing.T, path string) {
	e := newEnv(t, true)
	cfg := e.config(t)
	cfg.WritePath = path
	cfg.BatchSize = 50
	cfg.VerifyInterval = time.Hour // the insert path must find it, not the ticker
	in := start(t, cfg)
	fl := startFlow(t, e.js, 20, 10*time.Millisecond)

	testkit.Eventually(t, 30*time.Second, func() error {
		if n, err := count(t, e.pool); err != nil || n < 500 {
			return fmt.Errorf("%d rows (%v), waiting for 500", n, err)
		}
		return nil
	})
	if _, err := e.pool.Exec(context.Background(), "DROP TABLE positions"); err != nil {
		t.Fatal(err)
	}
	dropped := fl.count()
	testkit.Eventually(t, 30*time.Second, func() error {
		if got := in.metric(t, `persister_schema_repairs_total{kind="table"}`); got < 1 {
			return fmt.Errorf("table repairs %v", got)
		}
		return nil
	})
	// Keep flowing a while after the repair, then stop.
	testkit.Eventually(t, 30*time.Second, func() error {
		if n := fl.count(); n < dropped+600 {
			return fmt.Errorf("published %d", n)
		}
		return nil
	})
	sent := fl.stop()
	waitRows(t, e.pool, len(sent), 60*time.Second)
	consumerIdle(t, e.js, persister.DefaultConsumer)
	checkAllStored(t, e.pool, sent)
	if got := in.metric(t, "persister_refills_total"); got < 1 {
		t.Fatalf("refills %v, want ≥ 1", got)
	}
	if got := in.metric(t, `persister_write_errors_total{kind="schema"}`); got < 1 {
		t.Fatalf("schema write errors %v, want ≥ 1", got)
	}
	in.waitReady(t, true)
}

// The periodic verification finds drift when nothing is being written.
func TestPeriodicVerificationRepairsIdleDrift(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	in := start(t, e.config(t))
	ps := positions(100, 5, 0)
	publish(t, e.js, ps)
	waitRows(t, e.pool, len(ps), 30*time.Second)
	if _, err := e.pool.Exec(context.Background(), "DROP INDEX positions_event_id_ts_idx"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		if got := in.metric(t, `persister_schema_repairs_total{kind="index"}`); got != 1 {
			return fmt.Errorf("index repairs %v", got)
		}
		return nil
	})
	var ok bool
	if err := e.pool.QueryRow(context.Background(), "SELECT to_regclass('positions_event_id_ts_idx') IS NOT NULL").Scan(&ok); err != nil || !ok {
		t.Fatalf("index not re-created: %v %v", ok, err)
	}
	// A dropped table found by the ticker is refilled too.
	if _, err := e.pool.Exec(context.Background(), "DROP TABLE positions"); err != nil {
		t.Fatal(err)
	}
	waitRows(t, e.pool, len(ps), 30*time.Second)
	checkAllStored(t, e.pool, ps)
}

// Bookkeeping says every migration is applied, but positions is gone when
// the persister starts: repaired at start, and refilled because the
// consumer had already moved past those positions.
func TestTableGoneAtStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	ps := positions(500, 10, 0)
	publish(t, e.js, ps)
	first := start(t, e.config(t))
	waitRows(t, e.pool, len(ps), 30*time.Second)
	consumerIdle(t, e.js, persister.DefaultConsumer)
	first.stop()

	if _, err := e.pool.Exec(context.Background(), "DROP TABLE positions"); err != nil {
		t.Fatal(err)
	}
	var applied int
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM "+migrate.BookkeepingTable).Scan(&applied); err != nil || applied != 2 {
		t.Fatalf("bookkeeping rows %d %v", applied, err)
	}
	in := start(t, e.config(t))
	waitRows(t, e.pool, len(ps), 30*time.Second)
	checkAllStored(t, e.pool, ps)
	if got := in.metric(t, `persister_schema_repairs_total{kind="table"}`); got != 1 {
		t.Fatalf("table repairs %v, want 1", got)
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		if got := in.metric(t, "persister_refill_rows_total"); got != float64(len(ps)) {
			return fmt.Errorf("refill rows %v, want %d", got, len(ps))
		}
		return nil
	})
}

// PostgreSQL stopped for 20 s while positions flow: not ready meanwhile,
// nothing acknowledged that was not committed, everything written once
// after it returns.
func TestPostgresStopped20s(t *testing.T) {
	t.Parallel()
	pg := testkit.StartPostgres(t)
	e := newEnvDSN(t, pg.NewDatabase(t), true)
	in := start(t, e.config(t))
	fl := startFlow(t, e.js, 10, 50*time.Millisecond)
	testkit.Eventually(t, 30*time.Second, func() error {
		if n, err := count(t, e.pool); err != nil || n < 200 {
			return fmt.Errorf("%d rows (%v), waiting for 200", n, err)
		}
		return nil
	})
	in.waitReady(t, true)

	pg.Stop()
	stopped := time.Now()
	in.waitReady(t, false)
	// The outage lasts 20 s while positions keep coming: wait for both.
	during := fl.count()
	testkit.Eventually(t, 40*time.Second, func() error {
		if d := time.Since(stopped); d < 20*time.Second {
			return fmt.Errorf("outage %s of 20s", d.Round(time.Second))
		}
		if n := fl.count(); n <= during {
			return fmt.Errorf("no position published during the outage (%d)", n)
		}
		return nil
	})
	pg.Start()
	in.waitReady(t, true)
	after := fl.count()
	testkit.Eventually(t, 30*time.Second, func() error {
		if n := fl.count(); n < after+100 {
			return fmt.Errorf("published %d", n)
		}
		return nil
	})
	sent := fl.stop()
	waitRows(t, e.pool, len(sent), 90*time.Second)
	consumerIdle(t, e.js, persister.DefaultConsumer)
	checkAllStored(t, e.pool, sent)
	if got := in.metric(t, `persister_write_errors_total{kind="transient"}`); got < 1 {
		t.Fatalf("transient write errors %v, want ≥ 1", got)
	}
	if got := in.metric(t, "persister_naks_total"); got < 1 {
		t.Fatalf("naks %v, want ≥ 1", got)
	}
}

// The operator's rebuild restores rows deleted out of band and leaves the
// others, and their faulty flags, alone.
func TestRebuildSince(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	ps := positions(600, 6, 0)
	publish(t, e.js, ps)
	in := start(t, e.config(t))
	waitRows(t, e.pool, len(ps), 30*time.Second)
	in.stop()
	ctx := context.Background()
	if _, err := e.pool.Exec(ctx, "DELETE FROM positions WHERE device_id = 'dev-003'"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(ctx, "UPDATE positions SET faulty = true WHERE device_id = 'dev-004'"); err != nil {
		t.Fatal(err)
	}
	n, err := persister.Rebuild(ctx, e.config(t), time.Now().Add(time.Hour))
	if err != nil || n != 0 {
		t.Fatalf("rebuild since the future: %d rows, %v; want 0, nil", n, err)
	}
	n, err = persister.Rebuild(ctx, e.config(t), time.Now().Add(-time.Hour))
	if err != nil || n != 100 {
		t.Fatalf("rebuild: %d rows, %v; want 100, nil", n, err)
	}
	checkAllStored(t, e.pool, ps)
	var faulty int
	if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM positions WHERE faulty").Scan(&faulty); err != nil || faulty != 100 {
		t.Fatalf("faulty rows %d %v, want 100", faulty, err)
	}
}

// Start refuses a schema a person must look at.
func TestRefusesChangedMigration(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	if _, err := migrate.New(e.pool, migrate.Options{}).Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(context.Background(), "UPDATE "+migrate.BookkeepingTable+" SET checksum = 'edited' WHERE version = 2"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := persister.Run(ctx, e.config(t))
	if !errors.Is(err, migrate.ErrChecksum) {
		t.Fatalf("Run: %v, want ErrChecksum", err)
	}
}

// A persister stopped mid-stream hands its work over: a successor writes
// everything, once.
func TestShutdownMidStreamLosesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	first := start(t, e.config(t))
	fl := startFlow(t, e.js, 20, 10*time.Millisecond)
	testkit.Eventually(t, 30*time.Second, func() error {
		if n, err := count(t, e.pool); err != nil || n < 300 {
			return fmt.Errorf("%d rows (%v), waiting for 300", n, err)
		}
		return nil
	})
	first.stop() // Run must return nil (checked by stop)
	second := start(t, e.config(t))
	testkit.Eventually(t, 30*time.Second, func() error {
		if got := second.metric(t, "persister_rows_inserted_total"); got < 100 {
			return fmt.Errorf("successor inserted %v", got)
		}
		return nil
	})
	sent := fl.stop()
	waitRows(t, e.pool, len(sent), 60*time.Second)
	consumerIdle(t, e.js, persister.DefaultConsumer)
	checkAllStored(t, e.pool, sent)
}

// NATS restarted, and the durable consumer deleted out of band: the
// persister reconnects, recreates its consumer and carries on.
func TestNATSRestartAndConsumerDeleted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	in := start(t, e.config(t))
	ps := positions(900, 9, 0)
	publish(t, e.js, ps[:300])
	waitRows(t, e.pool, 300, 30*time.Second)

	e.nats.Restart()
	publishRetry(t, e.js, ps[300:600])
	waitRows(t, e.pool, 600, 60*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.js.DeleteConsumer(ctx, "POSITIONS", persister.DefaultConsumer); err != nil {
		t.Fatal(err)
	}
	publishRetry(t, e.js, ps[600:])
	waitRows(t, e.pool, len(ps), 60*time.Second)
	checkAllStored(t, e.pool, ps)
	in.waitReady(t, true)
}

// publishRetry publishes while the test's own connection may still be
// reconnecting.
func publishRetry(t *testing.T, js jetstream.JetStream, ps []contract.Position) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, func() error { return publishQuiet(js, ps) })
}

// PostgreSQL down when the persister starts: it keeps running, not ready,
// applies its schema when the database comes up, then writes everything.
func TestPostgresDownAtStart(t *testing.T) {
	t.Parallel()
	pg := testkit.StartPostgres(t)
	e := newEnvDSN(t, pg.NewDatabase(t), true)
	ps := positions(300, 10, 0)
	publish(t, e.js, ps)
	pg.Stop()
	in := start(t, e.config(t))
	testkit.Eventually(t, 30*time.Second, func() error {
		code, body, err := in.get("/readyz")
		if err != nil {
			return err
		}
		if code != 503 || !strings.Contains(body, "database") || !strings.Contains(body, "schema") {
			return fmt.Errorf("/readyz %d %q, want 503 naming database and schema", code, body)
		}
		return nil
	})
	pg.Start()
	waitRows(t, e.pool, len(ps), 60*time.Second)
	checkAllStored(t, e.pool, ps)
	in.waitReady(t, true)
}

// PostgreSQL answers pings but refuses every insert (as with a full disk):
// not ready, batches handed back with backoff, nothing acknowledged; when
// writes succeed again, everything is written once.
func TestDatabaseRefusingWrites(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	in := start(t, e.config(t))
	in.waitReady(t, true)
	ctx := context.Background()
	if _, err := e.pool.Exec(ctx, `CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
		$$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100'; END $$;
		CREATE TRIGGER refuse BEFORE INSERT ON positions FOR EACH ROW EXECUTE FUNCTION refuse()`); err != nil {
		t.Fatal(err)
	}
	ps := positions(400, 8, 0)
	publish(t, e.js, ps)
	testkit.Eventually(t, 30*time.Second, func() error {
		code, body, err := in.get("/readyz")
		if err != nil {
			return err
		}
		if code != 503 || !strings.Contains(body, "writes failing") {
			return fmt.Errorf("/readyz %d %q, want 503 writes failing", code, body)
		}
		if got := in.metric(t, "persister_naks_total"); got < 1 {
			return fmt.Errorf("naks %v", got)
		}
		return nil
	})
	if n, err := count(t, e.pool); err != nil || n != 0 {
		t.Fatalf("%d rows (%v) while inserts are refused", n, err)
	}
	if _, err := e.pool.Exec(ctx, `DROP TRIGGER refuse ON positions`); err != nil {
		t.Fatal(err)
	}
	waitRows(t, e.pool, len(ps), 60*time.Second)
	consumerIdle(t, e.js, persister.DefaultConsumer)
	checkAllStored(t, e.pool, ps)
	in.waitReady(t, true)
}

// The primary key dropped out of band while positions (and re-deliveries)
// flow: the COPY of write path auto must not store duplicates in a table
// without its key. The key is found missing, re-created, and every
// position is one row.
func TestPrimaryKeyDroppedWhileFlowing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	cfg := e.config(t)
	cfg.VerifyInterval = time.Hour // the write path must notice, not the ticker
	in := start(t, cfg)
	ps := positions(600, 6, 0)
	publish(t, e.js, ps[:200])
	waitRows(t, e.pool, 200, 30*time.Second)
	if _, err := e.pool.Exec(context.Background(), "ALTER TABLE positions DROP CONSTRAINT positions_pkey"); err != nil {
		t.Fatal(err)
	}
	publish(t, e.js, ps[200:])
	for i := 0; i < 100; i++ { // re-deliveries of stored positions
		publishRaw(t, e.js, ps[i].Subject(), ps[i].Encode())
	}
	waitRows(t, e.pool, len(ps), 30*time.Second)
	consumerIdle(t, e.js, persister.DefaultConsumer)
	checkAllStored(t, e.pool, ps)
	if got := in.metric(t, `persister_schema_repairs_total{kind="primary_key"}`); got != 1 {
		t.Fatalf("primary key repairs %v, want 1", got)
	}
}

// A persister killed while it refills a re-created table leaves the table
// marked (migrate.RefillMarker, committed with the creation); the next
// persister to see the marker refills, then clears it. Found by the soak
// (seed 20261206): DROP TABLE, then kill -9 of the refilling persister,
// lost every row its refill had not reached.
func TestInterruptedRefillResumes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	cfg := e.config(t)
	in := start(t, cfg)
	ps := positions(300, 10, 0)
	publish(t, e.js, ps)
	waitRows(t, e.pool, len(ps), 30*time.Second)
	consumerIdle(t, e.js, persister.DefaultConsumer)
	in.stop()

	// The table is dropped and re-created by a persister that dies before
	// its refill runs: the consumer is past every message, the table empty.
	ctx := context.Background()
	if _, err := e.pool.Exec(ctx, "DROP TABLE positions"); err != nil {
		t.Fatal(err)
	}
	mig := migrate.New(e.pool, migrate.Options{})
	if _, err := mig.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	if _, pending, err := mig.RefillPending(ctx); err != nil || !pending {
		t.Fatalf("re-created table: refill pending %v (%v), want true", pending, err)
	}

	start(t, cfg)
	waitRows(t, e.pool, len(ps), 30*time.Second)
	checkAllStored(t, e.pool, ps)
	testkit.Eventually(t, 30*time.Second, func() error {
		if _, pending, err := mig.RefillPending(ctx); err != nil || pending {
			return fmt.Errorf("refill still pending %v (%v)", pending, err)
		}
		return nil
	})
}
