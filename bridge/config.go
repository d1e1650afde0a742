package bridge

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

	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract"
	"trm-live/contract/config"
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
	DefaultParseWorkers    = 2
	DefaultPublishMode     = PublishAsync
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
	// ParseWorkers is how many goroutines parse, route and encode a read
	// batch while the previous one is published (BRIDGE_PARSE_WORKERS);
	// 1 does it all on the publishing goroutine. Publish order stays the
	// read order either way.
	ParseWorkers int
	// PublishMode is how positions reach JetStream (BRIDGE_PUBLISH_MODE):
	// PublishAsync, one PubAck per message, or PublishBatch, one
	// fast-ingest batch per read batch, falling back to async when the
	// stream or server does not take fast batches.
	PublishMode string
	// TypedReads reads XREADGROUP replies through go-redis's typed
	// command (a map per entry) instead of raw (BRIDGE_TYPED_READS): for a
	// Redis-compatible server whose replies the raw parser does not take,
	// and for A/B benchmarks.
	TypedReads bool
	// fastFlow is the fast batch's initial flow (messages per flow ack);
	// 0 is the client's default.
	fastFlow uint16
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

// settings is the bridge's table of settings: variable (the flag is its
// name without BRIDGE_), default, usage and the field it sets.
func settings() []config.Setting[Config] {
	return []config.Setting[Config]{
		config.String("NATS_URL", DefaultNATSURL, "NATS server URL", func(c *Config) *string { return &c.NATSURL }),
		config.String("REDIS_URL", DefaultRedisURL, "Redis URL", func(c *Config) *string { return &c.RedisURL }),
		// No flag: a password stays out of ps.
		config.String("REDIS_SENTINEL_PASSWORD", "", "password of the sentinels", func(c *Config) *string { return &c.RedisSentinelPassword }).EnvOnly(),
		config.String("DATABASE_URL", DefaultDatabaseURL, "PostgreSQL DSN with event_devices", func(c *Config) *string { return &c.DatabaseURL }),
		config.String("HTTP_ADDR", DefaultHTTPAddr, "health and metrics address", func(c *Config) *string { return &c.HTTPAddr }),
		config.String("LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config) *string { return &c.LogLevel }),
		config.String("LOG_FORMAT", "text", "text or json", func(c *Config) *string { return &c.LogFormat }),
		config.List("BRIDGE_STREAMS", DefaultStream, "Redis stream keys, comma separated", func(c *Config) *[]string { return &c.Streams }),
		config.String("BRIDGE_GROUP", DefaultGroup, "Redis consumer group", func(c *Config) *string { return &c.Group }),
		config.String("BRIDGE_CONSUMER", "", "consumer name, default the host name", func(c *Config) *string { return &c.Consumer }),
		config.Int("BRIDGE_BATCH", DefaultBatch, "entries per XREADGROUP/XAUTOCLAIM", func(c *Config) *int { return &c.Batch }),
		config.Duration("BRIDGE_BLOCK", DefaultBlock, "XREADGROUP BLOCK", func(c *Config) *time.Duration { return &c.Block }),
		config.Int("BRIDGE_MAX_IN_FLIGHT", DefaultMaxInFlight, "publishes awaiting ack", func(c *Config) *int { return &c.MaxInFlight }),
		config.Int("BRIDGE_PARSE_WORKERS", DefaultParseWorkers, "goroutines preparing a batch ahead of the publisher, 1 none", func(c *Config) *int { return &c.ParseWorkers }),
		config.String("BRIDGE_PUBLISH_MODE", DefaultPublishMode, "async (one ack per message) or batch (fast-ingest batches)", func(c *Config) *string { return &c.PublishMode }),
		config.Bool("BRIDGE_TYPED_READS", "read XREADGROUP replies through go-redis's typed command instead of raw", func(c *Config) *bool { return &c.TypedReads }),
		config.Duration("BRIDGE_PUBLISH_TIMEOUT", DefaultPublishTimeout, "ack wait before re-send", func(c *Config) *time.Duration { return &c.PublishTimeout }),
		config.Duration("BRIDGE_CLAIM_INTERVAL", DefaultClaimInterval, "XAUTOCLAIM period", func(c *Config) *time.Duration { return &c.ClaimInterval }),
		config.Duration("BRIDGE_CLAIM_MIN_IDLE", DefaultClaimMinIdle, "idle time before claiming", func(c *Config) *time.Duration { return &c.ClaimMinIdle }),
		config.Duration("BRIDGE_ROUTING_REFRESH", DefaultRoutingRefresh, "event_devices reload period", func(c *Config) *time.Duration { return &c.RoutingRefresh }),
		config.Duration("BRIDGE_LAG_INTERVAL", DefaultLagInterval, "group lag metrics period", func(c *Config) *time.Duration { return &c.LagInterval }),
		config.Duration("BRIDGE_SHUTDOWN_TIMEOUT", DefaultShutdownTimeout, "wait for in-flight acks at shutdown", func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
		config.Duration("BRIDGE_REPUBLISH_WINDOW", 0, "entries re-published after a JetStream loss, default STREAM_DUPLICATES", func(c *Config) *time.Duration { return &c.RepublishWindow }),
		config.Duration("BRIDGE_VERIFY_INTERVAL", DefaultVerifyInterval, "JetStream loss check period", func(c *Config) *time.Duration { return &c.VerifyInterval }),
		config.Duration("BRIDGE_CONSUMER_MAX_IDLE", DefaultConsumerMaxIdle, "idle time before an empty consumer is deleted", func(c *Config) *time.Duration { return &c.ConsumerMaxIdle }),
		config.Duration("STREAM_MAX_AGE", streams.DefaultMaxAge, "POSITIONS retention", func(c *Config) *time.Duration { return &c.Stream.MaxAge }),
		config.Int("STREAM_REPLICAS", 1, "stream replicas", func(c *Config) *int { return &c.Stream.Replicas }),
		config.Duration("STREAM_DUPLICATES", streams.DefaultDuplicates, "Nats-Msg-Id dedup window", func(c *Config) *time.Duration { return &c.Stream.Duplicates }),
		config.Value("STREAM_MAX_BYTES", int64(streams.DefaultMaxBytes), "POSITIONS byte limit, -1 none", streams.ParseBytes, func(c *Config) *int64 { return &c.Stream.MaxBytes }),
		config.Value("STREAM_DLQ_MAX_BYTES", int64(streams.DefaultDLQMaxBytes), "POSITIONS_DLQ byte limit", streams.ParseBytes, func(c *Config) *int64 { return &c.Stream.DLQMaxBytes }),
	}
}

// LoadConfig reads the settings from getenv, then from args (a flag wins
// over its variable), and validates them. -version returns
// config.ErrVersion.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	c, err := config.Load(flag.NewFlagSet("bridge", flag.ContinueOnError), "BRIDGE_", settings(), args, getenv)
	if err != nil {
		return Config{}, err
	}
	c = c.withDefaults()
	return c, c.Validate()
}

// withDefaults fills every zero setting with its default.
func (c Config) withDefaults() Config {
	config.Fill(&c, settings())
	if c.Consumer == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "bridge"
		}
		c.Consumer = h
	}
	if c.RepublishWindow == 0 {
		c.RepublishWindow = c.Stream.Duplicates
	}
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
	case c.ParseWorkers < 1 || c.ParseWorkers > 64:
		return fmt.Errorf("BRIDGE_PARSE_WORKERS %d: must be 1..64", c.ParseWorkers)
	case c.PublishMode != PublishAsync && c.PublishMode != PublishBatch:
		return fmt.Errorf("BRIDGE_PUBLISH_MODE %q: must be %s or %s", c.PublishMode, PublishAsync, PublishBatch)
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
	if err := config.CheckLog(c.LogLevel, c.LogFormat); err != nil {
		return err
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
		"BRIDGE_MAX_IN_FLIGHT=%d BRIDGE_PARSE_WORKERS=%d BRIDGE_PUBLISH_MODE=%s BRIDGE_TYPED_READS=%t BRIDGE_PUBLISH_TIMEOUT=%s BRIDGE_CLAIM_INTERVAL=%s BRIDGE_CLAIM_MIN_IDLE=%s "+
		"BRIDGE_ROUTING_REFRESH=%s BRIDGE_LAG_INTERVAL=%s BRIDGE_SHUTDOWN_TIMEOUT=%s "+
		"BRIDGE_REPUBLISH_WINDOW=%s BRIDGE_VERIFY_INTERVAL=%s BRIDGE_CONSUMER_MAX_IDLE=%s "+
		"STREAM_MAX_AGE=%s STREAM_REPLICAS=%d STREAM_DUPLICATES=%s STREAM_MAX_BYTES=%d STREAM_DLQ_MAX_BYTES=%d",
		contract.RedactURLs(c.NATSURL), redactRedisURL(c.RedisURL), contract.RedactURLs(c.DatabaseURL), c.HTTPAddr, c.LogLevel, c.LogFormat,
		strings.Join(c.Streams, ","), c.Group, c.Consumer, c.Batch, c.Block,
		c.MaxInFlight, c.ParseWorkers, c.PublishMode, c.TypedReads, c.PublishTimeout, c.ClaimInterval, c.ClaimMinIdle,
		c.RoutingRefresh, c.LagInterval, c.ShutdownTimeout,
		c.RepublishWindow, c.VerifyInterval, c.ConsumerMaxIdle,
		c.Stream.MaxAge, c.Stream.Replicas, c.Stream.Duplicates, c.Stream.MaxBytes, c.Stream.DLQMaxBytes)
}

// NewLogger returns the logger LOG_LEVEL and LOG_FORMAT describe, writing to w.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	return config.NewLogger(w, c.LogLevel, c.LogFormat)
}
