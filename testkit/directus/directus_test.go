package directus

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"trm-live/testkit"
)

type answer struct {
	status    int
	body      string
	setCookie string
}

func get(t *testing.T, s *Server, path string, hdr map[string]string) answer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.URL+path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, strings.TrimSpace(string(b)), resp.Header.Get("Set-Cookie")}
}

// TestUsersMeAsRecorded checks the stand-in against the status table of
// docs/directus.md.
func TestUsersMeAsRecorded(t *testing.T) {
	t.Parallel()
	s := Start(t)
	u := s.AddUser(User{Role: NewID()})
	tok := s.Login(t, u)
	cookie := func(v string) map[string]string { return map[string]string{"Cookie": CookieName + "=" + v} }
	const invalidCreds = `{"errors":[{"message":"Invalid user credentials.","extensions":{"code":"INVALID_CREDENTIALS"}}]}`

	ok := get(t, s, "/users/me?fields=id,role", cookie(tok))
	if ok.status != 200 || ok.body != `{"data":{"id":"`+u.ID+`","role":"`+u.Role+`"}}` || ok.setCookie != "" {
		t.Fatalf("valid cookie: %+v", ok)
	}
	if a := get(t, s, "/users/me?fields=id,role", map[string]string{"Authorization": "Bearer " + tok}); a.status != 200 {
		t.Fatalf("session JWT as bearer: %+v", a)
	}
	cases := []struct {
		name   string
		hdr    map[string]string
		status int
		body   string
		clears bool
	}{
		{"no cookie", nil, 401, invalidCreds, false},
		{"other cookies only", map[string]string{"Cookie": "foo=bar"}, 401, invalidCreds, false},
		{"bogus", cookie("bogus"), 401, invalidCreds, true},
		{"wrong signature", cookie(ForgedToken(tok)), 403, `{"errors":[{"message":"Invalid token.","extensions":{"code":"INVALID_TOKEN"}}]}`, true},
		{"expired", cookie(s.ExpiredToken(u)), 401, `{"errors":[{"message":"Token expired.","extensions":{"code":"TOKEN_EXPIRED"}}]}`, true},
	}
	for _, c := range cases {
		a := get(t, s, "/users/me", c.hdr)
		if a.status != c.status || a.body != c.body {
			t.Errorf("%s: got %d %s, want %d %s", c.name, a.status, a.body, c.status, c.body)
		}
		if clears := strings.HasPrefix(a.setCookie, CookieName+"=;"); clears != c.clears {
			t.Errorf("%s: Set-Cookie %q, clearing want %v", c.name, a.setCookie, c.clears)
		}
	}
	s.Logout(t, tok)
	if a := get(t, s, "/users/me", cookie(tok)); a.status != 401 || a.body != invalidCreds {
		t.Fatalf("after logout: %+v", a)
	}
	if n := s.Calls("/users/me"); n != 8 {
		t.Fatalf("Calls(/users/me) = %d, want 8", n)
	}
	if r := s.Requests("/users/me")[0]; r.Cookie != CookieName+"="+tok || r.Authorization != "" {
		t.Fatalf("recorded request: %+v", r)
	}
}

func TestFieldsGlobalsAndFailures(t *testing.T) {
	t.Parallel()
	s := Start(t)
	admin := s.AddUser(User{Admin: true, Role: NewID()})
	member := s.AddUser(User{NoReadSelf: true, Role: NewID()})
	at, mt := s.Login(t, admin), s.Login(t, member)
	bearer := func(v string) map[string]string { return map[string]string{"Authorization": "Bearer " + v} }

	if a := get(t, s, "/users/me?fields=id,role,role.admin_access,nope", bearer(mt)); a.body != `{"data":{"id":"`+member.ID+`"}}` {
		t.Fatalf("no read permission: %+v", a)
	}
	var g struct{ Data map[string]bool }
	a := get(t, s, "/policies/me/globals", bearer(at))
	if err := json.Unmarshal([]byte(a.body), &g); err != nil || !g.Data["admin_access"] || !g.Data["app_access"] || g.Data["enforce_tfa"] {
		t.Fatalf("admin globals: %+v", a)
	}
	a = get(t, s, "/policies/me/globals", bearer(mt))
	if err := json.Unmarshal([]byte(a.body), &g); err != nil || g.Data["admin_access"] {
		t.Fatalf("member globals: %+v", a)
	}
	if a := get(t, s, "/policies/me/globals", bearer("bogus")); a.status != 401 {
		t.Fatalf("bogus globals: %+v", a)
	}

	s.SetStatus(503)
	if a := get(t, s, "/users/me", bearer(at)); a.status != 503 {
		t.Fatalf("SetStatus(503): %+v", a)
	}
	s.SetStatus(0)
	s.Stop()
	if _, err := http.Get(s.URL + "/server/ping"); err == nil {
		t.Fatal("stopped stand-in still answers")
	}
	s.Start()
	if a := get(t, s, "/server/ping", nil); a.status != 200 || a.body != "pong" {
		t.Fatalf("ping after restart: %+v", a)
	}
	if a := get(t, s, "/users/me", bearer(at)); a.status != 200 {
		t.Fatalf("session lost across restart: %+v", a)
	}
}

func TestHold(t *testing.T) {
	t.Parallel()
	s := Start(t)
	release := s.Hold()
	done := make(chan int, 1)
	go func() {
		resp, err := http.Get(s.URL + "/server/ping")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	testkit.Eventually(t, 10*time.Second, func() error {
		if s.Calls("/server/ping") == 0 {
			return errors.New("held request not received yet")
		}
		return nil
	})
	select {
	case <-done:
		t.Fatal("held request answered before release")
	default:
	}
	release()
	if code := <-done; code != 200 {
		t.Fatalf("after release: %d", code)
	}
	release() // idempotent
}
