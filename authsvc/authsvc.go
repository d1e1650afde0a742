// Package authsvc is the authsvc worker of trm-live: a NATS micro service
// (name "authsvc", queue group shared by every instance) that resolves a
// Directus session cookie or bearer token to a user by asking Directus, and
// decides whether a user may follow an event from the events and
// organization_users tables in PostgreSQL. Answers are cached (sessions
// under a SHA-256 of the credential), identical concurrent look-ups
// collapse into one, and a Directus or database outage answers
// "unavailable", never "unauthorized". The wire contract and the client are
// in trm-live/contract/auth. See docs/authsvc.md.
package authsvc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"trm-live/contract/auth"
	"trm-live/contract/buildinfo"
	"trm-live/contract/natsconn"
	"trm-live/contract/probe"
)

// Run serves authsvc until ctx ends, then shuts down gracefully: stop taking
// requests, answer those in flight, close NATS and the database. It returns
// nil after a clean shutdown. Directus, PostgreSQL or NATS being down at
// start or later is not an error: authsvc keeps running, reports not ready
// and answers "unavailable" where it cannot decide.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger
	if log == nil {
		log = cfg.NewLogger(os.Stderr)
	}
	log = log.With("component", "authsvc")
	log.Info("starting", "config", cfg.String())
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	gatherer, ok := reg.(prometheus.Gatherer)
	if !ok {
		gatherer = prometheus.DefaultGatherer
	}
	m, err := newMetrics(reg)
	if err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}
	if err := buildinfo.Register(reg, cfg.Version, cfg.Revision); err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}

	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return errors.New("DATABASE_URL: cannot parse the DSN")
	}
	// Connections are made lazily: a database down at start is not fatal.
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("database pool: %w", err)
	}
	defer pool.Close()

	ln := cfg.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return fmt.Errorf("listen HTTP_ADDR: %w", err)
		}
	}

	nc, err := nats.Connect(cfg.NATSURL, natsconn.Options("authsvc", "authsvc", time.Second, log, natsconn.Hooks{})...)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("nats connect: %w", err)
	}
	defer nc.Close()

	// Look-ups run on base, which outlives ctx until the handlers finished.
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	s := &service{
		cfg:      cfg,
		log:      log,
		m:        m,
		nc:       nc,
		directus: newDirectus(cfg, m, log),
		members:  &membership{pool: pool, timeout: cfg.DBTimeout, m: m, log: log},
		sessions: newCache[[32]byte, sessionEntry](cfg.CacheSize),
		refused:  newCache[[32]byte, sessionEntry](cfg.FailureCacheSize),
		events:   newCache[eventKey, auth.Decision](cfg.CacheSize),
		base:     base,
	}
	for i, c := range []string{"session", "event"} {
		s.hits[i] = m.cacheHits.WithLabelValues(c)
		s.misses[i] = m.cacheMisses.WithLabelValues(c)
		s.collapsed[i] = m.collapsed.WithLabelValues(c)
	}
	svc, err := s.register()
	if err != nil {
		_ = ln.Close()
		return err
	}
	if nc.IsConnected() {
		// Let the server confirm the subscriptions before saying we serve.
		_ = nc.FlushTimeout(2 * time.Second)
	}
	log.Info("authsvc serving", "http_addr", ln.Addr().String(), "nats_connected", nc.IsConnected(), "instance", svc.Info().ID)

	srv := probe.Server(s.mux(pool, gatherer))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		deadline, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		s.shutdown(deadline, svc)
		cancelBase()
		if err := srv.Shutdown(deadline); err != nil {
			_ = srv.Close()
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return err
	}
	log.Info("authsvc stopped")
	return nil
}

// shutdown stops intake and waits, until deadline, for the requests already
// received to be answered, then closes the NATS connection.
func (s *service) shutdown(deadline context.Context, svc interface{ Stop() error }) {
	if err := svc.Stop(); err != nil {
		s.log.Warn("micro stop", "err", err)
	}
	// micro drains the endpoint subscriptions: messages already delivered
	// still reach the handlers. The drain is over when no subscription is
	// left on the connection.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	// Without a connection nothing more can be delivered, nor drained.
	for s.nc.NumSubscriptions() > 0 && s.nc.IsConnected() {
		select {
		case <-deadline.Done():
			s.log.Warn("shutdown: subscriptions not drained before the deadline")
			goto wait
		case <-tick.C:
		}
	}
wait:
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	default:
		select {
		case <-done:
		case <-deadline.Done():
			s.log.Warn("shutdown: requests still in flight at the deadline")
		}
	}
	if s.nc.IsConnected() {
		_ = s.nc.FlushWithContext(deadline) // the last replies
	}
	s.nc.Close()
}
