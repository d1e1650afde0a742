package authsvc

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"trm-live/contract/auth"
	"trm-live/testkit"
	"trm-live/testkit/directus"
)

// world is the Directus data of the event tests: two organizations, an
// event in each, a member of the first, an outsider and an admin.
type world struct {
	orgA, orgB, eventA, eventB string
	member, outsider, admin    auth.User
}

func seedWorld(h *harness) world {
	h.t.Helper()
	w := world{orgA: directus.NewID(), orgB: directus.NewID(), eventA: directus.NewID(), eventB: directus.NewID()}
	users := []directus.User{
		h.dir.AddUser(directus.User{Role: directus.NewID()}),
		h.dir.AddUser(directus.User{Role: directus.NewID()}),
		h.dir.AddUser(directus.User{Role: directus.NewID(), Admin: true}),
	}
	directus.InsertUsers(h.t, h.dsn, users...)
	w.member = auth.User{ID: users[0].ID, Role: users[0].Role}
	w.outsider = auth.User{ID: users[1].ID, Role: users[1].Role}
	w.admin = auth.User{ID: users[2].ID, Role: users[2].Role, Admin: true}
	h.sql(`INSERT INTO organizations (id, name) VALUES ($1, 'A'), ($2, 'B')`, w.orgA, w.orgB)
	h.sql(`INSERT INTO events (id, organization_id, name) VALUES ($1, $2, 'race A'), ($3, $4, 'race B')`, w.eventA, w.orgA, w.eventB, w.orgB)
	h.sql(`INSERT INTO organization_users (id, organization_id, user_id) VALUES ($1, $2, $3)`, directus.NewID(), w.orgA, w.member.ID)
	return w
}

func TestEventAuthorization(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := seedWorld(h)
	unknown := directus.NewID()
	cases := []struct {
		name  string
		user  auth.User
		event string
		want  auth.Decision
	}{
		{"member, own organization", w.member, w.eventA, auth.Allowed},
		{"member, other organization", w.member, w.eventB, auth.Forbidden},
		{"non-member", w.outsider, w.eventA, auth.Forbidden},
		{"admin, any organization", w.admin, w.eventA, auth.Allowed},
		{"admin, other organization", w.admin, w.eventB, auth.Allowed},
		{"unknown event", w.member, unknown, auth.NotFound},
		{"unknown event, admin", w.admin, unknown, auth.NotFound},
		{"unknown user", auth.User{ID: directus.NewID()}, w.eventA, auth.Forbidden},
	}
	for _, c := range cases {
		got, err := h.authorize(c.user, c.event)
		if err != nil || got != c.want {
			t.Errorf("%s: got %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	// Malformed ids are bad requests, not decisions.
	for name, req := range map[string][2]string{
		"event not a uuid": {w.member.ID, "not-a-uuid"},
		"event upper case": {w.member.ID, strings.ToUpper(w.eventA)},
		"event empty":      {w.member.ID, ""},
		"event sql":        {w.member.ID, "' OR 1=1 --"},
		"user not a uuid":  {"admin", w.eventA},
		"user empty":       {"", w.eventA},
	} {
		_, err := h.authorize(auth.User{ID: req[0]}, req[1])
		wantErr(t, err, auth.ErrBadRequest)
		if errors.Is(err, auth.ErrUnauthorized) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// Every decision is cached: asking again makes no database query.
	queries := h.counter("authsvc_db_query_duration_seconds", "result", "ok")
	for _, c := range cases {
		if got, err := h.authorize(c.user, c.event); err != nil || got != c.want {
			t.Fatalf("%s (cached): got %q, %v", c.name, got, err)
		}
	}
	if q := h.counter("authsvc_db_query_duration_seconds", "result", "ok"); q != queries {
		t.Fatalf("cached decisions made %v database queries", q-queries)
	}
}

// TestMembershipRemovedForbiddenAfterTTL: a removed member keeps access from
// cache until EventTTL, then is forbidden; a new member waits at most
// EventDenyTTL.
func TestMembershipRemovedForbiddenAfterTTL(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.EventTTL = 30 * time.Second; c.EventDenyTTL = 5 * time.Second }))
	w := seedWorld(h)
	decide := func(u auth.User, want auth.Decision) {
		t.Helper()
		if got, err := h.authorize(u, w.eventA); err != nil || got != want {
			t.Fatalf("got %q, %v; want %q", got, err, want)
		}
	}
	decide(w.member, auth.Allowed)
	h.sql(`DELETE FROM organization_users WHERE user_id = $1`, w.member.ID)
	h.clock.Advance(29 * time.Second)
	decide(w.member, auth.Allowed) // cached
	h.clock.Advance(time.Second)
	decide(w.member, auth.Forbidden)

	decide(w.outsider, auth.Forbidden)
	h.sql(`INSERT INTO organization_users (id, organization_id, user_id) VALUES ($1, $2, $3)`, directus.NewID(), w.orgA, w.outsider.ID)
	h.clock.Advance(4 * time.Second)
	decide(w.outsider, auth.Forbidden) // cached
	h.clock.Advance(time.Second)
	decide(w.outsider, auth.Allowed)
}

// TestDatabaseDownIsUnavailableAndRecovers runs on a private PostgreSQL that
// the test stops and starts again.
func TestDatabaseDownIsUnavailableAndRecovers(t *testing.T) {
	t.Parallel()
	pg := testkit.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	testkit.SeedDirectusTables(t, dsn)
	h := newHarness(t, withDSN(dsn), withConfig(func(c *Config) { c.DBTimeout = time.Second }))
	w := seedWorld(h)

	if d, err := h.authorize(w.member, w.eventA); err != nil || d != auth.Allowed {
		t.Fatalf("before outage: %q, %v", d, err)
	}
	pg.Stop()
	_, err := h.authorize(w.outsider, w.eventA)
	wantErr(t, err, auth.ErrUnavailable)
	if code, body := httpGet(t, h.http+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, `"database"`) {
		t.Fatalf("/readyz with the database down: %d %s", code, body)
	}
	// Cached decisions still answer during the outage.
	if d, err := h.authorize(w.member, w.eventA); err != nil || d != auth.Allowed {
		t.Fatalf("cached during outage: %q, %v", d, err)
	}
	pg.Start()
	testkit.Eventually(t, 20*time.Second, func() error {
		d, err := h.client.Authorize(context.Background(), w.outsider, w.eventA)
		if err != nil {
			return err
		}
		if d != auth.Forbidden {
			t.Fatalf("after recovery: %q", d)
		}
		return nil
	})
	if v := h.counter("authsvc_requests_total", "endpoint", "event", "outcome", "forbidden"); v != 1 {
		t.Fatalf("forbidden answers = %v: the unavailable answer was cached or miscounted", v)
	}
}

// TestConcurrentIdenticalDecisionsCollapse: 500 concurrent identical event
// authorizations make one database query.
func TestConcurrentIdenticalDecisionsCollapse(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := seedWorld(h)
	const n = 500
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		go func() {
			<-start
			d, err := h.client.Authorize(context.Background(), w.member, w.eventA)
			if err == nil && d != auth.Allowed {
				err = errors.New("decision " + string(d))
			}
			errs <- err
		}()
	}
	close(start)
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if q := h.counter("authsvc_db_query_duration_seconds", "result", "ok"); q != 1 {
		t.Fatalf("%v database queries for %d identical decisions, want 1", q, n)
	}
}
