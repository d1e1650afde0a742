package authsvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"trm-live/contract/auth"
)

// membershipQuery finds the event's organization and whether the user
// belongs to it, in one round trip. No row: the event does not exist.
const membershipQuery = `
SELECT EXISTS (
    SELECT 1 FROM organization_users ou
    WHERE ou.organization_id = e.organization_id AND ou.user_id = $2
)
FROM events e
WHERE e.id = $1`

// membership decides event access from the Directus tables in PostgreSQL.
type membership struct {
	pool    *pgxpool.Pool
	timeout time.Duration
	m       *metrics
	log     *slog.Logger
	down    atomic.Bool // for logging transitions only
}

// decide returns allowed, forbidden or not_found for (user, admin, event),
// or errUnavailable (wrapped) when the database could not answer. Admins are
// allowed on every event that exists.
func (b *membership) decide(ctx context.Context, userID string, admin bool, eventID string) (auth.Decision, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	start := time.Now()
	var member bool
	err := b.pool.QueryRow(ctx, membershipQuery, eventID, userID).Scan(&member)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		b.m.db.WithLabelValues("error").Observe(time.Since(start).Seconds())
		b.m.dbUp.Set(0)
		if b.down.CompareAndSwap(false, true) {
			b.log.Warn("database unavailable; answering unavailable for uncached event decisions", "err", err)
		}
		return "", fmt.Errorf("%w: membership query: %v", errUnavailable, err)
	}
	b.m.db.WithLabelValues("ok").Observe(time.Since(start).Seconds())
	b.m.dbUp.Set(1)
	if b.down.CompareAndSwap(true, false) {
		b.log.Info("database reachable again")
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return auth.NotFound, nil
	case admin || member:
		return auth.Allowed, nil
	default:
		return auth.Forbidden, nil
	}
}
