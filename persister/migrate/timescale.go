package migrate

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// tsFacts is what the catalog says about TimescaleDB, read on the lock
// connection with queries that cannot load the extension's library.
type tsFacts struct {
	available bool // the server has the package (pg_available_extensions)
	installed bool // CREATE EXTENSION was done in this database (pg_extension)
	// preloaded: the loader in shared_preload_libraries defines the setting
	// timescaledb.disable_load; without the loader it is unset (NULL).
	preloaded bool
	// disabled: timescaledb.disable_load is on for this role or database,
	// so this session would not load the extension.
	disabled bool
}

// readTSFacts reads the facts without touching the extension: every
// query here is a catalog read a non-superuser may run.
func readTSFacts(ctx context.Context, conn *pgx.Conn) (tsFacts, error) {
	var f tsFacts
	var disableLoad *string
	err := conn.QueryRow(ctx, `SELECT
		EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
		EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
		current_setting('timescaledb.disable_load', true)`).Scan(&f.available, &f.installed, &disableLoad)
	if err != nil {
		return f, fmt.Errorf("probe timescaledb: %w", err)
	}
	f.preloaded = disableLoad != nil && *disableLoad != ""
	f.disabled = f.preloaded && (*disableLoad == "on" || *disableLoad == "true")
	return f, nil
}

// createExtensionSQL is what the probe connection runs. TimescaleDB is a
// trusted extension: CREATE on the database is enough, no superuser.
const createExtensionSQL = `CREATE EXTENSION IF NOT EXISTS timescaledb`

// setupTimescale decides, once per Apply and before any file is applied,
// whether positions is a hypertable. A refusal (RequireTimescaleDB) thus
// leaves nothing behind: no table is created by an Apply that refuses.
//
// The lock connection only reads the catalog. CREATE EXTENSION runs on a
// connection of its own, opened for it and closed after: with the package
// installed but not preloaded, TimescaleDB answers CREATE EXTENSION with
// FATAL, which closes the session that sent it. The catalog check below
// catches that case first; the separate connection is the guard for any
// other way the probe can die.
func (m *Migrator) setupTimescale(ctx context.Context, conn *pgx.Conn) error {
	f, err := m.tsFacts(ctx, conn)
	if err != nil {
		return err
	}
	if f.installed && !f.preloaded {
		// Created in this database once, loader gone since: a hypertable
		// cannot take a single insert (its insert blocker loads the
		// library, which ends the session with FATAL). No plain table can
		// stand in for it: refuse whatever the setting.
		hyper, err := hypertableWithoutLoader(ctx, conn)
		if err != nil {
			return err
		}
		if hyper {
			return fmt.Errorf("%w: positions is a hypertable but timescaledb is not preloaded, so no insert into it can work: "+
				"add timescaledb to shared_preload_libraries in postgresql.conf and restart PostgreSQL", ErrNoTimescaleDB)
		}
	}
	var why string // empty: TimescaleDB is usable
	switch {
	case !f.available && !f.installed:
		why = "timescaledb not available on this server (no timescaledb in pg_available_extensions)"
	case !f.preloaded:
		why = "timescaledb installed but not preloaded: add timescaledb to shared_preload_libraries in postgresql.conf and restart PostgreSQL"
	case f.disabled:
		why = "timescaledb.disable_load is on for this role or database"
	case !f.installed:
		if err := m.createExtension(ctx); err != nil {
			why = "timescaledb is available but CREATE EXTENSION failed (it needs CREATE on the database): " + err.Error()
		}
	}
	if why != "" {
		m.timescale = false
		if m.opts.RequireTimescaleDB {
			return fmt.Errorf("%w: %s (PERSISTER_REQUIRE_TIMESCALEDB is set)", ErrNoTimescaleDB, why)
		}
		if !m.announced {
			if f.available {
				m.log.Warn(why + ": positions is a plain table")
			} else {
				m.log.Info(why + ": positions is a plain table")
			}
			m.announced = true
		}
		return nil
	}
	m.timescale = true
	if !m.announced {
		m.log.Info("timescaledb enabled: positions is a hypertable on ts", "chunk_interval", m.opts.ChunkInterval.String())
		m.announced = true
	}
	return nil
}

// hypertableWithoutLoader says whether positions (in the current schema)
// is a hypertable, from pg_trigger alone: every hypertable carries
// TimescaleDB's ts_insert_blocker trigger. Nothing here loads the library.
func hypertableWithoutLoader(ctx context.Context, conn *pgx.Conn) (bool, error) {
	var ok bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_trigger t
		JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
		WHERE n.nspname = current_schema() AND c.relname = 'positions'
		AND t.tgname = 'ts_insert_blocker' AND pn.nspname = ANY ($1))`, timescaleTriggerSchemas).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("probe hypertable: %w", err)
	}
	return ok, nil
}

// createExtension runs CREATE EXTENSION on a connection of its own, so
// that a FATAL closes only that connection, never the one holding the
// advisory lock.
func (m *Migrator) createExtension(ctx context.Context) error {
	cfg := m.pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = "trm-live persister timescaledb probe"
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	probe, err := pgx.ConnectConfig(pctx, cfg)
	if err != nil {
		return fmt.Errorf("probe connection: %w", err)
	}
	defer probe.Close(context.WithoutCancel(pctx)) //nolint:errcheck // a dead probe is closed already
	_, err = probe.Exec(pctx, m.createSQL)
	return err
}

// hypertable makes positions a hypertable on ts and applies the configured
// chunk interval to future chunks. Converting a plain positions that holds
// rows (migrate_data) rewrites every row into chunks under an exclusive
// lock that holds back every write for its duration (about 7.7 s per
// million rows measured on TimescaleDB 2.21.4): it is logged before and after and
// returned as a repair so it is counted.
func (m *Migrator) hypertable(ctx context.Context, conn *pgx.Conn) (*Problem, error) {
	name := pgx.Identifier{m.schema, "positions"}.Sanitize()
	var hyper bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
		WHERE hypertable_schema = $1 AND hypertable_name = 'positions')`, m.schema).Scan(&hyper); err != nil {
		return nil, fmt.Errorf("probe hypertable: %w", err)
	}
	interval := fmt.Sprintf("%d seconds", int64(m.opts.ChunkInterval.Seconds()))
	var converted *Problem
	if !hyper {
		rows, err := rowEstimate(ctx, conn, name)
		if err != nil {
			return nil, err
		}
		display := displayName(m.schema, "positions")
		if rows > 0 {
			m.log.Warn("converting the plain table positions to a hypertable: every row is moved into chunks "+
				"under an exclusive lock, writes wait until it ends", "table", display, "rows_estimate", rows)
		}
		start := time.Now()
		if _, err := conn.Exec(ctx, `SELECT create_hypertable($1::regclass, 'ts',
			chunk_time_interval => $2::interval, if_not_exists => true, migrate_data => true)`, name, interval); err != nil {
			return nil, fmt.Errorf("create_hypertable %s: %w", display, err)
		}
		if rows > 0 {
			took := time.Since(start).Round(time.Millisecond)
			m.log.Warn("positions converted to a hypertable", "table", display, "rows_estimate", rows, "duration", took.String())
			converted = &Problem{Kind: "hypertable", Detail: fmt.Sprintf(
				"%s was a plain table with about %d rows: converted to a hypertable in %s", display, rows, took)}
		}
	}
	if _, err := conn.Exec(ctx, `SELECT set_chunk_time_interval($1::regclass, $2::interval)`, name, interval); err != nil {
		return nil, fmt.Errorf("set_chunk_time_interval positions: %w", err)
	}
	return converted, nil
}

// rowEstimate is the planner's row count of table, or an exact count when
// the table was never analysed (reltuples -1): the conversion that follows
// reads every row anyway.
func rowEstimate(ctx context.Context, conn *pgx.Conn, table string) (int64, error) {
	var est float64
	if err := conn.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = $1::regclass`, table).Scan(&est); err != nil {
		return 0, fmt.Errorf("estimate rows of positions: %w", err)
	}
	if est >= 0 {
		if est == 0 {
			// 0 after a VACUUM of an empty table, or stale: ask once.
			var some bool
			if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+table+`)`).Scan(&some); err != nil {
				return 0, fmt.Errorf("estimate rows of positions: %w", err)
			}
			if some {
				return 1, nil
			}
		}
		return int64(est), nil
	}
	var n int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+table).Scan(&n); err != nil {
		return 0, fmt.Errorf("count rows of positions: %w", err)
	}
	return n, nil
}
