package bridge

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

	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract"
	"trm-live/contract/streams"
)

// Defaults of the settings.
const (
	DefaultNATSURL         = "nats://127.0.0.1:4222"
	DefaultRedisURL        = "redis://127.0.0.1:6379/0"
	DefaultDatabaseURL     = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	DefaultHTTPAddr        = ":8080"
	DefaultStream          = "telemetry:positions"
	DefaultGroup           = "bridge"
	DefaultBatch           = 1000
	DefaultBlock           = time.Second
	DefaultMaxInFlight     = 4000
	DefaultPublishTimeout  = 5 * time.Second
	DefaultClaimInterval   = 10 * time.Second
	DefaultClaimMinIdle    = time.Minute
	DefaultRoutingRefresh  = 2 * time.Second
	DefaultLagInterval     = 5 * time.Second
	DefaultShutdownTimeout = 20 * time.Second
	DefaultVerifyInterval  = time.Minute
	DefaultConsumerMaxIdle = 24 * time.Hour
)

// Config is every setting of the bridge plus its runtime dependencies. The
// zero value of each field means its default (see withDefaults), so tests
// build a literal and skip LoadConfig.
type Config struct {
	// NATSURL is the NATS server (NATS_URL).
	NATSURL string
	// RedisURL is the Redis holding the input streams (REDIS_URL): one
	// server (redis://, rediss://), a Redis Cluster (redis+cluster://,
	// seed nodes comma separated) or a Sentinel-managed master
	// (redis+sentinel://, sentinels comma separated, then /<master>[/<db>]).
	RedisURL string
	// RedisSentinelPassword authenticates to the sentinels of a
	// redis+sentinel:// REDIS_URL (REDIS_SENTINEL_PASSWORD); the URL's own
	// password is the Redis servers'. Empty: the sentinels need none.
	RedisSentinelPassword string
	// DatabaseURL is the PostgreSQL holding event_devices (DATABASE_URL).
	DatabaseURL string
	// HTTPAddr serves /healthz, /readyz and /metrics (HTTP_ADDR). Ignored
	// when Listener is set.
	HTTPAddr string
	// LogLevel is debug, info, warn or error (LOG_LEVEL); LogFormat is text
	// or json (LOG_FORMAT). Used by NewLogger only.
	LogLevel, LogFormat string

	// Streams are the Redis stream keys read (BRIDGE_STREAMS, comma separated).
	Streams []string
	// Group is the Redis consumer group (BRIDGE_GROUP).
	Group string
	// Consumer is this bridge's consumer name in the group
	// (BRIDGE_CONSUMER); empty means the host name.
	Consumer string
	// Batch is the COUNT of one XREADGROUP or XAUTOCLAIM (BRIDGE_BATCH).
	Batch int
	// Block is the BLOCK of one XREADGROUP (BRIDGE_BLOCK). It bounds how
	// long a shutdown waits for the reader; never zero (zero blocks forever).
	Block time.Duration
	// MaxInFlight bounds the publishes awaiting their JetStream ack
	// (BRIDGE_MAX_IN_FLIGHT).
	MaxInFlight int
	// PublishTimeout is how long a publish waits for its ack before it is
	// re-sent (BRIDGE_PUBLISH_TIMEOUT).
	PublishTimeout time.Duration
	// ClaimInterval is how often pending entries of dead consumers are
	// claimed (BRIDGE_CLAIM_INTERVAL).
	ClaimInterval time.Duration
	// ClaimMinIdle is how long an entry must have been pending untouched
	// before it is claimed (BRIDGE_CLAIM_MIN_IDLE). Keep it well above
	// PublishTimeout: a live consumer's slow entry should not be stolen.
	ClaimMinIdle time.Duration
	// RoutingRefresh is how often event_devices is reloaded
	// (BRIDGE_ROUTING_REFRESH).
	RoutingRefresh time.Duration
	// LagInterval is how often the group's lag and pending counts are read
	// for the metrics (BRIDGE_LAG_INTERVAL).
	LagInterval time.Duration
	// ShutdownTimeout bounds the wait for in-flight acks after the context
	// ends (BRIDGE_SHUTDOWN_TIMEOUT). What is not acked by then stays
	// pending in Redis and is re-delivered later.
	ShutdownTimeout time.Duration
	// RepublishWindow is how far back, by XADD time, the entries of every
	// input stream are published again when JetStream is found without
	// messages it had acknowledged (BRIDGE_REPUBLISH_WINDOW); zero means
	// STREAM_DUPLICATES (default 5m). Keep it at
	// least the JetStream sync interval of the deployment; at most
	// STREAM_DUPLICATES, so the dedup window absorbs what survived. Redis
	// must retain at least this much.
	RepublishWindow time.Duration
	// VerifyInterval is how often, besides after every NATS reconnect, the
	// newest acknowledged messages are checked to still be in JetStream
	// (BRIDGE_VERIFY_INTERVAL).
	VerifyInterval time.Duration
	// ConsumerMaxIdle is how long a consumer of the group with no pending
	// entries may stay idle before it is deleted (BRIDGE_CONSUMER_MAX_IDLE):
	// dead bridges' names otherwise pile up. Live bridges touch the group
	// every BRIDGE_BLOCK, so any value far above that is safe.
	ConsumerMaxIdle time.Duration
	// Stream holds the JetStream stream settings (STREAM_MAX_AGE,
	// STREAM_REPLICAS, STREAM_DUPLICATES, STREAM_MAX_BYTES,
	// STREAM_DLQ_MAX_BYTES).
	Stream streams.Options

	// Logger receives the log; nil discards it.
	Logger *slog.Logger
	// Registerer receives the metrics; nil means a private registry.
	Registerer prometheus.Registerer
	// Gatherer is served on /metrics; nil means Registerer when it is a
	// Gatherer (a *prometheus.Registry is), else the private registry.
	Gatherer prometheus.Gatherer
	// Listener, when set, is used for HTTP instead of listening on HTTPAddr.
	Listener net.Listener
	// Version and Revision label trm_build_info: the release and the VCS
	// revision main was stamped with at build time. Empty: "dev", and the
	// revision the Go toolchain recorded (or "unknown").
	Version, Revision string
	// Now is the clock of the future-time rule; nil means time.Now.
	Now func() time.Time

	// crashBeforeAck, set by tests only, is called before each XACK batch;
	// returning true stops the bridge at once as a crash would.
	crashBeforeAck func(n int) bool
}

// LoadConfig reads the settings from flags (args) and the environment
// (getenv); a flag wins over its variable.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	var c Config
	var errs []error
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	envInt := func(name string, def int) int {
		v := getenv(name)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: not an integer", name, v))
		}
		return n
	}
	envDur := func(name string, def time.Duration) time.Duration {
		v := getenv(name)
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: not a duration (e.g. 5s, 2m)", name, v))
		}
		return d
	}
	envBytes := func(name string, def int64) int64 {
		v := getenv(name)
		if v == "" {
			return def
		}
		n, err := streams.ParseBytes(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		return n
	}

	fs := flag.NewFlagSet("bridge", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.NATSURL, "nats-url", env("NATS_URL", DefaultNATSURL), "NATS server URL (NATS_URL)")
	fs.StringVar(&c.RedisURL, "redis-url", env("REDIS_URL", DefaultRedisURL), "Redis URL (REDIS_URL)")
	c.RedisSentinelPassword = getenv("REDIS_SENTINEL_PASSWORD") // no flag: a password stays out of ps
	fs.StringVar(&c.DatabaseURL, "database-url", env("DATABASE_URL", DefaultDatabaseURL), "PostgreSQL DSN with event_devices (DATABASE_URL)")
	fs.StringVar(&c.HTTPAddr, "http-addr", env("HTTP_ADDR", DefaultHTTPAddr), "health and metrics address (HTTP_ADDR)")
	fs.StringVar(&c.LogLevel, "log-level", env("LOG_LEVEL", "info"), "debug, info, warn or error (LOG_LEVEL)")
	fs.StringVar(&c.LogFormat, "log-format", env("LOG_FORMAT", "text"), "text or json (LOG_FORMAT)")
	streamList := fs.String("streams", env("BRIDGE_STREAMS", DefaultStream), "Redis stream keys, comma separated (BRIDGE_STREAMS)")
	fs.StringVar(&c.Group, "group", env("BRIDGE_GROUP", DefaultGroup), "Redis consumer group (BRIDGE_GROUP)")
	fs.StringVar(&c.Consumer, "consumer", env("BRIDGE_CONSUMER", ""), "consumer name, default the host name (BRIDGE_CONSUMER)")
	fs.IntVar(&c.Batch, "batch", envInt("BRIDGE_BATCH", DefaultBatch), "entries per XREADGROUP/XAUTOCLAIM (BRIDGE_BATCH)")
	fs.DurationVar(&c.Block, "block", envDur("BRIDGE_BLOCK", DefaultBlock), "XREADGROUP BLOCK (BRIDGE_BLOCK)")
	fs.IntVar(&c.MaxInFlight, "max-in-flight", envInt("BRIDGE_MAX_IN_FLIGHT", DefaultMaxInFlight), "publishes awaiting ack (BRIDGE_MAX_IN_FLIGHT)")
	fs.DurationVar(&c.PublishTimeout, "publish-timeout", envDur("BRIDGE_PUBLISH_TIMEOUT", DefaultPublishTimeout), "ack wait before re-send (BRIDGE_PUBLISH_TIMEOUT)")
	fs.DurationVar(&c.ClaimInterval, "claim-interval", envDur("BRIDGE_CLAIM_INTERVAL", DefaultClaimInterval), "XAUTOCLAIM period (BRIDGE_CLAIM_INTERVAL)")
	fs.DurationVar(&c.ClaimMinIdle, "claim-min-idle", envDur("BRIDGE_CLAIM_MIN_IDLE", DefaultClaimMinIdle), "idle time before claiming (BRIDGE_CLAIM_MIN_IDLE)")
	fs.DurationVar(&c.RoutingRefresh, "routing-refresh", envDur("BRIDGE_ROUTING_REFRESH", DefaultRoutingRefresh), "event_devices reload period (BRIDGE_ROUTING_REFRESH)")
	fs.DurationVar(&c.LagInterval, "lag-interval", envDur("BRIDGE_LAG_INTERVAL", DefaultLagInterval), "group lag metrics period (BRIDGE_LAG_INTERVAL)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", envDur("BRIDGE_SHUTDOWN_TIMEOUT", DefaultShutdownTimeout), "wait for in-flight acks at shutdown (BRIDGE_SHUTDOWN_TIMEOUT)")
	fs.DurationVar(&c.RepublishWindow, "republish-window", envDur("BRIDGE_REPUBLISH_WINDOW", 0), "entries re-published after a JetStream loss, default STREAM_DUPLICATES (BRIDGE_REPUBLISH_WINDOW)")
	fs.DurationVar(&c.VerifyInterval, "verify-interval", envDur("BRIDGE_VERIFY_INTERVAL", DefaultVerifyInterval), "JetStream loss check period (BRIDGE_VERIFY_INTERVAL)")
	fs.DurationVar(&c.ConsumerMaxIdle, "consumer-max-idle", envDur("BRIDGE_CONSUMER_MAX_IDLE", DefaultConsumerMaxIdle), "idle time before an empty consumer is deleted (BRIDGE_CONSUMER_MAX_IDLE)")
	fs.DurationVar(&c.Stream.MaxAge, "stream-max-age", envDur("STREAM_MAX_AGE", streams.DefaultMaxAge), "POSITIONS retention (STREAM_MAX_AGE)")
	fs.IntVar(&c.Stream.Replicas, "stream-replicas", envInt("STREAM_REPLICAS", 1), "stream replicas (STREAM_REPLICAS)")
	fs.DurationVar(&c.Stream.Duplicates, "stream-duplicates", envDur("STREAM_DUPLICATES", streams.DefaultDuplicates), "Nats-Msg-Id dedup window (STREAM_DUPLICATES)")
	c.Stream.MaxBytes = envBytes("STREAM_MAX_BYTES", streams.DefaultMaxBytes)
	fs.Func("stream-max-bytes", "POSITIONS byte limit, -1 none (STREAM_MAX_BYTES)", func(v string) (err error) {
		c.Stream.MaxBytes, err = streams.ParseBytes(v)
		return err
	})
	c.Stream.DLQMaxBytes = envBytes("STREAM_DLQ_MAX_BYTES", streams.DefaultDLQMaxBytes)
	fs.Func("stream-dlq-max-bytes", "POSITIONS_DLQ byte limit (STREAM_DLQ_MAX_BYTES)", func(v string) (err error) {
		c.Stream.DLQMaxBytes, err = streams.ParseBytes(v)
		return err
	})
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, fmt.Errorf("flags: %w", err)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	for _, s := range strings.Split(*streamList, ",") {
		if s = strings.TrimSpace(s); s != "" {
			c.Streams = append(c.Streams, s)
		}
	}
	return c.withDefaults(), c.withDefaults().Validate()
}

// withDefaults fills every zero setting with its default.
func (c Config) withDefaults() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.NATSURL, DefaultNATSURL)
	def(&c.RedisURL, DefaultRedisURL)
	def(&c.DatabaseURL, DefaultDatabaseURL)
	def(&c.HTTPAddr, DefaultHTTPAddr)
	def(&c.Group, DefaultGroup)
	if c.Consumer == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "bridge"
		}
		c.Consumer = h
	}
	if len(c.Streams) == 0 {
		c.Streams = []string{DefaultStream}
	}
	defInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	defInt(&c.Batch, DefaultBatch)
	defInt(&c.MaxInFlight, DefaultMaxInFlight)
	defDur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defDur(&c.Block, DefaultBlock)
	defDur(&c.PublishTimeout, DefaultPublishTimeout)
	defDur(&c.ClaimInterval, DefaultClaimInterval)
	defDur(&c.ClaimMinIdle, DefaultClaimMinIdle)
	defDur(&c.RoutingRefresh, DefaultRoutingRefresh)
	defDur(&c.LagInterval, DefaultLagInterval)
	defDur(&c.ShutdownTimeout, DefaultShutdownTimeout)
	if c.RepublishWindow == 0 {
		c.RepublishWindow = c.Stream.Duplicates
		if c.RepublishWindow == 0 {
			c.RepublishWindow = streams.DefaultDuplicates
		}
	}
	defDur(&c.VerifyInterval, DefaultVerifyInterval)
	defDur(&c.ConsumerMaxIdle, DefaultConsumerMaxIdle)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate names the first bad setting.
func (c Config) Validate() error {
	for _, u := range []struct{ name, val, scheme string }{
		{"NATS_URL", c.NATSURL, "nats"},
		{"DATABASE_URL", c.DatabaseURL, "postgres"},
	} {
		// Every URL error goes through contract (ParseURL, RedactURLs):
		// the values carry passwords.
		p, err := contract.ParseURL(u.name, u.val)
		if err != nil {
			return err
		}
		if p.Host == "" || !strings.HasPrefix(p.Scheme, u.scheme) {
			return fmt.Errorf("%s %q: want a %s:// URL", u.name, contract.RedactURLs(u.val), u.scheme)
		}
	}
	if _, err := parseRedisURL(c.RedisURL, c.RedisSentinelPassword); err != nil {
		return fmt.Errorf("REDIS_URL %q: %v", redactRedisURL(c.RedisURL), err)
	}
	seen := map[string]bool{}
	for _, s := range c.Streams {
		if seen[s] {
			return fmt.Errorf("BRIDGE_STREAMS: %q listed twice", s)
		}
		seen[s] = true
	}
	switch {
	case c.Group == "":
		return errors.New("BRIDGE_GROUP: empty")
	case c.Batch < 1 || c.Batch > 100000:
		return fmt.Errorf("BRIDGE_BATCH %d: must be 1..100000", c.Batch)
	case c.Block < time.Millisecond:
		return fmt.Errorf("BRIDGE_BLOCK %s: must be at least 1ms (0 would block forever)", c.Block)
	case c.Block > time.Minute:
		return fmt.Errorf("BRIDGE_BLOCK %s: at most 1m, it delays shutdown", c.Block)
	case c.MaxInFlight < 1:
		return fmt.Errorf("BRIDGE_MAX_IN_FLIGHT %d: must be at least 1", c.MaxInFlight)
	case c.PublishTimeout < 10*time.Millisecond:
		return fmt.Errorf("BRIDGE_PUBLISH_TIMEOUT %s: must be at least 10ms", c.PublishTimeout)
	case c.ClaimInterval <= 0:
		return fmt.Errorf("BRIDGE_CLAIM_INTERVAL %s: must be positive", c.ClaimInterval)
	case c.ClaimMinIdle <= 0:
		return fmt.Errorf("BRIDGE_CLAIM_MIN_IDLE %s: must be positive", c.ClaimMinIdle)
	case c.RoutingRefresh <= 0:
		return fmt.Errorf("BRIDGE_ROUTING_REFRESH %s: must be positive", c.RoutingRefresh)
	case c.LagInterval <= 0:
		return fmt.Errorf("BRIDGE_LAG_INTERVAL %s: must be positive", c.LagInterval)
	case c.ShutdownTimeout < 0:
		return fmt.Errorf("BRIDGE_SHUTDOWN_TIMEOUT %s: must not be negative", c.ShutdownTimeout)
	case c.RepublishWindow < time.Second:
		return fmt.Errorf("BRIDGE_REPUBLISH_WINDOW %s: must be at least 1s", c.RepublishWindow)
	case c.Stream.Duplicates != 0 && c.RepublishWindow > c.Stream.Duplicates,
		c.Stream.Duplicates == 0 && c.RepublishWindow > streams.DefaultDuplicates:
		return fmt.Errorf("BRIDGE_REPUBLISH_WINDOW %s: at most STREAM_DUPLICATES, or re-published positions the stream kept would be stored twice", c.RepublishWindow)
	case c.VerifyInterval <= 0:
		return fmt.Errorf("BRIDGE_VERIFY_INTERVAL %s: must be positive", c.VerifyInterval)
	case c.ConsumerMaxIdle < 10*c.Block:
		return fmt.Errorf("BRIDGE_CONSUMER_MAX_IDLE %s: must be at least 10 × BRIDGE_BLOCK (a live bridge must never look dead)", c.ConsumerMaxIdle)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	if c.LogFormat != "" && c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("LOG_FORMAT %q: want text or json", c.LogFormat)
	}
	if err := c.Stream.Validate(); err != nil {
		return fmt.Errorf("STREAM_*: %w", err)
	}
	return nil
}

// String is the effective configuration on one line, passwords masked.
func (c Config) String() string {
	return fmt.Sprintf("NATS_URL=%s REDIS_URL=%s DATABASE_URL=%s HTTP_ADDR=%s LOG_LEVEL=%s LOG_FORMAT=%s "+
		"BRIDGE_STREAMS=%s BRIDGE_GROUP=%s BRIDGE_CONSUMER=%s BRIDGE_BATCH=%d BRIDGE_BLOCK=%s "+
		"BRIDGE_MAX_IN_FLIGHT=%d BRIDGE_PUBLISH_TIMEOUT=%s BRIDGE_CLAIM_INTERVAL=%s BRIDGE_CLAIM_MIN_IDLE=%s "+
		"BRIDGE_ROUTING_REFRESH=%s BRIDGE_LAG_INTERVAL=%s BRIDGE_SHUTDOWN_TIMEOUT=%s "+
		"BRIDGE_REPUBLISH_WINDOW=%s BRIDGE_VERIFY_INTERVAL=%s BRIDGE_CONSUMER_MAX_IDLE=%s "+
		"STREAM_MAX_AGE=%s STREAM_REPLICAS=%d STREAM_DUPLICATES=%s STREAM_MAX_BYTES=%d STREAM_DLQ_MAX_BYTES=%d",
		contract.RedactURLs(c.NATSURL), redactRedisURL(c.RedisURL), contract.RedactURLs(c.DatabaseURL), c.HTTPAddr, c.LogLevel, c.LogFormat,
		strings.Join(c.Streams, ","), c.Group, c.Consumer, c.Batch, c.Block,
		c.MaxInFlight, c.PublishTimeout, c.ClaimInterval, c.ClaimMinIdle,
		c.RoutingRefresh, c.LagInterval, c.ShutdownTimeout,
		c.RepublishWindow, c.VerifyInterval, c.ConsumerMaxIdle,
		c.Stream.MaxAge, c.Stream.Replicas, c.Stream.Duplicates, c.Stream.MaxBytes, c.Stream.DLQMaxBytes)
}

// NewLogger returns the logger LOG_LEVEL and LOG_FORMAT describe, writing to w.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	lvl, _ := parseLevel(c.LogLevel)
	opts := &slog.HandlerOptions{Level: lvl}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if s == "" {
		return slog.LevelInfo, nil
	}
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("LOG_LEVEL %q: want debug, info, warn or error", s)
	}
	return l, nil
}
