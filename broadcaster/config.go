package broadcaster

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"runtime"
	"strings"
	"time"

	"trm-live/contract"
	"trm-live/contract/auth"
	"trm-live/contract/config"

	"github.com/prometheus/client_golang/prometheus"
)

// Config is every setting of the broadcaster plus its runtime dependencies.
// Tests build it as a literal; zero values are replaced by the defaults
// below (see withDefaults), so Config{NATSURL: u, Listener: l} is enough.
type Config struct {
	// NATSURL is the NATS server (NATS_URL). Default nats://127.0.0.1:4222.
	NATSURL string
	// HTTPAddr serves /ws-live, /healthz, /readyz, /metrics (HTTP_ADDR).
	// Default :8080. Ignored when Listener is set.
	HTTPAddr string
	// LogLevel (LOG_LEVEL: debug, info, warn, error) and LogFormat
	// (LOG_FORMAT: text, json) are read by NewLogger, used by main.
	LogLevel  string
	LogFormat string

	// CookieName is the session cookie read at the handshake
	// (BROADCASTER_COOKIE_NAME). Default directus_session_token. An
	// Authorization: Bearer header is accepted when the cookie is absent.
	CookieName string
	// AllowedOrigins are the Origin values accepted before upgrade
	// (BROADCASTER_ALLOWED_ORIGINS, comma-separated, e.g.
	// https://live.example.com). Empty means same-origin: the Origin's
	// host must equal the request's Host. "*" accepts every origin. A
	// request without Origin is judged by its credential alone.
	AllowedOrigins []string
	// AuthTimeout bounds one authsvc request (BROADCASTER_AUTH_TIMEOUT).
	// Default 3s.
	AuthTimeout time.Duration
	// ReauthInterval is how often every connection's session and live
	// subscriptions are re-authorized (BROADCASTER_REAUTH_INTERVAL).
	// Default 1m. A logged-out, expired or revoked session is closed with
	// 4401, a removed member or demoted admin stops receiving, within
	// about this interval plus authsvc's cache time (AUTHSVC_SESSION_TTL,
	// AUTHSVC_EVENT_TTL).
	ReauthInterval time.Duration

	// HandshakeRate and HandshakeBurst bound the refused handshakes of one
	// client address: a token bucket of HandshakeBurst tokens refilled at
	// HandshakeRate per second (BROADCASTER_HANDSHAKE_RATE,
	// BROADCASTER_HANDSHAKE_BURST). Defaults 5 and 100. Every handshake
	// takes a token before its credential is checked and an accepted one
	// gives it back, so real users behind one address are not limited,
	// while a flood of bad credentials from it gets HTTP 429 before any
	// authsvc request. The burst also bounds one address's handshakes in
	// flight. HandshakeRate -1 turns the limit off.
	HandshakeRate  float64
	HandshakeBurst int
	// MaxPendingHandshakes bounds the handshakes of all addresses waiting
	// for authsvc at once (BROADCASTER_MAX_PENDING_HANDSHAKES). Default
	// 1024; over it: HTTP 429 before any authsvc request.
	MaxPendingHandshakes int
	// TrustProxy says every request comes through a reverse proxy that
	// sets X-Forwarded-For (appending the peer) and X-Forwarded-Proto
	// (BROADCASTER_TRUST_PROXY). Default false: the client address is the
	// TCP peer and the scheme is the connection's. Set it only behind such
	// a proxy (Traefik in deploy/): otherwise a client chooses its own
	// address.
	TrustProxy bool

	// MaxConnsPerUser bounds concurrent connections of one user on this
	// instance (BROADCASTER_MAX_CONNS_PER_USER). Default 20.
	MaxConnsPerUser int
	// MaxSubscriptions bounds subscriptions per connection
	// (BROADCASTER_MAX_SUBSCRIPTIONS). Default 10.
	MaxSubscriptions int
	// MsgRate and MsgBurst bound client messages per connection: a token
	// bucket of MsgBurst tokens refilled at MsgRate per second
	// (BROADCASTER_MSG_RATE, BROADCASTER_MSG_BURST). Defaults 10 and 20.
	// A client over the limit is closed with 1008.
	MsgRate  float64
	MsgBurst int
	// ControlQueue bounds the control frames (subscribed, unsubscribed,
	// error) waiting for one client (BROADCASTER_CONTROL_QUEUE). Default
	// 64. A client past it is closed with 1008 and counted as slow.
	ControlQueue int
	// FrameMaxPositions and FrameMaxBytes cap one positions frame
	// (BROADCASTER_FRAME_MAX_POSITIONS, BROADCASTER_FRAME_MAX_BYTES).
	// Defaults 500 and 32 KiB. A frame always holds at least one position.
	FrameMaxPositions int
	FrameMaxBytes     int
	// SocketSendBuffer is the kernel send buffer of each WebSocket
	// connection in bytes (BROADCASTER_SOCKET_SEND_BUFFER). Default
	// 128 KiB; -1 keeps the operating system's autotuned buffer. It bounds
	// the bytes in flight (sent, not yet acknowledged); the unsent part is
	// bounded by SocketNotsentLowat. A buffer smaller than a frame costs a
	// second write and a poller wake-up per frame.
	SocketSendBuffer int
	// SocketNotsentLowat caps the bytes each WebSocket connection's
	// kernel send queue holds not yet sent to the peer
	// (BROADCASTER_SOCKET_NOTSENT_LOWAT, Linux TCP_NOTSENT_LOWAT). Default
	// 16 KiB; -1 leaves the system's (unlimited). A write goes on only
	// while less than this is unsent, so a frame the socket accepts goes in
	// one write, yet a client that does not read never has more than this
	// plus one frame queued in the kernel, where it can no longer be
	// coalesced (decision 59).
	SocketNotsentLowat int
	// TopicFrameRate, when set, paces each topic's fan-out
	// (BROADCASTER_TOPIC_FRAME_RATE): a pass that hands a batch to F
	// clients follows the previous one by at least F / TopicFrameRate
	// seconds (25 ms for 1,000 clients at 40,000), so under load frames
	// grow and the instance spends less CPU, at the price of up to that
	// interval of added delay for every client. Default 0: no pacing,
	// passes wait only for the writers, and a client that keeps up gets
	// each position at once (decision 58).
	TopicFrameRate int
	// Writers is the number of goroutines that build and queue frames
	// (BROADCASTER_WRITERS). Default 2 × GOMAXPROCS.
	Writers int

	// PingPeriod, PongWait and WriteWait are the WebSocket heartbeat and
	// write timeout (BROADCASTER_PING_PERIOD, BROADCASTER_PONG_WAIT,
	// BROADCASTER_WRITE_WAIT). Defaults 30s, 60s, 10s; PingPeriod must be
	// below PongWait.
	PingPeriod time.Duration
	PongWait   time.Duration
	WriteWait  time.Duration
	// SnapshotTimeout bounds reading one snapshot from JetStream
	// (BROADCASTER_SNAPSHOT_TIMEOUT). Default 5s.
	SnapshotTimeout time.Duration
	// ShutdownTimeout bounds the shutdown after ctx ends
	// (BROADCASTER_SHUTDOWN_TIMEOUT). Default 10s.
	ShutdownTimeout time.Duration

	// Replay holds the settings of replays (replay_config.go).
	Replay ReplayConfig

	// Logger receives the log; nil discards it.
	Logger *slog.Logger
	// Registerer receives the metrics; nil uses a private registry (still
	// served on /metrics).
	Registerer prometheus.Registerer
	// Gatherer serves /metrics; nil uses Registerer when it is also a
	// Gatherer, else the private registry.
	Gatherer prometheus.Gatherer
	// Listener, when set, is used instead of listening on HTTPAddr.
	Listener net.Listener
	// Version and Revision label trm_build_info: the release and the VCS
	// revision main was stamped with at build time. Empty: "dev", and the
	// revision the Go toolchain recorded (or "unknown").
	Version, Revision string
}

// settings is the broadcaster's table of settings: variable (the flag is
// its name without BROADCASTER_), default, usage and the field it sets.
func settings() []config.Setting[Config] {
	return append([]config.Setting[Config]{
		config.String("NATS_URL", "nats://127.0.0.1:4222", "NATS server URL", func(c *Config) *string { return &c.NATSURL }),
		config.String("HTTP_ADDR", ":8080", "listen address for /ws-live, /healthz, /readyz, /metrics", func(c *Config) *string { return &c.HTTPAddr }),
		config.String("LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config) *string { return &c.LogLevel }),
		config.String("LOG_FORMAT", "text", "text or json", func(c *Config) *string { return &c.LogFormat }),
		config.String("BROADCASTER_COOKIE_NAME", "directus_session_token", "session cookie name", func(c *Config) *string { return &c.CookieName }),
		config.List("BROADCASTER_ALLOWED_ORIGINS", "", "comma-separated allowed Origins; empty = same-origin", func(c *Config) *[]string { return &c.AllowedOrigins }),
		config.Duration("BROADCASTER_AUTH_TIMEOUT", 3*time.Second, "timeout of one authsvc request", func(c *Config) *time.Duration { return &c.AuthTimeout }),
		config.Duration("BROADCASTER_REAUTH_INTERVAL", time.Minute, "re-authorization interval of live subscriptions", func(c *Config) *time.Duration { return &c.ReauthInterval }),
		config.Int("BROADCASTER_MAX_CONNS_PER_USER", 20, "connections per user", func(c *Config) *int { return &c.MaxConnsPerUser }),
		config.Int("BROADCASTER_MAX_SUBSCRIPTIONS", 10, "subscriptions per connection", func(c *Config) *int { return &c.MaxSubscriptions }),
		config.Float("BROADCASTER_HANDSHAKE_RATE", 5, "refused handshakes per second per client address; -1 = no limit", func(c *Config) *float64 { return &c.HandshakeRate }),
		config.Int("BROADCASTER_HANDSHAKE_BURST", 100, "refused handshakes burst (and handshakes in flight) per client address", func(c *Config) *int { return &c.HandshakeBurst }),
		config.Int("BROADCASTER_MAX_PENDING_HANDSHAKES", 1024, "handshakes waiting for authsvc at once, all addresses", func(c *Config) *int { return &c.MaxPendingHandshakes }),
		config.Bool("BROADCASTER_TRUST_PROXY", "take the client address and scheme from X-Forwarded-For and X-Forwarded-Proto", func(c *Config) *bool { return &c.TrustProxy }),
		config.Float("BROADCASTER_MSG_RATE", 10, "client messages per second per connection", func(c *Config) *float64 { return &c.MsgRate }),
		config.Int("BROADCASTER_MSG_BURST", 20, "client message burst per connection", func(c *Config) *int { return &c.MsgBurst }),
		config.Int("BROADCASTER_CONTROL_QUEUE", 64, "control frames queued per client before it is closed", func(c *Config) *int { return &c.ControlQueue }),
		config.Int("BROADCASTER_FRAME_MAX_POSITIONS", 500, "positions per frame", func(c *Config) *int { return &c.FrameMaxPositions }),
		config.Int("BROADCASTER_FRAME_MAX_BYTES", 32<<10, "bytes per positions frame", func(c *Config) *int { return &c.FrameMaxBytes }),
		config.Int("BROADCASTER_SOCKET_SEND_BUFFER", 128<<10, "kernel send buffer per connection in bytes; -1 = system default", func(c *Config) *int { return &c.SocketSendBuffer }),
		config.Int("BROADCASTER_SOCKET_NOTSENT_LOWAT", 16<<10, "unsent bytes the kernel holds per connection (TCP_NOTSENT_LOWAT); -1 = system default", func(c *Config) *int { return &c.SocketNotsentLowat }),
		config.Int("BROADCASTER_TOPIC_FRAME_RATE", 0, "frames per second a topic's fan-out paces itself to over all its clients; 0 = no pacing", func(c *Config) *int { return &c.TopicFrameRate }),
		config.Int("BROADCASTER_WRITERS", 0, "frame-building goroutines; 0 = 2 × GOMAXPROCS", func(c *Config) *int { return &c.Writers }),
		config.Duration("BROADCASTER_PING_PERIOD", 30*time.Second, "WebSocket ping period", func(c *Config) *time.Duration { return &c.PingPeriod }),
		config.Duration("BROADCASTER_PONG_WAIT", 60*time.Second, "close after this long without a pong", func(c *Config) *time.Duration { return &c.PongWait }),
		config.Duration("BROADCASTER_WRITE_WAIT", 10*time.Second, "timeout of one WebSocket write", func(c *Config) *time.Duration { return &c.WriteWait }),
		config.Duration("BROADCASTER_SNAPSHOT_TIMEOUT", 5*time.Second, "timeout of one JetStream snapshot", func(c *Config) *time.Duration { return &c.SnapshotTimeout }),
		config.Duration("BROADCASTER_SHUTDOWN_TIMEOUT", 10*time.Second, "hard deadline of the shutdown", func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
	}, replaySettings()...)
}

// LoadConfig reads the settings from getenv, then from args (a flag wins
// over its variable), and validates them. -version returns
// config.ErrVersion.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	c, err := config.Load(flag.NewFlagSet("broadcaster", flag.ContinueOnError), "BROADCASTER_", settings(), args, getenv)
	if err != nil {
		return Config{}, err
	}
	for i, o := range c.AllowedOrigins {
		c.AllowedOrigins[i] = strings.TrimSuffix(o, "/")
	}
	c = c.withDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// withDefaults returns c with every zero setting replaced by its default.
func (c Config) withDefaults() Config {
	config.Fill(&c, settings())
	if c.Writers == 0 {
		c.Writers = 2 * runtime.GOMAXPROCS(0)
	}
	return c
}

// Validate checks the settings (after defaults) and names the bad one.
func (c Config) Validate() error {
	c = c.withDefaults()
	// One URL or a comma-separated list, as nats.go reads it. Every URL
	// error goes through contract (ParseURL, RedactURLs): the values carry
	// passwords.
	for _, part := range strings.Split(c.NATSURL, ",") {
		u, err := contract.ParseURL("NATS_URL", part)
		if err != nil {
			return err
		}
		if u.Host == "" {
			return fmt.Errorf("NATS_URL %q: not a URL", contract.RedactURLs(c.NATSURL))
		}
	}
	switch {
	case !auth.ValidCookieName(c.CookieName):
		return fmt.Errorf("BROADCASTER_COOKIE_NAME %q: not a cookie name", c.CookieName)
	case c.AuthTimeout < 0:
		return errors.New("BROADCASTER_AUTH_TIMEOUT: must be positive")
	case c.ReauthInterval < time.Second:
		return fmt.Errorf("BROADCASTER_REAUTH_INTERVAL %s: must be at least 1s", c.ReauthInterval)
	case c.HandshakeRate < 0 && c.HandshakeRate != -1:
		return errors.New("BROADCASTER_HANDSHAKE_RATE: must be positive, or -1 (no limit)")
	case c.HandshakeBurst < 1:
		return errors.New("BROADCASTER_HANDSHAKE_BURST: must be at least 1")
	case c.MaxPendingHandshakes < 1:
		return errors.New("BROADCASTER_MAX_PENDING_HANDSHAKES: must be at least 1")
	case c.MaxConnsPerUser < 1:
		return errors.New("BROADCASTER_MAX_CONNS_PER_USER: must be at least 1")
	case c.MaxSubscriptions < 1:
		return errors.New("BROADCASTER_MAX_SUBSCRIPTIONS: must be at least 1")
	case c.MsgRate <= 0:
		return errors.New("BROADCASTER_MSG_RATE: must be positive")
	case c.MsgBurst < 1:
		return errors.New("BROADCASTER_MSG_BURST: must be at least 1")
	case c.ControlQueue < 2:
		return errors.New("BROADCASTER_CONTROL_QUEUE: must be at least 2")
	case c.FrameMaxPositions < 1:
		return errors.New("BROADCASTER_FRAME_MAX_POSITIONS: must be at least 1")
	case c.FrameMaxBytes < 1024:
		return errors.New("BROADCASTER_FRAME_MAX_BYTES: must be at least 1024")
	case c.SocketSendBuffer < -1 || c.SocketSendBuffer > 0 && c.SocketSendBuffer < 4096:
		return errors.New("BROADCASTER_SOCKET_SEND_BUFFER: must be -1 (system default) or at least 4096")
	case c.SocketNotsentLowat < -1 || c.SocketNotsentLowat > 0 && c.SocketNotsentLowat < 1024:
		return errors.New("BROADCASTER_SOCKET_NOTSENT_LOWAT: must be -1 (system default) or at least 1024")
	case c.TopicFrameRate != 0 && c.TopicFrameRate < 100:
		return errors.New("BROADCASTER_TOPIC_FRAME_RATE: must be 0 (no pacing) or at least 100")
	case c.Writers < 1:
		return errors.New("BROADCASTER_WRITERS: must be at least 1")
	case c.PingPeriod <= 0 || c.PingPeriod >= c.PongWait:
		return fmt.Errorf("BROADCASTER_PING_PERIOD %s: must be positive and below BROADCASTER_PONG_WAIT %s", c.PingPeriod, c.PongWait)
	case c.WriteWait <= 0:
		return errors.New("BROADCASTER_WRITE_WAIT: must be positive")
	case c.SnapshotTimeout <= 0:
		return errors.New("BROADCASTER_SNAPSHOT_TIMEOUT: must be positive")
	case c.ShutdownTimeout <= 0:
		return errors.New("BROADCASTER_SHUTDOWN_TIMEOUT: must be positive")
	}
	if err := c.Replay.validate(); err != nil {
		return err
	}
	if err := config.CheckLog(c.LogLevel, c.LogFormat); err != nil {
		return err
	}
	for _, o := range c.AllowedOrigins {
		if o == "*" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || u.Scheme == "" || u.Host == "" || u.Path != "" {
			return fmt.Errorf("BROADCASTER_ALLOWED_ORIGINS: %q is not scheme://host[:port]", o)
		}
	}
	return nil
}

// String is the effective configuration with secrets masked, for the log.
func (c Config) String() string {
	c = c.withDefaults()
	origins := "same-origin"
	if len(c.AllowedOrigins) > 0 {
		origins = strings.Join(c.AllowedOrigins, ",")
	}
	return fmt.Sprintf("NATS_URL=%s HTTP_ADDR=%s LOG_LEVEL=%s LOG_FORMAT=%s"+
		" BROADCASTER_COOKIE_NAME=%s BROADCASTER_ALLOWED_ORIGINS=%s BROADCASTER_AUTH_TIMEOUT=%s BROADCASTER_REAUTH_INTERVAL=%s"+
		" BROADCASTER_HANDSHAKE_RATE=%g BROADCASTER_HANDSHAKE_BURST=%d BROADCASTER_MAX_PENDING_HANDSHAKES=%d BROADCASTER_TRUST_PROXY=%t"+
		" BROADCASTER_MAX_CONNS_PER_USER=%d BROADCASTER_MAX_SUBSCRIPTIONS=%d BROADCASTER_MSG_RATE=%g BROADCASTER_MSG_BURST=%d"+
		" BROADCASTER_CONTROL_QUEUE=%d BROADCASTER_FRAME_MAX_POSITIONS=%d BROADCASTER_FRAME_MAX_BYTES=%d BROADCASTER_SOCKET_SEND_BUFFER=%d BROADCASTER_SOCKET_NOTSENT_LOWAT=%d BROADCASTER_TOPIC_FRAME_RATE=%d BROADCASTER_WRITERS=%d"+
		" BROADCASTER_PING_PERIOD=%s BROADCASTER_PONG_WAIT=%s BROADCASTER_WRITE_WAIT=%s BROADCASTER_SNAPSHOT_TIMEOUT=%s BROADCASTER_SHUTDOWN_TIMEOUT=%s",
		contract.RedactURLs(c.NATSURL), c.HTTPAddr, c.LogLevel, c.LogFormat,
		c.CookieName, origins, c.AuthTimeout, c.ReauthInterval,
		c.HandshakeRate, c.HandshakeBurst, c.MaxPendingHandshakes, c.TrustProxy,
		c.MaxConnsPerUser, c.MaxSubscriptions, c.MsgRate, c.MsgBurst,
		c.ControlQueue, c.FrameMaxPositions, c.FrameMaxBytes, c.SocketSendBuffer, c.SocketNotsentLowat, c.TopicFrameRate, c.Writers,
		c.PingPeriod, c.PongWait, c.WriteWait, c.SnapshotTimeout, c.ShutdownTimeout) + " " + c.Replay.String()
}

// NewLogger returns the logger LOG_LEVEL and LOG_FORMAT describe, writing
// to w.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	return config.NewLogger(w, c.LogLevel, c.LogFormat)
}
