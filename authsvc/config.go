package authsvc

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract"
	"trm-live/contract/auth"
	"trm-live/contract/config"
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

// settings is authsvc's table of settings: variable (the flag is its name
// without AUTHSVC_), default, usage and the field it sets.
func settings() []config.Setting[Config] {
	return []config.Setting[Config]{
		config.String("NATS_URL", "nats://127.0.0.1:4222", "NATS server URL", func(c *Config) *string { return &c.NATSURL }),
		config.String("DATABASE_URL", "", "PostgreSQL DSN with the events and organization_users tables (required)", func(c *Config) *string { return &c.DatabaseURL }),
		config.String("DIRECTUS_URL", "", "Directus base URL (required)", func(c *Config) *string { return &c.DirectusURL }),
		config.String("HTTP_ADDR", ":8080", "address of /healthz, /readyz and /metrics", func(c *Config) *string { return &c.HTTPAddr }),
		config.String("LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config) *string { return &c.LogLevel }),
		config.String("LOG_FORMAT", "text", "text or json", func(c *Config) *string { return &c.LogFormat }),
		config.String("AUTHSVC_COOKIE_NAME", auth.DefaultCookieName, "Directus session cookie name", func(c *Config) *string { return &c.CookieName }),
		config.Duration("AUTHSVC_DIRECTUS_TIMEOUT", 2*time.Second, "bound of one Directus look-up", func(c *Config) *time.Duration { return &c.DirectusTimeout }),
		config.Int("AUTHSVC_DIRECTUS_CONCURRENCY", 64, "Directus look-ups in flight at once", func(c *Config) *int { return &c.DirectusConcurrency }),
		config.Duration("AUTHSVC_DB_TIMEOUT", 2*time.Second, "bound of one membership query", func(c *Config) *time.Duration { return &c.DBTimeout }),
		config.Duration("AUTHSVC_SESSION_TTL", 30*time.Second, "reuse of a resolved session (a logged-out cookie works this long)", func(c *Config) *time.Duration { return &c.SessionTTL }),
		config.Duration("AUTHSVC_FAILURE_TTL", 5*time.Second, "reuse of a rejected credential", func(c *Config) *time.Duration { return &c.FailureTTL }),
		config.Duration("AUTHSVC_EVENT_TTL", 30*time.Second, "reuse of an allowed event decision (a removed member keeps access this long)", func(c *Config) *time.Duration { return &c.EventTTL }),
		config.Duration("AUTHSVC_EVENT_DENY_TTL", 5*time.Second, "reuse of a forbidden or not_found decision", func(c *Config) *time.Duration { return &c.EventDenyTTL }),
		config.Int("AUTHSVC_CACHE_SIZE", 100000, "entries per cache (accepted sessions, event decisions)", func(c *Config) *int { return &c.CacheSize }),
		config.Int("AUTHSVC_FAILURE_CACHE_SIZE", 10000, "entries of the refused-credential cache", func(c *Config) *int { return &c.FailureCacheSize }),
		config.Int("AUTHSVC_CONCURRENCY", 512, "look-ups (cache misses) in flight per endpoint", func(c *Config) *int { return &c.Concurrency }),
		config.Duration("AUTHSVC_SHUTDOWN_TIMEOUT", 10*time.Second, "bound of the graceful shutdown", func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
	}
}

// LoadConfig reads the settings from getenv, then from args (a flag wins
// over its variable), and validates them. -version returns
// config.ErrVersion.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	c, err := config.Load(flag.NewFlagSet("authsvc", flag.ContinueOnError), "AUTHSVC_", settings(), args, getenv)
	if err != nil {
		return Config{}, err
	}
	return c, c.Validate()
}

// withDefaults returns c with every zero setting replaced by its default.
func (c Config) withDefaults() Config {
	config.Fill(&c, settings())
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

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
	if err := config.CheckLog(c.LogLevel, c.LogFormat); err != nil {
		return err
	}
	if c.CookieName != "" && !auth.ValidCookieName(c.CookieName) {
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

// NewLogger returns the logger LogLevel and LogFormat describe, writing
// to w.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	return config.NewLogger(w, c.LogLevel, c.LogFormat)
}
