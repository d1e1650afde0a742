package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
)

// admin is a REST client of the real Directus, logged in as its admin, for
// creating per-test organizations, events, users and memberships: API-only
// users cost no licence seat, so every test makes its own.
type admin struct {
	base  string
	token string
}

var (
	adminOnce sync.Once
	adminTok  string
	adminErr  error
	roleOnce  sync.Once
	roleID    string
	roleErr   error
)

func directusAdmin(tb testing.TB, d directusEnv) *admin {
	tb.Helper()
	adminOnce.Do(func() {
		var out struct {
			AccessToken string `json:"access_token"`
		}
		adminErr = (&admin{base: d.URL}).do(http.MethodPost, "/auth/login", map[string]string{"email": d.AdminEmail, "password": d.AdminPassword}, &out)
		adminTok = out.AccessToken
	})
	if adminErr != nil {
		tb.Fatalf("e2e: Directus admin login at %s: %v", d.URL, adminErr)
	}
	return &admin{base: d.URL, token: adminTok}
}

func (a *admin) do(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.base+path, body)
	req.Header.Set("Content-Type", "application/json")
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out == nil || len(b) == 0 {
		return nil
	}
	var env struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return err
	}
	return json.Unmarshal(env.Data, out)
}

func (a *admin) must(tb testing.TB, method, path string, in, out any) {
	tb.Helper()
	if err := a.do(method, path, in, out); err != nil {
		tb.Fatalf("e2e: Directus: %v", err)
	}
}

// memberRole returns the id of the "Member" role scripts/directus.sh made.
func (a *admin) memberRole(tb testing.TB) string {
	tb.Helper()
	roleOnce.Do(func() {
		var roles []struct{ ID string }
		roleErr = a.do(http.MethodGet, "/roles?filter[name][_eq]=Member&fields=id", nil, &roles)
		if roleErr == nil && len(roles) != 1 {
			roleErr = fmt.Errorf("%d roles named Member (scripts/directus.sh provisions one)", len(roles))
		}
		if roleErr == nil {
			roleID = roles[0].ID
		}
	})
	if roleErr != nil {
		tb.Fatalf("e2e: Directus member role: %v", roleErr)
	}
	return roleID
}

type fixture struct {
	OrgID, EventID string
	Member, Other  account
}

type account struct{ ID, Email, Password string }

// newFixture creates, over REST, an organization with an event, a member
// of it and a user of no organization (both API-only Members).
func (a *admin) newFixture(tb testing.TB, tag string) fixture {
	tb.Helper()
	var f fixture
	var org, ev struct{ ID string }
	a.must(tb, http.MethodPost, "/items/organizations?fields=id", map[string]any{"name": "org " + tag}, &org)
	a.must(tb, http.MethodPost, "/items/events?fields=id", map[string]any{"organization_id": org.ID, "name": "event " + tag}, &ev)
	f.OrgID, f.EventID = org.ID, ev.ID
	role := a.memberRole(tb)
	mk := func(kind string) account {
		acc := account{Email: tag + "-" + kind + "@example.com", Password: "pw-" + tag + "-" + kind}
		var u struct{ ID string }
		a.must(tb, http.MethodPost, "/users?fields=id", map[string]any{"email": acc.Email, "password": acc.Password, "role": role}, &u)
		acc.ID = u.ID
		return acc
	}
	f.Member, f.Other = mk("member"), mk("other")
	a.must(tb, http.MethodPost, "/items/organization_users", map[string]any{"organization_id": org.ID, "user_id": f.Member.ID}, nil)
	return f
}
