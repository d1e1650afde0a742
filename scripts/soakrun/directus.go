package soakrun

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"trm-live/testkit/directus"
)

// directusFaults is what the directus-5xx and directus-hang faults act on:
// the stand-in itself, or the proxy in front of a real Directus.
type directusFaults interface {
	SetStatus(code int)
	Hold() (release func())
}

// realDirectus is a REST client of a real Directus, logged in as its admin
// (a JSON-mode access token), for seeding the soak's organization, event,
// devices and viewers and logging the viewers in and out. Passwords and
// cookies never reach a log or the report.
type realDirectus struct {
	base                string
	adminEmail, adminPW string
	token               string
	hc                  *http.Client

	// What the soak created, removed at the end.
	orgID, eventID string
	userIDs        []string
}

func newRealDirectus(base, email, password string) *realDirectus {
	return &realDirectus{base: strings.TrimSuffix(base, "/"), adminEmail: email, adminPW: password, hc: &http.Client{Timeout: 2 * time.Minute}}
}

// do sends a JSON request as the admin and decodes the answer's data.
func (d *realDirectus) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if d.token != "" {
		req.Header.Set("Authorization", "Bearer "+d.token)
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, directusErrorText(b))
	}
	if out == nil || len(b) == 0 {
		return nil
	}
	var env struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return json.Unmarshal(env.Data, out)
}

// directusErrorText is the error codes and messages of a Directus error
// body (never the request: it may hold a password).
func directusErrorText(b []byte) string {
	var e struct {
		Errors []struct {
			Message    string `json:"message"`
			Extensions struct {
				Code string `json:"code"`
			} `json:"extensions"`
		} `json:"errors"`
	}
	if json.Unmarshal(b, &e) != nil || len(e.Errors) == 0 {
		if len(b) > 200 {
			b = b[:200]
		}
		return string(b)
	}
	var parts []string
	for _, x := range e.Errors {
		parts = append(parts, x.Extensions.Code+": "+x.Message)
	}
	return strings.Join(parts, "; ")
}

// adminLogin takes a fresh admin access token (it lives 15 min by
// default, so the clean-up at the end logs in again).
func (d *realDirectus) adminLogin(ctx context.Context) error {
	d.token = ""
	var out struct {
		AccessToken string `json:"access_token"`
	}
	if err := d.do(ctx, http.MethodPost, "/auth/login", map[string]string{"email": d.adminEmail, "password": d.adminPW}, &out); err != nil {
		return fmt.Errorf("directus admin login at %s: %w", d.base, err)
	}
	if out.AccessToken == "" {
		return fmt.Errorf("directus admin login at %s: no access token", d.base)
	}
	d.token = out.AccessToken
	return nil
}

// version is the project's Directus version from GET /server/info, or
// "unknown".
func (d *realDirectus) version(ctx context.Context) string {
	var info struct {
		Version string `json:"version"`
	}
	if err := d.do(ctx, http.MethodGet, "/server/info", nil, &info); err != nil || info.Version == "" {
		return "unknown"
	}
	return info.Version
}

// dxViewer is one seeded viewer account.
type dxViewer struct {
	ID, Email, Password string
}

// seed creates, as the e2e harness does, an organization with one event
// holding every device, and one API-only user of the "Member" role per
// viewer (random password), each a member of the organization. tag makes
// the names unique, so runs against the same Directus do not collide.
func (d *realDirectus) seed(ctx context.Context, tag string, devices []string, viewers int) ([]dxViewer, error) {
	var roles []struct{ ID string }
	if err := d.do(ctx, http.MethodGet, "/roles?filter[name][_eq]=Member&fields=id", nil, &roles); err != nil {
		return nil, err
	}
	if len(roles) != 1 {
		return nil, fmt.Errorf("directus at %s: %d roles named Member, want 1 (scripts/directus.sh provisions it with the trm collections)", d.base, len(roles))
	}
	var org, ev struct{ ID string }
	if err := d.do(ctx, http.MethodPost, "/items/organizations?fields=id", map[string]any{"name": "org " + tag}, &org); err != nil {
		return nil, fmt.Errorf("%w (are the trm collections provisioned? scripts/directus.sh does it)", err)
	}
	d.orgID = org.ID
	if err := d.do(ctx, http.MethodPost, "/items/events?fields=id", map[string]any{"organization_id": org.ID, "name": "soak " + tag}, &ev); err != nil {
		return nil, err
	}
	d.eventID = ev.ID
	assign := make([]map[string]any, len(devices))
	for i, dev := range devices {
		assign[i] = map[string]any{"event_id": ev.ID, "device_id": dev}
	}
	if err := d.do(ctx, http.MethodPost, "/items/event_devices?fields=id", assign, nil); err != nil {
		return nil, err
	}
	vs := make([]dxViewer, viewers)
	in := make([]map[string]any, viewers)
	for i := range vs {
		vs[i] = dxViewer{Email: fmt.Sprintf("%s-viewer%d@example.com", tag, i), Password: randomHex(16)}
		in[i] = map[string]any{"email": vs[i].Email, "password": vs[i].Password, "role": roles[0].ID}
	}
	// Four batches at once: Directus hashes each password (argon2) in
	// turn within one request, about a second each on a busy machine, and
	// runs concurrent requests' hashing in parallel.
	created, err := d.createUsers(ctx, in, 4)
	byEmail := map[string]string{}
	for _, u := range created {
		byEmail[strings.ToLower(u.Email)] = u.ID
		d.userIDs = append(d.userIDs, u.ID) // removed at the end, even after an error
	}
	if err != nil {
		return nil, err
	}
	members := make([]map[string]any, viewers)
	for i := range vs {
		vs[i].ID = byEmail[strings.ToLower(vs[i].Email)]
		if vs[i].ID == "" {
			return nil, fmt.Errorf("directus: user %s not created", vs[i].Email)
		}
		members[i] = map[string]any{"organization_id": org.ID, "user_id": vs[i].ID}
	}
	if err := d.do(ctx, http.MethodPost, "/items/organization_users?fields=id", members, nil); err != nil {
		return nil, err
	}
	return vs, nil
}

type createdUser struct{ ID, Email string }

// createUsers posts the users in up to parallel batches at once.
func (d *realDirectus) createUsers(ctx context.Context, in []map[string]any, parallel int) ([]createdUser, error) {
	size := (len(in) + parallel - 1) / parallel
	var (
		mu      sync.Mutex
		created []createdUser
		errs    []error
		wg      sync.WaitGroup
	)
	for lo := 0; lo < len(in); lo += size {
		batch := in[lo:min(lo+size, len(in))]
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out []createdUser
			err := d.do(ctx, http.MethodPost, "/users?fields=id,email", batch, &out)
			mu.Lock()
			defer mu.Unlock()
			created = append(created, out...)
			errs = append(errs, err)
		}()
	}
	wg.Wait()
	return created, errors.Join(errs...)
}

// login is POST /auth/login {"mode":"session"}: the directus_session_token
// cookie's value.
func (d *realDirectus) login(ctx context.Context, email, password string) (string, error) {
	b, _ := json.Marshal(map[string]string{"email": email, "password": password, "mode": "session"})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.base+"/auth/login", bytes.NewReader(b))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := d.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("login %s: %w", email, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("login %s: %d %s", email, resp.StatusCode, directusErrorText(body))
	}
	for _, c := range resp.Cookies() {
		if c.Name == directus.CookieName && c.Value != "" {
			return c.Value, nil
		}
	}
	return "", fmt.Errorf("login %s: no %s cookie in the answer", email, directus.CookieName)
}

// loginAll logs every viewer in, four at a time.
func (d *realDirectus) loginAll(ctx context.Context, vs []dxViewer) ([]string, error) {
	cookies := make([]string, len(vs))
	errs := make([]error, len(vs))
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i, v := range vs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			cookies[i], errs[i] = d.login(ctx, v.Email, v.Password)
		}()
	}
	wg.Wait()
	return cookies, errors.Join(errs...)
}

// logout is POST /auth/logout {"mode":"session"} with the cookie of base,
// the stand-in or a real Directus (204: the session is revoked).
func logout(ctx context.Context, hc *http.Client, base, cookie string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/auth/logout", strings.NewReader(`{"mode":"session"}`))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.AddCookie(&http.Cookie{Name: directus.CookieName, Value: cookie})
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		return fmt.Errorf("logout: status %d %s", resp.StatusCode, directusErrorText(b))
	}
	return nil
}

// cleanup removes what seed created: the users, then the organization
// (its event, memberships and device assignments go with it: the
// relations cascade).
func (d *realDirectus) cleanup(ctx context.Context) error {
	if d.orgID == "" && len(d.userIDs) == 0 {
		return nil
	}
	if err := d.adminLogin(ctx); err != nil {
		return err
	}
	var errs []error
	if len(d.userIDs) > 0 {
		errs = append(errs, d.do(ctx, http.MethodDelete, "/users", d.userIDs, nil))
	}
	if d.orgID != "" {
		errs = append(errs, d.do(ctx, http.MethodDelete, "/items/organizations/"+d.orgID, nil, nil))
	}
	return errors.Join(errs...)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
