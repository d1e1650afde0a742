package authsvc

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"trm-live/contract/auth"
	"trm-live/testkit"
	"trm-live/testkit/directus"
)

const cookieHeader = directus.CookieName + "="

func TestSessionValidCookieAndAdmin(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	member := h.dir.AddUser(directus.User{Role: directus.NewID()})
	admin := h.dir.AddUser(directus.User{Role: directus.NewID(), Admin: true, AppAccess: true})
	noRole := h.dir.AddUser(directus.User{NoReadSelf: true})

	tok := h.dir.Login(t, member)
	if got, want := h.mustSession(auth.SessionRequest{Cookie: tok}), (auth.User{ID: member.ID, Role: member.Role}); got != want {
		t.Fatalf("member: got %+v, want %+v", got, want)
	}
	if got, want := h.mustSession(auth.SessionRequest{Cookie: h.dir.Login(t, admin)}), (auth.User{ID: admin.ID, Role: admin.Role, Admin: true}); got != want {
		t.Fatalf("admin: got %+v, want %+v", got, want)
	}
	// A user who may not read directus_users gets {"id"} only: no role.
	if got, want := h.mustSession(auth.SessionRequest{Cookie: h.dir.Login(t, noRole)}), (auth.User{ID: noRole.ID}); got != want {
		t.Fatalf("no read permission: got %+v, want %+v", got, want)
	}

	// What reached Directus for the member: the two calls, the session
	// cookie alone, asking only for id and role.
	var reqs []directus.Request
	for _, r := range h.dir.Requests("") {
		if r.Cookie == cookieHeader+tok {
			reqs = append(reqs, r)
		}
	}
	if len(reqs) != 2 {
		t.Fatalf("member look-up made %d Directus calls, want 2: %+v", len(reqs), reqs)
	}
	for _, r := range reqs {
		if r.Method != http.MethodGet || r.Authorization != "" {
			t.Fatalf("unexpected request %+v", r)
		}
		switch r.Path {
		case "/users/me":
			if r.Query != "fields=id,role" {
				t.Fatalf("/users/me query %q, want fields=id,role", r.Query)
			}
		case "/policies/me/globals":
		default:
			t.Fatalf("unexpected path %s", r.Path)
		}
	}
}

func TestSessionBearer(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	u := h.dir.AddUser(directus.User{Role: directus.NewID(), StaticToken: "static-token-" + directus.NewID()})
	jwt := h.dir.Login(t, u)
	want := auth.User{ID: u.ID, Role: u.Role}
	for name, tok := range map[string]string{"session jwt": jwt, "static token": u.StaticToken} {
		if got := h.mustSession(auth.SessionRequest{Bearer: tok}); got != want {
			t.Fatalf("%s: got %+v, want %+v", name, got, want)
		}
	}
	for _, r := range lookups(h) {
		if r.Cookie != "" || (r.Authorization != "Bearer "+jwt && r.Authorization != "Bearer "+u.StaticToken) {
			t.Fatalf("bearer look-up sent Cookie=%q Authorization=%q", r.Cookie, r.Authorization)
		}
	}
	_, err := h.session(auth.SessionRequest{Bearer: "no-such-static-token"})
	wantErr(t, err, auth.ErrUnauthorized)
}

func TestSessionRejected(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	u := h.dir.AddUser(directus.User{Role: directus.NewID()})
	tok := h.dir.Login(t, u)
	cases := map[string]string{
		"unknown (401 INVALID_CREDENTIALS)":   bogusJWT,
		"wrong signature (403 INVALID_TOKEN)": directus.ForgedToken(tok),
		"expired (401 TOKEN_EXPIRED)":         h.dir.ExpiredToken(u),
	}
	for name, cookie := range cases {
		_, err := h.session(auth.SessionRequest{Cookie: cookie})
		if err == nil {
			t.Fatalf("%s: accepted", name)
		}
		wantErr(t, err, auth.ErrUnauthorized)
	}
	if n := h.dir.Calls("/users/me"); n != len(cases) {
		t.Fatalf("%d /users/me calls, want %d", n, len(cases))
	}

	// Missing or malformed credentials are refused without asking Directus.
	before := h.dir.Calls("")
	for name, payload := range map[string]string{
		"no credential":       `{}`,
		"empty cookie":        `{"cookie":""}`,
		"cookie jar as value": `{"cookie":"theme=dark; ` + cookieHeader + tok + `"}`,
		"header injection":    `{"bearer":"abc\r\nX-Evil: 1"}`,
		"space in bearer":     `{"bearer":"a b"}`,
		"non-ascii":           `{"cookie":"caf\u00e9"}`,
		"cookie not a jwt":    `{"cookie":"bogus"}`,
		"short static token":  `{"bearer":"abc"}`,
	} {
		code, desc, _ := h.raw(auth.SessionSubject, []byte(payload))
		if code != auth.CodeUnauthorized {
			t.Fatalf("%s: code %q (%s), want %s", name, code, desc, auth.CodeUnauthorized)
		}
	}
	if n := h.dir.Calls(""); n != before {
		t.Fatalf("refused credentials reached Directus: %d calls", n-before)
	}
	_, err := h.session(auth.SessionRequest{})
	wantErr(t, err, auth.ErrUnauthorized)
}

// TestCookieJarOnlySessionCookieReachesDirectus: the broadcaster extracts the
// credential from the browser's request with auth.CredentialFromRequest;
// Directus must see the session cookie and nothing else of the jar.
func TestCookieJarOnlySessionCookieReachesDirectus(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	u := h.dir.AddUser(directus.User{Role: directus.NewID()})
	tok := h.dir.Login(t, u)

	upgrade, _ := http.NewRequest(http.MethodGet, "http://trm.example/ws-live", nil)
	upgrade.Header.Set("Cookie", "theme=dark; _ga=GA1.2.3; "+cookieHeader+tok+"; csrftoken=secret-of-another-app")
	if got := h.mustSession(auth.CredentialFromRequest(upgrade, "")); got.ID != u.ID {
		t.Fatalf("got %+v", got)
	}
	reqs := lookups(h)
	if len(reqs) != 2 {
		t.Fatalf("%d Directus calls, want 2", len(reqs))
	}
	for _, r := range reqs {
		if r.Cookie != cookieHeader+tok {
			t.Fatalf("Directus got Cookie %q, want only the session cookie", r.Cookie)
		}
		if r.Authorization != "" || len(r.Header.Values("Cookie")) != 1 {
			t.Fatalf("Directus got extra credentials: %+v", r.Header)
		}
	}
}

func TestCustomCookieName(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.CookieName = "trm_session" }))
	u := h.dir.AddUser(directus.User{})
	tok := h.dir.Login(t, u)
	// The stand-in only knows Directus's default name, so a renamed cookie
	// is refused, which proves the configured name is what was sent.
	_, err := h.session(auth.SessionRequest{Cookie: tok})
	wantErr(t, err, auth.ErrUnauthorized)
	if r := h.dir.Requests("/users/me"); len(r) != 1 || r[0].Cookie != "trm_session="+tok {
		t.Fatalf("requests: %+v", r)
	}
}

// TestSessionRevokedAfterTTL: a logged-out cookie keeps working from cache
// until SessionTTL, then is refused, and the refusal is cached for
// FailureTTL.
func TestSessionRevokedAfterTTL(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.SessionTTL = 30 * time.Second; c.FailureTTL = 5 * time.Second }))
	u := h.dir.AddUser(directus.User{Role: directus.NewID()})
	tok := h.dir.Login(t, u)
	req := auth.SessionRequest{Cookie: tok}

	h.mustSession(req)
	h.dir.Logout(t, tok)
	calls := h.dir.Calls("/users/me")
	h.clock.Advance(29 * time.Second)
	if got := h.mustSession(req); got.ID != u.ID {
		t.Fatalf("cached session: %+v", got)
	}
	if n := h.dir.Calls("/users/me"); n != calls {
		t.Fatalf("cached answer called Directus (%d calls, want %d)", n, calls)
	}
	h.clock.Advance(time.Second)
	_, err := h.session(req)
	wantErr(t, err, auth.ErrUnauthorized)
	if n := h.dir.Calls("/users/me"); n != calls+1 {
		t.Fatalf("%d /users/me calls after the TTL, want %d", n, calls+1)
	}
	// The refusal is cached for FailureTTL, then asked again.
	h.clock.Advance(4 * time.Second)
	_, err = h.session(req)
	wantErr(t, err, auth.ErrUnauthorized)
	if n := h.dir.Calls("/users/me"); n != calls+1 {
		t.Fatalf("cached refusal called Directus")
	}
	h.clock.Advance(time.Second)
	_, err = h.session(req)
	wantErr(t, err, auth.ErrUnauthorized)
	if n := h.dir.Calls("/users/me"); n != calls+2 {
		t.Fatalf("%d /users/me calls after the failure TTL, want %d", n, calls+2)
	}
}

// TestConcurrentIdenticalValidationsCollapse: 1,000 concurrent validations
// of one cookie make one Directus look-up. The stand-in holds the first
// look-up until every request has reached authsvc, so all the others must
// join it (singleflight) rather than find it in the cache.
func TestConcurrentIdenticalValidationsCollapse(t *testing.T) {
	t.Parallel()
	// Every request waiting for the held look-up occupies one of the
	// endpoint's slots, so there must be a slot for each.
	h := newHarness(t, withConfig(func(c *Config) { c.DirectusTimeout = 2 * time.Minute; c.Concurrency = 2000 }))
	u := h.dir.AddUser(directus.User{Role: directus.NewID()})
	tok := h.dir.Login(t, u)
	release := h.dir.Hold()
	defer release()
	client := auth.NewClient(h.nc, 2*time.Minute)

	const n = 1000
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			got, err := client.Session(context.Background(), auth.SessionRequest{Cookie: tok})
			if err == nil && got.ID != u.ID {
				err = fmt.Errorf("resolved to %+v", got)
			}
			errs <- err
		}()
	}
	testkit.Eventually(t, time.Minute, func() error {
		if m := h.counter("authsvc_cache_misses_total", "cache", "session"); m != n {
			return fmt.Errorf("%v of %d requests reached authsvc", m, n)
		}
		if c := h.counter("authsvc_singleflight_collapsed_total", "cache", "session"); c != n-1 {
			return fmt.Errorf("%v requests joined the look-up in flight", c)
		}
		return nil
	})
	release()
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if c := h.dir.Calls("/users/me"); c != 1 {
		t.Fatalf("%d /users/me calls for %d identical validations, want 1", c, n)
	}
	if c := h.dir.Calls("/policies/me/globals"); c != 1 {
		t.Fatalf("%d /policies/me/globals calls, want 1", c)
	}
	if ok := h.counter("authsvc_requests_total", "endpoint", "session", "outcome", "ok"); ok != n {
		t.Fatalf("authsvc_requests_total{ok} = %v, want %d", ok, n)
	}
	// Now cached: one more validation is a hit, with no Directus call.
	h.mustSession(auth.SessionRequest{Cookie: tok})
	if h.counter("authsvc_cache_hits_total", "cache", "session") != 1 || h.dir.Calls("/users/me") != 1 {
		t.Fatal("the resolved session was not cached")
	}
}

// TestDirectusDownIsUnavailableAndRecovers: 5xx, a timeout and a refused
// connection all answer "unavailable", never "unauthorized", are not
// cached, and the next look-up after Directus returns succeeds.
func TestDirectusDownIsUnavailableAndRecovers(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.DirectusTimeout = 300 * time.Millisecond }))
	u := h.dir.AddUser(directus.User{Role: directus.NewID()})
	tok := h.dir.Login(t, u)
	req := auth.SessionRequest{Cookie: tok}

	for _, status := range []int{500, 502, 503, 429, 404} {
		h.dir.SetStatus(status)
		_, err := h.session(req)
		wantErr(t, err, auth.ErrUnavailable)
	}
	h.dir.SetStatus(0)

	h.dir.SetLatency(2 * time.Second)
	_, err := h.session(req)
	wantErr(t, err, auth.ErrUnavailable)
	h.dir.SetLatency(0)

	h.dir.Stop()
	calls := h.dir.Calls("/users/me")
	_, err = h.session(req)
	wantErr(t, err, auth.ErrUnavailable)
	if code, body := httpGet(t, h.http+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, `"directus"`) {
		t.Fatalf("/readyz with Directus down: %d %s", code, body)
	}
	if v := h.counter("authsvc_directus_up"); v != 0 {
		t.Fatalf("authsvc_directus_up = %v with Directus down", v)
	}
	if !strings.Contains(h.logs.String(), "directus unavailable") {
		t.Fatal("no log line about Directus being unavailable")
	}

	h.dir.Start()
	if got := h.mustSession(req); got.ID != u.ID {
		t.Fatalf("after recovery: %+v", got)
	}
	if n := h.dir.Calls("/users/me"); n != calls+1 {
		t.Fatalf("unavailable was cached: %d calls, want %d", n, calls+1)
	}
	if v := h.counter("authsvc_requests_total", "endpoint", "session", "outcome", "unavailable"); v != 7 {
		t.Fatalf("unavailable answers = %v, want 7", v)
	}
	if v := h.counter("authsvc_requests_total", "endpoint", "session", "outcome", "unauthorized"); v != 0 {
		t.Fatalf("an outage was answered unauthorized %v times", v)
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		if code, body := httpGet(t, h.http+"/readyz"); code != http.StatusOK {
			return fmt.Errorf("/readyz after recovery: %d %s", code, body)
		}
		return nil
	})
}

// lookups returns the requests authsvc made to Directus (the stand-in also
// records the tests' own logins).
func lookups(h *harness) []directus.Request {
	return append(h.dir.Requests("/users/me"), h.dir.Requests("/policies/me/globals")...)
}

// TestSessionCacheIsBounded: with AUTHSVC_CACHE_SIZE 2, a third credential
// evicts the least recently used one, which then costs a new look-up.
func TestSessionCacheIsBounded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.CacheSize = 2 }))
	var toks []string
	for i := 0; i < 3; i++ {
		toks = append(toks, h.dir.Login(t, h.dir.AddUser(directus.User{})))
	}
	for _, tok := range toks {
		h.mustSession(auth.SessionRequest{Cookie: tok})
	}
	if v := h.counter("authsvc_cache_entries", "cache", "session"); v != 2 {
		t.Fatalf("authsvc_cache_entries = %v, want the cap 2", v)
	}
	calls := h.dir.Calls("/users/me")
	h.mustSession(auth.SessionRequest{Cookie: toks[2]}) // most recent: cached
	if h.dir.Calls("/users/me") != calls {
		t.Fatal("most recently used credential was evicted")
	}
	h.mustSession(auth.SessionRequest{Cookie: toks[0]}) // evicted
	if h.dir.Calls("/users/me") != calls+1 {
		t.Fatal("the least recently used credential was not evicted")
	}
}

// bogusJWT has the shape of a Directus session JWT (so it is looked up)
// but no user behind it.
const bogusJWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6Im5vYm9keSJ9.c2lnbmF0dXJlLW9mLW5vYm9keQ"

// TestRefusalsDoNotEvictSessions: refused credentials are cached apart
// (FailureCacheSize), so a flood of distinct bogus ones leaves accepted
// sessions cached: no Directus call for them afterwards.
func TestRefusalsDoNotEvictSessions(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.CacheSize = 4; c.FailureCacheSize = 2 }))
	u := h.dir.AddUser(directus.User{Role: directus.NewID()})
	tok := h.dir.Login(t, u)
	h.mustSession(auth.SessionRequest{Cookie: tok})
	for i := range 20 {
		_, err := h.session(auth.SessionRequest{Cookie: fmt.Sprintf("%s%d", bogusJWT, i)})
		wantErr(t, err, auth.ErrUnauthorized)
	}
	calls := h.dir.Calls("/users/me")
	if got := h.mustSession(auth.SessionRequest{Cookie: tok}); got.ID != u.ID {
		t.Fatalf("session: %+v", got)
	}
	if n := h.dir.Calls("/users/me"); n != calls {
		t.Fatalf("the accepted session was evicted by refusals: %d Directus calls", n-calls)
	}
	// The refusals' own cache holds the latest ones.
	_, err := h.session(auth.SessionRequest{Cookie: bogusJWT + "19"})
	wantErr(t, err, auth.ErrUnauthorized)
	if n := h.dir.Calls("/users/me"); n != calls {
		t.Fatalf("a fresh refusal was not cached: %d Directus calls", n-calls)
	}
}
