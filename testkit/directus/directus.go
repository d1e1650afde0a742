// Package directus is an in-process stand-in for the parts of Directus 11.x
// and 12.x that trm-live talks to: the one Directus fake of the repository.
// Unit tests use it through Start(t); the dev auth backend (scripts/devauth)
// and the authsvc benchmark use it as an http.Handler through New. It
// imports no testing package, so the dev tooling can link it
// (docs/DECISIONS.md, decision 12).
//
// It reproduces what docs/directus.md records from a real Directus 11.17.4
// and 12.4.0, status code by status code and body by body, and
// e2e/contract_test.go runs the same contract checks against it, the real
// Directus and the dev origin:
//
//   - POST /auth/login {"email","password","mode":"session"}: 200
//     {"data":{"expires":86400000}} and
//     Set-Cookie: directus_session_token=<HS256 JWT>; Max-Age=86400; Path=/;
//     Expires=…; HttpOnly; SameSite=Lax. Wrong credentials: 401
//     INVALID_CREDENTIALS. Mode "json" (the default) answers
//     {"data":{"access_token","expires":900000,"refresh_token"}}.
//   - POST /auth/refresh {"mode":"session"} with the cookie: a new cookie on
//     the same session; {"refresh_token"}: new tokens; neither: 400
//     INVALID_PAYLOAD.
//   - POST /auth/logout {"mode":"session"} with the cookie: 204, the session
//     is revoked and the cookie cleared.
//   - GET /users/me: 200 {"data":{…}} with the fields asked for (unknown ones
//     dropped silently; only {"id"} for a user without read permission on
//     directus_users); no credential, a bogus (non-JWT) value, a revoked
//     session: 401 INVALID_CREDENTIALS; a wrong signature: 403 INVALID_TOKEN;
//     an expired JWT: 401 TOKEN_EXPIRED. A rejected cookie also gets the
//     clearing Set-Cookie. Token sources in Directus's priority order: the
//     access_token query parameter, Authorization: Bearer, then the cookie.
//   - GET /policies/me/globals: {"data":{"app_access","admin_access","enforce_tfa"}},
//     {"data":{"app_access":false}} without a credential.
//   - GET /items/events: {"data":[{"id","name"}…]} for a logged-in user,
//     403 FORBIDDEN without a credential, when Config.Events is set
//     (otherwise the route does not exist).
//   - GET /server/ping: "pong".
//
// Tests steer it: SetLatency (slowness), Hold (requests wait until released),
// SetStatus (every route answers, say, 503), Stop and Start (connection
// refused, then back on the same port), and read what reached it: Calls
// counts requests per path, and Requests (Config.Record, on under Start)
// returns each with its exact Cookie and Authorization headers, so a test
// can assert that only the session cookie arrived.
//
// Users live in memory; passwords are compared in plain text. Their ids are
// plain UUIDs (NewID) that tests also insert into directus_users and
// organization_users (InsertUsers).
package directus

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
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

// Session cookie lifetime (SESSION_COOKIE_TTL=1d) and access token lifetime
// (ACCESS_TOKEN_TTL=15m), Directus's defaults.
const (
	SessionTTL     = 24 * time.Hour
	AccessTokenTTL = 15 * time.Minute
)

// User is a Directus user known to the stand-in.
type User struct {
	// ID is the user's uuid; AddUser fills it in when empty.
	ID       string
	Email    string
	Password string
	// Role is the role uuid; "" means no role (null in Directus).
	Role string
	// Admin and AppAccess are what the user's policies grant, as
	// /policies/me/globals reports them.
	Admin     bool
	AppAccess bool
	// NoReadSelf models a user whose policies give no read permission on
	// directus_users: /users/me then returns only {"id"}, whatever the fields.
	NoReadSelf bool
	// StaticToken, when set, is accepted as a bearer token (Directus's
	// per-user static token).
	StaticToken string
	// Suspended users (status "suspended") cannot log in, and their sessions
	// are refused.
	Suspended bool
}

// Request is one request the stand-in received.
type Request struct {
	Method string
	Path   string
	Query  string
	// Cookie and Authorization are the raw header values, joined with "; "
	// when the header was sent more than once.
	Cookie        string
	Authorization string
	Header        http.Header
}

// Event is one row of GET /items/events.
type Event struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// Config configures a stand-in made by New.
type Config struct {
	// Users are added as AddUser adds them.
	Users []User
	// Events lists the rows of GET /items/events; nil: the route is not
	// served (404 ROUTE_NOT_FOUND).
	Events func(ctx context.Context) ([]Event, error)
	// Secret signs the JWTs (Directus's SECRET); nil means 32 random bytes.
	Secret []byte
	// Now is the clock for issuing and expiring tokens; nil means time.Now.
	Now func() time.Time
	// Record keeps every request for Requests. Off, only the per-path
	// counts of Calls are kept, so a long-running server stays small.
	Record bool
}

// TB is the part of testing.TB the test helpers use (the package does not
// import testing, so non-test code can link it).
type TB interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// Server is the stand-in, an http.Handler. Its methods are safe for
// concurrent use.
type Server struct {
	// URL is http://127.0.0.1:<port> once Listen or Start has run, kept
	// across Stop and Start.
	URL string
	// Secret signs the JWTs (Directus's SECRET).
	Secret []byte

	tb     TB // nil outside tests
	now    func() time.Time
	events func(ctx context.Context) ([]Event, error)
	record bool
	addr   string

	mu       sync.Mutex
	srv      *http.Server
	users    map[string]*User  // by id
	sessions map[string]string // session id -> user id
	refresh  map[string]string // refresh token -> session id
	latency  time.Duration
	status   int
	hold     chan struct{} // non-nil: requests wait until it is closed
	calls    map[string]int
	requests []Request
}

// New returns a stand-in for cfg, not listening: serve it as an
// http.Handler, or call Listen.
func New(cfg Config) *Server {
	s := &Server{
		Secret:   cfg.Secret,
		now:      cfg.Now,
		events:   cfg.Events,
		record:   cfg.Record,
		users:    map[string]*User{},
		sessions: map[string]string{},
		refresh:  map[string]string{},
		calls:    map[string]int{},
	}
	if s.Secret == nil {
		s.Secret = make([]byte, 32)
		_, _ = rand.Read(s.Secret)
	}
	if s.now == nil {
		s.now = time.Now
	}
	for _, u := range cfg.Users {
		s.AddUser(u)
	}
	return s
}

// Start starts a stand-in that records every request on a random loopback
// port, for a test; it is stopped at cleanup.
func Start(tb TB) *Server {
	tb.Helper()
	return StartWith(tb, Config{})
}

// StartWith is Start with cfg (users, events, clock); it always records.
func StartWith(tb TB, cfg Config) *Server {
	tb.Helper()
	cfg.Record = true
	s := New(cfg)
	s.tb = tb
	_ = s.Start() // a failure has failed the test
	tb.Cleanup(s.Stop)
	return s
}

// Listen serves s on addr (a random loopback port when empty) until Stop;
// URL is set from the first address listened on.
func (s *Server) Listen(addr string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return nil
	}
	if s.addr == "" {
		s.addr = addr
		if s.addr == "" {
			s.addr = "127.0.0.1:0"
		}
	}
	var ln net.Listener
	var err error
	// The port may linger briefly after Stop; retry for a while.
	for i := 0; i < 100; i++ {
		if ln, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("directus stand-in: listen %s: %w", s.addr, err)
	}
	if s.URL == "" {
		s.addr = ln.Addr().String()
		s.URL = "http://" + s.addr // kept across restarts
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func(srv *http.Server) { _ = srv.Serve(ln) }(s.srv)
	return nil
}

// Start (re)starts the listener on the same port (a random loopback port
// the first time). A failure is returned, and also fails the test of a
// stand-in made by Start(tb). No-op when running.
func (s *Server) Start() error {
	if s.tb != nil {
		s.tb.Helper()
	}
	err := s.Listen("")
	if err != nil && s.tb != nil {
		s.tb.Fatalf("%v", err)
	}
	return err
}

// Stop closes the listener and every open connection: clients then get
// "connection refused" until Start. Safe to call twice.
func (s *Server) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// SetLatency delays every answer by d (0: answer at once). A delayed
// request whose client gives up is dropped.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	s.latency = d
	s.mu.Unlock()
}

// Hold makes every request that arrives from now on wait (after being
// recorded) until release is called, or until its client gives up. Tests
// use it to keep a look-up in flight while they pile identical ones on top.
func (s *Server) Hold() (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.hold = ch
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.hold == ch {
				s.hold = nil
			}
			s.mu.Unlock()
			close(ch)
		})
	}
}

// SetStatus makes every route answer this status with a Directus-shaped
// error body (e.g. 503, 500, 429); 0 restores normal behaviour.
func (s *Server) SetStatus(code int) {
	s.mu.Lock()
	s.status = code
	s.mu.Unlock()
}

// NewID returns a random (version 4) UUID in canonical lowercase form.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// AddUser stores u (filling in ID, Email and Password when empty) and
// returns the stored copy.
func (s *Server) AddUser(u User) User {
	if u.ID == "" {
		u.ID = NewID()
	}
	if u.Email == "" {
		u.Email = u.ID + "@example.com"
	}
	if u.Password == "" {
		u.Password = "password-" + u.ID
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := u
	s.users[u.ID] = &c
	return u
}

// UpdateUser replaces the stored user with the same ID (e.g. to grant or
// revoke admin, or suspend).
func (s *Server) UpdateUser(u User) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.users[u.ID]; !ok {
		if s.tb != nil {
			s.tb.Errorf("directus stand-in: UpdateUser: no user %s", u.ID)
		}
		return
	}
	c := u
	s.users[u.ID] = &c
}

// Login logs u in with POST /auth/login {"mode":"session"} over HTTP, as a
// browser does, and returns the session cookie value.
func (s *Server) Login(tb TB, u User) string {
	tb.Helper()
	body, _ := json.Marshal(map[string]string{"email": u.Email, "password": u.Password, "mode": "session"})
	resp, err := http.Post(s.URL+"/auth/login", "application/json", bytes.NewReader(body))
	if err != nil {
		tb.Fatalf("directus stand-in: login: %v", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("directus stand-in: login %s: status %d", u.Email, resp.StatusCode)
	}
	for _, c := range resp.Cookies() {
		if c.Name == CookieName && c.Value != "" {
			return c.Value
		}
	}
	tb.Fatalf("directus stand-in: login: no session cookie")
	return ""
}

// Logout revokes the session of cookie with POST /auth/logout
// {"mode":"session"} over HTTP.
func (s *Server) Logout(tb TB, cookie string) {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.URL+"/auth/logout", strings.NewReader(`{"mode":"session"}`))
	req.Header.Set("Content-Type", "application/json")
	req.AddCookie(&http.Cookie{Name: CookieName, Value: cookie})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("directus stand-in: logout: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		tb.Fatalf("directus stand-in: logout: status %d", resp.StatusCode)
	}
}

// Session logs the user with this email and password in without HTTP, as
// POST /auth/login {"mode":"session"} would, and returns the cookie value;
// ok is false for wrong credentials.
func (s *Server) Session(email, password string) (cookie string, ok bool) {
	u := s.find(email, password)
	if u == nil {
		return "", false
	}
	now := s.now()
	return s.sign(*u, s.newSession(u.ID), now, now.Add(SessionTTL)), true
}

// find returns a copy of the active user with these credentials.
func (s *Server) find(email, password string) *User {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.users {
		if strings.EqualFold(c.Email, email) && hmac.Equal([]byte(c.Password), []byte(password)) && !c.Suspended {
			cu := *c
			return &cu
		}
	}
	return nil
}

// ExpiredToken returns a correctly signed session JWT for u whose exp has
// passed (Directus answers 401 TOKEN_EXPIRED). The session itself exists.
func (s *Server) ExpiredToken(u User) string {
	sid := s.newSession(u.ID)
	now := s.now()
	return s.sign(u, sid, now.Add(-2*time.Hour), now.Add(-time.Hour))
}

// ForgedToken returns token with the last character of its signature
// changed (Directus answers 403 INVALID_TOKEN).
func ForgedToken(token string) string {
	if token == "" {
		return "x"
	}
	last := token[len(token)-1]
	repl := byte('A')
	if last == 'A' {
		repl = 'B'
	}
	return token[:len(token)-1] + string(repl)
}

// Calls returns how many requests reached path (e.g. "/users/me"), whatever
// their outcome; "" counts every path.
func (s *Server) Calls(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if path != "" {
		return s.calls[path]
	}
	n := 0
	for _, c := range s.calls {
		n += c
	}
	return n
}

// Requests returns the requests that reached path ("" for all), oldest
// first; none unless the stand-in records (Config.Record, Start).
func (s *Server) Requests(path string) []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Request
	for _, r := range s.requests {
		if path == "" || r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// ResetCalls forgets the recorded requests.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	s.requests = nil
	clear(s.calls)
	s.mu.Unlock()
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
	claims := map[string]any{
		"id": u.ID, "role": role, "app_access": u.AppAccess || u.Admin, "admin_access": u.Admin,
		"iat": iat.Unix(), "exp": exp.Unix(), "iss": "directus",
	}
	if session != "" {
		claims["session"] = session
	}
	payload, _ := json.Marshal(claims)
	unsigned := b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + b64.EncodeToString(payload)
	m := hmac.New(sha256.New, s.Secret)
	m.Write([]byte(unsigned))
	return unsigned + "." + b64.EncodeToString(m.Sum(nil))
}

type claims struct {
	ID      string `json:"id"`
	Session string `json:"session"`
	Exp     int64  `json:"exp"`
}

// verdict of a credential, as Directus's authenticate middleware gives it.
type verdict int

const (
	vNone verdict = iota // no credential: public
	vOK
	vInvalidCredentials // 401 INVALID_CREDENTIALS
	vInvalidToken       // 403 INVALID_TOKEN
	vExpired            // 401 TOKEN_EXPIRED
)

// check returns the verdict on token, its user and, for a session JWT, its
// session id.
func (s *Server) check(token string) (verdict, *User, string) {
	if token == "" {
		return vNone, nil, ""
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		// Not a JWT: Directus looks it up as a static token.
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, u := range s.users {
			if u.StaticToken != "" && hmac.Equal([]byte(u.StaticToken), []byte(token)) && !u.Suspended {
				c := *u
				return vOK, &c, ""
			}
		}
		return vInvalidCredentials, nil, ""
	}
	m := hmac.New(sha256.New, s.Secret)
	m.Write([]byte(parts[0] + "." + parts[1]))
	// Compare the encoded signatures: a lenient decoder ignores the spare
	// bits of the last base64 character, so a token whose last character
	// was changed could decode to the valid signature.
	if !hmac.Equal([]byte(parts[2]), []byte(b64.EncodeToString(m.Sum(nil)))) {
		return vInvalidToken, nil, ""
	}
	raw, err := b64.DecodeString(parts[1])
	var c claims
	if err != nil || json.Unmarshal(raw, &c) != nil {
		return vInvalidToken, nil, ""
	}
	if s.now().Unix() >= c.Exp {
		return vExpired, nil, ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.Session != "" {
		if uid, ok := s.sessions[c.Session]; !ok || uid != c.ID {
			return vInvalidCredentials, nil, ""
		}
	}
	u, ok := s.users[c.ID]
	if !ok || u.Suspended {
		return vInvalidCredentials, nil, ""
	}
	cu := *u
	return vOK, &cu, c.Session
}

// ServeHTTP answers as Directus; unknown routes get its 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.calls[r.URL.Path]++
	if s.record {
		s.requests = append(s.requests, Request{
			Method:        r.Method,
			Path:          r.URL.Path,
			Query:         r.URL.RawQuery,
			Cookie:        strings.Join(r.Header.Values("Cookie"), "; "),
			Authorization: strings.Join(r.Header.Values("Authorization"), "; "),
			Header:        r.Header.Clone(),
		})
	}
	latency, status, hold := s.latency, s.status, s.hold
	s.mu.Unlock()

	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	if status != 0 {
		writeError(w, status, http.StatusText(status), "SERVICE_UNAVAILABLE")
		return
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/auth/login":
		s.login(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/auth/refresh":
		s.refreshSession(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/auth/logout":
		s.logout(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/users/me":
		s.usersMe(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/policies/me/globals":
		s.globals(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/items/events" && s.events != nil:
		s.listEvents(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/server/ping":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, "pong")
	default:
		writeErrorExt(w, http.StatusNotFound, fmt.Sprintf("Route %s doesn't exist.", r.URL.Path),
			map[string]any{"path": r.URL.Path, "code": "ROUTE_NOT_FOUND"})
	}
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

// writeErrorExt is writeError with Directus's other extensions (reason,
// path) beside the code.
func writeErrorExt(w http.ResponseWriter, status int, msg string, ext map[string]any) {
	writeJSON(w, status, map[string]any{"errors": []map[string]any{{"message": msg, "extensions": ext}}})
}

func clearCookie(w http.ResponseWriter) {
	w.Header().Add("Set-Cookie", CookieName+"=; Max-Age=0; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax")
}

// token returns the credential Directus would use, in its priority order,
// and whether it came from the session cookie.
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

// authenticate writes Directus's rejection and returns nil when the
// credential is refused; it returns (nil, true) for no credential at all.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (*User, bool) {
	tok, fromCookie := token(r)
	v, u, _ := s.check(tok)
	reject := func(status int, msg, code string) {
		if fromCookie {
			clearCookie(w)
		}
		writeError(w, status, msg, code)
	}
	switch v {
	case vOK:
		return u, true
	case vNone:
		return nil, true
	case vInvalidToken:
		reject(http.StatusForbidden, "Invalid token.", "INVALID_TOKEN")
	case vExpired:
		reject(http.StatusUnauthorized, "Token expired.", "TOKEN_EXPIRED")
	default:
		reject(http.StatusUnauthorized, "Invalid user credentials.", "INVALID_CREDENTIALS")
	}
	return nil, false
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
	sid := s.newSession(u.ID)
	if in.Mode == "session" {
		s.setSessionCookie(w, *u, sid)
		return
	}
	s.writeTokens(w, *u, sid)
}

// writeTokens answers a JSON-mode login or refresh: an access token for
// sid and a new refresh token.
func (s *Server) writeTokens(w http.ResponseWriter, u User, sid string) {
	rt := make([]byte, 32)
	_, _ = rand.Read(rt)
	refresh := hex.EncodeToString(rt)
	s.mu.Lock()
	s.refresh[refresh] = sid
	s.mu.Unlock()
	now := s.now()
	writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{
		"access_token":  s.sign(u, sid, now, now.Add(AccessTokenTTL)),
		"expires":       AccessTokenTTL.Milliseconds(),
		"refresh_token": refresh,
	}})
}

// setSessionCookie answers a session-mode login or refresh: a new session
// JWT for sid in the cookie, its lifetime in the body.
func (s *Server) setSessionCookie(w http.ResponseWriter, u User, sid string) {
	now := s.now()
	exp := now.Add(SessionTTL)
	w.Header().Add("Set-Cookie", fmt.Sprintf("%s=%s; Max-Age=%d; Path=/; Expires=%s; HttpOnly; SameSite=Lax",
		CookieName, s.sign(u, sid, now, exp), int(SessionTTL.Seconds()), exp.UTC().Format(http.TimeFormat)))
	writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{"expires": SessionTTL.Milliseconds()}})
}

// refreshSession answers POST /auth/refresh: in mode "session" a new
// cookie on the session of the session cookie (kept, so logout revokes
// every cookie of it); otherwise a new access token and refresh token for
// the body's refresh_token.
func (s *Server) refreshSession(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Mode         string `json:"mode"`
		RefreshToken string `json:"refresh_token"`
	}
	_ = json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in)
	if in.Mode == "session" {
		c, err := r.Cookie(CookieName)
		if err != nil || c.Value == "" {
			missingRefreshToken(w)
			return
		}
		v, u, sid := s.check(c.Value)
		if v != vOK || sid == "" {
			clearCookie(w)
			writeError(w, http.StatusUnauthorized, "Invalid user credentials.", "INVALID_CREDENTIALS")
			return
		}
		s.setSessionCookie(w, *u, sid)
		return
	}
	if in.RefreshToken == "" {
		missingRefreshToken(w)
		return
	}
	s.mu.Lock()
	sid, ok := s.refresh[in.RefreshToken]
	delete(s.refresh, in.RefreshToken)
	var u *User
	if uid, live := s.sessions[sid]; ok && live {
		if c, found := s.users[uid]; found && !c.Suspended {
			cu := *c
			u = &cu
		}
	}
	s.mu.Unlock()
	if u == nil {
		writeError(w, http.StatusUnauthorized, "Invalid user credentials.", "INVALID_CREDENTIALS")
		return
	}
	s.writeTokens(w, *u, sid)
}

// missingRefreshToken is Directus's answer to a refresh or logout without
// a token to act on.
func missingRefreshToken(w http.ResponseWriter) {
	writeErrorExt(w, http.StatusBadRequest, "Invalid payload. The refresh token is required in either the payload or cookie.",
		map[string]any{"reason": "The refresh token is required in either the payload or cookie", "code": "INVALID_PAYLOAD"})
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Mode         string `json:"mode"`
		RefreshToken string `json:"refresh_token"`
	}
	_ = json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in)
	var sid string
	if in.Mode == "session" {
		if c, err := r.Cookie(CookieName); err == nil {
			parts := strings.Split(c.Value, ".")
			if len(parts) == 3 {
				if raw, err := b64.DecodeString(parts[1]); err == nil {
					var cl claims
					if json.Unmarshal(raw, &cl) == nil {
						sid = cl.Session
					}
				}
			}
		}
	} else if in.RefreshToken != "" {
		s.mu.Lock()
		sid = s.refresh[in.RefreshToken]
		delete(s.refresh, in.RefreshToken)
		s.mu.Unlock()
	}
	if sid == "" {
		missingRefreshToken(w)
		return
	}
	s.mu.Lock()
	delete(s.sessions, sid)
	s.mu.Unlock()
	if in.Mode == "session" {
		clearCookie(w)
	}
	w.WriteHeader(http.StatusNoContent)
}

// userFields are the directus_users fields the stand-in knows; any other
// requested field is dropped silently, as Directus does.
func userFields(u *User) map[string]any {
	var role any
	if u.Role != "" {
		role = u.Role
	}
	status := "active"
	if u.Suspended {
		status = "suspended"
	}
	return map[string]any{
		"id": u.ID, "email": u.Email, "role": role, "status": status,
		"first_name": nil, "last_name": nil, "password": "**********",
		"provider": "default", "policies": []any{},
	}
}

func (s *Server) usersMe(w http.ResponseWriter, r *http.Request) {
	u, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	if u == nil {
		// /users/me has no public fallback.
		writeError(w, http.StatusUnauthorized, "Invalid user credentials.", "INVALID_CREDENTIALS")
		return
	}
	all := userFields(u)
	out := map[string]any{"id": u.ID}
	if !u.NoReadSelf {
		fields := r.URL.Query().Get("fields")
		if fields == "" || fields == "*" {
			out = all
		} else {
			for _, f := range strings.Split(fields, ",") {
				if v, ok := all[strings.TrimSpace(f)]; ok {
					out[strings.TrimSpace(f)] = v
				}
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

func (s *Server) globals(w http.ResponseWriter, r *http.Request) {
	u, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	// No credential: the public answer holds app_access only.
	g := map[string]any{"app_access": false}
	if u != nil {
		g = map[string]any{"app_access": u.AppAccess || u.Admin, "admin_access": u.Admin, "enforce_tfa": false}
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": g})
}

// listEvents answers GET /items/events with the id and name of every event,
// to any logged-in user (the Member policy of scripts/directus.sh reads
// events unfiltered too).
func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	u, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	if u == nil {
		// The public role may not read events.
		const msg = `You don't have permission to access collection "events" or it does not exist. Queried in root.`
		writeErrorExt(w, http.StatusForbidden, msg, map[string]any{"reason": msg, "code": "FORBIDDEN"})
		return
	}
	list, err := s.events(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "events: "+err.Error(), "SERVICE_UNAVAILABLE")
		return
	}
	if list == nil {
		list = []Event{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": list})
}
