// Package migrate owns the schema of the positions table: embedded SQL
// files applied in order under a PostgreSQL advisory lock, recorded with a
// checksum, and a verification of the schema they promise that runs on every
// Apply and on demand. Drift (a dropped table, column, primary key or index)
// is repaired by re-applying the files, which are written to converge, and
// reported so the caller can log it, count it and refill lost rows.
//
// The runner never trusts its bookkeeping alone: a file recorded as applied
// whose objects are gone is found by Verify and re-applied. What it did not
// create on positions (another owner, a trigger, a rule, forced row-level
// security) it refuses and leaves for a person (ErrUntrusted).
package migrate

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed sql/*.sql
var files embed.FS

// BookkeepingTable records applied migrations: version, file name, SHA-256
// of the file, time applied. It is prefixed so it cannot clash with another
// tool's schema_migrations in the database Directus shares.
const BookkeepingTable = "persister_schema_migrations"

// LockKey is the pg_advisory_lock key that serialises Apply across every
// persister on one database ("trm-live persister migrate").
const LockKey int64 = 0x74726d5f70657273

// DefaultChunkInterval is the hypertable chunk interval when Options gives
// none: one day holds a race day of a big event in one chunk.
const DefaultChunkInterval = 24 * time.Hour

// DefaultLockWait bounds the wait for the advisory lock when Options gives
// none. Another persister's Apply takes well under a second, unless it is
// converting a large plain positions into a hypertable.
const DefaultLockWait = 30 * time.Second

// Errors a caller branches on. All but ErrLockTimeout refuse start: a
// person has to act.
var (
	// ErrChecksum: an applied migration file was changed after it was
	// applied. Applied files are immutable; add a new file instead.
	ErrChecksum = errors.New("applied migration changed")
	// ErrDrift: verification still finds problems after re-applying every
	// file (for example a column whose type was altered): a person must look.
	ErrDrift = errors.New("schema drift not repairable by re-applying migrations")
	// ErrNoTimescaleDB: TimescaleDB is required by configuration and is not
	// available or cannot be created in this database.
	ErrNoTimescaleDB = errors.New("timescaledb required but not available")
	// ErrUntrusted: positions carries something the persister did not
	// create and will not remove on its own: another owner, a trigger, a
	// rule, forced row-level security, or it is not a plain table. Any of
	// them can make rows the persister counted as written vanish.
	ErrUntrusted = errors.New("positions carries objects the persister did not create")
	// ErrLockTimeout: the advisory lock stayed held by another session for
	// Options.LockWait. Not a refusal: the caller retries.
	ErrLockTimeout = errors.New("migration lock held by another session")
)

// Options configure a Migrator. The zero value is usable.
type Options struct {
	// RequireTimescaleDB refuses Apply when the timescaledb extension is not
	// available (prod). False: use it when available, else a plain table.
	RequireTimescaleDB bool
	// ChunkInterval is the hypertable chunk interval on ts. Zero means
	// DefaultChunkInterval. Unused without TimescaleDB.
	ChunkInterval time.Duration
	// LockWait bounds the wait for the advisory lock; Apply then fails
	// with ErrLockTimeout naming the session that holds it. Zero means
	// DefaultLockWait.
	LockWait time.Duration
	// Logger receives one line per applied file, per repair and the
	// TimescaleDB decision. Nil discards.
	Logger *slog.Logger
}

// Migration is one embedded SQL file.
type Migration struct {
	Version  int
	Name     string // file name, e.g. 0001_positions.sql
	SQL      string
	Checksum string // hex SHA-256 of SQL
}

// Report says what one Apply did.
type Report struct {
	// Applied lists the files applied for the first time.
	Applied []string
	// Repaired lists the drift found and repaired by re-applying.
	Repaired []Problem
	// CreatedPositions is true when the positions table did not exist
	// before this Apply and does now (first install, or a repair after a
	// DROP TABLE): rows the stream still retains must be refilled.
	CreatedPositions bool
	// TimescaleDB is true when positions is a hypertable.
	TimescaleDB bool
}

// Migrator applies and verifies the schema on one database. Safe for
// concurrent use; Apply calls are serialised by the advisory lock (across
// processes) and by a mutex (within one).
type Migrator struct {
	pool *pgxpool.Pool
	opts Options
	log  *slog.Logger
	migs []Migration

	// The TimescaleDB probe: the catalog facts and the statement run on
	// the probe's own connection. Tests replace them (export_test.go) to
	// play a server this machine does not have.
	tsFacts   func(context.Context, *pgx.Conn) (tsFacts, error)
	createSQL string

	mu        sync.Mutex // serialises Apply in this process; guards the fields below
	timescale bool
	announced bool   // the TimescaleDB decision was logged
	schema    string // where positions lives, read at each Apply
}

// New returns a Migrator for the database behind pool.
func New(pool *pgxpool.Pool, opts Options) *Migrator {
	if opts.ChunkInterval <= 0 {
		opts.ChunkInterval = DefaultChunkInterval
	}
	if opts.LockWait <= 0 {
		opts.LockWait = DefaultLockWait
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	migs, err := Migrations()
	if err != nil {
		// The files are embedded at build time; a bad name is a build defect
		// that every test catches.
		panic(err)
	}
	return &Migrator{pool: pool, opts: opts, log: log, migs: migs, tsFacts: readTSFacts, createSQL: createExtensionSQL}
}

// Migrations returns the embedded files in version order.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(files, "sql")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration file %s: name must start with a positive number and _", name)
		}
		b, err := files.ReadFile(path.Join("sql", name))
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(b)
		out = append(out, Migration{Version: v, Name: name, SQL: string(b), Checksum: hex.EncodeToString(sum[:])})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i := 1; i < len(out); i++ {
		if out[i].Version == out[i-1].Version {
			return nil, fmt.Errorf("migration files %s and %s share version %d", out[i-1].Name, out[i].Name, out[i].Version)
		}
	}
	return out, nil
}

// TimescaleDB reports whether the last Apply made positions a hypertable.
func (m *Migrator) TimescaleDB() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.timescale
}

// Apply takes the advisory lock on one connection, decides on TimescaleDB,
// applies pending files, checks the checksums of applied ones, makes
// positions a hypertable where TimescaleDB is on, then verifies the schema
// and repairs drift by re-applying every file. Two persisters calling
// Apply together are safe: the second waits for the lock (at most
// Options.LockWait) and then finds nothing to do.
func (m *Migrator) Apply(ctx context.Context) (Report, error) {
	m.mu.Lock()
	defer m.mu.Unlock()

	conn, err := m.pool.Acquire(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("acquire: %w", err)
	}
	defer conn.Release()
	// The lock belongs to this connection: take, work and release on it.
	if err := m.lock(ctx, conn.Conn()); err != nil {
		return Report{}, err
	}
	defer func() {
		// A dead connection released the lock with the session already.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, "SELECT pg_advisory_unlock($1)", LockKey); err != nil {
			conn.Conn().Close(uctx) //nolint:errcheck // closing is the fallback that frees the lock
		}
	}()
	// A deadlock or serialization failure (a repair's DDL meeting an
	// operator's transaction) rolled back one step because another
	// transaction won a race: apply again at once. Each step converges, so
	// a repeat only finishes what the lost attempt did not.
	var rep Report
	for attempt := 0; ; attempt++ {
		r, err := m.applyLocked(ctx, conn.Conn())
		rep.Applied = append(rep.Applied, r.Applied...)
		rep.Repaired = append(rep.Repaired, r.Repaired...)
		rep.CreatedPositions = rep.CreatedPositions || r.CreatedPositions
		rep.TimescaleDB = r.TimescaleDB
		code := conflictCode(err)
		if code == "" || attempt == maxConflictRetries || ctx.Err() != nil {
			return rep, err
		}
		m.log.Warn("migration step lost a deadlock or serialization conflict: applying again at once", "code", code, "err", err)
	}
}

// maxConflictRetries bounds the immediate repeats of an Apply that lost a
// deadlock (40P01) or a serialization conflict (40001).
const maxConflictRetries = 5

// conflictCode is the SQLSTATE of a deadlock or serialization failure, or
// "" for any other outcome.
func conflictCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001") {
		return pgErr.Code
	}
	return ""
}

func (m *Migrator) applyLocked(ctx context.Context, conn *pgx.Conn) (Report, error) {
	var rep Report
	schema, err := currentSchema(ctx, conn)
	if err != nil {
		return rep, err
	}
	m.schema = schema
	existed, err := tableExists(ctx, conn, schema, "positions")
	if err != nil {
		return rep, err
	}
	// A positions that is not ours refuses before anything is touched:
	// the files would run against it (or fail on it as a non-owner).
	if existed {
		problems, err := verify(ctx, conn, false)
		if err != nil {
			return rep, err
		}
		if err := refuseUntrusted(problems); err != nil {
			return rep, err
		}
	}
	// TimescaleDB before any file: a start refused for want of it leaves
	// no table behind.
	if err := m.setupTimescale(ctx, conn); err != nil {
		return rep, err
	}

	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+BookkeepingTable+` (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		checksum   text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return rep, fmt.Errorf("create %s: %w", BookkeepingTable, err)
	}
	applied := map[int]Migration{}
	rows, err := conn.Query(ctx, `SELECT version, name, checksum FROM `+BookkeepingTable)
	if err != nil {
		return rep, fmt.Errorf("read %s: %w", BookkeepingTable, err)
	}
	for rows.Next() {
		var a Migration
		if err := rows.Scan(&a.Version, &a.Name, &a.Checksum); err != nil {
			rows.Close()
			return rep, err
		}
		applied[a.Version] = a
	}
	if err := rows.Err(); err != nil {
		return rep, fmt.Errorf("read %s: %w", BookkeepingTable, err)
	}

	known := map[int]bool{}
	for _, mig := range m.migs {
		known[mig.Version] = true
		if a, ok := applied[mig.Version]; ok {
			if a.Checksum != mig.Checksum {
				return rep, fmt.Errorf("%w: %s was applied as %s with checksum %s, the embedded file now has checksum %s; "+
					"applied migrations must never change (add a new file instead, or restore the original)",
					ErrChecksum, mig.Name, a.Name, a.Checksum, mig.Checksum)
			}
			continue
		}
		if err := m.applyOne(ctx, conn, mig); err != nil {
			return rep, err
		}
		rep.Applied = append(rep.Applied, mig.Name)
		m.log.Info("migration applied", "migration", mig.Name, "checksum", mig.Checksum[:12])
	}
	for v, a := range applied {
		if !known[v] {
			m.log.Warn("database has a migration this binary does not know (a newer persister applied it?)",
				"migration", a.Name, "version", v)
		}
	}

	if m.timescale {
		ok, err := tableExists(ctx, conn, schema, "positions")
		if err != nil {
			return rep, err
		}
		// A missing table is drift; verify reports it and the repair
		// creates it and makes it a hypertable.
		if ok {
			converted, err := m.hypertable(ctx, conn)
			if err != nil {
				return rep, err
			}
			if converted != nil {
				rep.Repaired = append(rep.Repaired, *converted)
			}
		}
	}
	rep.TimescaleDB = m.timescale

	problems, err := verify(ctx, conn, m.timescale)
	if err != nil {
		return rep, err
	}
	if err := refuseUntrusted(problems); err != nil {
		return rep, err
	}
	if len(problems) > 0 {
		if err := m.reapply(ctx, conn); err != nil {
			return rep, fmt.Errorf("repair %s: %w", joinProblems(problems), err)
		}
		left, err := verify(ctx, conn, m.timescale)
		if err != nil {
			return rep, err
		}
		if len(left) > 0 {
			return rep, fmt.Errorf("%w: %s", ErrDrift, joinProblems(left))
		}
		rep.Repaired = append(rep.Repaired, problems...)
		m.log.Warn("schema drift repaired by re-applying migrations", "missing", joinProblems(problems))
	}
	if !existed {
		now, err := tableExists(ctx, conn, schema, "positions")
		if err != nil {
			return rep, err
		}
		rep.CreatedPositions = now
	}
	return rep, nil
}

func (m *Migrator) applyOne(ctx context.Context, conn *pgx.Conn, mig Migration) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migration %s: begin: %w", mig.Name, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.Exec(ctx, mig.SQL); err != nil {
		return fmt.Errorf("migration %s: %w", mig.Name, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+BookkeepingTable+` (version, name, checksum) VALUES ($1, $2, $3)
		ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, applied_at = now()`,
		mig.Version, mig.Name, mig.Checksum); err != nil {
		return fmt.Errorf("migration %s: record: %w", mig.Name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migration %s: commit: %w", mig.Name, err)
	}
	return nil
}

// reapply runs every file again in one transaction (they converge), then
// the hypertable step, and re-records every file.
func (m *Migrator) reapply(ctx context.Context, conn *pgx.Conn) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	existed, err := tableExists(ctx, tx.Conn(), m.schema, "positions")
	if err != nil {
		return err
	}
	for _, mig := range m.migs {
		if _, err := tx.Exec(ctx, mig.SQL); err != nil {
			return fmt.Errorf("%s: %w", mig.Name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+BookkeepingTable+` (version, name, checksum) VALUES ($1, $2, $3)
			ON CONFLICT (version) DO NOTHING`, mig.Version, mig.Name, mig.Checksum); err != nil {
			return fmt.Errorf("%s: record: %w", mig.Name, err)
		}
	}
	if err := markIfCreated(ctx, tx, m.schema, existed); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	if m.timescale {
		// The table was re-created empty (or already a hypertable): no
		// rows to convert, nothing to count beyond the drift itself.
		_, err := m.hypertable(ctx, conn)
		return err
	}
	return nil
}

// Verify checks the schema the migrations promise without taking the lock,
// in the schema current_schema() names: the bookkeeping table, positions
// with its columns, types, NOT NULLs and defaults, its primary key
// (device_id, ts), an index on (event_id, ts), the hypertable when
// TimescaleDB is on; and that nothing on positions can take rows away
// (owner, user triggers, rules, forced row-level security, relkind), the
// kinds Apply refuses with ErrUntrusted. An empty result means no drift.
func (m *Migrator) Verify(ctx context.Context) ([]Problem, error) {
	m.mu.Lock()
	ts := m.timescale
	m.mu.Unlock()
	conn, err := m.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire: %w", err)
	}
	defer conn.Release()
	return verify(ctx, conn.Conn(), ts)
}

func tableExists(ctx context.Context, conn *pgx.Conn, schema, name string) (bool, error) {
	r, err := lookup(ctx, conn, schema, name)
	return r != nil, err
}

// refuseUntrusted is ErrUntrusted naming every problem Apply refuses
// instead of repairing, or nil.
func refuseUntrusted(ps []Problem) error {
	var out []Problem
	for _, p := range ps {
		if untrustedKinds[p.Kind] {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s; remove them (or restore the owner) and restart: the persister will not", ErrUntrusted, joinProblems(out))
}
