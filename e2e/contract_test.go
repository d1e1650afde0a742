package e2e

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	"trm-live/contract"
	"trm-live/testkit/directus"
)

// TestDirectusContractFake runs the Directus contract against the fake
// every unit test trusts (testkit/directus, which scripts/devauth and the
// authsvc benchmark also serve). The same checks run against a real
// Directus (TestRealDirectusSessions) and the dev binary's origin
// (TestDevBinaryPipeline), so the fake cannot drift from either.
func TestDirectusContractFake(t *testing.T) {
	t.Parallel()
	d := directus.StartWith(t, directus.Config{Events: func(context.Context) ([]directus.Event, error) {
		return []directus.Event{{ID: directus.NewID(), Name: "contract"}}, nil
	}})
	u := d.AddUser(directus.User{Role: directus.NewID()})
	directusContract(t, d.URL, u.Email, u.Password)
}

// directusContract checks, on base, the Directus behaviour trm-live, its
// viewer and its tests rely on (docs/directus.md), as a real Directus
// 12.4.0 answers it. It runs against the real Directus, the dev binary's
// origin (scripts/devauth) and the fake (testkit/directus). email and
// password are a non-admin user's.
func directusContract(t *testing.T, base, email, password string) {
	t.Helper()
	type apiErr struct {
		Errors []struct {
			Extensions struct {
				Code string `json:"code"`
			} `json:"extensions"`
		} `json:"errors"`
	}
	// call sends a request with an optional JSON body and a credential:
	// "cookie=<v>" or "bearer=<v>" ("" for none).
	call := func(method, path, body, cred string) (*http.Response, []byte) {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if v, ok := strings.CutPrefix(cred, "cookie="); ok {
			req.AddCookie(&http.Cookie{Name: cookieName, Value: v})
		} else if v, ok := strings.CutPrefix(cred, "bearer="); ok {
			req.Header.Set("Authorization", "Bearer "+v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	wantErr := func(what string, resp *http.Response, body []byte, status int, code string) {
		t.Helper()
		var e apiErr
		_ = json.Unmarshal(body, &e)
		if resp.StatusCode != status || len(e.Errors) == 0 || e.Errors[0].Extensions.Code != code {
			t.Errorf("%s: %d %s, want %d %s", what, resp.StatusCode, body, status, code)
		}
	}
	clears := func(resp *http.Response) bool {
		for _, c := range resp.Cookies() {
			if c.Name == cookieName && c.Value == "" {
				return true
			}
		}
		return false
	}
	sessionCookie := func(what string, resp *http.Response, body []byte) string {
		t.Helper()
		if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"data":{"expires":86400000}}` {
			t.Fatalf("%s: %d %s", what, resp.StatusCode, body)
		}
		var v string
		for _, c := range resp.Cookies() {
			if c.Name == cookieName {
				v = c.Value
				if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.MaxAge != 86400 {
					t.Errorf("%s: cookie attributes: %+v", what, c)
				}
			}
		}
		if strings.Count(v, ".") != 2 {
			t.Fatalf("%s: session cookie is not a JWT: %q", what, v)
		}
		return v
	}
	data := func(body []byte) map[string]any {
		var d struct {
			Data map[string]any `json:"data"`
		}
		_ = json.Unmarshal(body, &d)
		return d.Data
	}
	login := `{"email":"` + email + `","password":"` + password + `","mode":"session"}`

	resp, body := call("GET", "/server/ping", "", "")
	if resp.StatusCode != 200 || string(body) != "pong" {
		t.Errorf("/server/ping: %d %q", resp.StatusCode, body)
	}
	resp, body = call("GET", "/server/no-such-route", "", "")
	wantErr("an unknown route", resp, body, 404, "ROUTE_NOT_FOUND")

	resp, body = call("POST", "/auth/login", `{"email":"`+email+`","password":"wrong-`+password+`","mode":"session"}`, "")
	wantErr("login with a wrong password", resp, body, 401, "INVALID_CREDENTIALS")
	resp, body = call("POST", "/auth/login", login, "")
	cookie := sessionCookie("session login", resp, body)

	resp, body = call("GET", "/users/me?fields=id,email", "", "cookie="+cookie)
	var me struct {
		Data struct{ ID, Email string } `json:"data"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &me) != nil || !strings.EqualFold(me.Data.Email, email) || !contract.ValidUUID(me.Data.ID) {
		t.Errorf("/users/me with the cookie: %d %s", resp.StatusCode, body)
	}
	resp, body = call("GET", "/users/me?fields=id,no_such_field", "", "cookie="+cookie)
	if d := data(body); resp.StatusCode != 200 || len(d) != 1 || d["id"] != me.Data.ID {
		t.Errorf("/users/me with an unknown field: %d %s, want only the id", resp.StatusCode, body)
	}
	resp, body = call("GET", "/users/me?fields=id", "", "bearer="+cookie)
	if d := data(body); resp.StatusCode != 200 || d["id"] != me.Data.ID {
		t.Errorf("/users/me with the session JWT as bearer: %d %s", resp.StatusCode, body)
	}
	resp, body = call("GET", "/users/me", "", "")
	wantErr("/users/me without a credential", resp, body, 401, "INVALID_CREDENTIALS")
	resp, body = call("GET", "/users/me", "", "cookie=bogus")
	wantErr("/users/me with cookie bogus", resp, body, 401, "INVALID_CREDENTIALS")
	if !clears(resp) {
		t.Errorf("/users/me with cookie bogus: no clearing Set-Cookie: %v", resp.Header.Values("Set-Cookie"))
	}
	resp, body = call("GET", "/users/me", "", "cookie="+forge(cookie))
	wantErr("/users/me with a forged JWT", resp, body, 403, "INVALID_TOKEN")

	resp, body = call("GET", "/policies/me/globals", "", "cookie="+cookie)
	if d := data(body); resp.StatusCode != 200 || d["admin_access"] != false || d["enforce_tfa"] != false ||
		!slices.Equal(slices.Sorted(maps.Keys(d)), []string{"admin_access", "app_access", "enforce_tfa"}) {
		t.Errorf("/policies/me/globals: %d %s", resp.StatusCode, body)
	}
	resp, body = call("GET", "/policies/me/globals", "", "")
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"data":{"app_access":false}}` {
		t.Errorf("/policies/me/globals without a credential: %d %s", resp.StatusCode, body)
	}
	resp, body = call("GET", "/policies/me/globals", "", "cookie=bogus")
	wantErr("/policies/me/globals with cookie bogus", resp, body, 401, "INVALID_CREDENTIALS")

	resp, body = call("GET", "/items/events?fields=id,name", "", "cookie="+cookie)
	var evs struct {
		Data []struct{ ID, Name string } `json:"data"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &evs) != nil || len(evs.Data) == 0 {
		t.Errorf("/items/events: %d %s", resp.StatusCode, body)
	}
	resp, body = call("GET", "/items/events?fields=id,name", "", "")
	wantErr("/items/events without a credential", resp, body, 403, "FORBIDDEN")

	// Refresh, on a second session: a new cookie on the same user; no
	// cookie, or no mode "session", is a payload error.
	resp, body = call("POST", "/auth/refresh", `{"mode":"session"}`, "")
	wantErr("session refresh without a cookie", resp, body, 400, "INVALID_PAYLOAD")
	resp, body = call("POST", "/auth/login", login, "")
	second := sessionCookie("second session login", resp, body)
	resp, body = call("POST", "/auth/refresh", "", "cookie="+second)
	wantErr("refresh without mode session", resp, body, 400, "INVALID_PAYLOAD")
	resp, body = call("POST", "/auth/refresh", `{"mode":"session"}`, "cookie="+second)
	refreshed := sessionCookie("session refresh", resp, body)
	if resp, body = call("GET", "/users/me?fields=id", "", "cookie="+refreshed); resp.StatusCode != 200 || data(body)["id"] != me.Data.ID {
		t.Errorf("/users/me with the refreshed cookie: %d %s", resp.StatusCode, body)
	}
	resp, body = call("POST", "/auth/logout", `{"mode":"session"}`, "cookie="+refreshed)
	if resp.StatusCode != 204 {
		t.Errorf("logout of the refreshed cookie: %d %s", resp.StatusCode, body)
	}
	resp, body = call("GET", "/users/me", "", "cookie="+refreshed)
	wantErr("/users/me with the refreshed cookie after logout", resp, body, 401, "INVALID_CREDENTIALS")

	// JSON mode: an access token (Directus's default 15 min) and a refresh
	// token, which refreshes and logs out.
	resp, body = call("POST", "/auth/login", `{"email":"`+email+`","password":"`+password+`"}`, "")
	var tok struct {
		Data struct {
			AccessToken  string  `json:"access_token"`
			Expires      float64 `json:"expires"`
			RefreshToken string  `json:"refresh_token"`
		} `json:"data"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &tok) != nil || strings.Count(tok.Data.AccessToken, ".") != 2 ||
		tok.Data.Expires != 900000 || tok.Data.RefreshToken == "" {
		t.Fatalf("JSON login: %d, access token %t, expires %v, refresh token %t", resp.StatusCode,
			tok.Data.AccessToken != "", tok.Data.Expires, tok.Data.RefreshToken != "")
	}
	if resp, body = call("GET", "/users/me?fields=id", "", "bearer="+tok.Data.AccessToken); resp.StatusCode != 200 || data(body)["id"] != me.Data.ID {
		t.Errorf("/users/me with the access token: %d %s", resp.StatusCode, body)
	}
	resp, body = call("POST", "/auth/refresh", `{"refresh_token":"`+tok.Data.RefreshToken+`"}`, "")
	if resp.StatusCode != 200 || json.Unmarshal(body, &tok) != nil || strings.Count(tok.Data.AccessToken, ".") != 2 || tok.Data.RefreshToken == "" {
		t.Errorf("JSON refresh: %d", resp.StatusCode)
	}
	resp, body = call("POST", "/auth/logout", `{"refresh_token":"`+tok.Data.RefreshToken+`"}`, "")
	if resp.StatusCode != 204 {
		t.Errorf("JSON logout: %d %s", resp.StatusCode, body)
	}

	// Logout wants mode "session" for the cookie; then the session is gone.
	resp, body = call("POST", "/auth/logout", "", "cookie="+cookie)
	wantErr("logout without mode session", resp, body, 400, "INVALID_PAYLOAD")
	if resp, body = call("GET", "/users/me?fields=id", "", "cookie="+cookie); resp.StatusCode != 200 {
		t.Errorf("/users/me after a refused logout: %d %s", resp.StatusCode, body)
	}
	resp, body = call("POST", "/auth/logout", `{"mode":"session"}`, "cookie="+cookie)
	if resp.StatusCode != 204 {
		t.Errorf("logout: %d %s", resp.StatusCode, body)
	}
	resp, body = call("GET", "/users/me", "", "cookie="+cookie)
	wantErr("/users/me after logout", resp, body, 401, "INVALID_CREDENTIALS")
}
