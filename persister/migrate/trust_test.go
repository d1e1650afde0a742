package migrate_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"trm-live/persister/migrate"
	"trm-live/testkit"
)

// A positions of the right shape with something on it that takes rows
// away: Apply refuses, naming the object with its schema, and leaves it in
// place (a person decides).
func TestUntrustedPositionsRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, plant, want, survives string
	}{
		{"trigger diverting rows", `
			CREATE TABLE elsewhere (LIKE positions);
			CREATE FUNCTION divert() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO elsewhere SELECT NEW.*; RETURN NULL; END $$;
			CREATE TRIGGER divert BEFORE INSERT ON positions FOR EACH ROW EXECUTE FUNCTION divert()`,
			`public.positions has trigger "divert" (function public.divert)`, "SELECT count(*) FROM pg_trigger WHERE tgname = 'divert'"},
		{"disabled trigger", `
			CREATE FUNCTION nothing() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
			CREATE TRIGGER later BEFORE INSERT ON positions FOR EACH ROW EXECUTE FUNCTION nothing();
			ALTER TABLE positions DISABLE TRIGGER later`,
			`public.positions has trigger "later"`, "SELECT count(*) FROM pg_trigger WHERE tgname = 'later'"},
		{"rule instead", `
			CREATE TABLE elsewhere (LIKE positions);
			CREATE RULE divert AS ON INSERT TO positions DO INSTEAD INSERT INTO elsewhere VALUES (NEW.*)`,
			`public.positions has rule "divert"`, "SELECT count(*) FROM pg_rewrite WHERE rulename = 'divert'"},
		{"forced row-level security", `ALTER TABLE positions ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY`,
			"public.positions has FORCE ROW LEVEL SECURITY", "SELECT count(*) FROM pg_class WHERE relname = 'positions' AND relforcerowsecurity"},
		{"a view named positions", `
			ALTER TABLE positions RENAME TO positions_real;
			CREATE VIEW positions AS SELECT * FROM positions_real`,
			"public.positions is not a plain table (relkind v)", "SELECT count(*) FROM pg_class WHERE relname = 'positions' AND relkind = 'v'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool, m := setup(t)
			apply(t, m)
			if _, err := pool.Exec(context.Background(), tc.plant); err != nil {
				// TimescaleDB refuses rules on a hypertable by itself.
				if tc.name == "rule instead" && isHypertable(t, pool) {
					t.Logf("hypertable: TimescaleDB refused the rule: %v", err)
					return
				}
				t.Fatalf("plant: %v", err)
			}
			// As on a database where positions was planted before any
			// persister ran: the files are pending.
			exec(t, pool, "DROP TABLE "+migrate.BookkeepingTable)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := migrate.New(pool, migrate.Options{}).Apply(ctx)
			if !errors.Is(err, migrate.ErrUntrusted) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want ErrUntrusted naming %q, got %v", tc.want, err)
			}
			var n int
			if err := pool.QueryRow(ctx, tc.survives).Scan(&n); err != nil || n != 1 {
				t.Fatalf("the planted object must be left alone: %d %v", n, err)
			}
			// Refused before any file ran: nothing was created.
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_class WHERE relname = $1", migrate.BookkeepingTable).Scan(&n); err != nil || n != 0 {
				t.Fatalf("bookkeeping table created by a refused Apply: %d %v", n, err)
			}
			// Verify (the periodic check) reports it too.
			problems, err := m.Verify(ctx)
			if err != nil || !strings.Contains(fmtProblems(problems), tc.want) {
				t.Fatalf("verify: %v %v", problems, err)
			}
		})
	}
}

func fmtProblems(ps []migrate.Problem) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.Detail)
	}
	return strings.Join(s, "; ")
}

// Row-level security enabled without FORCE does not apply to the owner,
// and the owner is the persister: accepted.
func TestRowSecurityWithoutForceAccepted(t *testing.T) {
	t.Parallel()
	pool, m := setup(t)
	apply(t, m)
	exec(t, pool, "ALTER TABLE positions ENABLE ROW LEVEL SECURITY")
	apply(t, migrate.New(pool, migrate.Options{}))
}

// positions owned by another role: whoever owns it can plant the rest at
// any time. Refused, naming the owner.
func TestPositionsOwnedByAnotherRoleRefused(t *testing.T) {
	t.Parallel()
	pool, m := setup(t)
	apply(t, m)
	role := strings.ToLower(testkit.Unique("trmowner"))
	ident := pgx.Identifier{role}.Sanitize()
	exec(t, pool, "CREATE ROLE "+ident)
	t.Cleanup(func() {
		// The role owns positions in this database: drop what it owns here
		// before the role (the database itself is dropped later).
		ctx := context.Background()
		if _, err := pool.Exec(ctx, "DROP OWNED BY "+ident+"; DROP ROLE "+ident); err != nil {
			t.Logf("drop role %s: %v", role, err)
		}
	})
	exec(t, pool, "ALTER TABLE positions OWNER TO "+ident)
	_, err := migrate.New(pool, migrate.Options{}).Apply(context.Background())
	if !errors.Is(err, migrate.ErrUntrusted) || !strings.Contains(err.Error(), "public.positions is owned by role "+role) {
		t.Fatalf("want ErrUntrusted naming the owner %s, got %v", role, err)
	}
}

// positions in the schema search_path names: verification follows it and
// names the schema.
func TestSchemaFromSearchPath(t *testing.T) {
	t.Parallel()
	dsn := testkit.Postgres(t)
	admin := testkit.Pool(t, dsn)
	exec(t, admin, `CREATE SCHEMA "Race Data"`)
	pool := testkit.Pool(t, dsn+"&search_path="+`%22Race%20Data%22`)
	m := migrate.New(pool, migrate.Options{})
	apply(t, m)
	var n int
	if err := admin.QueryRow(context.Background(), `SELECT count(*) FROM pg_tables WHERE schemaname = 'Race Data' AND tablename = 'positions'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("positions in schema Race Data: %d %v", n, err)
	}
	// A planted positions in public does not count as ours, nor hide ours.
	exec(t, admin, `CREATE TABLE public.positions (x int)`)
	exec(t, pool, `CREATE FUNCTION nothing() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
		CREATE TRIGGER divert BEFORE INSERT ON positions FOR EACH ROW EXECUTE FUNCTION nothing()`)
	_, err := migrate.New(pool, migrate.Options{}).Apply(context.Background())
	if !errors.Is(err, migrate.ErrUntrusted) || !strings.Contains(err.Error(), `"Race Data".positions has trigger "divert" (function "Race Data".nothing)`) {
		t.Fatalf("want ErrUntrusted naming \"Race Data\".positions, got %v", err)
	}
}

// A session holding the migration lock: Apply waits LockWait, says who
// holds it (log and error), and succeeds once it is released.
func TestLockWaitBoundedNamesHolder(t *testing.T) {
	t.Parallel()
	pool, _ := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = "lock squatter"
	squatter, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close(context.Background())
	var pid int32
	if err := squatter.QueryRow(ctx, "SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock($1)) l", migrate.LockKey).Scan(&pid); err != nil {
		t.Fatal(err)
	}

	var logs logBuffer
	m := migrate.New(pool, migrate.Options{LockWait: 500 * time.Millisecond, Logger: logs.logger()})
	_, err = m.Apply(ctx)
	if !errors.Is(err, migrate.ErrLockTimeout) || !strings.Contains(err.Error(), `application_name "lock squatter"`) ||
		!strings.Contains(err.Error(), "pid "+itoa(pid)) {
		t.Fatalf("want ErrLockTimeout naming pid %d and the squatter, got %v", pid, err)
	}
	if l := logs.String(); !strings.Contains(l, "migration lock held by another session") ||
		!strings.Contains(l, `holder_application_name="lock squatter"`) || !strings.Contains(l, "holder_pid="+itoa(pid)) {
		t.Fatalf("want a log line naming the holder:\n%s", l)
	}
	noTablesLeft(t, pool)

	if _, err := squatter.Exec(ctx, "SELECT pg_advisory_unlock($1)", migrate.LockKey); err != nil {
		t.Fatal(err)
	}
	if rep := apply(t, m); !rep.CreatedPositions {
		t.Fatalf("apply after release: %+v", rep)
	}
}

func itoa(i int32) string { return strconv.Itoa(int(i)) }

// A repair whose transaction loses a deadlock (provoked on purpose: the
// test holds the bookkeeping table and then reads positions, which the
// repair holds) is applied again at once and succeeds.
func TestRepairDeadlockAppliedAgain(t *testing.T) {
	t.Parallel()
	pool, m := setup(t)
	apply(t, m)
	exec(t, pool, "DROP INDEX positions_event_id_ts_idx")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Deadlock detection runs once, deadlock_timeout after a wait starts:
	// the migrator's new sessions get 5 s and the test's 60 s, so the
	// migrator's backend finds the cycle and is the one rolled back.
	var db string
	if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	exec(t, pool, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" SET deadlock_timeout = '5s'")
	fresh := testkit.Pool(t, pool.Config().ConnString())

	other, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(context.Background()) //nolint:errcheck
	var otherPID int32
	if err := other.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&otherPID); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, "SET LOCAL deadlock_timeout = '60s'; LOCK TABLE "+migrate.BookkeepingTable+" IN EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}

	var logs logBuffer
	type result struct {
		rep migrate.Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := migrate.New(fresh, migrate.Options{Logger: logs.logger()}).Apply(ctx)
		done <- result{rep, err}
	}()
	// The repair holds positions and waits for the bookkeeping table.
	testkit.Eventually(t, 30*time.Second, func() error {
		var waiting int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> $1`, otherPID).Scan(&waiting); err != nil {
			return err
		}
		if waiting != 1 {
			return fmt.Errorf("%d sessions waiting on a lock, want the repair's", waiting)
		}
		return nil
	})
	// Close the cycle: this read waits for the repair's lock on positions.
	var n int
	if err := other.QueryRow(ctx, "SELECT count(*) FROM positions").Scan(&n); err != nil {
		t.Fatalf("the test's side of the deadlock: %v", err)
	}
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil {
		t.Fatalf("apply after a lost deadlock: %v", res.err)
	}
	if got := kinds(res.rep.Repaired); got != "index" {
		t.Fatalf("repaired %q, want index", got)
	}
	if l := logs.String(); !strings.Contains(l, "applying again at once") || !strings.Contains(l, "code=40P01") {
		t.Fatalf("want the retry logged with 40P01:\n%s", l)
	}
	if problems, err := m.Verify(ctx); err != nil || len(problems) != 0 {
		t.Fatalf("verify: %v %v", problems, err)
	}
}
