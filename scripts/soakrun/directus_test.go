package soakrun

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"trm-live/testkit"
	"trm-live/testkit/directus"
)

func TestConfigDirectusSettings(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	full := map[string]string{"SOAK_DIRECTUS_ADMIN_EMAIL": "admin@example.com", "SOAK_DIRECTUS_ADMIN_PASSWORD": "secret-pw-1"}
	c, err := LoadConfig([]string{"-directus", "http://127.0.0.1:18055"}, env(full))
	if err != nil {
		t.Fatal(err)
	}
	if c.Directus != "http://127.0.0.1:18055" || c.DirectusAdminEmail != "admin@example.com" || c.DirectusAdminPassword != "secret-pw-1" {
		t.Fatalf("directus settings not read: url %q email %q", c.Directus, c.DirectusAdminEmail)
	}
	// The URL may come from the environment too.
	withURL := map[string]string{"SOAK_DIRECTUS_URL": "https://cms.example.com"}
	for k, v := range full {
		withURL[k] = v
	}
	if c, err := LoadConfig(nil, env(withURL)); err != nil || c.Directus != "https://cms.example.com" {
		t.Fatalf("SOAK_DIRECTUS_URL: %q %v", c.Directus, err)
	}
	// Without -directus, the admin settings are not needed.
	if _, err := LoadConfig(nil, env(nil)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no email", []string{"-directus", "http://127.0.0.1:1"}, map[string]string{"SOAK_DIRECTUS_ADMIN_PASSWORD": "x"}, "SOAK_DIRECTUS_ADMIN_EMAIL"},
		{"no password", []string{"-directus", "http://127.0.0.1:1"}, map[string]string{"SOAK_DIRECTUS_ADMIN_EMAIL": "a@example.com"}, "SOAK_DIRECTUS_ADMIN_PASSWORD"},
		{"not a URL", []string{"-directus", "127.0.0.1:8055"}, full, "-directus"},
		{"no host", []string{"-directus", "http://"}, full, "-directus"},
	} {
		_, err := LoadConfig(tc.args, env(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret-pw-1") {
			t.Errorf("%s: the error shows the password", tc.name)
		}
	}
	// No flag takes the admin login: it would show in ps.
	if _, err := LoadConfig([]string{"-directus-admin-password", "x"}, env(nil)); err == nil {
		t.Error("a password flag is accepted")
	}
}

// backend is a real HTTP server standing for Directus behind the proxy; it
// records what reached it.
func backend(t *testing.T) (*httptest.Server, *atomic.Int64, *atomic.Value) {
	t.Helper()
	var hits atomic.Int64
	var last atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		b, _ := io.ReadAll(r.Body)
		c, _ := r.Cookie("directus_session_token")
		v := ""
		if c != nil {
			v = c.Value
		}
		last.Store(r.Method + " " + r.URL.RequestURI() + " cookie=" + v + " body=" + string(b))
		http.SetCookie(w, &http.Cookie{Name: "directus_session_token", Value: "new-session", Path: "/", HttpOnly: true})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, `{"data":{"ok":true}}`)
	}))
	t.Cleanup(srv.Close)
	return srv, &hits, &last
}

func newTestProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := NewProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Listen(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func post(ctx context.Context, url string) (*http.Response, string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/auth/logout?x=1", strings.NewReader(`{"mode":"session"}`))
	req.Header.Set("Content-Type", "application/json")
	req.AddCookie(&http.Cookie{Name: "directus_session_token", Value: "abc"})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b), nil
}

func TestProxyForwards(t *testing.T) {
	srv, hits, last := backend(t)
	p := newTestProxy(t, srv.URL)
	resp, body, err := post(context.Background(), p.URL)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusTeapot || body != `{"data":{"ok":true}}` {
		t.Fatalf("answer %d %s, want the backend's 418", resp.StatusCode, body)
	}
	if got := last.Load(); got != `POST /auth/logout?x=1 cookie=abc body={"mode":"session"}` || hits.Load() != 1 {
		t.Fatalf("backend saw %v (%d hits)", got, hits.Load())
	}
	if cs := resp.Cookies(); len(cs) != 1 || cs[0].Value != "new-session" {
		t.Fatalf("Set-Cookie not passed back: %v", cs)
	}
}

func TestProxyAnswers503(t *testing.T) {
	srv, hits, _ := backend(t)
	p := newTestProxy(t, srv.URL)
	p.SetStatus(http.StatusServiceUnavailable)
	resp, body, err := post(context.Background(), p.URL)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, `"errors"`) || hits.Load() != 0 {
		t.Fatalf("during the fault: %d %s, %d backend hits; want 503 with a Directus error body, none", resp.StatusCode, body, hits.Load())
	}
	p.SetStatus(0)
	if resp, _, err := post(context.Background(), p.URL); err != nil || resp.StatusCode != http.StatusTeapot || hits.Load() != 1 {
		t.Fatalf("after the fault: %v %v, %d hits", resp, err, hits.Load())
	}
}

func TestProxyHolds(t *testing.T) {
	srv, hits, _ := backend(t)
	p := newTestProxy(t, srv.URL)
	release := p.Hold()
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, _, err := post(context.Background(), p.URL)
		if err != nil {
			done <- result{0, err}
			return
		}
		done <- result{resp.StatusCode, nil}
	}()
	waitFor(t, func() bool { return p.Held() == 1 })
	select {
	case r := <-done:
		t.Fatalf("answered during the hold: %+v", r)
	default:
	}
	if hits.Load() != 0 {
		t.Fatal("a held request reached the backend")
	}
	// A client that gives up leaves the hold.
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() { _, _, err := post(ctx, p.URL); gaveUp <- err }()
	waitFor(t, func() bool { return p.Held() == 2 })
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("given-up request: %v", err)
	}
	waitFor(t, func() bool { return p.Held() == 1 })
	release()
	select {
	case r := <-done:
		if r.err != nil || r.code != http.StatusTeapot {
			t.Fatalf("after release: %+v, want the backend's answer", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("still held after release")
	}
	if hits.Load() != 1 || p.Held() != 0 {
		t.Fatalf("%d hits, %d held", hits.Load(), p.Held())
	}
	release() // twice is harmless
}

func TestProxyUnreachableIs502(t *testing.T) {
	srv, _, _ := backend(t)
	url := srv.URL
	srv.Close()
	p := newTestProxy(t, url)
	resp, _, err := post(context.Background(), p.URL)
	if err != nil || resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("%v %v, want 502", resp, err)
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, func() error {
		if !cond() {
			return errors.New("not yet")
		}
		return nil
	})
}

// TestDirectusLoginLogout runs the viewers' login and the logout fault's
// call against the Directus fake (the real Directus is the soak's own run,
// scripts/test.d/soak.sh): the session cookie comes back, a wrong password
// is refused without showing it, and logout revokes the session.
func TestDirectusLoginLogout(t *testing.T) {
	fake := directus.New(directus.Config{Users: []directus.User{{Email: "v1@example.com", Password: "pw-v1-secret"}}})
	if err := fake.Listen(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Stop)
	d := newRealDirectus(fake.URL+"/", "admin@example.com", "unused")
	ctx := context.Background()
	cookie, err := d.login(ctx, "v1@example.com", "pw-v1-secret")
	if err != nil || cookie == "" {
		t.Fatalf("login: %q %v", cookie, err)
	}
	if _, err := d.login(ctx, "v1@example.com", "wrong-pw"); err == nil || strings.Contains(err.Error(), "wrong-pw") {
		t.Fatalf("wrong password: %v", err)
	}
	me := func() int {
		req, _ := http.NewRequest(http.MethodGet, fake.URL+"/users/me", nil)
		req.AddCookie(&http.Cookie{Name: directus.CookieName, Value: cookie})
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := me(); code != http.StatusOK {
		t.Fatalf("/users/me before logout: %d", code)
	}
	if err := logout(ctx, http.DefaultClient, d.base, cookie); err != nil {
		t.Fatal(err)
	}
	if code := me(); code != http.StatusUnauthorized {
		t.Fatalf("/users/me after logout: %d, want 401", code)
	}
	// An answer other than 204 is an error of the fault.
	if err := logout(ctx, http.DefaultClient, d.base, "bogus"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("logout refused with 400 reported as %v", err)
	}
}
