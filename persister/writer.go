package persister

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

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

// writeBatch writes positions in one transaction: COPY into a temporary
// staging table, then INSERT … SELECT … ON CONFLICT (device_id, ts) DO
// NOTHING. It returns the number of new rows; the others were already
// there. Nothing is written when it returns an error.
func writeBatch(ctx context.Context, pool *pgxpool.Pool, ps []contract.Position) (int64, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.Exec(ctx, createStage); err != nil {
		return 0, fmt.Errorf("create staging table: %w", err)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{stageTable}, columns, pgx.CopyFromSlice(len(ps), func(i int) ([]any, error) {
		return row(&ps[i]), nil
	})); err != nil {
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
func row(p *contract.Position) []any {
	var event any
	if p.EventID != "" {
		event = parseUUID(p.EventID)
	}
	var sats any
	if p.Sats != nil {
		sats = int16(*p.Sats) // Validate bounds sats to 0..255
	}
	var attrs any
	if len(p.Attrs) > 0 {
		attrs = []byte(p.Attrs)
	}
	return []any{p.DeviceID, p.TS, event, p.Lat, p.Lon, f32(p.Alt), f32(p.Speed), f32(p.Heading), sats, attrs}
}

func f32(v *float64) any {
	if v == nil {
		return nil
	}
	return float32(*v)
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
