package migrate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Problem is one difference between the database and the schema the
// migrations promise.
type Problem struct {
	// Kind is a stable word for metrics: table, column, column_type,
	// not_null, default, primary_key, index, hypertable; and the kinds
	// Apply refuses instead of repairing: relkind, owner, trigger, rule,
	// row_security.
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

// Kinds of Problem that re-applying the files cannot and must not mend:
// objects on positions the persister did not create. Apply refuses with
// ErrUntrusted naming them; a person decides whether they stay.
var untrustedKinds = map[string]bool{"relkind": true, "owner": true, "trigger": true, "rule": true, "row_security": true}

// timescaleTriggerSchemas hold TimescaleDB's own trigger functions
// (ts_insert_blocker on every hypertable, the continuous aggregate
// invalidation trigger): triggers calling them are not foreign.
var timescaleTriggerSchemas = []string{"_timescaledb_functions", "_timescaledb_internal"}

// currentSchema is the schema unqualified names resolve to for creation:
// the first schema of search_path that exists. The files create positions
// there, and the writers' unqualified positions finds it there first.
func currentSchema(ctx context.Context, conn *pgx.Conn) (string, error) {
	var s *string
	if err := conn.QueryRow(ctx, "SELECT current_schema()").Scan(&s); err != nil {
		return "", fmt.Errorf("current schema: %w", err)
	}
	if s == nil {
		return "", errors.New("no schema of search_path exists: set search_path to the schema that holds positions")
	}
	return *s, nil
}

// displayName is schema.table for messages, each part quoted only where
// PostgreSQL would need it.
func displayName(schema, table string) string {
	q := func(s string) string {
		for i, r := range s {
			if !(r == '_' || r >= 'a' && r <= 'z' || i > 0 && (r >= '0' && r <= '9' || r == '$')) {
				return pgx.Identifier{s}.Sanitize()
			}
		}
		return s
	}
	return q(schema) + "." + q(table)
}

// relation is positions as the catalog has it.
type relation struct {
	oid      uint32
	kind     string // pg_class.relkind: r for a table (a hypertable too)
	owner    string
	ours     bool // owned by current_user, the persister's role
	rls      bool
	forceRLS bool
}

// lookup finds schema.table without search_path: nil when it is missing.
func lookup(ctx context.Context, conn *pgx.Conn, schema, table string) (*relation, error) {
	var r relation
	err := conn.QueryRow(ctx, `SELECT c.oid, c.relkind::text, pg_get_userbyid(c.relowner),
		c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user), c.relrowsecurity, c.relforcerowsecurity
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, schema, table).Scan(&r.oid, &r.kind, &r.owner, &r.ours, &r.rls, &r.forceRLS)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("probe table %s: %w", displayName(schema, table), err)
	}
	return &r, nil
}

func verify(ctx context.Context, conn *pgx.Conn, timescale bool) ([]Problem, error) {
	var problems []Problem
	add := func(kind, format string, args ...any) {
		problems = append(problems, Problem{Kind: kind, Detail: fmt.Sprintf(format, args...)})
	}
	schema, err := currentSchema(ctx, conn)
	if err != nil {
		return nil, err
	}
	table := displayName(schema, "positions")

	book, err := lookup(ctx, conn, schema, BookkeepingTable)
	if err != nil {
		return nil, err
	}
	if book == nil {
		add("table", "table %s is missing", displayName(schema, BookkeepingTable))
	}
	rel, err := lookup(ctx, conn, schema, "positions")
	if err != nil {
		return nil, err
	}
	if rel == nil {
		add("table", "table %s is missing", table)
		return problems, nil
	}
	if rel.kind != "r" {
		add("relkind", "%s is not a plain table (relkind %s): the persister writes only into the table it created", table, rel.kind)
		return problems, nil
	}
	if err := verifyTrust(ctx, conn, rel, table, add); err != nil {
		return nil, err
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
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped`, rel.oid)
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
		WHERE i.indrelid = $1 AND i.indisvalid
		GROUP BY i.indexrelid, i.indisprimary`, rel.oid)
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
			WHERE hypertable_name = 'positions' AND hypertable_schema = $1)`, schema).Scan(&hyper); err != nil {
			return nil, fmt.Errorf("verify hypertable: %w", err)
		}
		if !hyper {
			add("hypertable", "%s is not a hypertable", table)
		}
	}
	return problems, nil
}

// verifyTrust reports what on positions could take rows away from the
// table after the persister counted them written: another owner (who may
// add any of the rest at any time), user triggers (a BEFORE INSERT trigger
// returning NULL makes an insert a silent no-op, counted as a duplicate),
// rules (DO INSTEAD) and forced row-level security (it applies to the
// owner's writes too). Row-level security enabled without FORCE does not
// apply to the owner, which the owner check makes the persister.
func verifyTrust(ctx context.Context, conn *pgx.Conn, rel *relation, table string, add func(kind, format string, args ...any)) error {
	if !rel.ours {
		add("owner", "%s is owned by role %s, not by the persister's role: only the persister may own it", table, rel.owner)
	}
	if rel.forceRLS {
		add("row_security", "%s has FORCE ROW LEVEL SECURITY: policies could hide or refuse the persister's rows", table)
	}
	rows, err := conn.Query(ctx, `SELECT t.tgname, n.nspname, p.proname
		FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE t.tgrelid = $1 AND NOT t.tgisinternal ORDER BY t.tgname`, rel.oid)
	if err != nil {
		return fmt.Errorf("verify triggers: %w", err)
	}
	for rows.Next() {
		var name, fnSchema, fn string
		if err := rows.Scan(&name, &fnSchema, &fn); err != nil {
			rows.Close()
			return err
		}
		if slices.Contains(timescaleTriggerSchemas, fnSchema) {
			continue
		}
		add("trigger", "%s has trigger %s (function %s) that the persister did not create: a trigger may divert or drop rows",
			table, pgx.Identifier{name}.Sanitize(), displayName(fnSchema, fn))
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("verify triggers: %w", err)
	}
	rows, err = conn.Query(ctx, `SELECT rulename FROM pg_rewrite WHERE ev_class = $1 AND rulename <> '_RETURN' ORDER BY rulename`, rel.oid)
	if err != nil {
		return fmt.Errorf("verify rules: %w", err)
	}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return err
		}
		add("rule", "%s has rule %s that the persister did not create: a rule may divert or drop rows", table, pgx.Identifier{name}.Sanitize())
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("verify rules: %w", err)
	}
	return nil
}
