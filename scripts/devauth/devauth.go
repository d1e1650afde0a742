// Package devauth is the DEV-ONLY auth backend of the dev stack: the
// repository's one Directus fake (testkit/directus: POST /auth/login,
// /auth/refresh and /auth/logout, GET /users/me, /policies/me/globals,
// /server/ping and a read-only GET /items/events), serving a fixed list of
// demo users held in memory, behind a guard that answers loopback clients
// only. It lets `scripts/dev` start in seconds without installing
// Directus; `scripts/dev --directus` uses a real one instead. The e2e
// module runs one contract test against the fake, the dev origin and a real
// Directus, so none of them can drift (docs/directus.md).
//
// It is not an identity provider: passwords are compared in plain text and
// sessions die with the process. ListenLoopback and ServeHTTP refuse
// anything but loopback.
package devauth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"trm-live/testkit/directus"
)

// CookieName is Directus's default session cookie name.
const CookieName = directus.CookieName

// Lifetimes: Directus's defaults SESSION_COOKIE_TTL=1d, ACCESS_TOKEN_TTL=15m.
const (
	SessionTTL     = directus.SessionTTL
	AccessTokenTTL = directus.AccessTokenTTL
)

// User is a demo user: ID (canonical lowercase uuid), Email, Password,
// Role ("" for none) and Admin are what the dev stack sets.
type User = directus.User

// Event is one row of GET /items/events.
type Event = directus.Event

// Config configures a Server: Users, Events (nil answers an empty list),
// Secret (nil: 32 random bytes) and Now (nil: time.Now). Record is ignored:
// the dev backend keeps no requests.
type Config = directus.Config

// Server is the dev auth backend, an http.Handler. Safe for concurrent use.
type Server struct {
	fake *directus.Server
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.Events == nil {
		cfg.Events = func(context.Context) ([]Event, error) { return []Event{}, nil }
	}
	cfg.Record = false
	return &Server{fake: directus.New(cfg)}
}

// ErrNotLoopback is returned by CheckLoopback and ListenLoopback.
var ErrNotLoopback = errors.New("devauth is dev-only and serves loopback addresses only")

// CheckLoopback returns ErrNotLoopback unless addr (host:port) names a
// loopback host: 127.0.0.0/8, ::1 or localhost. An empty host (all
// interfaces) is refused.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: %q: %v", ErrNotLoopback, addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%w: %q", ErrNotLoopback, addr)
	}
	return nil
}

// ListenLoopback listens on addr after CheckLoopback.
func ListenLoopback(addr string) (net.Listener, error) {
	if err := CheckLoopback(addr); err != nil {
		return nil, err
	}
	return net.Listen("tcp", addr)
}

// ServeHTTP refuses non-loopback clients with 403 and hands the rest to
// the Directus fake.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err != nil || !isLoopbackIP(host) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"errors":[{"message":"devauth serves loopback clients only.","extensions":{"code":"FORBIDDEN"}}]}` + "\n"))
		return
	}
	s.fake.ServeHTTP(w, r)
}

func isLoopbackIP(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Login is what POST /auth/login in session mode would give: the cookie
// value (for the dev binary's banner and tests).
func (s *Server) Login(email, password string) (string, bool) {
	return s.fake.Session(email, password)
}
