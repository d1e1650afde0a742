package broadcaster

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"trm-live/contract/auth"
)

// originAllowed is checked before upgrade. No Origin header: not a browser,
// no cross-site risk; the credential decides. Otherwise the Origin must be
// in the allowed list, or, with no list, name the request's own scheme and
// host (same-origin: http://host is not https://host's origin).
func originAllowed(r *http.Request, allowed []string, trustProxy bool) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if len(allowed) == 0 {
		u, err := url.Parse(origin)
		return err == nil && u.Host != "" && strings.EqualFold(u.Scheme, requestScheme(r, trustProxy)) &&
			strings.EqualFold(u.Host, r.Host)
	}
	origin = strings.TrimSuffix(origin, "/")
	for _, a := range allowed {
		if a == "*" || strings.EqualFold(a, origin) {
			return true
		}
	}
	return false
}

// requestScheme is the scheme of the page a same-origin browser request
// comes from: https over TLS; behind a trusted proxy that terminates TLS,
// the proxy's X-Forwarded-Proto; http otherwise.
func requestScheme(r *http.Request, trustProxy bool) string {
	if r.TLS != nil {
		return "https"
	}
	if trustProxy {
		if p, _, _ := strings.Cut(r.Header.Get("X-Forwarded-Proto"), ","); strings.TrimSpace(p) != "" {
			return strings.ToLower(strings.TrimSpace(p))
		}
	}
	return "http"
}

// clientIP is the address handshake limits are counted against: the TCP
// peer, or behind a trusted proxy the last X-Forwarded-For entry (the one
// the proxy appended) or X-Real-Ip. An IPv6 address counts as its /64,
// which one subscriber usually holds whole.
func clientIP(r *http.Request, trustProxy bool) string {
	host := ""
	if trustProxy {
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			last := xff[len(xff)-1]
			if i := strings.LastIndexByte(last, ','); i >= 0 {
				last = last[i+1:]
			}
			host = strings.TrimSpace(last)
		}
		if host == "" {
			host = strings.TrimSpace(r.Header.Get("X-Real-Ip"))
		}
	}
	if host == "" {
		host = r.RemoteAddr
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// credential reads the session cookie, or else an Authorization bearer
// token. The value is passed to authsvc only; never logged.
func credential(r *http.Request, cookieName string) auth.SessionRequest {
	if c, err := r.Cookie(cookieName); err == nil && c.Value != "" {
		return auth.SessionRequest{Cookie: c.Value}
	}
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		if tok := strings.TrimSpace(h[7:]); tok != "" {
			return auth.SessionRequest{Bearer: tok}
		}
	}
	return auth.SessionRequest{}
}

// authorizer asks authsvc and caches event decisions per (user, admin
// flag, event) for one re-authorization interval, so a burst of viewers of one event costs
// one look-up per user, and zero per position.
type authorizer struct {
	client *auth.Client
	ttl    time.Duration
	m      *metrics
	now    func() time.Time

	mu    sync.Mutex
	cache map[authKey]authEntry
}

type authKey struct {
	user, event string
	admin       bool
}

type authEntry struct {
	decision auth.Decision
	expires  time.Time
}

func newAuthorizer(c *auth.Client, ttl time.Duration, m *metrics) *authorizer {
	return &authorizer{client: c, ttl: ttl, m: m, now: time.Now, cache: make(map[authKey]authEntry)}
}

// session resolves a credential through authsvc.
func (a *authorizer) session(ctx context.Context, cred auth.SessionRequest) (auth.User, error) {
	start := time.Now()
	u, err := a.client.Session(ctx, cred)
	if cred.Cookie != "" || cred.Bearer != "" {
		a.m.authLatency.WithLabelValues("session").Observe(time.Since(start).Seconds())
	}
	return u, err
}

// authorize returns the decision for (user, admin flag, event), from the cache when it
// is fresh unless refresh is set. Errors are not cached.
func (a *authorizer) authorize(ctx context.Context, u auth.User, eventID string, refresh bool) (auth.Decision, error) {
	k := authKey{user: u.ID, event: eventID, admin: u.Admin}
	if !refresh {
		a.mu.Lock()
		e, ok := a.cache[k]
		a.mu.Unlock()
		if ok && a.now().Before(e.expires) {
			return e.decision, nil
		}
	}
	start := time.Now()
	d, err := a.client.Authorize(ctx, u, eventID)
	a.m.authLatency.WithLabelValues("event").Observe(time.Since(start).Seconds())
	if err != nil {
		return "", err
	}
	a.mu.Lock()
	a.cache[k] = authEntry{decision: d, expires: a.now().Add(a.ttl)}
	a.mu.Unlock()
	return d, nil
}

// prune drops expired entries.
func (a *authorizer) prune() {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, e := range a.cache {
		if !now.Before(e.expires) {
			delete(a.cache, k)
		}
	}
}
