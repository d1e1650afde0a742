package broadcaster

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
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

// authorizer asks authsvc. It keeps no decisions of its own: authsvc
// caches and coalesces them per (user, admin flag, event), so a burst of
// viewers of one event costs one database look-up per user, and zero per
// position; one cache means one place where a decision can be stale.
type authorizer struct {
	client *auth.Client
	m      *metrics
}

// decisionKey is what a decision is about: a user, with the admin flag in
// force, and an event.
type decisionKey struct {
	user, event string
	admin       bool
}

func newAuthorizer(c *auth.Client, m *metrics) *authorizer {
	return &authorizer{client: c, m: m}
}

// session resolves a credential through authsvc.
func (a *authorizer) session(ctx context.Context, cred auth.SessionRequest) (auth.User, error) {
	start := time.Now()
	u, err := a.client.Session(ctx, cred)
	if !cred.Empty() {
		a.m.authLatency.WithLabelValues("session").Observe(time.Since(start).Seconds())
	}
	return u, err
}

// authorize returns authsvc's decision for (user, admin flag, event).
func (a *authorizer) authorize(ctx context.Context, u auth.User, eventID string) (auth.Decision, error) {
	start := time.Now()
	d, err := a.client.Authorize(ctx, u, eventID)
	a.m.authLatency.WithLabelValues("event").Observe(time.Since(start).Seconds())
	return d, err
}
