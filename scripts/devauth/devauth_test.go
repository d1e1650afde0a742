package devauth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCheckLoopback(t *testing.T) {
	t.Parallel()
	for addr, ok := range map[string]bool{
		"127.0.0.1:8080": true, "127.1.2.3:0": true, "[::1]:80": true, "localhost:80": true,
		":8080": false, "0.0.0.0:80": false, "10.0.0.1:80": false, "[::]:80": false, "example.com:80": false, "nonsense": false,
	} {
		if err := CheckLoopback(addr); (err == nil) != ok {
			t.Errorf("CheckLoopback(%q) = %v, want ok=%v", addr, err, ok)
		}
	}
}

func do(t *testing.T, h http.Handler, method, path, body, cookie, remote string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.RemoteAddr = remote
	if cookie != "" {
		r.AddCookie(&http.Cookie{Name: CookieName, Value: cookie})
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestSessionLifecycle(t *testing.T) {
	t.Parallel()
	now := time.Now()
	s := New(Config{
		Users: []User{{ID: "0b8f0c36-5a51-4f0e-9d0e-0a2b3c4d5e6f", Email: "demo@example.com", Password: "pw"}},
		Now:   func() time.Time { return now },
	})
	const lo = "127.0.0.1:5555"

	if w := do(t, s, "POST", "/auth/login", `{"email":"demo@example.com","password":"nope","mode":"session"}`, "", lo); w.Code != 401 {
		t.Fatalf("wrong password: %d", w.Code)
	}
	w := do(t, s, "POST", "/auth/login", `{"email":"DEMO@example.com","password":"pw","mode":"session"}`, "", lo)
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"expires":86400000`) {
		t.Fatalf("login: %d %s", w.Code, w.Body)
	}
	var cookie string
	for _, c := range w.Result().Cookies() {
		if c.Name == CookieName {
			cookie = c.Value
			if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" {
				t.Errorf("cookie attributes: %+v", c)
			}
		}
	}
	if w := do(t, s, "GET", "/users/me?fields=id,email,nope", "", cookie, lo); w.Code != 200 ||
		w.Body.String() != `{"data":{"email":"demo@example.com","id":"0b8f0c36-5a51-4f0e-9d0e-0a2b3c4d5e6f"}}`+"\n" {
		t.Fatalf("users/me: %d %s", w.Code, w.Body)
	}
	if w := do(t, s, "GET", "/policies/me/globals", "", cookie, lo); w.Code != 200 || !strings.Contains(w.Body.String(), `"admin_access":false`) {
		t.Fatalf("globals: %d %s", w.Code, w.Body)
	}
	if w := do(t, s, "GET", "/users/me", "", cookie[:len(cookie)-1]+"x", lo); w.Code != 403 {
		t.Fatalf("forged: %d", w.Code)
	}
	if w := do(t, s, "GET", "/users/me", "", "bogus", lo); w.Code != 401 || !strings.Contains(w.Header().Get("Set-Cookie"), CookieName+"=;") {
		t.Fatalf("bogus: %d %v", w.Code, w.Header())
	}
	if w := do(t, s, "GET", "/users/me", "", cookie, "192.0.2.7:4000"); w.Code != 403 {
		t.Fatalf("non-loopback client: %d", w.Code)
	}
	w = do(t, s, "POST", "/auth/refresh", `{"mode":"session"}`, cookie, lo)
	var refreshed string
	for _, c := range w.Result().Cookies() {
		if c.Name == CookieName {
			refreshed = c.Value
		}
	}
	if w.Code != 200 || refreshed == "" {
		t.Fatalf("refresh: %d %s", w.Code, w.Body)
	}
	if w := do(t, s, "GET", "/users/me", "", refreshed, lo); w.Code != 200 {
		t.Fatalf("refreshed cookie: %d", w.Code)
	}
	if w := do(t, s, "POST", "/auth/logout", `{"mode":"session"}`, cookie, lo); w.Code != 204 {
		t.Fatalf("logout: %d", w.Code)
	}
	if w := do(t, s, "GET", "/users/me", "", cookie, lo); w.Code != 401 || !strings.Contains(w.Body.String(), "INVALID_CREDENTIALS") {
		t.Fatalf("after logout: %d %s", w.Code, w.Body)
	}
	// The refreshed cookie shares the session: logout revoked it too.
	if w := do(t, s, "GET", "/users/me", "", refreshed, lo); w.Code != 401 {
		t.Fatalf("refreshed cookie after logout: %d", w.Code)
	}
	c2, _ := s.Login("demo@example.com", "pw")
	now = now.Add(SessionTTL + time.Second)
	if w := do(t, s, "GET", "/users/me", "", c2, lo); w.Code != 401 || !strings.Contains(w.Body.String(), "TOKEN_EXPIRED") {
		t.Fatalf("expired: %d %s", w.Code, w.Body)
	}
}

// TestEvents: GET /items/events lists Config.Events to a logged-in user,
// an empty list without Config.Events; non-loopback clients are refused
// before anything else.
func TestEvents(t *testing.T) {
	t.Parallel()
	users := []User{{ID: "0b8f0c36-5a51-4f0e-9d0e-0a2b3c4d5e6f", Email: "demo@example.com", Password: "pw"}}
	const lo = "127.0.0.1:5555"
	s := New(Config{Users: users, Events: func(context.Context) ([]Event, error) {
		return []Event{{ID: "6f1c0a52-3b4d-4e5f-8a9b-0c1d2e3f4a5b", Name: "Rally"}}, nil
	}})
	cookie, ok := s.Login("demo@example.com", "pw")
	if !ok {
		t.Fatal("login refused")
	}
	if w := do(t, s, "GET", "/items/events?fields=id,name", "", cookie, lo); w.Code != 200 ||
		w.Body.String() != `{"data":[{"id":"6f1c0a52-3b4d-4e5f-8a9b-0c1d2e3f4a5b","name":"Rally"}]}`+"\n" {
		t.Fatalf("events: %d %s", w.Code, w.Body)
	}
	if w := do(t, s, "GET", "/items/events", "", cookie, "192.0.2.7:4000"); w.Code != 403 || !strings.Contains(w.Body.String(), "loopback") {
		t.Fatalf("non-loopback client: %d %s", w.Code, w.Body)
	}
	empty := New(Config{Users: users})
	cookie, _ = empty.Login("demo@example.com", "pw")
	if w := do(t, empty, "GET", "/items/events", "", cookie, lo); w.Code != 200 || w.Body.String() != `{"data":[]}`+"\n" {
		t.Fatalf("events without Config.Events: %d %s", w.Code, w.Body)
	}
}
