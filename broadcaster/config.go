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
	"strconv"
	"strings"
	"time"

	"trm-live/contract"

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

func (c Config) withDefaults() Config {
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.NATSURL, "nats://127.0.0.1:4222")
	def(&c.HTTPAddr, ":8080")
	def(&c.LogLevel, "info")
	def(&c.LogFormat, "text")
	def(&c.CookieName, "directus_session_token")
	defDur(&c.AuthTimeout, 3*time.Second)
	defDur(&c.ReauthInterval, time.Minute)
	if c.HandshakeRate == 0 {
		c.HandshakeRate = 5
	}
	defInt(&c.HandshakeBurst, 100)
	defInt(&c.MaxPendingHandshakes, 1024)
	defInt(&c.MaxConnsPerUser, 20)
	defInt(&c.MaxSubscriptions, 10)
	if c.MsgRate == 0 {
		c.MsgRate = 10
	}
	defInt(&c.MsgBurst, 20)
	defInt(&c.ControlQueue, 64)
	defInt(&c.FrameMaxPositions, 500)
	defInt(&c.FrameMaxBytes, 32<<10)
	defInt(&c.Writers, 2*runtime.GOMAXPROCS(0))
	defInt(&c.SocketSendBuffer, 128<<10)
	defInt(&c.SocketNotsentLowat, 16<<10)
	defDur(&c.PingPeriod, 30*time.Second)
	defDur(&c.PongWait, 60*time.Second)
	defDur(&c.WriteWait, 10*time.Second)
	defDur(&c.SnapshotTimeout, 5*time.Second)
	defDur(&c.ShutdownTimeout, 10*time.Second)
	c.Replay = c.Replay.withDefaults()
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
	case !validCookieName(c.CookieName):
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
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("LOG_FORMAT %q: must be text or json", c.LogFormat)
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

func validCookieName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune("()<>@,;:\\\"/[]?={}", c) {
			return false
		}
	}
	return true
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("LOG_LEVEL %q: must be debug, info, warn or error", s)
	}
	return l, nil
}

// NewLogger returns the logger LOG_LEVEL and LOG_FORMAT describe, writing
// to w.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	c = c.withDefaults()
	level, err := parseLevel(c.LogLevel)
	if err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
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

// LoadConfig reads the settings from args (flags) and getenv (environment);
// a flag wins over its variable. It validates the result.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("broadcaster", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var errs []error
	str := func(p *string, name, env, usage string) {
		fs.StringVar(p, name, getenv(env), usage+" ("+env+")")
	}
	dur := func(p *time.Duration, name, env, usage string) {
		var d time.Duration
		if v := getenv(env); v != "" {
			var err error
			if d, err = time.ParseDuration(v); err != nil {
				errs = append(errs, fmt.Errorf("%s %q: %v", env, v, err))
			}
		}
		fs.DurationVar(p, name, d, usage+" ("+env+")")
	}
	num := func(p *int, name, env, usage string) {
		var n int
		if v := getenv(env); v != "" {
			var err error
			if n, err = strconv.Atoi(v); err != nil {
				errs = append(errs, fmt.Errorf("%s %q: not an integer", env, v))
			}
		}
		fs.IntVar(p, name, n, usage+" ("+env+")")
	}
	float := func(p *float64, name, env, usage string) {
		var f float64
		if v := getenv(env); v != "" {
			var err error
			if f, err = strconv.ParseFloat(v, 64); err != nil {
				errs = append(errs, fmt.Errorf("%s %q: not a number", env, v))
			}
		}
		fs.Float64Var(p, name, f, usage+" ("+env+")")
	}
	boolean := func(p *bool, name, env, usage string) {
		var b bool
		if v := getenv(env); v != "" {
			var err error
			if b, err = strconv.ParseBool(v); err != nil {
				errs = append(errs, fmt.Errorf("%s %q: not true or false", env, v))
			}
		}
		fs.BoolVar(p, name, b, usage+" ("+env+")")
	}
	var origins string
	str(&c.NATSURL, "nats-url", "NATS_URL", "NATS server URL")
	str(&c.HTTPAddr, "http-addr", "HTTP_ADDR", "listen address for /ws-live, /healthz, /readyz, /metrics")
	str(&c.LogLevel, "log-level", "LOG_LEVEL", "debug, info, warn or error")
	str(&c.LogFormat, "log-format", "LOG_FORMAT", "text or json")
	str(&c.CookieName, "cookie-name", "BROADCASTER_COOKIE_NAME", "session cookie name")
	str(&origins, "allowed-origins", "BROADCASTER_ALLOWED_ORIGINS", "comma-separated allowed Origins; empty = same-origin")
	dur(&c.AuthTimeout, "auth-timeout", "BROADCASTER_AUTH_TIMEOUT", "timeout of one authsvc request")
	dur(&c.ReauthInterval, "reauth-interval", "BROADCASTER_REAUTH_INTERVAL", "re-authorization interval of live subscriptions")
	num(&c.MaxConnsPerUser, "max-conns-per-user", "BROADCASTER_MAX_CONNS_PER_USER", "connections per user")
	num(&c.MaxSubscriptions, "max-subscriptions", "BROADCASTER_MAX_SUBSCRIPTIONS", "subscriptions per connection")
	float(&c.HandshakeRate, "handshake-rate", "BROADCASTER_HANDSHAKE_RATE", "refused handshakes per second per client address; -1 = no limit")
	num(&c.HandshakeBurst, "handshake-burst", "BROADCASTER_HANDSHAKE_BURST", "refused handshakes burst (and handshakes in flight) per client address")
	num(&c.MaxPendingHandshakes, "max-pending-handshakes", "BROADCASTER_MAX_PENDING_HANDSHAKES", "handshakes waiting for authsvc at once, all addresses")
	boolean(&c.TrustProxy, "trust-proxy", "BROADCASTER_TRUST_PROXY", "take the client address and scheme from X-Forwarded-For and X-Forwarded-Proto")
	float(&c.MsgRate, "msg-rate", "BROADCASTER_MSG_RATE", "client messages per second per connection")
	num(&c.MsgBurst, "msg-burst", "BROADCASTER_MSG_BURST", "client message burst per connection")
	num(&c.ControlQueue, "control-queue", "BROADCASTER_CONTROL_QUEUE", "control frames queued per client before it is closed")
	num(&c.FrameMaxPositions, "frame-max-positions", "BROADCASTER_FRAME_MAX_POSITIONS", "positions per frame")
	num(&c.FrameMaxBytes, "frame-max-bytes", "BROADCASTER_FRAME_MAX_BYTES", "bytes per positions frame")
	num(&c.SocketSendBuffer, "socket-send-buffer", "BROADCASTER_SOCKET_SEND_BUFFER", "kernel send buffer per connection in bytes; -1 = system default")
	num(&c.SocketNotsentLowat, "socket-notsent-lowat", "BROADCASTER_SOCKET_NOTSENT_LOWAT", "unsent bytes the kernel holds per connection (TCP_NOTSENT_LOWAT); -1 = system default")
	num(&c.TopicFrameRate, "topic-frame-rate", "BROADCASTER_TOPIC_FRAME_RATE", "frames per second a topic's fan-out paces itself to over all its clients; 0 = no pacing")
	num(&c.Writers, "writers", "BROADCASTER_WRITERS", "frame-building goroutines")
	dur(&c.PingPeriod, "ping-period", "BROADCASTER_PING_PERIOD", "WebSocket ping period")
	dur(&c.PongWait, "pong-wait", "BROADCASTER_PONG_WAIT", "close after this long without a pong")
	dur(&c.WriteWait, "write-wait", "BROADCASTER_WRITE_WAIT", "timeout of one WebSocket write")
	dur(&c.SnapshotTimeout, "snapshot-timeout", "BROADCASTER_SNAPSHOT_TIMEOUT", "timeout of one JetStream snapshot")
	dur(&c.ShutdownTimeout, "shutdown-timeout", "BROADCASTER_SHUTDOWN_TIMEOUT", "hard deadline of the shutdown")
	c.Replay.register(fs, getenv, &errs)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	for _, o := range strings.Split(origins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			c.AllowedOrigins = append(c.AllowedOrigins, strings.TrimSuffix(o, "/"))
		}
	}
	c = c.withDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}
