// Package broadcaster is the WebSocket server at /ws-live: it streams live
// positions of events from NATS to authenticated browsers, following
// WebSocket contract v1 of the design (trm-live/contract/ws).
//
// Per instance there is one core NATS subscription per event with
// viewers (hub.go), a snapshot from the POSITIONS stream on subscribe
// (snapshot.go), and per connection a mailbox that keeps the latest pending
// position of every device and a never-dropped control queue (mailbox.go).
// Authentication and authorization go through authsvc (auth.go).
//
// Ownership: a session's read goroutine (melody's readPump) runs
// client.handle; a pool of writer goroutines builds frames from mailboxes;
// each topic's NATS subscription goroutine fans out to mailboxes; the
// re-authorization loop revokes subscriptions. Locks, outermost first:
// server.mu, client.mu, hub.mu, mailbox.mu; topic.devMu and writers.mu are
// leaves.
package broadcaster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/olahol/melody"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"trm-live/contract/auth"
	"trm-live/contract/buildinfo"
	"trm-live/contract/natsconn"
	"trm-live/contract/streams"
	"trm-live/contract/ws"
)

// Run serves until ctx ends, then closes every client with 1001 and
// returns nil. It returns an error only for bad settings or a listener
// that cannot be opened. NATS, the stream or authsvc being down is not an
// error: the broadcaster waits, reports not ready, and retries.
func Run(ctx context.Context, cfg Config) error {
	srv, err := newServer(cfg)
	if err != nil {
		return err
	}
	return srv.run(ctx)
}

// server is one running broadcaster.
type server struct {
	cfg      Config
	log      *slog.Logger
	m        *metrics
	gatherer prometheus.Gatherer
	ln       net.Listener
	nc       *nats.Conn
	js       jetstream.JetStream
	hub      *hub
	auth     *authorizer
	gate     *handshakeGate
	w        *writers
	mel      *melody.Melody

	replays       replayLimits // replay.go
	replayMetrics *replayMetrics

	streamReady atomic.Bool
	base        context.Context // ends when shutdown starts
	cancelBase  context.CancelFunc
	bg          sync.WaitGroup // background work started by NATS callbacks

	mu       sync.Mutex
	clients  map[*client]struct{}
	perUser  map[string]int
	shutting bool
	handlers sync.WaitGroup // /ws-live handlers in flight (each holds a session)
}

// sendBufferListener sets the kernel send buffer and the unsent-bytes
// mark of every accepted TCP connection (0 = leave as is): what sits
// unsent there cannot be coalesced any more.
type sendBufferListener struct {
	net.Listener
	size, notsentLowat int
}

func (l sendBufferListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		if l.size > 0 {
			_ = tc.SetWriteBuffer(l.size)
		}
		if l.notsentLowat > 0 {
			_ = setNotsentLowat(tc, l.notsentLowat)
		}
	}
	return c, err
}

type reject struct {
	code   int
	reason string
}

func newServer(cfg Config) (*server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	srv := &server{
		cfg:     cfg,
		log:     cfg.Logger,
		clients: make(map[*client]struct{}),
		perUser: make(map[string]int),
	}
	if srv.log == nil {
		srv.log = slog.New(slog.DiscardHandler)
	}
	srv.log = srv.log.With("component", "broadcaster")
	reg := cfg.Registerer
	srv.gatherer = cfg.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, srv.gatherer = r, r
	}
	if srv.gatherer == nil {
		if g, ok := reg.(prometheus.Gatherer); ok {
			srv.gatherer = g
		} else {
			srv.gatherer = prometheus.NewRegistry()
		}
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	if err := buildinfo.Register(reg, cfg.Version, cfg.Revision); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	srv.m = m
	if srv.replayMetrics, err = newReplayMetrics(reg); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	srv.base, srv.cancelBase = context.WithCancel(context.Background())

	ln := cfg.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return nil, fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
		}
	}
	srv.ln = ln
	if cfg.SocketSendBuffer > 0 || cfg.SocketNotsentLowat > 0 {
		srv.ln = sendBufferListener{ln, max(cfg.SocketSendBuffer, 0), max(cfg.SocketNotsentLowat, 0)}
	}

	// Its own inbox also keeps authsvc's answers to it from other workers.
	opts := natsconn.Options("broadcaster", "broadcaster", 500*time.Millisecond, srv.log, natsconn.Hooks{
		Reconnected: func() {
			gen := srv.hub.resyncGen.Add(1)
			srv.bg.Go(func() { srv.hub.resync(srv.base, gen) })
		},
	})
	nc, err := nats.Connect(cfg.NATSURL, append(opts,
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) {
				srv.m.natsDropped.Inc()
			}
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			srv.log.Warn("nats async error", "subject", subj, "err", err)
		}))...)
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("nats connect: %w", err)
	}
	srv.nc = nc
	if srv.js, err = jetstream.New(nc); err != nil {
		nc.Close()
		_ = ln.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	snap := &snapshotter{nc: nc, js: srv.js, timeout: cfg.SnapshotTimeout, m: m}
	srv.hub = newHub(nc, snap, m, srv.log, cfg)
	srv.auth = newAuthorizer(auth.NewClient(nc, cfg.AuthTimeout), m)
	srv.gate = newHandshakeGate(cfg.HandshakeRate, cfg.HandshakeBurst, cfg.MaxPendingHandshakes)
	srv.w = newWriters(cfg.FrameMaxPositions, cfg.FrameMaxBytes, m)
	srv.mel = srv.newMelody()
	return srv, nil
}

func (srv *server) newMelody() *melody.Melody {
	mel := melody.New()
	mel.Config.MaxMessageSize = ws.MaxClientMessage
	mel.Config.PingPeriod = srv.cfg.PingPeriod
	mel.Config.PongWait = srv.cfg.PongWait
	mel.Config.WriteWait = srv.cfg.WriteWait
	mel.Config.MessageBufferSize = credits + 1 // the extra slot is the close's
	// Buffer sizes 0 and no pool: gorilla reuses the 4 KiB reader and
	// writer net/http already allocated for the connection (which stay
	// referenced anyway), so a connection costs no further buffer, idle or
	// busy. Larger frames go out with one writev (gorilla's fast path).
	mel.Upgrader.ReadBufferSize = 0
	mel.Upgrader.WriteBufferSize = 0
	mel.Upgrader.CheckOrigin = func(r *http.Request) bool { return originAllowed(r, srv.cfg.AllowedOrigins, srv.cfg.TrustProxy) }

	mel.HandleConnect(srv.onConnect)
	mel.HandleDisconnect(srv.onDisconnect)
	mel.HandleMessage(func(s *melody.Session, data []byte) {
		if c := clientOf(s); c != nil {
			c.handle(data)
		}
	})
	mel.HandleMessageBinary(func(s *melody.Session, _ []byte) {
		if c := clientOf(s); c != nil {
			c.handle(nil) // counts against the rate, answered bad_request
		}
	})
	mel.HandleSentMessage(func(s *melody.Session, msg []byte) {
		if mb := mailboxOf(s); mb != nil {
			mb.sent()
		}
		putBuf(msg)
	})
	mel.HandleError(func(s *melody.Session, err error) {
		if errors.Is(err, websocket.ErrReadLimit) {
			srv.m.closes.WithLabelValues(strconv.Itoa(ws.CloseMessageTooBig)).Inc()
			return
		}
		if errors.Is(err, melody.ErrMessageBufferFull) {
			// Cannot happen while every write goes through the mailbox.
			srv.log.Error("melody buffer full: credit accounting broken")
		}
	})
	return mel
}

func clientOf(s *melody.Session) *client {
	v, _ := s.Get("client")
	c, _ := v.(*client)
	return c
}

func mailboxOf(s *melody.Session) *mailbox {
	v, _ := s.Get("mb")
	mb, _ := v.(*mailbox)
	return mb
}

// serveWS checks the Origin, the handshake limits and the credential's
// shape before asking authsvc, then hands the connection to melody.
// Failures the browser must see (4401, 1013, 1008) are sent as close codes
// after the upgrade; the limits answer HTTP 429 without upgrading.
func (srv *server) serveWS(w http.ResponseWriter, r *http.Request) {
	if !originAllowed(r, srv.cfg.AllowedOrigins, srv.cfg.TrustProxy) {
		srv.m.connectionsTotal.WithLabelValues("forbidden_origin").Inc()
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		http.Error(w, "websocket upgrade required", http.StatusBadRequest)
		return
	}
	srv.mu.Lock()
	if srv.shutting {
		srv.mu.Unlock()
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	srv.handlers.Add(1)
	srv.mu.Unlock()
	defer srv.handlers.Done()

	ip := clientIP(r, srv.cfg.TrustProxy)
	if !srv.gate.take(ip) {
		srv.m.connectionsTotal.WithLabelValues("rate_limited").Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many refused handshakes from this address", http.StatusTooManyRequests)
		return
	}
	keys := map[string]any{}
	cred := auth.CredentialFromRequest(r, srv.cfg.CookieName)
	var user auth.User
	var err error
	switch {
	case !cred.Plausible():
		// Cannot be a Directus credential: refused without a look-up.
		err = auth.ErrUnauthorized
	case !srv.gate.enter():
		srv.gate.refund(ip)
		srv.m.connectionsTotal.WithLabelValues("overloaded").Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many handshakes in progress", http.StatusTooManyRequests)
		return
	default:
		// Not derived from r.Context(): a child would leave a children map on
		// the request's context for the connection's lifetime (~1 KiB each).
		ctx, cancel := context.WithTimeout(srv.base, srv.cfg.AuthTimeout)
		user, err = srv.auth.session(ctx, cred)
		cancel()
		srv.gate.leave()
	}
	var c *client
	switch {
	case errors.Is(err, auth.ErrUnauthorized), errors.Is(err, auth.ErrBadRequest):
		srv.m.connectionsTotal.WithLabelValues("unauthorized").Inc()
		keys["reject"] = reject{ws.CloseUnauthorized, "unauthorized"}
	case err != nil:
		srv.gate.refund(ip)
		srv.m.connectionsTotal.WithLabelValues("auth_unavailable").Inc()
		srv.log.Warn("session lookup", "err", err)
		keys["reject"] = reject{ws.CloseTryAgainLater, "authentication unavailable, try again later"}
	default:
		srv.gate.refund(ip)
		srv.mu.Lock()
		if srv.perUser[user.ID] >= srv.cfg.MaxConnsPerUser {
			srv.mu.Unlock()
			srv.m.connectionsTotal.WithLabelValues("too_many_connections").Inc()
			keys["reject"] = reject{ws.ClosePolicyViolation, "too many connections for this user"}
			break
		}
		srv.perUser[user.ID]++
		srv.mu.Unlock()
		c = &client{srv: srv, user: user, cur: user, cred: cred, subs: make(map[string]*subscription)}
		keys["client"] = c
		defer srv.releaseUser(user.ID)
	}
	if err := srv.mel.HandleRequestWithKeys(w, r, keys); err != nil {
		srv.log.Debug("upgrade", "err", err)
	}
}

func (srv *server) releaseUser(id string) {
	srv.mu.Lock()
	if srv.perUser[id]--; srv.perUser[id] <= 0 {
		delete(srv.perUser, id)
	}
	srv.mu.Unlock()
}

func (srv *server) onConnect(s *melody.Session) {
	mb := newMailbox(s, srv.w, srv.cfg.ControlQueue)
	s.Set("mb", mb)
	if v, ok := s.Get("reject"); ok {
		rj := v.(reject)
		srv.m.closes.WithLabelValues(strconv.Itoa(rj.code)).Inc()
		mb.close(rj.code, rj.reason)
		return
	}
	c := clientOf(s)
	c.s, c.mb = s, mb
	srv.mu.Lock()
	shutting := srv.shutting
	if !shutting {
		srv.clients[c] = struct{}{}
	}
	srv.mu.Unlock()
	if shutting {
		srv.closeClient(c, ws.CloseGoingAway, "server shutting down")
		return
	}
	srv.m.connections.Inc()
	srv.m.connectionsTotal.WithLabelValues("accepted").Inc()
	srv.log.Debug("connection opened", "user_id", c.user.ID)
}

func (srv *server) onDisconnect(s *melody.Session) {
	c := clientOf(s)
	if c == nil || c.mb == nil {
		if mb := mailboxOf(s); mb != nil {
			mb.shut()
		}
		return
	}
	c.cleanup()
	srv.mu.Lock()
	_, ok := srv.clients[c]
	delete(srv.clients, c)
	srv.mu.Unlock()
	if ok {
		srv.m.connections.Dec()
	}
	srv.log.Debug("connection closed", "user_id", c.user.ID)
}

// closeClient closes a client's session with code once its queued control
// frames are out.
func (srv *server) closeClient(c *client, code int, reason string) {
	if c.mb.closeAfterControl(code, reason) {
		srv.m.closes.WithLabelValues(strconv.Itoa(code)).Inc()
	}
}

// The HTTP server's bounds: an idle keep-alive connection (/metrics,
// /readyz pollers; a WebSocket is hijacked and not concerned) is closed
// after httpIdleTimeout, and request headers over httpMaxHeaderBytes get
// 431 (a Directus session cookie is about 400 bytes).
const (
	httpIdleTimeout    = 2 * time.Minute
	httpMaxHeaderBytes = 32 << 10
)

// newHTTPServer is the server of /ws-live, /healthz, /readyz and /metrics,
// with the bounds above.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout: httpIdleTimeout, MaxHeaderBytes: httpMaxHeaderBytes}
}

func (srv *server) run(ctx context.Context) error {
	srv.log.Info("starting", "addr", srv.ln.Addr().String(), "config", srv.cfg.String())
	var writers sync.WaitGroup
	for range srv.cfg.Writers {
		writers.Go(srv.w.run)
	}
	httpSrv := newHTTPServer(srv.mux())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := httpSrv.Serve(srv.ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http serve: %w", err)
		}
		return nil
	})
	g.Go(func() error { srv.watchStream(gctx); return nil })
	g.Go(func() error { srv.reauthLoop(gctx); return nil })
	g.Go(func() error { srv.pruneGate(gctx); return nil })
	g.Go(func() error {
		<-gctx.Done()
		srv.shutdown(httpSrv)
		return nil
	})
	err := g.Wait()
	srv.w.stop()
	writers.Wait()
	srv.bg.Wait()
	srv.hub.close()
	srv.drainNATS()
	_ = srv.mel.Close()
	srv.log.Info("stopped")
	return err
}

// shutdown stops accepting, closes every client with 1001 and waits for
// their sessions to end, at most ShutdownTimeout.
func (srv *server) shutdown(httpSrv *http.Server) {
	deadline := time.Now().Add(srv.cfg.ShutdownTimeout)
	srv.cancelBase()
	srv.mu.Lock()
	srv.shutting = true
	clients := make([]*client, 0, len(srv.clients))
	for c := range srv.clients {
		clients = append(clients, c)
	}
	srv.mu.Unlock()
	srv.log.Info("shutting down", "clients", len(clients))
	sctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	_ = httpSrv.Shutdown(sctx) // closes the listener; hijacked sessions are ours
	for _, c := range clients {
		srv.closeClient(c, ws.CloseGoingAway, "server shutting down")
	}
	done := make(chan struct{})
	go func() { srv.handlers.Wait(); close(done) }()
	select {
	case <-done:
	case <-sctx.Done():
		srv.log.Warn("shutdown timeout: sessions still open", "sessions", srv.mel.Len())
		_ = httpSrv.Close()
	}
}

func (srv *server) drainNATS() {
	closed := make(chan struct{})
	srv.nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := srv.nc.Drain(); err != nil {
		srv.nc.Close()
		return
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		srv.nc.Close()
	}
}

// watchStream waits for the POSITIONS stream (the bridge creates it) and
// keeps the readiness flag current.
func (srv *server) watchStream(ctx context.Context) {
	wait := 250 * time.Millisecond
	logged := false
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := srv.js.Stream(cctx, streams.Positions)
		cancel()
		ok := err == nil
		if ok != srv.streamReady.Load() || !ok && !logged {
			if ok {
				srv.log.Info("stream found", "stream", streams.Positions)
			} else if ctx.Err() == nil {
				srv.log.Warn("waiting for stream (the bridge creates it)", "stream", streams.Positions, "err", err)
			}
			logged = true
		}
		srv.streamReady.Store(ok)
		if ok {
			wait = 15 * time.Second
		} else {
			wait = min(2*wait, 5*time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// pruneGate forgets the handshake buckets that have refilled, every 10 s.
func (srv *server) pruneGate(ctx context.Context) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			srv.gate.prune()
		}
	}
}

// reauthLoop re-validates every connection's session, then re-checks
// every live (user, admin flag, event), each interval. An unavailable
// authsvc ends nothing: an outage is not a verdict.
func (srv *server) reauthLoop(ctx context.Context) {
	t := time.NewTicker(srv.cfg.ReauthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		srv.reauthorize(ctx)
	}
}

// reauthorize is one re-authorization pass.
//
//  1. Every distinct credential of the open connections is resolved again
//     through authsvc (which may answer from its session cache). Refused:
//     each of its connections is closed with 4401. A changed admin flag
//     (or role) is applied to the connection.
//  2. Every live subscription's (user, admin flag, event) is decided
//     again, bypassing the broadcaster's decision cache; a refusal ends the
//     subscription with an error frame for its topic (no id): forbidden or
//     not_found. A subscription that stood only on the admin flag just
//     withdrawn is therefore checked as a member's and ended if the user
//     is not one.
func (srv *server) reauthorize(ctx context.Context) {
	srv.mu.Lock()
	clients := make([]*client, 0, len(srv.clients))
	for c := range srv.clients {
		clients = append(clients, c)
	}
	srv.mu.Unlock()

	var g errgroup.Group
	g.SetLimit(8)
	var failed atomic.Int64

	// 1. Sessions.
	byCred := make(map[auth.SessionRequest][]*client)
	for _, c := range clients {
		byCred[c.cred] = append(byCred[c.cred], c)
	}
	var mu sync.Mutex
	ended := make(map[*client]bool)
	demoted := make(map[*client]bool)
	for cred, cs := range byCred {
		g.Go(func() error {
			u, err := srv.auth.session(ctx, cred)
			switch {
			case errors.Is(err, auth.ErrUnauthorized), errors.Is(err, auth.ErrBadRequest):
				mu.Lock()
				for _, c := range cs {
					ended[c] = true
				}
				mu.Unlock()
				for _, c := range cs {
					srv.closeClient(c, ws.CloseUnauthorized, "session ended")
				}
				srv.log.Info("session ended", "user_id", cs[0].user.ID, "connections", len(cs))
				return nil
			case err != nil:
				failed.Add(1)
				return nil
			}
			for _, c := range cs {
				if u.ID != c.user.ID {
					// Cannot happen with Directus; never serve another user.
					mu.Lock()
					ended[c] = true
					mu.Unlock()
					srv.closeClient(c, ws.CloseUnauthorized, "session ended")
					continue
				}
				if prev := c.setIdentity(u); prev.Admin != u.Admin {
					srv.log.Info("admin flag changed", "user_id", u.ID, "admin", u.Admin)
					if prev.Admin {
						mu.Lock()
						demoted[c] = true
						mu.Unlock()
					}
				}
			}
			return nil
		})
	}
	_ = g.Wait()

	// 2. Live subscriptions.
	who := make(map[decisionKey][]*client)
	users := make(map[decisionKey]auth.User)
	for _, c := range clients {
		if ended[c] {
			continue
		}
		u := c.identity()
		for _, ev := range c.liveEvents() {
			k := decisionKey{user: u.ID, event: ev, admin: u.Admin}
			who[k] = append(who[k], c)
			users[k] = u
		}
	}
	for k, cs := range who {
		g.Go(func() error {
			d, err := srv.auth.authorize(ctx, users[k], k.event)
			if err != nil {
				failed.Add(1)
				return nil
			}
			if d == auth.Allowed {
				return nil
			}
			for _, c := range cs {
				code, msg := ws.CodeForbidden, "membership removed; subscription ended"
				switch {
				case d == auth.NotFound:
					code, msg = ws.CodeNotFound, "event no longer exists; subscription ended"
				case demoted[c]:
					msg = "admin access withdrawn and not a member of the event's organization; subscription ended"
				}
				c.revoke(ws.EventTopic(k.event), code, msg)
			}
			srv.log.Info("subscription revoked", "user_id", k.user, "event_id", k.event, "admin", k.admin, "decision", string(d), "connections", len(cs))
			return nil
		})
	}
	_ = g.Wait()
	if n := failed.Load(); n > 0 {
		srv.log.Warn("re-authorization incomplete: authsvc unavailable", "lookups", n)
	}
}
