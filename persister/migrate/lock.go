package migrate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// lockPoll is how often a waiting Apply tries the advisory lock again.
const lockPoll = 200 * time.Millisecond

// lock takes the advisory lock on conn, waiting at most Options.LockWait.
// While it waits it logs once who holds it; past the wait it returns
// ErrLockTimeout naming the holder.
func (m *Migrator) lock(ctx context.Context, conn *pgx.Conn) error {
	deadline := time.Now().Add(m.opts.LockWait)
	logged := false
	for {
		var ok bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", LockKey).Scan(&ok); err != nil {
			return fmt.Errorf("advisory lock: %w", err)
		}
		if ok {
			return nil
		}
		h, err := lockHolder(ctx, conn)
		if err != nil {
			return err
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%w for %s: %s", ErrLockTimeout, m.opts.LockWait, h)
		}
		if !logged {
			m.log.Info("migration lock held by another session: waiting", "holder_pid", h.pid,
				"holder_application_name", h.app, "holder_client_addr", h.addr, "holder_user", h.user,
				"wait_max", m.opts.LockWait.String())
			logged = true
		}
		t := time.NewTimer(min(lockPoll, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("advisory lock: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// holder is the session holding the advisory lock, as pg_stat_activity
// shows it to this role (client_addr is NULL for another role's session
// unless this role may read all statistics).
type holder struct {
	pid             int32
	app, addr, user string
}

func (h holder) String() string {
	if h.pid == 0 {
		return "held by a session that released it while we looked"
	}
	return fmt.Sprintf("held by pid %d (application_name %q, client_addr %q, user %q)", h.pid, h.app, h.addr, h.user)
}

// lockHolder reads who holds LockKey in this database. A bigint advisory
// key shows in pg_locks as classid (high 32 bits), objid (low 32 bits) and
// objsubid 1.
func lockHolder(ctx context.Context, conn *pgx.Conn) (holder, error) {
	var h holder
	err := conn.QueryRow(ctx, `SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), ''), coalesce(a.usename::text, '')
		FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
		AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND l.classid::bigint = $1 AND l.objid::bigint = $2
		LIMIT 1`, LockKey>>32, LockKey&0xffffffff).Scan(&h.pid, &h.app, &h.addr, &h.user)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return h, fmt.Errorf("advisory lock holder: %w", err)
	}
	return h, nil
}
