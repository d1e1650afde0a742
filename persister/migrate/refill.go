package migrate

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// RefillMarker is the comment the repair that re-creates positions (its
// rows were lost: DROP TABLE) puts on it in the same transaction: rows the
// stream still retains must be refilled. A first creation is not marked:
// the new durable consumer delivers the whole stream. The persister removes it when a refill of that same table
// (same OID) has finished, so a refill cut short by a crash is started again
// by whichever persister sees the marker next.
const RefillMarker = "trm-live persister: refill from POSITIONS pending"

// markIfCreated comments positions with RefillMarker, inside tx, when it
// did not exist before tx ran its migrations and exists now: the creation
// and the marker commit together.
func markIfCreated(ctx context.Context, tx pgx.Tx, schema string, existedBefore bool) error {
	if existedBefore {
		return nil
	}
	name := pgx.Identifier{schema, "positions"}.Sanitize()
	var now bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&now); err != nil {
		return fmt.Errorf("probe positions: %w", err)
	}
	if !now {
		return nil
	}
	if _, err := tx.Exec(ctx, `COMMENT ON TABLE `+name+` IS '`+RefillMarker+`'`); err != nil {
		return fmt.Errorf("mark positions for refill: %w", err)
	}
	return nil
}

// RefillPending reports positions' OID and whether it still carries
// RefillMarker. A missing table is (0, false, nil).
func (m *Migrator) RefillPending(ctx context.Context) (oid uint32, pending bool, err error) {
	var comment *string
	err = m.pool.QueryRow(ctx, `SELECT c.oid, obj_description(c.oid, 'pg_class')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = current_schema() AND c.relname = 'positions'`).Scan(&oid, &comment)
	if err == pgx.ErrNoRows {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read the refill marker: %w", err)
	}
	return oid, comment != nil && *comment == RefillMarker, nil
}

// ClearRefill removes RefillMarker from positions if positions is still
// the table with that OID (a table re-created since keeps its own marker).
func (m *Migrator) ClearRefill(ctx context.Context, oid uint32) error {
	_, err := m.pool.Exec(ctx, fmt.Sprintf(`DO $$BEGIN
		IF (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = current_schema() AND c.relname = 'positions') = %d THEN
			COMMENT ON TABLE positions IS NULL;
		END IF;
	END$$`, oid))
	if err != nil {
		return fmt.Errorf("clear the refill marker: %w", err)
	}
	return nil
}
