package authsvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"trm-live/contract"
	"trm-live/contract/auth"
)

// Verdicts of a look-up other than a user. errUnavailable is never cached.
var (
	errUnauthorized = errors.New("unauthorized")
	errUnavailable  = errors.New("unavailable")
)

// directus resolves credentials with Directus's REST API: GET /users/me for
// the user and GET /policies/me/globals for the admin flag, both sent with
// only the credential.
type directusClient struct {
	base       string // without trailing slash
	cookieName string
	client     *http.Client
	timeout    time.Duration
	slots      chan struct{} // bounds look-ups in flight
	m          *metrics
	log        *slog.Logger
	down       atomic.Bool // for logging transitions only
}

func newDirectus(cfg Config, m *metrics, log *slog.Logger) *directusClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// Keep enough idle connections for the look-ups in flight (two calls
	// each), so a burst does not open and close connections.
	tr.MaxIdleConns = 2 * cfg.DirectusConcurrency
	tr.MaxIdleConnsPerHost = 2 * cfg.DirectusConcurrency
	tr.Proxy = nil
	return &directusClient{
		base:       strings.TrimRight(cfg.DirectusURL, "/"),
		cookieName: cfg.CookieName,
		client: &http.Client{
			Transport: tr,
			// Never follow a redirect: the credential must reach Directus only.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		timeout: cfg.DirectusTimeout,
		slots:   make(chan struct{}, cfg.DirectusConcurrency),
		m:       m,
		log:     log,
	}
}

// resolve asks Directus who holds cred. It returns errUnauthorized when
// Directus refuses the credential (401 or 403) and errUnavailable (wrapped)
// when it could not tell: timeout, connection error, any other status, or
// an answer it cannot read.
func (d *directusClient) resolve(ctx context.Context, cred auth.SessionRequest) (auth.User, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	select {
	case d.slots <- struct{}{}:
		defer func() { <-d.slots }()
	case <-ctx.Done():
		return auth.User{}, fmt.Errorf("%w: directus busy: %d look-ups in flight", errUnavailable, cap(d.slots))
	}
	if ctx.Err() != nil { // a slot freed as the wait ran out: too late to ask
		return auth.User{}, fmt.Errorf("%w: directus busy: %d look-ups in flight", errUnavailable, cap(d.slots))
	}

	// The two calls are independent; running them together halves the
	// latency of a look-up.
	var (
		wg      sync.WaitGroup
		globals struct {
			Data struct {
				AdminAccess *bool `json:"admin_access"`
			} `json:"data"`
		}
		gErr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		gErr = d.get(ctx, "policies_globals", "/policies/me/globals", cred, &globals)
	}()
	var me struct {
		Data struct {
			ID   string  `json:"id"`
			Role *string `json:"role"`
		} `json:"data"`
	}
	meErr := d.get(ctx, "users_me", "/users/me?fields=id,role", cred, &me)
	wg.Wait()

	switch {
	case errors.Is(meErr, errUnauthorized) || errors.Is(gErr, errUnauthorized):
		return auth.User{}, errUnauthorized
	case meErr != nil:
		return auth.User{}, meErr
	case gErr != nil:
		return auth.User{}, gErr
	}
	id := strings.ToLower(me.Data.ID)
	if !contract.ValidUUID(id) {
		return auth.User{}, d.fail(fmt.Errorf("%w: directus /users/me answered without a user id", errUnavailable))
	}
	if globals.Data.AdminAccess == nil {
		return auth.User{}, d.fail(fmt.Errorf("%w: directus /policies/me/globals answered without admin_access", errUnavailable))
	}
	u := auth.User{ID: id, Admin: *globals.Data.AdminAccess}
	if me.Data.Role != nil {
		u.Role = strings.ToLower(*me.Data.Role)
	}
	return u, nil
}

// get calls path with only the credential and decodes a 200 answer into out.
func (d *directusClient) get(ctx context.Context, call, path string, cred auth.SessionRequest, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.base+path, nil)
	if err != nil {
		return fmt.Errorf("%w: %v", errUnavailable, err)
	}
	req.Header.Set("Accept", "application/json")
	// The value was checked with auth.ValidToken, so it goes out verbatim.
	if cred.Bearer != "" {
		req.Header.Set("Authorization", "Bearer "+cred.Bearer)
	} else {
		req.Header.Set("Cookie", d.cookieName+"="+cred.Cookie)
	}
	start := time.Now()
	resp, err := d.client.Do(req)
	if err != nil {
		d.m.directus.WithLabelValues(call, "error").Observe(time.Since(start).Seconds())
		// The error names the URL (no credential) and the cause.
		return d.fail(fmt.Errorf("%w: directus %s: %v", errUnavailable, call, cause(err)))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		d.m.directus.WithLabelValues(call, "unauthorized").Observe(time.Since(start).Seconds())
		d.ok()
		return errUnauthorized
	case resp.StatusCode != http.StatusOK:
		d.m.directus.WithLabelValues(call, "error").Observe(time.Since(start).Seconds())
		return d.fail(fmt.Errorf("%w: directus %s: status %d", errUnavailable, call, resp.StatusCode))
	case err != nil:
		d.m.directus.WithLabelValues(call, "error").Observe(time.Since(start).Seconds())
		return d.fail(fmt.Errorf("%w: directus %s: read body: %v", errUnavailable, call, err))
	}
	if err := json.Unmarshal(body, out); err != nil {
		d.m.directus.WithLabelValues(call, "error").Observe(time.Since(start).Seconds())
		return d.fail(fmt.Errorf("%w: directus %s: decode: %v", errUnavailable, call, err))
	}
	d.m.directus.WithLabelValues(call, "ok").Observe(time.Since(start).Seconds())
	d.ok()
	return nil
}

// fail records a failed call and logs the first of a run of failures.
func (d *directusClient) fail(err error) error {
	d.m.directusUp.Set(0)
	if d.down.CompareAndSwap(false, true) {
		d.log.Warn("directus unavailable; answering unavailable for uncached sessions", "err", err)
	}
	return err
}

func (d *directusClient) ok() {
	d.m.directusUp.Set(1)
	if d.down.CompareAndSwap(true, false) {
		d.log.Info("directus reachable again")
	}
}

// ping checks that Directus answers GET /server/ping.
func (d *directusClient) ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.base+"/server/ping", nil)
	if err != nil {
		return err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return cause(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// cause strips the *url.Error wrapper, whose text repeats the URL.
func cause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
