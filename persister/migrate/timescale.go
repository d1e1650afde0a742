package migrate

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// setupTimescale decides, once per Apply, whether positions is a hypertable:
// the extension must be available on the server (pg_available_extensions)
// and creatable in this database. Without it positions stays a plain table
// and one INFO line says so, unless RequireTimescaleDB refuses.
//
// This path cannot run on the development machine (Debian ships no
// TimescaleDB package); it is written to the documented API of TimescaleDB
// 2.x and is exercised only where the extension is installed.
func (m *Migrator) setupTimescale(ctx context.Context, conn *pgx.Conn) error {
	var available bool
	if err := conn.QueryRow(ctx,
		`SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')`).Scan(&available); err != nil {
		return fmt.Errorf("probe timescaledb: %w", err)
	}
	if !available {
		m.timescale = false
		if m.opts.RequireTimescaleDB {
			return fmt.Errorf("%w: the server lists no timescaledb in pg_available_extensions (PERSISTER_REQUIRE_TIMESCALEDB is set)", ErrNoTimescaleDB)
		}
		if !m.announced {
			m.log.Info("timescaledb not available on this server: positions is a plain table")
			m.announced = true
		}
		return nil
	}
	// Needs shared_preload_libraries = 'timescaledb' and the right to
	// create the extension; a failure here is not fatal unless required.
	if _, err := conn.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS timescaledb`); err != nil {
		m.timescale = false
		if m.opts.RequireTimescaleDB {
			return fmt.Errorf("%w: create extension: %v", ErrNoTimescaleDB, err)
		}
		if !m.announced {
			m.log.Warn("timescaledb is available but could not be created: positions is a plain table", "err", err)
			m.announced = true
		}
		return nil
	}
	m.timescale = true
	if !m.announced {
		m.log.Info("timescaledb enabled: positions is a hypertable on ts", "chunk_interval", m.opts.ChunkInterval.String())
		m.announced = true
	}
	if ok, err := tableExists(ctx, conn, "positions"); err != nil || !ok {
		// A missing table is drift; verify reports it and repair creates it
		// and calls hypertable again.
		return err
	}
	return m.hypertable(ctx, conn)
}

// hypertable makes positions a hypertable on ts (existing rows migrated)
// and applies the configured chunk interval to future chunks. Both calls
// are idempotent.
func (m *Migrator) hypertable(ctx context.Context, conn *pgx.Conn) error {
	interval := fmt.Sprintf("%d seconds", int64(m.opts.ChunkInterval.Seconds()))
	if _, err := conn.Exec(ctx, `SELECT create_hypertable('positions', 'ts',
		chunk_time_interval => $1::interval, if_not_exists => true, migrate_data => true)`, interval); err != nil {
		return fmt.Errorf("create_hypertable positions: %w", err)
	}
	if _, err := conn.Exec(ctx, `SELECT set_chunk_time_interval('positions', $1::interval)`, interval); err != nil {
		return fmt.Errorf("set_chunk_time_interval positions: %w", err)
	}
	return nil
}
