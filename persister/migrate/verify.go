package migrate

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Problem is one difference between the database and the schema the
// migrations promise.
type Problem struct {
	// Kind is a stable word for metrics: table, column, column_type,
	// not_null, default, primary_key, index, hypertable.
	Kind string
	// Detail names the object, e.g. "column positions.faulty is missing".
	Detail string
}

func (p Problem) String() string { return p.Detail }

func joinProblems(ps []Problem) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Detail
	}
	return strings.Join(s, "; ")
}

// column is one column the migrations promise.
type column struct {
	name       string
	typ        string // as format_type prints it
	notNull    bool
	hasDefault bool
}

// positionsColumns is the positions table of the wire contract
// (docs/persister.md, Schema).
var positionsColumns = []column{
	{"device_id", "text", true, false},
	{"ts", "timestamp with time zone", true, false},
	{"event_id", "uuid", false, false},
	{"lat", "double precision", false, false},
	{"lon", "double precision", false, false},
	{"alt", "real", false, false},
	{"speed", "real", false, false},
	{"heading", "real", false, false},
	{"sats", "smallint", false, false},
	{"attrs", "jsonb", false, false},
	{"received_at", "timestamp with time zone", true, true},
	{"faulty", "boolean", true, true},
}

var (
	positionsPK    = []string{"device_id", "ts"}
	positionsIndex = []string{"event_id", "ts"}
)

func verify(ctx context.Context, conn *pgx.Conn, timescale bool) ([]Problem, error) {
	var problems []Problem
	add := func(kind, format string, args ...any) {
		problems = append(problems, Problem{Kind: kind, Detail: fmt.Sprintf(format, args...)})
	}

	ok, err := tableExists(ctx, conn, BookkeepingTable)
	if err != nil {
		return nil, err
	}
	if !ok {
		add("table", "table %s is missing", BookkeepingTable)
	}
	ok, err = tableExists(ctx, conn, "positions")
	if err != nil {
		return nil, err
	}
	if !ok {
		add("table", "table positions is missing")
		return problems, nil
	}

	type actual struct {
		typ        string
		notNull    bool
		hasDefault bool
	}
	cols := map[string]actual{}
	rows, err := conn.Query(ctx, `
		SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef
		FROM pg_attribute a
		WHERE a.attrelid = to_regclass('positions') AND a.attnum > 0 AND NOT a.attisdropped`)
	if err != nil {
		return nil, fmt.Errorf("verify columns: %w", err)
	}
	for rows.Next() {
		var name string
		var a actual
		if err := rows.Scan(&name, &a.typ, &a.notNull, &a.hasDefault); err != nil {
			rows.Close()
			return nil, err
		}
		cols[name] = a
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("verify columns: %w", err)
	}
	for _, c := range positionsColumns {
		a, ok := cols[c.name]
		switch {
		case !ok:
			add("column", "column positions.%s is missing", c.name)
			continue
		case a.typ != c.typ:
			add("column_type", "column positions.%s has type %s, want %s", c.name, a.typ, c.typ)
		}
		if c.notNull && !a.notNull {
			add("not_null", "column positions.%s lost NOT NULL", c.name)
		}
		if c.hasDefault && !a.hasDefault {
			add("default", "column positions.%s lost its default", c.name)
		}
	}

	// Every valid index with its key columns in order.
	rows, err = conn.Query(ctx, `
		SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.ord)
		FROM pg_index i
		CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = to_regclass('positions') AND i.indisvalid
		GROUP BY i.indexrelid, i.indisprimary`)
	if err != nil {
		return nil, fmt.Errorf("verify indexes: %w", err)
	}
	var pk []string
	var hasPK, hasIndex bool
	for rows.Next() {
		var primary bool
		var keys []string
		if err := rows.Scan(&primary, &keys); err != nil {
			rows.Close()
			return nil, err
		}
		if primary {
			hasPK, pk = true, keys
		}
		// The index may lead with event_id and ts; more trailing columns
		// still serve the query.
		if len(keys) >= 2 && slices.Equal(keys[:2], positionsIndex) {
			hasIndex = true
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("verify indexes: %w", err)
	}
	switch {
	case !hasPK:
		add("primary_key", "primary key (device_id, ts) of positions is missing")
	case !slices.Equal(pk, positionsPK):
		add("primary_key", "primary key of positions is (%s), want (device_id, ts)", strings.Join(pk, ", "))
	}
	if !hasIndex {
		add("index", "index on positions (event_id, ts) is missing")
	}

	if timescale {
		var hyper bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
			WHERE hypertable_name = 'positions' AND hypertable_schema = current_schema())`).Scan(&hyper); err != nil {
			return nil, fmt.Errorf("verify hypertable: %w", err)
		}
		if !hyper {
			add("hypertable", "positions is not a hypertable")
		}
	}
	return problems, nil
}
