package persister

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"trm-live/contract"
	"trm-live/contract/config"

	"github.com/prometheus/client_golang/prometheus"
)

// Config is every setting of the persister plus its runtime dependencies.
// A literal with NATSURL and DatabaseURL set is enough to Run; every other
// zero value means the default named on the field.
type Config struct {
	// NATSURL is the NATS server (NATS_URL). Default nats://127.0.0.1:4222.
	NATSURL string
	// DatabaseURL is the PostgreSQL DSN (DATABASE_URL). Required.
	DatabaseURL string
	// HTTPAddr serves /healthz, /readyz and /metrics (HTTP_ADDR). Empty and
	// no Listener: no HTTP server (the dev binary and tests may do that).
	HTTPAddr string

	// Consumer is the durable pull consumer on POSITIONS, shared by every
	// persister instance (PERSISTER_CONSUMER). Default "persister".
	Consumer string
	// BatchSize is the most positions written in one transaction
	// (PERSISTER_BATCH_SIZE). Default 1000.
	BatchSize int
	// FetchMaxWait is how long a batch waits to fill once its first message
	// arrived (PERSISTER_FETCH_MAX_WAIT). Default 100ms.
	FetchMaxWait time.Duration
	// WritePath is how a batch is written (PERSISTER_WRITE_PATH): "auto"
	// (COPY into positions, falling back to ON CONFLICT when the batch holds
	// a stored position; default), "unnest" (one INSERT … SELECT FROM unnest
	// … ON CONFLICT DO NOTHING) or "staging" (COPY into a staging table, then
	// INSERT … SELECT … ON CONFLICT DO NOTHING). docs/BENCHMARKS.md compares them.
	WritePath string
	// Writers is how many batches are written concurrently
	// (PERSISTER_WRITERS). Default 2.
	Writers int
	// MaxAckPending bounds the messages delivered and not yet acknowledged,
	// across all instances (PERSISTER_MAX_ACK_PENDING). Default 10000.
	MaxAckPending int
	// AckWait is how long the server waits for an ack before redelivering
	// (PERSISTER_ACK_WAIT). Default 30s.
	AckWait time.Duration
	// BackoffMin and BackoffMax bound the retry delays: Nak delay grows as
	// BackoffMin·2^(deliveries-1) up to BackoffMax, and so do the waits for
	// a missing stream or an unreachable database (PERSISTER_BACKOFF_MIN,
	// PERSISTER_BACKOFF_MAX). Defaults 500ms and 30s.
	BackoffMin, BackoffMax time.Duration
	// VerifyInterval is how often the schema is verified while running
	// (PERSISTER_VERIFY_INTERVAL). Default 1m.
	VerifyInterval time.Duration
	// RequireTimescaleDB refuses to start without the timescaledb extension
	// (PERSISTER_REQUIRE_TIMESCALEDB). Default false: plain table when absent.
	RequireTimescaleDB bool
	// ChunkInterval is the hypertable chunk interval
	// (PERSISTER_CHUNK_INTERVAL). Default 24h.
	ChunkInterval time.Duration
	// ShutdownTimeout bounds finishing the batches in hand at shutdown
	// (PERSISTER_SHUTDOWN_TIMEOUT). Default 15s.
	ShutdownTimeout time.Duration

	// LogLevel and LogFormat (LOG_LEVEL: debug|info|warn|error, LOG_FORMAT:
	// text|json) are read by LoadConfig to build Logger.
	LogLevel, LogFormat string

	// Logger receives the worker's log lines. Nil discards.
	Logger *slog.Logger `json:"-"`
	// Registerer receives the persister_* metrics. Nil: a private registry,
	// served on /metrics.
	Registerer prometheus.Registerer `json:"-"`
	// Listener, when set, is used for HTTP instead of listening on HTTPAddr.
	Listener net.Listener `json:"-"`
	// Version and Revision label trm_build_info: the release and the VCS
	// revision main was stamped with at build time. Empty: "dev", and the
	// revision the Go toolchain recorded (or "unknown").
	Version, Revision string `json:"-"`
}

// Defaults.
const (
	DefaultNATSURL         = "nats://127.0.0.1:4222"
	DefaultHTTPAddr        = ":8080"
	DefaultConsumer        = "persister"
	DefaultBatchSize       = 1000
	DefaultFetchMaxWait    = 100 * time.Millisecond
	DefaultWriters         = 2
	DefaultMaxAckPending   = 10000
	DefaultAckWait         = 30 * time.Second
	DefaultBackoffMin      = 500 * time.Millisecond
	DefaultBackoffMax      = 30 * time.Second
	DefaultVerifyInterval  = time.Minute
	DefaultChunkInterval   = 24 * time.Hour
	DefaultShutdownTimeout = 15 * time.Second
)

// settings is the persister's table of settings: variable (the flag is its
// name without PERSISTER_), default, usage and the field it sets.
func settings() []config.Setting[Config] {
	return []config.Setting[Config]{
		config.String("NATS_URL", DefaultNATSURL, "NATS server URL", func(c *Config) *string { return &c.NATSURL }),
		config.String("DATABASE_URL", "", "PostgreSQL DSN", func(c *Config) *string { return &c.DatabaseURL }),
		config.String("HTTP_ADDR", DefaultHTTPAddr, "address of /healthz, /readyz, /metrics", func(c *Config) *string { return &c.HTTPAddr }),
		config.String("PERSISTER_CONSUMER", DefaultConsumer, "durable consumer name on POSITIONS", func(c *Config) *string { return &c.Consumer }),
		config.Int("PERSISTER_BATCH_SIZE", DefaultBatchSize, "positions per transaction", func(c *Config) *int { return &c.BatchSize }),
		config.Duration("PERSISTER_FETCH_MAX_WAIT", DefaultFetchMaxWait, "how long a batch waits to fill", func(c *Config) *time.Duration { return &c.FetchMaxWait }),
		config.String("PERSISTER_WRITE_PATH", PathAuto, "auto, unnest or staging", func(c *Config) *string { return &c.WritePath }),
		config.Int("PERSISTER_WRITERS", DefaultWriters, "batches written concurrently", func(c *Config) *int { return &c.Writers }),
		config.Int("PERSISTER_MAX_ACK_PENDING", DefaultMaxAckPending, "consumer max ack pending", func(c *Config) *int { return &c.MaxAckPending }),
		config.Duration("PERSISTER_ACK_WAIT", DefaultAckWait, "consumer ack wait", func(c *Config) *time.Duration { return &c.AckWait }),
		config.Duration("PERSISTER_BACKOFF_MIN", DefaultBackoffMin, "first retry delay", func(c *Config) *time.Duration { return &c.BackoffMin }),
		config.Duration("PERSISTER_BACKOFF_MAX", DefaultBackoffMax, "largest retry delay", func(c *Config) *time.Duration { return &c.BackoffMax }),
		config.Duration("PERSISTER_VERIFY_INTERVAL", DefaultVerifyInterval, "schema verification period", func(c *Config) *time.Duration { return &c.VerifyInterval }),
		config.Bool("PERSISTER_REQUIRE_TIMESCALEDB", "refuse to start without TimescaleDB", func(c *Config) *bool { return &c.RequireTimescaleDB }),
		config.Duration("PERSISTER_CHUNK_INTERVAL", DefaultChunkInterval, "hypertable chunk interval", func(c *Config) *time.Duration { return &c.ChunkInterval }),
		config.Duration("PERSISTER_SHUTDOWN_TIMEOUT", DefaultShutdownTimeout, "bound on finishing in-flight batches", func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
		config.String("LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config) *string { return &c.LogLevel }),
		config.String("LOG_FORMAT", "text", "text or json", func(c *Config) *string { return &c.LogFormat }),
	}
}

// LoadConfig reads the settings from getenv, then from args (a flag wins
// over its variable), and validates them. It also builds Logger from
// LOG_LEVEL and LOG_FORMAT, writing to stderr. -version returns
// config.ErrVersion.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	c, err := config.Load(flag.NewFlagSet("persister", flag.ContinueOnError), "PERSISTER_", settings(), args, getenv)
	if err != nil {
		return Config{}, err
	}
	return c.loaded()
}

// LoadRebuildConfig is LoadConfig for "persister rebuild": the same
// settings plus --since, the time from which the stream is replayed into
// the table.
func LoadRebuildConfig(args []string, getenv func(string) string) (Config, time.Time, error) {
	fs := flag.NewFlagSet("persister rebuild", flag.ContinueOnError)
	since := fs.String("since", "", "replay positions stored in the stream since this time (RFC 3339, or a duration ago such as 6h); required")
	c, err := config.Load(fs, "PERSISTER_", settings(), args, getenv)
	if err != nil {
		return Config{}, time.Time{}, err
	}
	t, err := parseSince(*since, time.Now())
	if err != nil {
		return Config{}, time.Time{}, err
	}
	c, err = c.loaded()
	return c, t, err
}

// withDefaults fills zero values, except HTTPAddr: a literal's empty
// HTTPAddr (and no Listener) means no HTTP server.
func (c Config) withDefaults() Config {
	addr := c.HTTPAddr
	config.Fill(&c, settings())
	c.HTTPAddr = addr
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate names the first bad setting by its environment name.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.DatabaseURL == "" {
		return errors.New("DATABASE_URL: required")
	}
	// Every URL error goes through contract (ParseURL, RedactURLs): the
	// values carry passwords.
	u, err := contract.ParseURL("DATABASE_URL", c.DatabaseURL)
	if err != nil {
		return err
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return fmt.Errorf("DATABASE_URL %q: must be a postgres:// URL", contract.RedactURLs(c.DatabaseURL))
	}
	if u, err = contract.ParseURL("NATS_URL", c.NATSURL); err != nil {
		return err
	}
	if u.Host == "" {
		return fmt.Errorf("NATS_URL %q: must be a URL such as nats://host:4222", contract.RedactURLs(c.NATSURL))
	}
	if strings.ContainsAny(c.Consumer, ".*> \t/\\") {
		return fmt.Errorf("PERSISTER_CONSUMER %q: no dots, wildcards, whitespace or slashes", c.Consumer)
	}
	switch {
	case c.BatchSize < 1 || c.BatchSize > 100000:
		return fmt.Errorf("PERSISTER_BATCH_SIZE %d: must be 1..100000", c.BatchSize)
	case c.WritePath != PathAuto && c.WritePath != PathUnnest && c.WritePath != PathStaging:
		return fmt.Errorf("PERSISTER_WRITE_PATH %q: must be %s, %s or %s", c.WritePath, PathAuto, PathUnnest, PathStaging)
	case c.Writers < 1 || c.Writers > 64:
		return fmt.Errorf("PERSISTER_WRITERS %d: must be 1..64", c.Writers)
	case c.MaxAckPending < c.BatchSize*c.Writers:
		return fmt.Errorf("PERSISTER_MAX_ACK_PENDING %d: must be at least PERSISTER_BATCH_SIZE × PERSISTER_WRITERS (%d)",
			c.MaxAckPending, c.BatchSize*c.Writers)
	case c.FetchMaxWait < 0:
		return fmt.Errorf("PERSISTER_FETCH_MAX_WAIT %s: must not be negative", c.FetchMaxWait)
	case c.AckWait < time.Second:
		return fmt.Errorf("PERSISTER_ACK_WAIT %s: must be at least 1s", c.AckWait)
	case c.BackoffMin <= 0:
		return fmt.Errorf("PERSISTER_BACKOFF_MIN %s: must be positive", c.BackoffMin)
	case c.BackoffMax < c.BackoffMin:
		return fmt.Errorf("PERSISTER_BACKOFF_MAX %s: must be at least PERSISTER_BACKOFF_MIN %s", c.BackoffMax, c.BackoffMin)
	case c.VerifyInterval <= 0:
		return fmt.Errorf("PERSISTER_VERIFY_INTERVAL %s: must be positive", c.VerifyInterval)
	case c.ChunkInterval < time.Minute:
		return fmt.Errorf("PERSISTER_CHUNK_INTERVAL %s: must be at least 1m", c.ChunkInterval)
	case c.ShutdownTimeout <= 0:
		return fmt.Errorf("PERSISTER_SHUTDOWN_TIMEOUT %s: must be positive", c.ShutdownTimeout)
	}
	return config.CheckLog(c.LogLevel, c.LogFormat)
}

// String is the effective configuration with passwords masked, for the
// start-up log line.
func (c Config) String() string {
	c = c.withDefaults()
	addr := c.HTTPAddr
	if c.Listener != nil {
		addr = c.Listener.Addr().String()
	}
	return fmt.Sprintf("NATS_URL=%s DATABASE_URL=%s HTTP_ADDR=%s PERSISTER_CONSUMER=%s PERSISTER_BATCH_SIZE=%d "+
		"PERSISTER_FETCH_MAX_WAIT=%s PERSISTER_WRITE_PATH=%s PERSISTER_WRITERS=%d PERSISTER_MAX_ACK_PENDING=%d PERSISTER_ACK_WAIT=%s "+
		"PERSISTER_BACKOFF_MIN=%s PERSISTER_BACKOFF_MAX=%s PERSISTER_VERIFY_INTERVAL=%s "+
		"PERSISTER_REQUIRE_TIMESCALEDB=%t PERSISTER_CHUNK_INTERVAL=%s PERSISTER_SHUTDOWN_TIMEOUT=%s LOG_LEVEL=%s LOG_FORMAT=%s",
		contract.RedactURLs(c.NATSURL), contract.RedactURLs(c.DatabaseURL), addr, c.Consumer, c.BatchSize,
		c.FetchMaxWait, c.WritePath, c.Writers, c.MaxAckPending, c.AckWait,
		c.BackoffMin, c.BackoffMax, c.VerifyInterval,
		c.RequireTimescaleDB, c.ChunkInterval, c.ShutdownTimeout, c.LogLevel, c.LogFormat)
}

// NewLogger returns the logger LogLevel and LogFormat describe, writing
// to w.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	return config.NewLogger(w, c.LogLevel, c.LogFormat)
}

// loaded is c validated, with Logger built on stderr: what LoadConfig and
// LoadRebuildConfig return.
func (c Config) loaded() (Config, error) {
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	c.Logger = c.NewLogger(os.Stderr)
	return c, nil
}

func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("--since: required (RFC 3339 time, or a duration ago such as 6h)")
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: neither an RFC 3339 time nor a positive duration", s)
	}
	return t, nil
}
