package directus

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// InsertUsers writes users into the Directus tables of dsn (created by
// testkit.SeedDirectusTables, or by a real Directus): a directus_roles row
// for each role, the directus_users row, and for an admin an "Administrator"
// policy with admin_access attached through directus_access, as Directus 11
// and 12 store them. Rows that exist already are left alone.
func InsertUsers(tb TB, dsn string, users ...User) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		tb.Fatalf("directus stand-in: connect: %v", err)
	}
	defer conn.Close(ctx)
	for _, u := range users {
		var role any
		if u.Role != "" {
			role = u.Role
			if _, err := conn.Exec(ctx, `INSERT INTO directus_roles (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING`, u.Role, "role "+u.Role[:8]); err != nil {
				tb.Fatalf("directus stand-in: insert role: %v", err)
			}
		}
		status := "active"
		if u.Suspended {
			status = "suspended"
		}
		if _, err := conn.Exec(ctx, `INSERT INTO directus_users (id, email, status, role) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
			u.ID, u.Email, status, role); err != nil {
			tb.Fatalf("directus stand-in: insert user: %v", err)
		}
		if u.Admin {
			pid := NewID()
			if _, err := conn.Exec(ctx, `INSERT INTO directus_policies (id, name, admin_access, app_access) VALUES ($1, 'Administrator', true, true)`, pid); err != nil {
				tb.Fatalf("directus stand-in: insert policy: %v", err)
			}
			if _, err := conn.Exec(ctx, `INSERT INTO directus_access (id, "user", policy) VALUES ($1, $2, $3)`, NewID(), u.ID, pid); err != nil {
				tb.Fatalf("directus stand-in: insert access: %v", err)
			}
		}
	}
}
