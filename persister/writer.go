package persister

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract"
)

// columns of positions the persister writes; received_at and faulty take
// their defaults, so a re-inserted position never touches faulty.
var columns = []string{"device_id", "ts", "event_id", "lat", "lon", "alt", "speed", "heading", "sats", "attrs"}

const (
	stageTable = "persister_stage"
	// The staging table is declared column by column rather than LIKE
	// positions, so it does not depend on the table it feeds (which may be
	// missing while a repair runs).
	createStage = `CREATE TEMP TABLE ` + stageTable + ` (
		device_id text, ts timestamptz, event_id uuid, lat double precision, lon double precision,
		alt real, speed real, heading real, sats smallint, attrs jsonb) ON COMMIT DROP`
	insertFromStage = `INSERT INTO positions (device_id, ts, event_id, lat, lon, alt, speed, heading, sats, attrs)
		SELECT device_id, ts, event_id, lat, lon, alt, speed, heading, sats, attrs FROM ` + stageTable + `
		ON CONFLICT (device_id, ts) DO NOTHING`
)

// Write paths (PERSISTER_WRITE_PATH). Each writes a batch atomically and
// idempotently: a position already in the table is never written again.
const (
	// PathAuto COPYs the batch straight into positions, the cheapest write
	// there is. COPY has no ON CONFLICT: when the batch holds a position
	// already stored (23505, a re-delivery), the COPY writes nothing and the
	// batch is written by PathUnnest instead, as are the next batches until
	// one has no duplicate. Default.
	PathAuto = "auto"
	// PathUnnest sends the batch as one array per column in a single
	// INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING: one round trip,
	// a prepared statement.
	PathUnnest = "unnest"
	// PathStaging COPYs the batch into a temporary staging table, then
	// INSERT … SELECT … ON CONFLICT DO NOTHING from it, in one transaction.
	PathStaging = "staging"
)

// insertUnnest is the single-statement write path. Its parameters are ten
// arrays, so any batch size stays within the 65535-parameter limit.
const insertUnnest = `INSERT INTO positions (device_id, ts, event_id, lat, lon, alt, speed, heading, sats, attrs)
	SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::uuid[], $4::float8[], $5::float8[],
		$6::real[], $7::real[], $8::real[], $9::smallint[], $10::jsonb[])
	ON CONFLICT (device_id, ts) DO NOTHING`

// writer writes batches by the configured path. conflicts is PathAuto's
// state: true after a COPY met a stored position, until a batch written
// with ON CONFLICT had no duplicate.
type writer struct {
	pool      *pgxpool.Pool
	path      string
	conflicts atomic.Bool
	fallbacks prometheus.Counter     // COPYs that met a stored position
	retries   *prometheus.CounterVec // batches retried at once after a deadlock or serialization failure, by SQLSTATE
}

// maxConflictRetries bounds the immediate retries of one batch that lost a
// deadlock (40P01) or a serialization conflict (40001). Either means
// another transaction won a race and the batch was rolled back whole: the
// database is fine and the next attempt normally succeeds.
const maxConflictRetries = 5

// write writes ps atomically and returns the number of new rows; the
// others were already there. Nothing is written when it returns an error.
// expectDuplicates (refill) skips the optimistic COPY. A batch rolled back
// by a deadlock or serialization failure is written again at once, up to
// maxConflictRetries times, without waiting and without counting as a
// failed write.
func (w *writer) write(ctx context.Context, ps []contract.Position, expectDuplicates bool) (int64, error) {
	for attempt := 0; ; attempt++ {
		n, err := w.writeOnce(ctx, ps, expectDuplicates)
		code := conflictCode(err)
		if code == "" || attempt == maxConflictRetries || ctx.Err() != nil {
			return n, err
		}
		if w.retries != nil {
			w.retries.WithLabelValues(code).Inc()
		}
	}
}

// conflictCode is the SQLSTATE of a deadlock or serialization failure, or
// "" for any other outcome.
func conflictCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001") {
		return pgErr.Code
	}
	return ""
}

func (w *writer) writeOnce(ctx context.Context, ps []contract.Position, expectDuplicates bool) (int64, error) {
	switch {
	case w.path == PathStaging:
		return writeStaged(ctx, w.pool, ps)
	case w.path == PathUnnest, expectDuplicates:
		return writeUnnest(ctx, w.pool, ps)
	}
	if !w.conflicts.Load() {
		n, err := writeCopy(ctx, w.pool, ps)
		if !isUniqueViolation(err) {
			return n, err
		}
		w.conflicts.Store(true)
		w.fallbacks.Inc()
	}
	n, err := writeUnnest(ctx, w.pool, ps)
	if err == nil && n == int64(len(ps)) {
		w.conflicts.Store(false) // no duplicate in this batch: back to COPY
	}
	return n, err
}

// primaryKeyInPlace is true when positions has its primary key on
// (device_id, ts). Asked after the COPY, inside its transaction: the COPY's
// lock keeps the key from being dropped or added until the commit, so a
// key present now was present for the whole COPY.
const primaryKeyInPlace = `SELECT count(*) = 2 FROM pg_index i
	JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
	WHERE i.indrelid = 'positions'::regclass AND i.indisprimary AND i.indnatts = 2
	AND a.attname IN ('device_id', 'ts')`

// errNoPrimaryKey makes a COPY into a table without its key a schema error
// (as ON CONFLICT's 42P10 does): without the key, COPY would store
// duplicates instead of failing.
var errNoPrimaryKey = &pgconn.PgError{Code: "42P10", Message: "primary key (device_id, ts) of positions is missing"}

// writeCopy COPYs into positions and commits only when the primary key
// guarded the COPY. A stored position fails the whole COPY with 23505.
func writeCopy(ctx context.Context, pool *pgxpool.Pool, ps []contract.Position) (int64, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	n, err := tx.CopyFrom(ctx, pgx.Identifier{"positions"}, columns, newCopyRows(ps))
	if err != nil {
		return 0, fmt.Errorf("copy batch: %w", err)
	}
	var keyed bool
	if err := tx.QueryRow(ctx, primaryKeyInPlace).Scan(&keyed); err != nil {
		return 0, fmt.Errorf("check primary key: %w", err)
	}
	if !keyed {
		return 0, fmt.Errorf("copy batch: %w", errNoPrimaryKey)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit batch: %w", err)
	}
	return n, nil
}

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// writeUnnest is one statement, hence one implicit transaction.
func writeUnnest(ctx context.Context, pool *pgxpool.Pool, ps []contract.Position) (int64, error) {
	n := len(ps)
	dev := make([]string, n)
	ts := make([]time.Time, n)
	event := make([]pgtype.UUID, n)
	lat, lon := make([]float64, n), make([]float64, n)
	alt, speed, heading := make([]*float64, n), make([]*float64, n), make([]*float64, n)
	sats := make([]*int, n)
	attrs := make([][]byte, n)
	for i := range ps {
		p := &ps[i]
		dev[i], ts[i], lat[i], lon[i] = p.DeviceID, p.TS, p.Lat, p.Lon
		if p.EventID != "" {
			event[i] = parseUUID(p.EventID)
		}
		alt[i], speed[i], heading[i], sats[i] = p.Alt, p.Speed, p.Heading, p.Sats
		if len(p.Attrs) > 0 {
			attrs[i] = p.Attrs
		}
	}
	tag, err := pool.Exec(ctx, insertUnnest, dev, ts, event, lat, lon, alt, speed, heading, sats, attrs)
	if err != nil {
		return 0, fmt.Errorf("insert batch: %w", err)
	}
	return tag.RowsAffected(), nil
}

// writeStaged is COPY into a staging table, then INSERT … SELECT.
func writeStaged(ctx context.Context, pool *pgxpool.Pool, ps []contract.Position) (int64, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.Exec(ctx, createStage); err != nil {
		return 0, fmt.Errorf("create staging table: %w", err)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{stageTable}, columns, newCopyRows(ps)); err != nil {
		return 0, fmt.Errorf("copy batch: %w", err)
	}
	tag, err := tx.Exec(ctx, insertFromStage)
	if err != nil {
		return 0, fmt.Errorf("insert batch: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit batch: %w", err)
	}
	return tag.RowsAffected(), nil
}

// row is the COPY row of one position, in the order of columns.
// copyRows is the COPY source of a batch, in the order of columns. It
// reuses one row and hands pgx pointers into the positions (a nil pointer
// is NULL), so a row costs no allocation; pgx encodes each row before it
// asks for the next.
type copyRows struct {
	ps    []contract.Position
	i     int
	row   [10]any
	event pgtype.UUID
	attrs []byte
}

func newCopyRows(ps []contract.Position) *copyRows { return &copyRows{ps: ps} }

func (r *copyRows) Next() bool { r.i++; return r.i <= len(r.ps) }

func (r *copyRows) Err() error { return nil }

func (r *copyRows) Values() ([]any, error) {
	p := &r.ps[r.i-1]
	r.row[0], r.row[1], r.row[2] = &p.DeviceID, &p.TS, nil
	if p.EventID != "" {
		r.event = parseUUID(p.EventID)
		r.row[2] = &r.event
	}
	r.row[3], r.row[4] = &p.Lat, &p.Lon
	r.row[5], r.row[6], r.row[7], r.row[8] = p.Alt, p.Speed, p.Heading, p.Sats
	r.row[9] = nil
	if len(p.Attrs) > 0 {
		r.attrs = p.Attrs
		r.row[9] = &r.attrs
	}
	return r.row[:], nil
}

// parseUUID turns a validated lowercase 8-4-4-4-12 UUID into its bytes.
func parseUUID(s string) pgtype.UUID {
	var u pgtype.UUID
	_, err := hex.Decode(u.Bytes[:], []byte(strings.ReplaceAll(s, "-", "")))
	u.Valid = err == nil
	return u
}

// errKind classifies a failed write.
type errKind int

const (
	// errTransient: connection lost, server shutting down, timeouts,
	// anything unknown. Retry the same batch later.
	errTransient errKind = iota
	// errSchema: the table, a column or the ON CONFLICT key is missing.
	// Verify and repair the schema, then retry.
	errSchema
	// errData: the database refuses a value (data exception class 22 or an
	// integrity violation class 23). Find the row and dead-letter it.
	errData
)

func (k errKind) String() string {
	switch k {
	case errSchema:
		return "schema"
	case errData:
		return "data"
	default:
		return "transient"
	}
}

func classify(err error) errKind {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return errTransient
	}
	switch {
	case pgErr.Code == "42P01", // undefined_table
		pgErr.Code == "42703", // undefined_column
		pgErr.Code == "42P10": // invalid_column_reference: no unique constraint for ON CONFLICT
		return errSchema
	case strings.HasPrefix(pgErr.Code, "22"), strings.HasPrefix(pgErr.Code, "23"):
		return errData
	default:
		return errTransient
	}
}
