// Package devauth is a DEV-ONLY, Directus-compatible auth backend for the
// dev stack: POST /auth/login, /auth/refresh and /auth/logout, GET /users/me,
// /policies/me/globals, /server/ping and a read-only GET /items/events, for a
// fixed list of demo users held in memory. It lets `scripts/dev` start in
// seconds without installing Directus; `scripts/dev --directus` uses a real
// one instead.
//
// It answers as Directus 11/12 do for what trm-live uses
// (docs/directus.md): a session login sets the httpOnly directus_session_token
// cookie, an HS256 JWT with Directus's claims, whose session is checked on
// every request so logout revokes it; no credential, a bogus value or a
// revoked session get 401 INVALID_CREDENTIALS, a wrong signature 403
// INVALID_TOKEN, an expired token 401 TOKEN_EXPIRED, and a rejected cookie is
// cleared. Token sources in Directus's order: access_token query parameter,
// Authorization: Bearer, the cookie. The e2e module runs one contract test
// against both this package and a real Directus, so the two cannot drift.
//
// It is not an identity provider: passwords are compared in plain text and
// sessions die with the process. ListenLoopback and ServeHTTP refuse
// anything but loopback.
package devauth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// CookieName is Directus's default session cookie name.
const CookieName = "directus_session_token"

// Lifetimes: Directus's defaults SESSION_COOKIE_TTL=1d, ACCESS_TOKEN_TTL=15m.
const (
	SessionTTL     = 24 * time.Hour
	AccessTokenTTL = 15 * time.Minute
)

// User is a demo user.
type User struct {
	ID       string // canonical lowercase uuid
	Email    string
	Password string
	Role     string // role uuid, "" for none
	Admin    bool
}

// Event is one row of GET /items/events.
type Event struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// Config configures a Server.
type Config struct {
	Users []User
	// Events lists the events for GET /items/events; nil answers an empty
	// list.
	Events func(ctx context.Context) ([]Event, error)
	// Secret signs the JWTs; nil means 32 random bytes.
	Secret []byte
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is the dev auth backend, an http.Handler. Safe for concurrent use.
type Server struct {
	cfg      Config
	mu       sync.Mutex
	sessions map[string]string // session id -> user id
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.Secret == nil {
		cfg.Secret = make([]byte, 32)
		_, _ = rand.Read(cfg.Secret)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Server{cfg: cfg, sessions: map[string]string{}}
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

// ServeHTTP routes the Directus endpoints; other paths get Directus's 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err != nil || !isLoopbackIP(host) {
		writeError(w, http.StatusForbidden, "devauth serves loopback clients only.", "FORBIDDEN")
		return
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/auth/login":
		s.login(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/auth/refresh":
		s.refresh(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/auth/logout":
		s.logout(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/users/me":
		s.usersMe(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/policies/me/globals":
		s.globals(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/items/events":
		s.events(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/server/ping":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, "pong")
	default:
		writeError(w, http.StatusNotFound, fmt.Sprintf("Route %s doesn't exist.", r.URL.Path), "ROUTE_NOT_FOUND")
	}
}

func isLoopbackIP(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Login is what a client of the package (the dev binary's banner, tests)
// would get from POST /auth/login in session mode: the cookie value.
func (s *Server) Login(email, password string) (string, bool) {
	u := s.find(email, password)
	if u == nil {
		return "", false
	}
	now := s.cfg.Now()
	return s.sign(*u, s.newSession(u.ID), now, now.Add(SessionTTL)), true
}

func (s *Server) find(email, password string) *User {
	for i := range s.cfg.Users {
		u := &s.cfg.Users[i]
		if strings.EqualFold(u.Email, email) && hmac.Equal([]byte(u.Password), []byte(password)) {
			return u
		}
	}
	return nil
}

func (s *Server) user(id string) *User {
	for i := range s.cfg.Users {
		if s.cfg.Users[i].ID == id {
			return &s.cfg.Users[i]
		}
	}
	return nil
}

func (s *Server) newSession(userID string) string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	sid := hex.EncodeToString(b) // 64 characters, as Directus's
	s.mu.Lock()
	s.sessions[sid] = userID
	s.mu.Unlock()
	return sid
}

var b64 = base64.RawURLEncoding

// sign makes an HS256 JWT with Directus's claims.
func (s *Server) sign(u User, session string, iat, exp time.Time) string {
	var role any
	if u.Role != "" {
		role = u.Role
	}
	payload, _ := json.Marshal(map[string]any{
		"id": u.ID, "role": role, "app_access": u.Admin, "admin_access": u.Admin,
		"session": session, "iat": iat.Unix(), "exp": exp.Unix(), "iss": "directus",
	})
	unsigned := b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + b64.EncodeToString(payload)
	m := hmac.New(sha256.New, s.cfg.Secret)
	m.Write([]byte(unsigned))
	return unsigned + "." + b64.EncodeToString(m.Sum(nil))
}

type claims struct {
	ID      string `json:"id"`
	Session string `json:"session"`
	Exp     int64  `json:"exp"`
}

// verify checks a JWT's signature and expiry, not its session.
func (s *Server) verify(token string) (claims, int, string, string) {
	var c claims
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		// Not a JWT: Directus would look it up as a static token; we have none.
		return c, http.StatusUnauthorized, "Invalid user credentials.", "INVALID_CREDENTIALS"
	}
	m := hmac.New(sha256.New, s.cfg.Secret)
	m.Write([]byte(parts[0] + "." + parts[1]))
	// Compare the encoded form: decoding would ignore the spare bits of the
	// last base64 character.
	if !hmac.Equal([]byte(parts[2]), []byte(b64.EncodeToString(m.Sum(nil)))) {
		return c, http.StatusForbidden, "Invalid token.", "INVALID_TOKEN"
	}
	raw, err := b64.DecodeString(parts[1])
	if err != nil || json.Unmarshal(raw, &c) != nil {
		return c, http.StatusForbidden, "Invalid token.", "INVALID_TOKEN"
	}
	if s.cfg.Now().Unix() >= c.Exp {
		return c, http.StatusUnauthorized, "Token expired.", "TOKEN_EXPIRED"
	}
	return c, 0, "", ""
}

// token returns the credential in Directus's priority order and whether it
// came from the session cookie.
func token(r *http.Request) (string, bool) {
	if t := r.URL.Query().Get("access_token"); t != "" {
		return t, false
	}
	if a := r.Header.Get("Authorization"); a != "" {
		if k, v, ok := strings.Cut(a, " "); ok && strings.EqualFold(k, "Bearer") {
			return strings.TrimSpace(v), false
		}
	}
	if c, err := r.Cookie(CookieName); err == nil && c.Value != "" {
		return c.Value, true
	}
	return "", false
}

// authenticate returns the user of the request's credential, or writes
// Directus's rejection and returns nil.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) *User {
	tok, fromCookie := token(r)
	reject := func(status int, msg, code string) *User {
		if fromCookie {
			clearCookie(w)
		}
		writeError(w, status, msg, code)
		return nil
	}
	if tok == "" {
		// No public fallback on the endpoints served here.
		return reject(http.StatusUnauthorized, "Invalid user credentials.", "INVALID_CREDENTIALS")
	}
	c, status, msg, code := s.verify(tok)
	if status != 0 {
		return reject(status, msg, code)
	}
	s.mu.Lock()
	uid, ok := s.sessions[c.Session]
	s.mu.Unlock()
	u := s.user(c.ID)
	if !ok || uid != c.ID || u == nil {
		return reject(http.StatusUnauthorized, "Invalid user credentials.", "INVALID_CREDENTIALS")
	}
	return u
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var in struct{ Email, Password, Mode string }
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, "Invalid payload.", "INVALID_PAYLOAD")
		return
	}
	u := s.find(in.Email, in.Password)
	if u == nil {
		writeError(w, http.StatusUnauthorized, "Invalid user credentials.", "INVALID_CREDENTIALS")
		return
	}
	s.issue(w, *u, s.newSession(u.ID), in.Mode)
}

func (s *Server) issue(w http.ResponseWriter, u User, sid, mode string) {
	now := s.cfg.Now()
	if mode == "session" {
		exp := now.Add(SessionTTL)
		w.Header().Add("Set-Cookie", fmt.Sprintf("%s=%s; Max-Age=%d; Path=/; Expires=%s; HttpOnly; SameSite=Lax",
			CookieName, s.sign(u, sid, now, exp), int(SessionTTL.Seconds()), exp.UTC().Format(http.TimeFormat)))
		writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{"expires": SessionTTL.Milliseconds()}})
		return
	}
	// JSON mode: an access token; refresh tokens are not kept (dev only).
	writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{
		"access_token": s.sign(u, sid, now, now.Add(AccessTokenTTL)),
		"expires":      AccessTokenTTL.Milliseconds(),
	}})
}

// refresh re-issues the session cookie (mode session only), keeping the
// session.
func (s *Server) refresh(w http.ResponseWriter, r *http.Request) {
	u := s.authenticate(w, r)
	if u == nil {
		return
	}
	tok, _ := token(r)
	c, _, _, _ := s.verify(tok)
	s.issue(w, *u, c.Session, "session")
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	c, err := r.Cookie(CookieName)
	if err != nil || c.Value == "" {
		writeError(w, http.StatusBadRequest, "Invalid payload. The refresh token is required in either the payload or cookie.", "INVALID_PAYLOAD")
		return
	}
	cl, status, _, _ := s.verify(c.Value)
	if status == 0 {
		s.mu.Lock()
		delete(s.sessions, cl.Session)
		s.mu.Unlock()
	}
	clearCookie(w)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) usersMe(w http.ResponseWriter, r *http.Request) {
	u := s.authenticate(w, r)
	if u == nil {
		return
	}
	var role any
	if u.Role != "" {
		role = u.Role
	}
	all := map[string]any{
		"id": u.ID, "email": u.Email, "role": role, "status": "active",
		"first_name": nil, "last_name": nil, "provider": "default",
	}
	out := all
	if f := r.URL.Query().Get("fields"); f != "" && f != "*" {
		// Unknown fields are dropped silently, as Directus does.
		out = map[string]any{"id": u.ID}
		for _, name := range strings.Split(f, ",") {
			name = strings.TrimSpace(name)
			if v, ok := all[name]; ok {
				out[name] = v
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

func (s *Server) globals(w http.ResponseWriter, r *http.Request) {
	u := s.authenticate(w, r)
	if u == nil {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{
		"app_access": u.Admin, "admin_access": u.Admin, "enforce_tfa": false,
	}})
}

// events answers GET /items/events with id and name of every event, to any
// logged-in user (the Member policy of scripts/directus.sh reads events
// unfiltered too).
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	if s.authenticate(w, r) == nil {
		return
	}
	list := []Event{}
	if s.cfg.Events != nil {
		var err error
		if list, err = s.cfg.Events(r.Context()); err != nil {
			writeError(w, http.StatusServiceUnavailable, "events: "+err.Error(), "SERVICE_UNAVAILABLE")
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": list})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg, code string) {
	type ext struct {
		Code string `json:"code"`
	}
	type e struct {
		Message    string `json:"message"`
		Extensions ext    `json:"extensions"`
	}
	writeJSON(w, status, map[string]any{"errors": []e{{msg, ext{code}}}})
}

func clearCookie(w http.ResponseWriter) {
	w.Header().Add("Set-Cookie", CookieName+"=; Max-Age=0; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax")
}
