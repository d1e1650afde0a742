package simulate

import (
	"context"
	"crypto/sha1"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Demo identities seeded for the viewer and for manual tests.
const (
	DemoOrganization = "Demo Racing Club"
	DemoUserEmail    = "demo@trm-live.local"
	OutsiderEmail    = "outsider@trm-live.local"
)

// Seeded is what Seed wrote.
type Seeded struct {
	OrganizationID string
	EventIDs       []string
	DemoUserID     string // member of the organization
	OutsiderID     string // not a member of any organization
}

// StableUUID derives a UUID (version 5 layout, SHA-1 of name) so that
// seeding twice gives the same ids.
func StableUUID(name string) string {
	h := sha1.Sum([]byte("trm-live/simulate:" + name))
	h[6] = h[6]&0x0f | 0x50
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// Seed applies schemaSQL (deploy/seed/directus-standin.sql: creates only
// missing tables) and then, idempotently, the demo organization, `events`
// events, an open-ended event_devices row per device (device i in event i
// mod events), and two users: one member of the organization, one outsider.
// Existing assignments of these devices to other events are removed, so a
// re-run with another event count converges.
func Seed(ctx context.Context, conn *pgx.Conn, schemaSQL string, devices []string, events int) (Seeded, error) {
	if events < 1 {
		events = 1
	}
	if _, err := conn.Exec(ctx, schemaSQL); err != nil {
		return Seeded{}, fmt.Errorf("apply stand-in schema: %w", err)
	}
	s := Seeded{
		OrganizationID: StableUUID("organization:demo"),
		DemoUserID:     StableUUID("user:demo"),
		OutsiderID:     StableUUID("user:outsider"),
	}
	role := StableUUID("role:viewer")
	tx, err := conn.Begin(ctx)
	if err != nil {
		return Seeded{}, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	exec := func(sql string, args ...any) {
		if err == nil {
			_, err = tx.Exec(ctx, sql, args...)
		}
	}
	exec(`INSERT INTO organizations (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING`, s.OrganizationID, DemoOrganization)
	exec(`INSERT INTO directus_roles (id, name) VALUES ($1, 'Viewer') ON CONFLICT DO NOTHING`, role)
	exec(`INSERT INTO directus_users (id, first_name, last_name, email, status, role) VALUES ($1, 'Demo', 'Viewer', $2, 'active', $3) ON CONFLICT DO NOTHING`,
		s.DemoUserID, DemoUserEmail, role)
	exec(`INSERT INTO directus_users (id, first_name, last_name, email, status, role) VALUES ($1, 'Out', 'Sider', $2, 'active', $3) ON CONFLICT DO NOTHING`,
		s.OutsiderID, OutsiderEmail, role)
	exec(`INSERT INTO organization_users (id, organization_id, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		StableUUID("member:demo"), s.OrganizationID, s.DemoUserID)
	for e := 0; e < events; e++ {
		id := StableUUID(fmt.Sprintf("event:%d", e))
		s.EventIDs = append(s.EventIDs, id)
		exec(`INSERT INTO events (id, organization_id, name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
			id, s.OrganizationID, fmt.Sprintf("Monza Endurance Day, race %d", e+1))
	}
	ids := make([]string, len(devices))
	evs := make([]string, len(devices))
	for i, d := range devices {
		evs[i] = s.EventIDs[i%events]
		ids[i] = StableUUID("assignment:" + d + ":" + evs[i])
	}
	exec(`DELETE FROM event_devices WHERE device_id = ANY($1) AND NOT (id = ANY($2::uuid[]))`, devices, ids)
	exec(`INSERT INTO event_devices (id, event_id, device_id)
		SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[]) ON CONFLICT DO NOTHING`, ids, evs, devices)
	if err != nil {
		return Seeded{}, fmt.Errorf("seed: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Seeded{}, fmt.Errorf("seed commit: %w", err)
	}
	return s, nil
}
