package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"trm-live/contract"
	"trm-live/contract/ws"
	"trm-live/testkit"
	"trm-live/testkit/directus"
)

// reauthEnv is the settings both re-authorization tests run authsvc and
// the broadcaster with: sessions re-validated every second, authsvc's
// session cache (which the re-validation may be served from) one second.
var reauthEnv = map[string]string{"BROADCASTER_REAUTH_INTERVAL": "1s"}

// TestReauthWithStandIn runs authsvc and the broadcaster as processes in
// front of the Directus stand-in: a logged-out session's open socket is
// closed with 4401 at the next re-authorization; an admin following an
// event with no members, demoted in Directus, gets a forbidden error for
// the topic and no positions after it, and a new socket of the same user
// is refused the subscription (the admin's decision is not reused).
func TestReauthWithStandIn(t *testing.T) {
	t.Parallel()
	dir := artifacts(t)
	dsn := testkit.Postgres(t)
	testkit.SeedDirectusTables(t, dsn)
	pool := testkit.Pool(t, dsn)
	dx := directus.Start(t)
	member := dx.AddUser(directus.User{Role: directus.NewID()})
	adminU := dx.AddUser(directus.User{Role: directus.NewID(), Admin: true, AppAccess: true})
	directus.InsertUsers(t, dsn, member, adminU)
	org, org2, ev, empty := directus.NewID(), directus.NewID(), directus.NewID(), directus.NewID()
	ctx := context.Background()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO organizations (id, name) VALUES ($1, 'org'), ($2, 'nobody''s')`, []any{org, org2}},
		{`INSERT INTO events (id, organization_id, name) VALUES ($1, $2, 'race')`, []any{ev, org}},
		{`INSERT INTO events (id, organization_id, name) VALUES ($1, $2, 'no members')`, []any{empty, org2}},
		{`INSERT INTO organization_users (id, organization_id, user_id) VALUES ($1, $2, $3)`, []any{directus.NewID(), org, member.ID}},
	} {
		if _, err := pool.Exec(ctx, q.sql, q.args...); err != nil {
			t.Fatalf("e2e: %s: %v", q.sql, err)
		}
	}
	n := testkit.StartNATS(t)
	ensureStreams(t, n)
	st := startAuthStack(t, dir, n, dx.URL, dsn, reauthEnv)
	js := n.JetStream(t)
	publish := func(eventID, device string, ts time.Time) {
		t.Helper()
		p := contract.Position{DeviceID: device, EventID: eventID, TS: ts.UTC().Truncate(time.Millisecond), Lat: 45.1, Lon: 7.6}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := js.Publish(ctx, p.Subject(), p.Encode()); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("logout closes the open socket", func(t *testing.T) {
		cookie := dx.Login(t, member)
		c := mustDialWS(t, st.wsURL, cookie)
		if f := c.subscribe(t, ev, "m1"); f.Type != ws.TypeSubscribed {
			t.Fatalf("member subscribe: %+v", f)
		}
		dx.Logout(t, cookie)
		if code := c.closeCode(t, 30*time.Second); code != ws.CloseUnauthorized {
			t.Fatalf("close code %d, want %d", code, ws.CloseUnauthorized)
		}
	})

	t.Run("demoted admin", func(t *testing.T) {
		cookie := dx.Login(t, adminU)
		c := mustDialWS(t, st.wsURL, cookie)
		if f := c.subscribe(t, empty, "a1"); f.Type != ws.TypeSubscribed {
			t.Fatalf("admin subscribe: %+v", f)
		}
		t0 := time.Now().Add(-time.Hour)
		publish(empty, "e2e-adm-1", t0)
		for f := c.next(t, 15*time.Second); f.Type != ws.TypePositions; f = c.next(t, 15*time.Second) {
		}

		demoted := adminU
		demoted.Admin, demoted.AppAccess = false, false
		dx.UpdateUser(demoted)
		for {
			f := c.next(t, 30*time.Second)
			if f.Type == ws.TypePositions {
				continue // published before the demotion took effect
			}
			if f.Type != ws.TypeError || f.Code != ws.CodeForbidden || f.Topic != ws.EventTopic(empty) || f.ID != "" ||
				!strings.Contains(f.Message, "admin access withdrawn") {
				t.Fatalf("after demotion: %+v, want forbidden for the topic", f)
			}
			break
		}
		// No positions after the error: a later one, then a request whose
		// answer comes after anything already queued for the socket.
		publish(empty, "e2e-adm-1", t0.Add(time.Second))
		c.send(t, ws.Request{Type: ws.TypeUnsubscribe, Topic: ws.EventTopic(empty), ID: "a2"})
		for {
			f := c.next(t, 15*time.Second)
			if f.Type == ws.TypePositions {
				t.Fatalf("positions after the demotion: %+v", f)
			}
			if f.ID == "a2" {
				break // bad_request: not subscribed any more
			}
		}

		// A new socket of the same (no longer admin) user is refused.
		c2 := mustDialWS(t, st.wsURL, cookie)
		if f := c2.subscribe(t, empty, "a3"); f.Type != ws.TypeError || f.Code != ws.CodeForbidden {
			t.Fatalf("new socket after demotion: %+v, want forbidden", f)
		}
	})
}

// TestReauthRealDirectus: against the real Directus of scripts/test, a
// member's open socket is closed with 4401 at the next re-authorization
// after the member logs out.
func TestReauthRealDirectus(t *testing.T) {
	t.Parallel()
	d := realDirectus(t)
	a := directusAdmin(t, d)
	fx := a.newFixture(t, testkit.Unique("reauth"))
	dir := artifacts(t)
	n := testkit.StartNATS(t)
	ensureStreams(t, n)
	st := startAuthStack(t, dir, n, d.URL, d.DatabaseURL, reauthEnv)

	member := login(t, d.URL, fx.Member.Email, fx.Member.Password)
	c := mustDialWS(t, st.wsURL, member)
	if f := c.subscribe(t, fx.EventID, "m1"); f.Type != ws.TypeSubscribed {
		t.Fatalf("member subscribe: %+v", f)
	}
	idle := mustDialWS(t, st.wsURL, member) // no subscription
	logout(t, d.URL, member)
	for name, s := range map[string]*wsClient{"subscribed": c, "idle": idle} {
		if code := s.closeCode(t, 30*time.Second); code != ws.CloseUnauthorized {
			t.Fatalf("%s socket: close code %d, want %d", name, code, ws.CloseUnauthorized)
		}
	}
}
