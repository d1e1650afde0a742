package migrate_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"trm-live/persister/migrate"
)

// logBuffer collects a Migrator's log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// timescaleUsable says whether this server can make hypertables: the
// package is there and the loader is preloaded (TRM_PG_OPTS).
func timescaleUsable(t *testing.T, pool *pgxpool.Pool) bool {
	t.Helper()
	var ok bool
	if err := pool.QueryRow(context.Background(), `SELECT
		EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
		AND current_setting('timescaledb.disable_load', true) IS NOT NULL`).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func isHypertable(t *testing.T, pool *pgxpool.Pool) bool {
	t.Helper()
	ctx := context.Background()
	var ext bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')`).Scan(&ext); err != nil {
		t.Fatal(err)
	}
	if !ext {
		return false
	}
	var hyper bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
		WHERE hypertable_name = 'positions' AND hypertable_schema = current_schema())`).Scan(&hyper); err != nil {
		t.Fatal(err)
	}
	return hyper
}

// noTablesLeft: a refused Apply created neither positions nor the
// bookkeeping table.
func noTablesLeft(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	var left []string
	if err := pool.QueryRow(context.Background(), `SELECT coalesce(array_agg(relname::text), '{}') FROM pg_class
		WHERE relname IN ('positions', $1) AND relnamespace = current_schema()::regnamespace`, migrate.BookkeepingTable).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("a refused start left tables behind: %v", left)
	}
}

// The server of the issue: the package installed, shared_preload_libraries
// not edited. Apply reads the catalog, never sends CREATE EXTENSION (which
// would answer FATAL), and writes into a plain table.
func TestTimescaleInstalledNotPreloaded(t *testing.T) {
	t.Parallel()
	pool, _ := setup(t)
	var logs logBuffer
	m := migrate.New(pool, migrate.Options{Logger: logs.logger()})
	// The probe statement would end the session: reaching it fails the test.
	migrate.PlayTimescale(m, true, false, false, "SELECT pg_terminate_backend(pg_backend_pid())")
	rep := apply(t, m)
	if rep.TimescaleDB || !rep.CreatedPositions || len(rep.Applied) != 2 {
		t.Fatalf("report %+v, want a plain positions created", rep)
	}
	if l := logs.String(); !strings.Contains(l, "installed but not preloaded") || !strings.Contains(l, "shared_preload_libraries") ||
		!strings.Contains(l, "level=WARN") {
		t.Fatalf("want one WARN saying installed but not preloaded, naming shared_preload_libraries; log:\n%s", l)
	}
	if problems, err := m.Verify(context.Background()); err != nil || len(problems) != 0 {
		t.Fatalf("verify: %v %v", problems, err)
	}
	exec(t, pool, `INSERT INTO positions (device_id, ts, lat, lon) VALUES ('d1', now(), 1, 2)`)
}

// The probe connection dies (a FATAL closes it, as CREATE EXTENSION does on
// a server that does not preload TimescaleDB): the lock connection is not
// the one that died, Apply finishes on a plain table and the lock is free.
func TestTimescaleProbeDiesLockConnectionSurvives(t *testing.T) {
	t.Parallel()
	pool, _ := setup(t)
	var logs logBuffer
	m := migrate.New(pool, migrate.Options{Logger: logs.logger()})
	migrate.PlayTimescale(m, true, false, true, "SELECT pg_terminate_backend(pg_backend_pid())")
	rep := apply(t, m)
	if rep.TimescaleDB || !rep.CreatedPositions {
		t.Fatalf("report %+v, want a plain positions created", rep)
	}
	if l := logs.String(); !strings.Contains(l, "CREATE EXTENSION failed") || !strings.Contains(l, "57P01") {
		t.Fatalf("want the failed probe (57P01, its session terminated) in the log:\n%s", l)
	}
	// The lock was released on the surviving connection.
	var free bool
	if err := pool.QueryRow(context.Background(), "SELECT pg_try_advisory_lock($1) AND pg_advisory_unlock($1)", migrate.LockKey).Scan(&free); err != nil || !free {
		t.Fatalf("advisory lock free after Apply: %v %v", free, err)
	}
	// And the next Apply (as after a restart) finds nothing to do.
	rep = apply(t, m)
	if len(rep.Applied) != 0 || len(rep.Repaired) != 0 || rep.CreatedPositions {
		t.Fatalf("second apply: %+v", rep)
	}
}

// PERSISTER_REQUIRE_TIMESCALEDB refuses every way TimescaleDB can be
// missing, names what to change, and creates nothing: TimescaleDB is
// decided before the first file.
func TestRequireTimescaleDBRefusesBeforeAnyTable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name                            string
		available, installed, preloaded bool
		want                            string
	}{
		{"not available", false, false, false, "pg_available_extensions"},
		{"not preloaded", true, false, false, "shared_preload_libraries"},
		{"installed in the database, not preloaded", true, true, false, "shared_preload_libraries"},
		{"create extension fails", true, false, true, "CREATE EXTENSION failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool, _ := setup(t)
			m := migrate.New(pool, migrate.Options{RequireTimescaleDB: true})
			migrate.PlayTimescale(m, tc.available, tc.installed, tc.preloaded, "SELECT pg_terminate_backend(pg_backend_pid())")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := m.Apply(ctx)
			if !errors.Is(err, migrate.ErrNoTimescaleDB) || !strings.Contains(err.Error(), tc.want) ||
				!strings.Contains(err.Error(), "PERSISTER_REQUIRE_TIMESCALEDB") {
				t.Fatalf("want ErrNoTimescaleDB naming %s and the setting, got %v", tc.want, err)
			}
			noTablesLeft(t, pool)
		})
	}
}

// A plain positions holding rows, then a server with TimescaleDB: the
// conversion (migrate_data) is logged before and after and counted as a
// repair. On a server without TimescaleDB the table stays plain with its
// rows and nothing is counted.
func TestPlainTableConvertedToHypertable(t *testing.T) {
	t.Parallel()
	pool, _ := setup(t)
	migs, err := migrate.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	for _, mig := range migs {
		exec(t, pool, mig.SQL) // as an older persister without TimescaleDB left it
	}
	exec(t, pool, `INSERT INTO positions (device_id, ts, lat, lon)
		SELECT 'd' || (i % 10), timestamptz '2026-05-01' + i * interval '1 minute', 1, 2 FROM generate_series(1, 5000) i`)
	exec(t, pool, "ANALYZE positions")
	var logs logBuffer
	m := migrate.New(pool, migrate.Options{Logger: logs.logger()})
	rep := apply(t, m)
	if rep.CreatedPositions {
		t.Fatalf("report %+v: positions existed", rep)
	}
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM positions").Scan(&n); err != nil || n != 5000 {
		t.Fatalf("rows after apply %d %v, want 5000", n, err)
	}
	if !timescaleUsable(t, pool) {
		if rep.TimescaleDB || len(rep.Repaired) != 0 || isHypertable(t, pool) || strings.Contains(logs.String(), "converting") {
			t.Fatalf("no TimescaleDB: want a plain table untouched, report %+v, log:\n%s", rep, logs.String())
		}
		return
	}
	if !rep.TimescaleDB || !isHypertable(t, pool) || kinds(rep.Repaired) != "hypertable" {
		t.Fatalf("want a hypertable and one hypertable repair, report %+v", rep)
	}
	l := logs.String()
	if !strings.Contains(l, "converting the plain table positions to a hypertable") || !strings.Contains(l, "rows_estimate=5000") ||
		!strings.Contains(l, "positions converted to a hypertable") || !strings.Contains(l, "duration=") {
		t.Fatalf("want a WARN with the estimate before and the duration after:\n%s", l)
	}
}

// TimescaleDB created in the database and positions a hypertable, then the
// loader removed from shared_preload_libraries: no insert can work and no
// plain table can stand in, so Apply refuses even when TimescaleDB is not
// required. The hypertable is played by its mark, TimescaleDB's
// ts_insert_blocker trigger (a stand-in function in TimescaleDB's schema).
func TestHypertableWithoutLoaderRefused(t *testing.T) {
	t.Parallel()
	pool, m := setup(t)
	apply(t, m)
	if !isHypertable(t, pool) {
		// On a TimescaleDB server positions is a hypertable already and
		// carries the real trigger.
		exec(t, pool, `CREATE SCHEMA _timescaledb_functions;
			CREATE FUNCTION _timescaledb_functions.stand_in_blocker() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
			CREATE TRIGGER ts_insert_blocker BEFORE INSERT ON positions FOR EACH ROW EXECUTE FUNCTION _timescaledb_functions.stand_in_blocker()`)
	}
	m2 := migrate.New(pool, migrate.Options{})
	migrate.PlayTimescale(m2, true, true, false, "")
	_, err := m2.Apply(context.Background())
	if !errors.Is(err, migrate.ErrNoTimescaleDB) || !strings.Contains(err.Error(), "positions is a hypertable but timescaledb is not preloaded") ||
		!strings.Contains(err.Error(), "shared_preload_libraries") {
		t.Fatalf("want ErrNoTimescaleDB naming shared_preload_libraries, got %v", err)
	}
}
