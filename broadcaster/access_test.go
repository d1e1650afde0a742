package broadcaster

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"trm-live/contract/auth"
	"trm-live/contract/ws"
)

// TestReauthLogout: a session that authsvc stops accepting (logout,
// expiry, revocation) closes every open socket of it with 4401 at the next
// re-authorization, with or without subscriptions; another session of the
// same user stays open.
func TestReauthLogout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.ReauthInterval = time.Second }})
	ev := newEventID()
	e.auth.addEvent(ev, "lou")
	e.auth.user("lou-phone", "lou", false)
	e.auth.user("lou-laptop", "lou", false)
	subscribed := e.connect("lou-phone")
	subscribed.send(subscribe(topicOf(ev), "s"))
	subscribed.expect(ws.TypeSubscribed, "")
	idle := e.connect("lou-phone")
	other := collect(e.connect("lou-laptop"))
	waitFor(t, "three connections", func() bool { return e.metric("broadcaster_connections") == 3 })

	e.auth.logout("lou-phone")
	for name, c := range map[string]*wsClient{"subscribed": subscribed, "idle": idle} {
		if code := c.closeCode(); code != ws.CloseUnauthorized {
			t.Fatalf("%s socket closed %d, want 4401", name, code)
		}
	}
	waitFor(t, "one connection", func() bool { return e.metric("broadcaster_connections") == 1 })
	// The laptop's session lived through that re-authorization and more.
	calls := e.auth.calls[auth.SessionSubject].Load()
	waitFor(t, "another re-authorization", func() bool { return e.auth.calls[auth.SessionSubject].Load() > calls })
	other.c.send(`{}`)
	if f := other.waitControl(t, 1)[0]; f.Code != ws.CodeBadRequest {
		t.Fatalf("laptop got %+v", f)
	}
}

// TestReauthAuthsvcDown: an unavailable authsvc ends no session.
func TestReauthAuthsvcDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.ReauthInterval = time.Second }})
	e.auth.user("k", "k", false)
	k := collect(e.connect("k"))
	waitFor(t, "one connection", func() bool { return e.metric("broadcaster_connections") == 1 })
	e.auth.stop()
	waitFor(t, "a failed re-authorization", func() bool {
		return e.metric("broadcaster_auth_seconds", "endpoint", "session") >= 3
	})
	e.auth.start(t)
	k.c.send(`{}`)
	if f := k.waitControl(t, 1)[0]; f.Code != ws.CodeBadRequest {
		t.Fatalf("got %+v", f)
	}
}

// TestReauthDemotedAdmin: an admin following an event with no members,
// demoted in Directus, gets a forbidden error for the topic at the next
// re-authorization and no positions after it; the topic's NATS
// subscription goes.
func TestReauthDemotedAdmin(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.ReauthInterval = time.Second }})
	ev := newEventID()
	e.auth.addEvent(ev) // no members
	e.auth.user("ada", "ada", true)
	k := collect(e.connect("ada"))
	k.c.send(subscribe(topicOf(ev), "1"))
	k.waitControl(t, 1)
	base := time.Now().Add(-time.Hour).UnixMilli()
	e.publish(ev, "d1", base)
	k.waitLatest(t, topicOf(ev), map[string]int64{"d1": base})

	e.auth.user("ada", "ada", false) // admin access withdrawn
	ctrl := k.waitControl(t, 2)
	if f := ctrl[1]; f.Type != ws.TypeError || f.Code != ws.CodeForbidden || f.Topic != topicOf(ev) || f.ID != "" ||
		!strings.Contains(f.Message, "admin access withdrawn") {
		t.Fatalf("after demotion got %+v, want forbidden for %s", f, topicOf(ev))
	}
	waitFor(t, "the topic's NATS subscription gone", func() bool { return e.natsSubs(ev) == 0 })
	e.publish(ev, "d1", base+1)
	k.c.send(`{}`)
	k.waitControl(t, 3)
	if n := k.received(topicOf(ev)); n != 1 {
		t.Fatalf("got %d positions, want 1 (none after the demotion)", n)
	}
	k.check(t) // no positions frame after the error
}

// TestAdminFlagInDecisionCache: a decision cached for a user's admin
// socket is not served to the same user once not admin, even within the
// re-authorization interval.
func TestAdminFlagInDecisionCache(t *testing.T) {
	t.Parallel()
	e := newEnv(t) // interval 1m: the admin's decision stays cached
	ev := newEventID()
	e.auth.addEvent(ev) // no members
	e.auth.user("ada", "ada", true)
	admin := e.connect("ada")
	admin.send(subscribe(topicOf(ev), "1"))
	admin.expect(ws.TypeSubscribed, "")

	e.auth.user("ada", "ada", false)
	c := e.connect("ada")
	c.send(subscribe(topicOf(ev), "2"))
	if f := c.expect(ws.TypeError, ws.CodeForbidden); f.ID != "2" {
		t.Fatalf("got %+v", f)
	}
}

// TestCredentialShape: a credential that cannot be a Directus one is
// refused with 4401 without an authsvc request.
func TestCredentialShape(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for name, o := range map[string]dialOpt{
		"not a jwt":         {rawCookie: "bogus"},
		"jwt-like, 2 parts": {rawCookie: "eyJhbGciOiJIUzI1NiJ9.eyJpZCI6IjEifQ"},
		"oversized":         {rawCookie: "eyJ" + strings.Repeat("a", 5000) + ".b.c"},
		"short bearer":      {header: http.Header{"Authorization": {"Bearer abc"}}},
		"bearer, bad chars": {header: http.Header{"Authorization": {"Bearer abcdefgh{}[]"}}},
	} {
		c, _, err := e.dial(o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if code := c.closeCode(); code != ws.CloseUnauthorized {
			t.Fatalf("%s: close %d, want 4401", name, code)
		}
	}
	if n := e.auth.calls[auth.SessionSubject].Load(); n != 0 {
		t.Fatalf("authsvc asked %d times for malformed credentials", n)
	}
	// A well-formed unknown one is asked about.
	c, _, err := e.dial(dialOpt{cookie: "unknown"})
	if err != nil {
		t.Fatal(err)
	}
	if code := c.closeCode(); code != ws.CloseUnauthorized {
		t.Fatalf("close %d, want 4401", code)
	}
	if n := e.auth.calls[auth.SessionSubject].Load(); n != 1 {
		t.Fatalf("authsvc asked %d times, want 1", n)
	}
}

// TestHandshakeRateLimit: an address past its burst of refused
// handshakes gets HTTP 429 before any authsvc request, while real users
// of the same address and other addresses are served.
func TestHandshakeRateLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.HandshakeRate = 0.001; c.HandshakeBurst = 5 }})
	e.auth.user("real", "real", false)
	for i := range 5 {
		c, _, err := e.dial(dialOpt{cookie: fmt.Sprint("bogus", i), local: "127.0.0.2"})
		if err != nil {
			t.Fatalf("refused handshake %d: %v", i, err)
		}
		if code := c.closeCode(); code != ws.CloseUnauthorized {
			t.Fatalf("close %d, want 4401", code)
		}
	}
	asked := e.auth.calls[auth.SessionSubject].Load()
	_, resp, err := e.dial(dialOpt{cookie: "bogus-more", local: "127.0.0.2"})
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("sixth refused handshake: err %v resp %v, want 429", err, resp)
	}
	if e.auth.calls[auth.SessionSubject].Load() != asked {
		t.Fatal("authsvc was asked for a rate-limited handshake")
	}
	if e.metric("broadcaster_connections_total", "result", "rate_limited") != 1 {
		t.Fatal("rate_limited not counted")
	}
	// Another address is not limited, and accepted handshakes cost no
	// token: a crowd of real users behind one address gets in.
	for range 10 {
		c, _, err := e.dial(dialOpt{cookie: "real", local: "127.0.0.3"})
		if err != nil {
			t.Fatalf("real user: %v", err)
		}
		c.send(`{}`)
		c.expect(ws.TypeError, ws.CodeBadRequest)
		_ = c.conn.Close()
		waitFor(t, "connection closed", func() bool { return e.metric("broadcaster_connections") == 0 })
	}
}

// TestMaxPendingHandshakes: past the global bound of handshakes waiting
// for authsvc, a new one gets HTTP 429 before any authsvc request.
func TestMaxPendingHandshakes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.MaxPendingHandshakes = 2; c.AuthTimeout = 20 * time.Second }})
	e.auth.user("real", "real", false)
	release := e.auth.hold() // session requests wait
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			c, _, err := e.dial(dialOpt{cookie: "real"})
			if err == nil {
				_ = c.conn.Close()
			}
		})
	}
	waitFor(t, "two handshakes waiting for authsvc", func() bool { return e.srv.gate.pending.Load() == 2 })
	_, resp, err := e.dial(dialOpt{cookie: "real"})
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third handshake: err %v resp %v, want 429", err, resp)
	}
	release()
	wg.Wait()
	if n := e.auth.calls[auth.SessionSubject].Load(); n != 2 {
		t.Fatalf("authsvc asked %d times, want 2", n)
	}
	if e.metric("broadcaster_connections_total", "result", "overloaded") != 1 {
		t.Fatal("overloaded not counted")
	}
	c := e.connect("real")
	c.send(`{}`)
	c.expect(ws.TypeError, ws.CodeBadRequest)
}

// TestMaxHeaderBytes: request headers over the bound get 431 instead of
// being read (net/http's default allows 1 MiB).
func TestMaxHeaderBytes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	req, _ := http.NewRequest(http.MethodGet, "http://"+e.addr+"/healthz", nil)
	req.Header.Set("X-Padding", strings.Repeat("a", 40<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", resp.StatusCode)
	}
	req.Header.Set("X-Padding", strings.Repeat("a", 16<<10))
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d with 16 KiB of headers, want 200", resp.StatusCode)
	}
}
