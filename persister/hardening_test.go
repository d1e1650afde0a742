package persister_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"trm-live/contract"
	"trm-live/persister"
	"trm-live/persister/migrate"
	"trm-live/testkit"
)

// syncBuffer collects log lines written from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// teeLogger logs to the test output and to buf.
func teeLogger(t *testing.T, buf *syncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(ioMulti{t.Output(), buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type ioMulti [2]interface{ Write([]byte) (int, error) }

func (m ioMulti) Write(p []byte) (int, error) {
	_, _ = m[0].Write(p)
	return m[1].Write(p)
}

func tablesLeft(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	var left []string
	if err := pool.QueryRow(context.Background(), `SELECT coalesce(array_agg(relname::text), '{}') FROM pg_class
		WHERE relname IN ('positions', $1) AND relnamespace = current_schema()::regnamespace`, migrate.BookkeepingTable).Scan(&left); err != nil {
		t.Fatal(err)
	}
	return left
}

// PERSISTER_REQUIRE_TIMESCALEDB on this server: refused before any table
// exists when it cannot make hypertables (naming what is missing), a
// hypertable when it can (TRM_PG_OPTS preloading TimescaleDB).
func TestRequiredTimescaleDBEitherWay(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	var available, preloaded bool
	if err := e.pool.QueryRow(context.Background(), `SELECT
		EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
		current_setting('timescaledb.disable_load', true) IS NOT NULL`).Scan(&available, &preloaded); err != nil {
		t.Fatal(err)
	}
	cfg := e.config(t)
	cfg.RequireTimescaleDB = true
	if available && preloaded {
		in := start(t, cfg)
		in.waitReady(t, true)
		var hyper bool
		if err := e.pool.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
			WHERE hypertable_name = 'positions')`).Scan(&hyper); err != nil || !hyper {
			t.Fatalf("positions a hypertable: %v %v", hyper, err)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := persister.Run(ctx, cfg)
	want := "pg_available_extensions"
	if available {
		want = "shared_preload_libraries"
	}
	if !errors.Is(err, migrate.ErrNoTimescaleDB) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Run: %v, want ErrNoTimescaleDB naming %s", err, want)
	}
	if left := tablesLeft(t, e.pool); len(left) != 0 {
		t.Fatalf("a refused start left tables behind: %v", left)
	}
}

// plantDivertingTrigger adds what the issue found accepted: a BEFORE
// INSERT trigger that moves every row to another table, so inserts count
// as duplicates and are acknowledged, never stored.
func plantDivertingTrigger(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `
		CREATE TABLE IF NOT EXISTS elsewhere (LIKE positions);
		CREATE OR REPLACE FUNCTION divert() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN INSERT INTO elsewhere SELECT NEW.*; RETURN NULL; END $$;
		CREATE TRIGGER divert BEFORE INSERT ON positions FOR EACH ROW EXECUTE FUNCTION divert()`); err != nil {
		t.Fatal(err)
	}
}

func TestRefusesPlantedTrigger(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	if _, err := migrate.New(e.pool, migrate.Options{}).Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	plantDivertingTrigger(t, e.pool)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := persister.Run(ctx, e.config(t))
	if !errors.Is(err, migrate.ErrUntrusted) || !strings.Contains(err.Error(), `public.positions has trigger "divert"`) {
		t.Fatalf("Run: %v, want ErrUntrusted naming the trigger", err)
	}
}

// The trigger planted while the persister runs: the periodic verification
// finds it, the persister goes not ready and holds writes back (nothing is
// acknowledged into a table that loses rows); once a person removes the
// trigger everything is written to positions, nothing elsewhere.
func TestPlantedTriggerWhileRunningHoldsWrites(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	in := start(t, e.config(t))
	in.waitReady(t, true)
	plantDivertingTrigger(t, e.pool)
	in.waitReady(t, false)
	code, body, err := in.get("/readyz")
	if err != nil || code != 503 || !strings.Contains(body, `schema: writes held back`) || !strings.Contains(body, `trigger "divert"`) {
		t.Fatalf("/readyz %d %q %v, want the planted trigger named", code, body, err)
	}
	ps := positions(50, 5, 0)
	publish(t, e.js, ps)
	testkit.Eventually(t, 30*time.Second, func() error {
		if n := in.metric(t, "persister_naks_total"); n < 50 {
			return fmt.Errorf("%v naks, want the 50 positions handed back", n)
		}
		return nil
	})
	var diverted int
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM elsewhere").Scan(&diverted); err != nil || diverted != 0 {
		t.Fatalf("rows diverted while held back: %d %v", diverted, err)
	}
	if _, err := e.pool.Exec(context.Background(), "DROP TRIGGER divert ON positions"); err != nil {
		t.Fatal(err)
	}
	in.waitReady(t, true)
	waitRows(t, e.pool, 50, 30*time.Second)
	checkAllStored(t, e.pool, ps)
}

// A batch that loses a deadlock (40P01, provoked on purpose) is written
// again at once: no Nak, no transient write error, no "writes failing".
func TestDeadlockRetriedAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := migrate.New(e.pool, migrate.Options{}).Apply(ctx); err != nil {
		t.Fatal(err)
	}
	// Deadlock detection runs once, deadlock_timeout after a wait starts:
	// the persister's sessions get 5 s, so the cycle the test closes below
	// is found by the persister's backend, which is then the one aborted.
	var db string
	if err := e.pool.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" SET deadlock_timeout = '5s'"); err != nil {
		t.Fatal(err)
	}

	d := "dev-deadlock"
	t1, t2 := base, base.Add(time.Second)
	ps := []contract.Position{{DeviceID: d, TS: t1, Lat: 45, Lon: 7}, {DeviceID: d, TS: t2, Lat: 45, Lon: 7}}

	// A committed row in the same time range first: on a hypertable the
	// chunk then exists, so both sides wait on rows, not on its creation.
	if _, err := e.pool.Exec(ctx, "INSERT INTO positions (device_id, ts, lat, lon) VALUES ('dev-warmup', $1, 45, 7)", t1); err != nil {
		t.Fatal(err)
	}
	// The other transaction holds (d, t2) before the persister starts.
	other, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(context.Background()) //nolint:errcheck
	var otherPID int32
	if err := other.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&otherPID); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, "SET LOCAL deadlock_timeout = '60s'"); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, "INSERT INTO positions (device_id, ts, lat, lon) VALUES ($1, $2, 45, 7)", d, t2); err != nil {
		t.Fatal(err)
	}

	publish(t, e.js, ps) // one batch: (d, t1) then (d, t2)
	var logs syncBuffer
	cfg := e.config(t)
	cfg.Logger = teeLogger(t, &logs)
	// The batch waits up to deadlock_timeout in the database: no
	// redelivery meanwhile, so every count below is this one batch's.
	cfg.AckWait = 2 * time.Minute
	in := start(t, cfg)

	// The persister wrote (d, t1) and waits for (d, t2).
	testkit.Eventually(t, 30*time.Second, func() error {
		var waiting int
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> $1`, otherPID).Scan(&waiting); err != nil {
			return err
		}
		if waiting != 1 {
			return fmt.Errorf("%d sessions waiting on a lock, want the persister's", waiting)
		}
		return nil
	})
	// Close the cycle: this insert waits for the persister's (d, t1). The
	// persister's backend detects the deadlock and is rolled back; this
	// insert then goes through.
	if _, err := other.Exec(ctx, "INSERT INTO positions (device_id, ts, lat, lon) VALUES ($1, $2, 45, 7)", d, t1); err != nil {
		t.Fatalf("the test's side of the deadlock: %v", err)
	}
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	testkit.Eventually(t, 30*time.Second, func() error {
		if n := in.metric(t, `persister_write_retries_total{code="40P01"}`); n < 1 {
			return fmt.Errorf("40P01 retries %v", n)
		}
		if n := in.metric(t, "persister_duplicates_skipped_total"); n != 2 {
			return fmt.Errorf("duplicates %v, want the 2 positions found stored by the retry", n)
		}
		return nil
	})
	if n := in.metric(t, "persister_naks_total"); n != 0 {
		t.Fatalf("%v naks: a deadlock must not hand the batch back", n)
	}
	if n := in.metric(t, `persister_write_errors_total{kind="transient"}`); n != 0 {
		t.Fatalf("%v transient write errors: a deadlock is not an outage", n)
	}
	if l := logs.String(); strings.Contains(l, "database writes failing") || strings.Contains(l, "database unreachable") {
		t.Fatalf("the outage path ran:\n%s", l)
	}
	in.waitReady(t, true)
	waitRows(t, e.pool, 3, 10*time.Second)
}
