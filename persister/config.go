package persister

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"trm-live/contract"

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

// withDefaults fills zero values.
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.NATSURL == "" {
		c.NATSURL = DefaultNATSURL
	}
	if c.Consumer == "" {
		c.Consumer = DefaultConsumer
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.WritePath == "" {
		c.WritePath = PathAuto
	}
	if c.Writers == 0 {
		c.Writers = DefaultWriters
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = DefaultMaxAckPending
	}
	def(&c.FetchMaxWait, DefaultFetchMaxWait)
	def(&c.AckWait, DefaultAckWait)
	def(&c.BackoffMin, DefaultBackoffMin)
	def(&c.BackoffMax, DefaultBackoffMax)
	def(&c.VerifyInterval, DefaultVerifyInterval)
	def(&c.ChunkInterval, DefaultChunkInterval)
	def(&c.ShutdownTimeout, DefaultShutdownTimeout)
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
	switch strings.ToLower(c.LogLevel) {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("LOG_LEVEL %q: must be debug, info, warn or error", c.LogLevel)
	}
	switch strings.ToLower(c.LogFormat) {
	case "", "text", "json":
	default:
		return fmt.Errorf("LOG_FORMAT %q: must be text or json", c.LogFormat)
	}
	return nil
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
		c.RequireTimescaleDB, c.ChunkInterval, c.ShutdownTimeout, orDefault(c.LogLevel, "info"), orDefault(c.LogFormat, "text"))
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// LoadConfig reads the settings from args (flags) and getenv (environment);
// a flag wins over its environment variable. It also builds Logger from
// LOG_LEVEL and LOG_FORMAT, writing to stderr.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	cfg, fs, err := newFlagSet("persister", getenv)
	if err != nil {
		return Config{}, err
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return cfg.finish(os.Stderr)
}

// LoadRebuildConfig is LoadConfig for "persister rebuild": the same
// settings plus --since, the time from which the stream is replayed into
// the table.
func LoadRebuildConfig(args []string, getenv func(string) string) (Config, time.Time, error) {
	cfg, fs, err := newFlagSet("persister rebuild", getenv)
	if err != nil {
		return Config{}, time.Time{}, err
	}
	since := fs.String("since", "", "replay positions stored in the stream since this time (RFC 3339, or a duration ago such as 6h); required")
	if err := fs.Parse(args); err != nil {
		return Config{}, time.Time{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, time.Time{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	t, err := parseSince(*since, time.Now())
	if err != nil {
		return Config{}, time.Time{}, err
	}
	c, err := cfg.finish(os.Stderr)
	return c, t, err
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

// flagConfig binds every setting to a flag whose default is the
// environment variable when set.
type flagConfig struct {
	*Config
}

func newFlagSet(name string, getenv func(string) string) (flagConfig, *flag.FlagSet, error) {
	cfg := flagConfig{&Config{}}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var errs []error
	str := func(p *string, flagName, env, def, usage string) {
		v := getenv(env)
		if v == "" {
			v = def
		}
		fs.StringVar(p, flagName, v, usage+" ("+env+")")
	}
	dur := func(p *time.Duration, flagName, env string, def time.Duration, usage string) {
		v := def
		if s := getenv(env); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %q: not a duration", env, s))
			}
			v = d
		}
		fs.DurationVar(p, flagName, v, usage+" ("+env+")")
	}
	num := func(p *int, flagName, env string, def int, usage string) {
		v := def
		if s := getenv(env); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %q: not an integer", env, s))
			}
			v = n
		}
		fs.IntVar(p, flagName, v, usage+" ("+env+")")
	}
	boolean := func(p *bool, flagName, env string, usage string) {
		v := false
		if s := getenv(env); s != "" {
			b, err := strconv.ParseBool(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %q: not a boolean", env, s))
			}
			v = b
		}
		fs.BoolVar(p, flagName, v, usage+" ("+env+")")
	}
	c := cfg.Config
	str(&c.NATSURL, "nats-url", "NATS_URL", DefaultNATSURL, "NATS server URL")
	str(&c.DatabaseURL, "database-url", "DATABASE_URL", "", "PostgreSQL DSN")
	str(&c.HTTPAddr, "http-addr", "HTTP_ADDR", DefaultHTTPAddr, "address of /healthz, /readyz, /metrics")
	str(&c.Consumer, "consumer", "PERSISTER_CONSUMER", DefaultConsumer, "durable consumer name on POSITIONS")
	num(&c.BatchSize, "batch-size", "PERSISTER_BATCH_SIZE", DefaultBatchSize, "positions per transaction")
	dur(&c.FetchMaxWait, "fetch-max-wait", "PERSISTER_FETCH_MAX_WAIT", DefaultFetchMaxWait, "how long a batch waits to fill")
	str(&c.WritePath, "write-path", "PERSISTER_WRITE_PATH", PathAuto, "auto, unnest or staging")
	num(&c.Writers, "writers", "PERSISTER_WRITERS", DefaultWriters, "batches written concurrently")
	num(&c.MaxAckPending, "max-ack-pending", "PERSISTER_MAX_ACK_PENDING", DefaultMaxAckPending, "consumer max ack pending")
	dur(&c.AckWait, "ack-wait", "PERSISTER_ACK_WAIT", DefaultAckWait, "consumer ack wait")
	dur(&c.BackoffMin, "backoff-min", "PERSISTER_BACKOFF_MIN", DefaultBackoffMin, "first retry delay")
	dur(&c.BackoffMax, "backoff-max", "PERSISTER_BACKOFF_MAX", DefaultBackoffMax, "largest retry delay")
	dur(&c.VerifyInterval, "verify-interval", "PERSISTER_VERIFY_INTERVAL", DefaultVerifyInterval, "schema verification period")
	boolean(&c.RequireTimescaleDB, "require-timescaledb", "PERSISTER_REQUIRE_TIMESCALEDB", "refuse to start without TimescaleDB")
	dur(&c.ChunkInterval, "chunk-interval", "PERSISTER_CHUNK_INTERVAL", DefaultChunkInterval, "hypertable chunk interval")
	dur(&c.ShutdownTimeout, "shutdown-timeout", "PERSISTER_SHUTDOWN_TIMEOUT", DefaultShutdownTimeout, "bound on finishing in-flight batches")
	str(&c.LogLevel, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error")
	str(&c.LogFormat, "log-format", "LOG_FORMAT", "text", "text or json")
	return cfg, fs, errors.Join(errs...)
}

func (f flagConfig) finish(w io.Writer) (Config, error) {
	c := *f.Config
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	level := slog.LevelInfo
	_ = level.UnmarshalText([]byte(orDefault(c.LogLevel, "info"))) // validated above
	opts := &slog.HandlerOptions{Level: level}
	if strings.EqualFold(c.LogFormat, "json") {
		c.Logger = slog.New(slog.NewJSONHandler(w, opts))
	} else {
		c.Logger = slog.New(slog.NewTextHandler(w, opts))
	}
	return c, nil
}
