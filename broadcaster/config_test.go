package broadcaster

import (
	"crypto/tls"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"trm-live/contract/auth"
	"trm-live/contract/config"

	"trm-live/testkit"
)

func TestLoadConfig(t *testing.T) {
	env := map[string]string{
		"NATS_URL":                        "nats://user:secret@nats:4222",
		"HTTP_ADDR":                       ":9000",
		"BROADCASTER_ALLOWED_ORIGINS":     "https://a.example, https://b.example/",
		"BROADCASTER_REAUTH_INTERVAL":     "30s",
		"BROADCASTER_MAX_SUBSCRIPTIONS":   "5",
		"BROADCASTER_MSG_RATE":            "2.5",
		"BROADCASTER_COOKIE_NAME":         "sess",
		"BROADCASTER_FRAME_MAX_POSITIONS": "100",
		"BROADCASTER_HANDSHAKE_RATE":      "0.5",
		"BROADCASTER_TRUST_PROXY":         "true",
	}
	cfg, err := LoadConfig([]string{"-max-subscriptions", "7", "-ping-period", "20s", "-handshake-burst", "9"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPAddr != ":9000" || cfg.ReauthInterval != 30*time.Second || cfg.MaxSubscriptions != 7 ||
		cfg.MsgRate != 2.5 || cfg.CookieName != "sess" || cfg.PingPeriod != 20*time.Second || cfg.FrameMaxPositions != 100 ||
		cfg.PongWait != 60*time.Second || cfg.MaxConnsPerUser != 20 ||
		cfg.HandshakeRate != 0.5 || cfg.HandshakeBurst != 9 || !cfg.TrustProxy || cfg.MaxPendingHandshakes != 1024 {
		t.Fatalf("config %+v", cfg)
	}
	if strings.Join(cfg.AllowedOrigins, " ") != "https://a.example https://b.example" {
		t.Fatalf("origins %q", cfg.AllowedOrigins)
	}
	s := cfg.String()
	if strings.Contains(s, "secret") || !strings.Contains(s, "xxxxx") {
		t.Fatalf("String does not mask the password: %s", s)
	}
}

func TestLoadConfigDefaults(t *testing.T) {
	cfg, err := LoadConfig(nil, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CookieName != "directus_session_token" || cfg.PingPeriod != 30*time.Second || cfg.PongWait != 60*time.Second ||
		cfg.NATSURL != "nats://127.0.0.1:4222" || len(cfg.AllowedOrigins) != 0 ||
		cfg.HandshakeRate != 5 || cfg.HandshakeBurst != 100 || cfg.MaxPendingHandshakes != 1024 || cfg.TrustProxy {
		t.Fatalf("defaults %+v", cfg)
	}
}

func TestConfigRejects(t *testing.T) {
	for name, tc := range map[string]struct {
		env  map[string]string
		args []string
		want string
	}{
		"bad duration":   {env: map[string]string{"BROADCASTER_PONG_WAIT": "soon"}, want: "BROADCASTER_PONG_WAIT"},
		"ping >= pong":   {args: []string{"-ping-period", "60s"}, want: "BROADCASTER_PING_PERIOD"},
		"bad int":        {env: map[string]string{"BROADCASTER_MAX_CONNS_PER_USER": "many"}, want: "BROADCASTER_MAX_CONNS_PER_USER"},
		"negative limit": {args: []string{"-max-subscriptions", "-1"}, want: "BROADCASTER_MAX_SUBSCRIPTIONS"},
		"bad origin":     {env: map[string]string{"BROADCASTER_ALLOWED_ORIGINS": "example.com"}, want: "BROADCASTER_ALLOWED_ORIGINS"},
		"bad cookie":     {env: map[string]string{"BROADCASTER_COOKIE_NAME": "a b"}, want: "BROADCASTER_COOKIE_NAME"},
		"short reauth":   {env: map[string]string{"BROADCASTER_REAUTH_INTERVAL": "10ms"}, want: "BROADCASTER_REAUTH_INTERVAL"},
		"bad level":      {env: map[string]string{"LOG_LEVEL": "loud"}, want: "LOG_LEVEL"},
		"bad format":     {env: map[string]string{"LOG_FORMAT": "xml"}, want: "LOG_FORMAT"},
		"bad rate":       {env: map[string]string{"BROADCASTER_MSG_RATE": "fast"}, want: "BROADCASTER_MSG_RATE"},
		"handshake rate": {env: map[string]string{"BROADCASTER_HANDSHAKE_RATE": "-2"}, want: "BROADCASTER_HANDSHAKE_RATE"},
		"handshake nan":  {env: map[string]string{"BROADCASTER_HANDSHAKE_RATE": "lots"}, want: "BROADCASTER_HANDSHAKE_RATE"},
		"burst":          {env: map[string]string{"BROADCASTER_HANDSHAKE_BURST": "-1"}, want: "BROADCASTER_HANDSHAKE_BURST"},
		"pending":        {args: []string{"-max-pending-handshakes", "-3"}, want: "BROADCASTER_MAX_PENDING_HANDSHAKES"},
		"trust proxy":    {env: map[string]string{"BROADCASTER_TRUST_PROXY": "perhaps"}, want: "BROADCASTER_TRUST_PROXY"},
		"frame rate":     {env: map[string]string{"BROADCASTER_TOPIC_FRAME_RATE": "10"}, want: "BROADCASTER_TOPIC_FRAME_RATE"},
		"negative rate":  {env: map[string]string{"BROADCASTER_TOPIC_FRAME_RATE": "-1"}, want: "BROADCASTER_TOPIC_FRAME_RATE"},
		"small lowat":    {env: map[string]string{"BROADCASTER_SOCKET_NOTSENT_LOWAT": "100"}, want: "BROADCASTER_SOCKET_NOTSENT_LOWAT"},
		"negative lowat": {env: map[string]string{"BROADCASTER_SOCKET_NOTSENT_LOWAT": "-2"}, want: "BROADCASTER_SOCKET_NOTSENT_LOWAT"},
		"stray argument": {args: []string{"extra"}, want: "unexpected"},
		"unknown flag":   {args: []string{"-nope"}, want: "nope"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadConfig(tc.args, func(k string) string { return tc.env[k] })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to name %s", err, tc.want)
			}
		})
	}
}

func TestOriginAndCredential(t *testing.T) {
	for name, tc := range map[string]struct {
		origin, host string
		allowed      []string
		tls          bool   // the request came over TLS
		proto        string // X-Forwarded-Proto
		trust        bool   // Config.TrustProxy
		ok           bool
	}{
		"no origin":                   {origin: "", host: "x.example", ok: true},
		"same origin, https":          {origin: "https://x.example", host: "x.example", tls: true, ok: true},
		"same origin, http":           {origin: "http://x.example", host: "x.example", ok: true},
		"same origin, case":           {origin: "HTTPS://X.example", host: "x.example", tls: true, ok: true},
		"http page, https server":     {origin: "http://x.example", host: "x.example", tls: true, ok: false},
		"https page, plain server":    {origin: "https://x.example", host: "x.example", ok: false},
		"https via trusted proxy":     {origin: "https://x.example", host: "x.example", proto: "https", trust: true, ok: true},
		"http page, proxy says https": {origin: "http://x.example", host: "x.example", proto: "https", trust: true, ok: false},
		"proxy header not trusted":    {origin: "https://x.example", host: "x.example", proto: "https", ok: false},
		"other host":                  {origin: "https://evil.example", host: "x.example", tls: true, ok: false},
		"other port":                  {origin: "https://x.example:444", host: "x.example", tls: true, ok: false},
		"listed":                      {origin: "https://a.example", host: "x.example", allowed: []string{"https://a.example"}, ok: true},
		"listed, other scheme":        {origin: "http://a.example", host: "x.example", allowed: []string{"https://a.example"}, ok: false},
		"listed, not the host":        {origin: "https://x.example", host: "x.example", allowed: []string{"https://a.example"}, tls: true, ok: false},
		"wildcard":                    {origin: "https://any.example", host: "x.example", allowed: []string{"*"}, ok: true},
		"garbage":                     {origin: "::::", host: "x.example", ok: false},
	} {
		t.Run(name, func(t *testing.T) {
			r := httptestRequest(tc.host)
			if tc.origin != "" {
				r.Header.Set("Origin", tc.origin)
			}
			if tc.tls {
				r.TLS = &tls.ConnectionState{}
			}
			if tc.proto != "" {
				r.Header.Set("X-Forwarded-Proto", tc.proto)
			}
			if got := originAllowed(r, tc.allowed, tc.trust); got != tc.ok {
				t.Fatalf("originAllowed = %v", got)
			}
		})
	}
	r := httptestRequest("x")
	r.Header.Set("Authorization", "Bearer tok")
	if c := auth.CredentialFromRequest(r, "sess"); c.Bearer != "tok" || c.Cookie != "" {
		t.Fatalf("bearer: %+v", c)
	}
	r.Header.Set("Cookie", "other=1; sess=abc")
	if c := auth.CredentialFromRequest(r, "sess"); c.Bearer != "tok" || c.Cookie != "" {
		t.Fatalf("bearer wins over the cookie, as in Directus: %+v", c)
	}
	r = httptestRequest("x")
	r.Header.Set("Cookie", "other=1; sess=abc")
	if c := auth.CredentialFromRequest(r, "sess"); c.Cookie != "abc" || c.Bearer != "" {
		t.Fatalf("cookie: %+v", c)
	}
	r = httptestRequest("x")
	r.Header.Set("Authorization", "Basic dXNlcjpwdw==")
	if c := auth.CredentialFromRequest(r, "sess"); c.Cookie != "" || c.Bearer != "" {
		t.Fatalf("basic auth is no credential: %+v", c)
	}
}

func httptestRequest(host string) *http.Request {
	r, _ := http.NewRequest(http.MethodGet, "http://"+host+"/ws-live", nil)
	r.Host = host
	return r
}

func TestClientIP(t *testing.T) {
	for name, tc := range map[string]struct {
		remote string
		xff    []string
		real   string
		trust  bool
		want   string
	}{
		"peer":                    {remote: "192.0.2.7:5555", want: "192.0.2.7"},
		"peer, header untrusted":  {remote: "192.0.2.7:5555", xff: []string{"203.0.113.9"}, want: "192.0.2.7"},
		"last forwarded entry":    {remote: "10.0.0.2:80", xff: []string{"198.51.100.1, 203.0.113.9"}, trust: true, want: "203.0.113.9"},
		"last of several headers": {remote: "10.0.0.2:80", xff: []string{"198.51.100.1", "203.0.113.9"}, trust: true, want: "203.0.113.9"},
		"x-real-ip":               {remote: "10.0.0.2:80", real: "203.0.113.5", trust: true, want: "203.0.113.5"},
		"trusted, no header":      {remote: "10.0.0.2:80", trust: true, want: "10.0.0.2"},
		"ipv6 counts as its /64":  {remote: "[2001:db8:1:2:3:4:5:6]:443", want: "2001:db8:1:2::/64"},
		"ipv4-mapped":             {remote: "[::ffff:192.0.2.7]:1", want: "192.0.2.7"},
	} {
		t.Run(name, func(t *testing.T) {
			r := httptestRequest("x")
			r.RemoteAddr = tc.remote
			for _, v := range tc.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if tc.real != "" {
				r.Header.Set("X-Real-Ip", tc.real)
			}
			if got := clientIP(r, tc.trust); got != tc.want {
				t.Fatalf("clientIP = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestConfigErrorsHidePasswords: a NATS_URL with a password and a flaw (a
// trailing newline from a secret file, a space, a bad % escape, an
// unescaped / or # in the password), alone or in a list, is refused with
// an error that names the setting and shows no password.
func TestConfigErrorsHidePasswords(t *testing.T) {
	tmpl := "nats://broadcaster:%s@nats:4222"
	for _, v := range append(testkit.FlawedURLs(tmpl), "nats://a:b@n1:4222,"+strings.Replace(tmpl, "%s", testkit.Password, 1)+"\n") {
		_, err := LoadConfig(nil, func(k string) string { return map[string]string{"NATS_URL": v}[k] })
		testkit.RefusedWithoutSecret(t, "NATS_URL", v, err)
	}
}

// TestVersionFlag: -version is answered before any setting is read or
// validated, so main prints the version and exits 0 without touching a
// server.
func TestVersionFlag(t *testing.T) {
	_, err := LoadConfig([]string{"-version"}, func(k string) string { return map[string]string{"LOG_LEVEL": "loud"}[k] })
	if !errors.Is(err, config.ErrVersion) {
		t.Fatalf("LoadConfig(-version) = %v, want config.ErrVersion", err)
	}
}

// TestZeroConfigGetsDefaults: a literal's zero values are the table's
// defaults, and LoadConfig without settings gives the same configuration.
func TestZeroConfigGetsDefaults(t *testing.T) {
	loaded, err := LoadConfig(nil, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if got, want := (Config{}).withDefaults().String(), loaded.String(); got != want {
		t.Fatalf("literal:\n%s\nLoadConfig:\n%s", got, want)
	}
	if c := (Config{HandshakeRate: -1, SocketSendBuffer: -1}).withDefaults(); c.HandshakeRate != -1 || c.SocketSendBuffer != -1 ||
		c.Replay.Buffer != 1024 || c.Writers < 2 {
		t.Fatalf("withDefaults: %+v", c)
	}
}
