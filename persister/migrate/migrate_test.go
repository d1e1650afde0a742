package migrate_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"trm-live/persister/migrate"
	"trm-live/testkit"
)

func setup(t *testing.T) (*pgxpool.Pool, *migrate.Migrator) {
	t.Helper()
	pool := testkit.Pool(t, testkit.Postgres(t))
	return pool, migrate.New(pool, migrate.Options{})
}

func apply(t *testing.T, m *migrate.Migrator) migrate.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := m.Apply(ctx)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return rep
}

func exec(t *testing.T, pool *pgxpool.Pool, sql string) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func kinds(ps []migrate.Problem) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.Kind)
	}
	return strings.Join(s, ",")
}

func TestMigrationsEmbedded(t *testing.T) {
	t.Parallel()
	migs, err := migrate.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(migs) < 2 || migs[0].Version != 1 || migs[0].Name != "0001_positions.sql" {
		t.Fatalf("unexpected migrations %+v", migs)
	}
	for _, m := range migs {
		if len(m.Checksum) != 64 {
			t.Fatalf("%s checksum %q", m.Name, m.Checksum)
		}
	}
}

func TestApplyFreshThenNothingToDo(t *testing.T) {
	t.Parallel()
	pool, m := setup(t)
	ctx := context.Background()
	problems, err := m.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(kinds(problems), "table") {
		t.Fatalf("fresh database: want missing tables, got %v", problems)
	}

	rep := apply(t, m)
	// Either way: a server that preloads TimescaleDB gives a hypertable
	// (TRM_PG_OPTS, docs/persister.md), one without gives a plain table.
	if len(rep.Applied) != 2 || !rep.CreatedPositions || len(rep.Repaired) != 0 || rep.TimescaleDB != timescaleUsable(t, pool) {
		t.Fatalf("first apply: %+v (timescaledb usable on this server: %v)", rep, timescaleUsable(t, pool))
	}
	if got := isHypertable(t, pool); got != rep.TimescaleDB {
		t.Fatalf("positions is a hypertable: %v, report says %v", got, rep.TimescaleDB)
	}
	if problems, err := m.Verify(ctx); err != nil || len(problems) != 0 {
		t.Fatalf("verify after apply: %v %v", problems, err)
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+migrate.BookkeepingTable+" WHERE length(checksum) = 64").Scan(&n); err != nil || n != 2 {
		t.Fatalf("bookkeeping rows %d %v", n, err)
	}

	rep = apply(t, migrate.New(pool, migrate.Options{}))
	if len(rep.Applied) != 0 || rep.CreatedPositions || len(rep.Repaired) != 0 {
		t.Fatalf("second apply must do nothing: %+v", rep)
	}
}

// The table the design gives, column by column, with its keys.
func TestSchemaIsTheDesignTable(t *testing.T) {
	t.Parallel()
	pool, m := setup(t)
	apply(t, m)
	ctx := context.Background()
	rows, err := pool.Query(ctx, `SELECT column_name, data_type, is_nullable, column_default
		FROM information_schema.columns WHERE table_name = 'positions' ORDER BY ordinal_position`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var name, typ, null string
		var def *string
		if err := rows.Scan(&name, &typ, &null, &def); err != nil {
			t.Fatal(err)
		}
		d := ""
		if def != nil {
			d = " default " + *def
		}
		got = append(got, name+" "+typ+" "+null+d)
	}
	want := []string{
		"device_id text NO", "ts timestamp with time zone NO", "event_id uuid YES",
		"lat double precision YES", "lon double precision YES", "alt real YES", "speed real YES",
		"heading real YES", "sats smallint YES", "attrs jsonb YES",
		"received_at timestamp with time zone NO default now()", "faulty boolean NO default false",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("columns:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var pk, idx string
	if err := pool.QueryRow(ctx, `SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'positions'::regclass AND indisprimary`).Scan(&pk); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(pk, "(device_id, ts)") {
		t.Fatalf("primary key %s", pk)
	}
	if err := pool.QueryRow(ctx, `SELECT indexdef FROM pg_indexes WHERE tablename = 'positions' AND indexname = 'positions_event_id_ts_idx'`).Scan(&idx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(idx, "(event_id, ts)") {
		t.Fatalf("index %s", idx)
	}
}

// The failure this package exists for: bookkeeping says applied, the
// table is gone. Apply must see it and re-create it, loudly.
func TestBookkeepingSaysAppliedButTableGone(t *testing.T) {
	t.Parallel()
	pool, m := setup(t)
	apply(t, m)
	exec(t, pool, "DROP TABLE positions")

	m2 := migrate.New(pool, migrate.Options{})
	rep := apply(t, m2)
	if !rep.CreatedPositions || len(rep.Applied) != 0 {
		t.Fatalf("report %+v", rep)
	}
	if got := kinds(rep.Repaired); got != "table" {
		t.Fatalf("repaired kinds %q, want table", got)
	}
	if problems, err := m2.Verify(context.Background()); err != nil || len(problems) != 0 {
		t.Fatalf("verify after repair: %v %v", problems, err)
	}
}

func TestDriftRepaired(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, sql, kinds string
	}{
		{"column", "ALTER TABLE positions DROP COLUMN faulty", "column"},
		{"two columns", "ALTER TABLE positions DROP COLUMN attrs, DROP COLUMN received_at", "column,column"},
		{"index", "DROP INDEX positions_event_id_ts_idx", "index"},
		{"primary key", "ALTER TABLE positions DROP CONSTRAINT positions_pkey", "primary_key"},
		{"default", "ALTER TABLE positions ALTER COLUMN faulty DROP DEFAULT", "default"},
		{"not null", "ALTER TABLE positions ALTER COLUMN received_at DROP NOT NULL", "not_null"},
		{"bookkeeping", "DROP TABLE " + migrate.BookkeepingTable, ""}, // re-created and re-applied, not drift
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool, m := setup(t)
			apply(t, m)
			exec(t, pool, `INSERT INTO positions (device_id, ts, lat, lon) VALUES ('d1', now(), 1, 2)`)
			exec(t, pool, tc.sql)
			rep := apply(t, m)
			if got := kinds(rep.Repaired); got != tc.kinds {
				t.Fatalf("repaired %q (%v), want %q", got, rep.Repaired, tc.kinds)
			}
			if rep.CreatedPositions {
				t.Fatal("positions was not re-created")
			}
			if problems, err := m.Verify(context.Background()); err != nil || len(problems) != 0 {
				t.Fatalf("verify after repair: %v %v", problems, err)
			}
			var n int
			if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM positions").Scan(&n); err != nil || n != 1 {
				t.Fatalf("the row must survive a repair: %d %v", n, err)
			}
		})
	}
}

func TestDriftNotRepairable(t *testing.T) {
	t.Parallel()
	pool, m := setup(t)
	apply(t, m)
	exec(t, pool, "ALTER TABLE positions ALTER COLUMN sats TYPE integer")
	_, err := m.Apply(context.Background())
	if !errors.Is(err, migrate.ErrDrift) || !strings.Contains(err.Error(), "positions.sats has type integer, want smallint") {
		t.Fatalf("want ErrDrift naming the column, got %v", err)
	}
}

func TestChangedChecksumRefusesStart(t *testing.T) {
	t.Parallel()
	pool, m := setup(t)
	apply(t, m)
	exec(t, pool, "UPDATE "+migrate.BookkeepingTable+" SET checksum = 'abc' WHERE version = 1")
	_, err := migrate.New(pool, migrate.Options{}).Apply(context.Background())
	if !errors.Is(err, migrate.ErrChecksum) || !strings.Contains(err.Error(), "0001_positions.sql") {
		t.Fatalf("want ErrChecksum naming the file, got %v", err)
	}
}

func TestRequireTimescaleDBWithoutIt(t *testing.T) {
	t.Parallel()
	pool := testkit.Pool(t, testkit.Postgres(t))
	var available bool
	if err := pool.QueryRow(context.Background(), "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')").Scan(&available); err != nil {
		t.Fatal(err)
	}
	m := migrate.New(pool, migrate.Options{RequireTimescaleDB: true})
	_, err := m.Apply(context.Background())
	if timescaleUsable(t, pool) {
		// A server with TimescaleDB: the requirement is met and positions
		// must be a hypertable.
		if err != nil || !m.TimescaleDB() || !isHypertable(t, pool) {
			t.Fatalf("timescaledb available: apply %v, hypertable %v", err, m.TimescaleDB())
		}
		return
	}
	if !errors.Is(err, migrate.ErrNoTimescaleDB) {
		t.Fatalf("want ErrNoTimescaleDB, got %v", err)
	}
	want := "pg_available_extensions"
	if available {
		want = "shared_preload_libraries"
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("the refusal must name %s: %v", want, err)
	}
	noTablesLeft(t, pool)
}

// Two persisters starting together: the advisory lock serialises them, and
// each file is applied once.
func TestConcurrentApply(t *testing.T) {
	t.Parallel()
	pool := testkit.Pool(t, testkit.Postgres(t))
	var wg sync.WaitGroup
	reps := make([]migrate.Report, 4)
	errs := make([]error, 4)
	for i := range reps {
		wg.Go(func() {
			// Each on its own pool, as separate processes would be.
			p, err := pgxpool.New(context.Background(), pool.Config().ConnString())
			if err != nil {
				errs[i] = err
				return
			}
			defer p.Close()
			reps[i], errs[i] = migrate.New(p, migrate.Options{}).Apply(context.Background())
		})
	}
	wg.Wait()
	applied := 0
	for i := range reps {
		if errs[i] != nil {
			t.Fatalf("apply %d: %v", i, errs[i])
		}
		applied += len(reps[i].Applied)
		if len(reps[i].Repaired) != 0 {
			t.Fatalf("apply %d repaired %v", i, reps[i].Repaired)
		}
	}
	if applied != 2 {
		t.Fatalf("files applied %d times in total, want 2", applied)
	}
}

// The repair that re-creates positions marks it for a refill, in the same
// transaction; the mark is cleared only for the same table (OID); a first
// creation and an Apply on an existing table never mark it.
func TestRefillMarker(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testkit.Pool(t, testkit.Postgres(t))
	m := migrate.New(pool, migrate.Options{})
	if _, err := m.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	if _, pending, err := m.RefillPending(ctx); err != nil || pending {
		t.Fatalf("first creation: pending %v (%v), want false", pending, err)
	}
	if _, err := pool.Exec(ctx, "DROP TABLE positions"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	oid, pending, err := m.RefillPending(ctx)
	if err != nil || !pending || oid == 0 {
		t.Fatalf("re-created by a repair: oid %d pending %v err %v, want marked", oid, pending, err)
	}
	if err := m.ClearRefill(ctx, oid+1); err != nil {
		t.Fatal(err)
	}
	if _, pending, _ := m.RefillPending(ctx); !pending {
		t.Fatal("ClearRefill of another OID cleared the marker")
	}
	if err := m.ClearRefill(ctx, oid); err != nil {
		t.Fatal(err)
	}
	if _, pending, _ := m.RefillPending(ctx); pending {
		t.Fatal("ClearRefill of the table's OID left the marker")
	}
	if _, err := m.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	if _, pending, _ := m.RefillPending(ctx); pending {
		t.Fatal("Apply on an existing table marked it")
	}
}
