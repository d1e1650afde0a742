package authsvc

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract"
	"trm-live/contract/auth"
)

// Config is every setting of authsvc plus its runtime dependencies. A
// literal with NATSURL, DatabaseURL and DirectusURL is enough: Run fills in
// the defaults below for zero values.
type Config struct {
	// NATSURL is the NATS server (NATS_URL, -nats-url; default
	// nats://127.0.0.1:4222).
	NATSURL string
	// DatabaseURL is the PostgreSQL holding Directus's events and
	// organization_users tables (DATABASE_URL, -database-url; required).
	DatabaseURL string
	// DirectusURL is the Directus base URL, e.g. http://directus:8055
	// (DIRECTUS_URL, -directus-url; required).
	DirectusURL string
	// HTTPAddr serves /healthz, /readyz and /metrics (HTTP_ADDR, -http-addr;
	// default :8080, like every worker). Ignored when Listener is set.
	HTTPAddr string
	// LogLevel (LOG_LEVEL: debug, info, warn, error; default info) and
	// LogFormat (LOG_FORMAT: text or json; default text) shape the logger Run
	// builds when Logger is nil.
	LogLevel  string
	LogFormat string

	// CookieName is the Directus session cookie name, forwarded to Directus
	// with the credential (AUTHSVC_COOKIE_NAME; default
	// directus_session_token).
	CookieName string
	// DirectusTimeout bounds one look-up at Directus, including the wait for
	// a free slot (AUTHSVC_DIRECTUS_TIMEOUT; default 2s).
	DirectusTimeout time.Duration
	// DirectusConcurrency caps the look-ups in flight at Directus
	// (AUTHSVC_DIRECTUS_CONCURRENCY; default 64).
	DirectusConcurrency int
	// DBTimeout bounds one membership query (AUTHSVC_DB_TIMEOUT; default 2s).
	DBTimeout time.Duration
	// SessionTTL is how long a resolved session is reused without asking
	// Directus; it is also how long a logged-out cookie keeps working
	// (AUTHSVC_SESSION_TTL; default 30s).
	SessionTTL time.Duration
	// FailureTTL is how long a rejected credential is remembered
	// (AUTHSVC_FAILURE_TTL; default 5s). "Unavailable" is never cached.
	FailureTTL time.Duration
	// EventTTL is how long an "allowed" decision is reused; it bounds how long
	// a removed member keeps access (AUTHSVC_EVENT_TTL; default 30s).
	EventTTL time.Duration
	// EventDenyTTL is how long "forbidden" and "not_found" are reused; it
	// bounds how long a new member or event waits (AUTHSVC_EVENT_DENY_TTL;
	// default 5s).
	EventDenyTTL time.Duration
	// CacheSize caps each cache (accepted sessions, event decisions) in
	// entries, least recently used evicted first (AUTHSVC_CACHE_SIZE;
	// default 100000).
	CacheSize int
	// FailureCacheSize caps the cache of refused credentials, kept apart so
	// a flood of bad credentials cannot evict accepted sessions
	// (AUTHSVC_FAILURE_CACHE_SIZE; default 10000).
	FailureCacheSize int
	// Concurrency caps the look-ups (cache misses) in flight per endpoint;
	// cache hits and bad requests are answered inline
	// (AUTHSVC_CONCURRENCY; default 512).
	Concurrency int
	// ShutdownTimeout bounds the graceful shutdown (AUTHSVC_SHUTDOWN_TIMEOUT;
	// default 10s).
	ShutdownTimeout time.Duration

	// Logger receives the logs; nil builds one from LogLevel and LogFormat
	// on stderr.
	Logger *slog.Logger
	// Registerer receives the metrics; nil uses a private registry. /metrics
	// serves Registerer when it is also a prometheus.Gatherer, else the
	// default gatherer.
	Registerer prometheus.Registerer
	// Listener, when set, is used for HTTP instead of HTTPAddr.
	Listener net.Listener
	// Version and Revision label trm_build_info: the release and the VCS
	// revision main was stamped with at build time. Empty: "dev", and the
	// revision the Go toolchain recorded (or "unknown").
	Version, Revision string
	// Now is the clock of the caches; nil means time.Now.
	Now func() time.Time
}

type setting struct {
	env, flag, def, usage string
	apply                 func(c *Config, v string) error
}

func durationSetting(env, def, usage string, dst func(*Config) *time.Duration) setting {
	return setting{env: env, def: def, usage: usage, apply: func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		*dst(c) = d
		return nil
	}}
}

func intSetting(env, def, usage string, dst func(*Config) *int) setting {
	return setting{env: env, def: def, usage: usage, apply: func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return err
		}
		*dst(c) = n
		return nil
	}}
}

func stringSetting(env, def, usage string, dst func(*Config) *string) setting {
	return setting{env: env, def: def, usage: usage, apply: func(c *Config, v string) error {
		*dst(c) = v
		return nil
	}}
}

func settings() []setting {
	s := []setting{
		stringSetting("NATS_URL", "nats://127.0.0.1:4222", "NATS server URL", func(c *Config) *string { return &c.NATSURL }),
		stringSetting("DATABASE_URL", "", "PostgreSQL DSN with the events and organization_users tables (required)", func(c *Config) *string { return &c.DatabaseURL }),
		stringSetting("DIRECTUS_URL", "", "Directus base URL (required)", func(c *Config) *string { return &c.DirectusURL }),
		stringSetting("HTTP_ADDR", ":8080", "address of /healthz, /readyz and /metrics", func(c *Config) *string { return &c.HTTPAddr }),
		stringSetting("LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config) *string { return &c.LogLevel }),
		stringSetting("LOG_FORMAT", "text", "text or json", func(c *Config) *string { return &c.LogFormat }),
		stringSetting("AUTHSVC_COOKIE_NAME", auth.DefaultCookieName, "Directus session cookie name", func(c *Config) *string { return &c.CookieName }),
		durationSetting("AUTHSVC_DIRECTUS_TIMEOUT", "2s", "bound of one Directus look-up", func(c *Config) *time.Duration { return &c.DirectusTimeout }),
		intSetting("AUTHSVC_DIRECTUS_CONCURRENCY", "64", "Directus look-ups in flight at once", func(c *Config) *int { return &c.DirectusConcurrency }),
		durationSetting("AUTHSVC_DB_TIMEOUT", "2s", "bound of one membership query", func(c *Config) *time.Duration { return &c.DBTimeout }),
		durationSetting("AUTHSVC_SESSION_TTL", "30s", "reuse of a resolved session (a logged-out cookie works this long)", func(c *Config) *time.Duration { return &c.SessionTTL }),
		durationSetting("AUTHSVC_FAILURE_TTL", "5s", "reuse of a rejected credential", func(c *Config) *time.Duration { return &c.FailureTTL }),
		durationSetting("AUTHSVC_EVENT_TTL", "30s", "reuse of an allowed event decision (a removed member keeps access this long)", func(c *Config) *time.Duration { return &c.EventTTL }),
		durationSetting("AUTHSVC_EVENT_DENY_TTL", "5s", "reuse of a forbidden or not_found decision", func(c *Config) *time.Duration { return &c.EventDenyTTL }),
		intSetting("AUTHSVC_CACHE_SIZE", "100000", "entries per cache (accepted sessions, event decisions)", func(c *Config) *int { return &c.CacheSize }),
		intSetting("AUTHSVC_FAILURE_CACHE_SIZE", "10000", "entries of the refused-credential cache", func(c *Config) *int { return &c.FailureCacheSize }),
		intSetting("AUTHSVC_CONCURRENCY", "512", "look-ups (cache misses) in flight per endpoint", func(c *Config) *int { return &c.Concurrency }),
		durationSetting("AUTHSVC_SHUTDOWN_TIMEOUT", "10s", "bound of the graceful shutdown", func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
	}
	for i := range s {
		s[i].flag = strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s[i].env, "AUTHSVC_")), "_", "-")
	}
	return s
}

// LoadConfig reads the settings from getenv, then from args (flags win).
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	fs := flag.NewFlagSet("authsvc", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	all := settings()
	vals := make([]*string, len(all))
	for i, s := range all {
		def := s.def
		if v := getenv(s.env); v != "" {
			def = v
		}
		vals[i] = fs.String(s.flag, def, s.usage+" ("+s.env+")")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fs.PrintDefaults()
		}
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var cfg Config
	for i, s := range all {
		if err := s.apply(&cfg, *vals[i]); err != nil {
			return Config{}, fmt.Errorf("%s (-%s) = %q: %w", s.env, s.flag, *vals[i], err)
		}
	}
	return cfg, cfg.Validate()
}

// withDefaults returns c with every zero setting replaced by its default.
func (c Config) withDefaults() Config {
	def, _ := LoadConfig(nil, func(string) string { return "" })
	set := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	setD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	setI := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	set(&c.NATSURL, def.NATSURL)
	set(&c.HTTPAddr, def.HTTPAddr)
	set(&c.LogLevel, def.LogLevel)
	set(&c.LogFormat, def.LogFormat)
	set(&c.CookieName, def.CookieName)
	setD(&c.DirectusTimeout, def.DirectusTimeout)
	setI(&c.DirectusConcurrency, def.DirectusConcurrency)
	setD(&c.DBTimeout, def.DBTimeout)
	setD(&c.SessionTTL, def.SessionTTL)
	setD(&c.FailureTTL, def.FailureTTL)
	setD(&c.EventTTL, def.EventTTL)
	setD(&c.EventDenyTTL, def.EventDenyTTL)
	setI(&c.CacheSize, def.CacheSize)
	setI(&c.FailureCacheSize, def.FailureCacheSize)
	setI(&c.Concurrency, def.Concurrency)
	setD(&c.ShutdownTimeout, def.ShutdownTimeout)
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// cookieNameRE is RFC 6265's cookie-name token.
var cookieNameRE = regexp.MustCompile("^[!#$%&'*+\\-.^_`|~0-9A-Za-z]+$")

// Validate checks every setting and names the first bad one. Zero values
// stand for their defaults and pass, except the required URLs.
func (c Config) Validate() error {
	if c.DatabaseURL == "" {
		return errors.New("DATABASE_URL (-database-url) is required")
	}
	if c.DirectusURL == "" {
		return errors.New("DIRECTUS_URL (-directus-url) is required")
	}
	// Every URL error goes through contract (ParseURL, RedactURLs): the
	// values carry passwords.
	u, err := contract.ParseURL("DIRECTUS_URL (-directus-url) =", c.DirectusURL)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("DIRECTUS_URL (-directus-url) = %q: want an http:// or https:// URL", contract.RedactURLs(c.DirectusURL))
	}
	if strings.Contains(c.DatabaseURL, "://") {
		// A URL (a key=value DSN is left to pgx, which masks its password).
		if _, err := contract.ParseURL("DATABASE_URL (-database-url) =", c.DatabaseURL); err != nil {
			return err
		}
	}
	if c.NATSURL != "" {
		// One URL or a comma-separated list, as nats.go reads it.
		for _, part := range strings.Split(c.NATSURL, ",") {
			if _, err := contract.ParseURL("NATS_URL (-nats-url) =", part); err != nil {
				return err
			}
		}
	}
	switch strings.ToLower(c.LogLevel) {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("LOG_LEVEL (-log-level) = %q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "", "text", "json":
	default:
		return fmt.Errorf("LOG_FORMAT (-log-format) = %q: want text or json", c.LogFormat)
	}
	if c.CookieName != "" && !cookieNameRE.MatchString(c.CookieName) {
		return fmt.Errorf("AUTHSVC_COOKIE_NAME (-cookie-name) = %q: not a valid cookie name", c.CookieName)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"AUTHSVC_DIRECTUS_TIMEOUT (-directus-timeout)", c.DirectusTimeout},
		{"AUTHSVC_DB_TIMEOUT (-db-timeout)", c.DBTimeout},
		{"AUTHSVC_SESSION_TTL (-session-ttl)", c.SessionTTL},
		{"AUTHSVC_FAILURE_TTL (-failure-ttl)", c.FailureTTL},
		{"AUTHSVC_EVENT_TTL (-event-ttl)", c.EventTTL},
		{"AUTHSVC_EVENT_DENY_TTL (-event-deny-ttl)", c.EventDenyTTL},
		{"AUTHSVC_SHUTDOWN_TIMEOUT (-shutdown-timeout)", c.ShutdownTimeout},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s = %s: must be positive", d.name, d.v)
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{
		{"AUTHSVC_DIRECTUS_CONCURRENCY (-directus-concurrency)", c.DirectusConcurrency},
		{"AUTHSVC_CACHE_SIZE (-cache-size)", c.CacheSize},
		{"AUTHSVC_FAILURE_CACHE_SIZE (-failure-cache-size)", c.FailureCacheSize},
		{"AUTHSVC_CONCURRENCY (-concurrency)", c.Concurrency},
	} {
		if n.v < 0 {
			return fmt.Errorf("%s = %d: must be positive", n.name, n.v)
		}
	}
	return nil
}

// String prints the effective settings, one name=value per setting, with
// passwords in URLs masked.
func (c Config) String() string {
	d := c.withDefaults()
	return fmt.Sprintf("NATS_URL=%s DATABASE_URL=%s DIRECTUS_URL=%s HTTP_ADDR=%s LOG_LEVEL=%s LOG_FORMAT=%s "+
		"AUTHSVC_COOKIE_NAME=%s AUTHSVC_DIRECTUS_TIMEOUT=%s AUTHSVC_DIRECTUS_CONCURRENCY=%d AUTHSVC_DB_TIMEOUT=%s "+
		"AUTHSVC_SESSION_TTL=%s AUTHSVC_FAILURE_TTL=%s AUTHSVC_EVENT_TTL=%s AUTHSVC_EVENT_DENY_TTL=%s "+
		"AUTHSVC_CACHE_SIZE=%d AUTHSVC_FAILURE_CACHE_SIZE=%d AUTHSVC_CONCURRENCY=%d AUTHSVC_SHUTDOWN_TIMEOUT=%s",
		contract.RedactURLs(d.NATSURL), contract.RedactURLs(d.DatabaseURL), contract.RedactURLs(d.DirectusURL), d.HTTPAddr, d.LogLevel, d.LogFormat,
		d.CookieName, d.DirectusTimeout, d.DirectusConcurrency, d.DBTimeout,
		d.SessionTTL, d.FailureTTL, d.EventTTL, d.EventDenyTTL,
		d.CacheSize, d.FailureCacheSize, d.Concurrency, d.ShutdownTimeout)
}

// NewLogger builds the logger LogLevel and LogFormat describe, writing to w.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
