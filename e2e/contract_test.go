package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"trm-live/contract"
)

// directusContract checks, on base, the Directus behaviour trm-live and its
// viewer rely on (docs/directus.md). It runs against the real Directus
// and against the dev binary's origin (scripts/devauth), so the dev
// stand-in cannot drift from the real thing.
func directusContract(t *testing.T, base, email, password string) {
	t.Helper()
	type apiErr struct {
		Errors []struct {
			Extensions struct {
				Code string `json:"code"`
			} `json:"extensions"`
		} `json:"errors"`
	}
	call := func(method, path, body, cookie string) (*http.Response, []byte) {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if cookie != "" {
			req.AddCookie(&http.Cookie{Name: cookieName, Value: cookie})
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

	resp, body := call("POST", "/auth/login", `{"email":"`+email+`","password":"wrong-`+password+`","mode":"session"}`, "")
	wantErr("login with a wrong password", resp, body, 401, "INVALID_CREDENTIALS")

	resp, body = call("POST", "/auth/login", `{"email":"`+email+`","password":"`+password+`","mode":"session"}`, "")
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"data":{"expires":86400000}}` {
		t.Fatalf("session login: %d %s", resp.StatusCode, body)
	}
	var cookie string
	for _, c := range resp.Cookies() {
		if c.Name == cookieName {
			cookie = c.Value
			if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.MaxAge != 86400 {
				t.Errorf("session cookie attributes: %+v", c)
			}
		}
	}
	if strings.Count(cookie, ".") != 2 {
		t.Fatalf("session cookie is not a JWT: %q", cookie)
	}

	resp, body = call("GET", "/users/me?fields=id,email", "", cookie)
	var me struct {
		Data struct{ ID, Email string } `json:"data"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &me) != nil || !strings.EqualFold(me.Data.Email, email) || !contract.ValidUUID(me.Data.ID) {
		t.Errorf("/users/me with the cookie: %d %s", resp.StatusCode, body)
	}
	resp, body = call("GET", "/users/me", "", "")
	wantErr("/users/me without a credential", resp, body, 401, "INVALID_CREDENTIALS")
	resp, body = call("GET", "/users/me", "", "bogus")
	wantErr("/users/me with cookie bogus", resp, body, 401, "INVALID_CREDENTIALS")
	if !clears(resp) {
		t.Errorf("/users/me with cookie bogus: no clearing Set-Cookie: %v", resp.Header.Values("Set-Cookie"))
	}
	resp, body = call("GET", "/users/me", "", forge(cookie))
	wantErr("/users/me with a forged JWT", resp, body, 403, "INVALID_TOKEN")

	resp, body = call("GET", "/policies/me/globals", "", cookie)
	var g struct {
		Data map[string]any `json:"data"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &g) != nil || g.Data["admin_access"] != false {
		t.Errorf("/policies/me/globals: %d %s", resp.StatusCode, body)
	}
	resp, body = call("GET", "/items/events?fields=id,name", "", cookie)
	var evs struct {
		Data []struct{ ID, Name string } `json:"data"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &evs) != nil || len(evs.Data) == 0 {
		t.Errorf("/items/events: %d %s", resp.StatusCode, body)
	}

	resp, body = call("POST", "/auth/logout", `{"mode":"session"}`, cookie)
	if resp.StatusCode != 204 {
		t.Errorf("logout: %d %s", resp.StatusCode, body)
	}
	resp, body = call("GET", "/users/me", "", cookie)
	wantErr("/users/me after logout", resp, body, 401, "INVALID_CREDENTIALS")
}
