// Package persister writes every position of the JetStream stream POSITIONS
// into the PostgreSQL/TimescaleDB table positions, idempotently, and owns
// that table's schema (subpackage migrate).
//
// One durable pull consumer ("persister") is shared by every instance.
// Batches are written in one transaction each (COPY into a staging table,
// then INSERT … ON CONFLICT (device_id, ts) DO NOTHING) and acknowledged
// only after the commit. Undecodable messages are dead-lettered; a database
// that is down or erroring gets the messages handed back with a growing
// delay. The schema is verified at start, periodically and whenever an
// insert meets a missing table or column; drift is repaired, and a
// re-created table is refilled from the stream.
package persister

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"trm-live/contract/buildinfo"
	"trm-live/contract/natsconn"
	"trm-live/contract/probe"
	"trm-live/persister/migrate"
)

// Worker is the value of the Trm-Worker header of this worker's dead letters.
const Worker = "persister"

// persister is one running instance. The atomics are written by the
// goroutine that learns the state (writers for db, the schema paths for
// schema, the consume loop for consumer) and read by /readyz.
type persister struct {
	cfg  Config
	log  *slog.Logger
	m    *metrics
	nc   *nats.Conn
	js   jetstream.JetStream
	pool *pgxpool.Pool
	mig  *migrate.Migrator
	w    *writer

	dbOK, schemaOK, consumerOK atomic.Bool
	// writeFailing is true from a transient write failure to the next
	// successful write: a database that answers pings but refuses writes
	// (disk full, revoked grant) is not ready either.
	writeFailing  atomic.Bool
	writeFailures atomic.Int64 // consecutive transient write failures, for the writers' backoff

	// heldBack is set while the schema fails in a way a person must fix
	// (fatalSchema): writers hand batches back instead of writing into a
	// table that may lose them. It holds the error for /readyz; nil when
	// writes may go on. Cleared by a clean verification.
	heldBack atomic.Pointer[string]

	repairMu  sync.Mutex   // one repair at a time in this process
	schemaGen atomic.Int64 // bumped after each Apply; a writer repairs only if none ran since it wrote

	dlLog, dlFailLog limiter // dead-letter log lines, at most one a second each

	runCtx       context.Context // parent of refills
	refillMu     sync.Mutex      // guards refillCancel
	refillCancel context.CancelFunc
	refillWG     sync.WaitGroup
	refilling    atomic.Int32 // refills running; none: a pending marker is picked up
}

// Run persists positions until ctx ends, then finishes the batches in hand
// and returns nil. It returns an error for bad configuration, for a schema
// it must not touch (a changed migration, drift it cannot repair, a missing
// TimescaleDB that is required) and when the HTTP address cannot be bound.
// Unreachable NATS or PostgreSQL are waited for, not errors.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	reg, gatherer := cfg.Registerer, prometheus.Gatherer(nil)
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, gatherer = r, r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		gatherer = g
	}
	m, err := newMetrics(reg)
	if err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}
	if err := buildinfo.Register(reg, cfg.Version, cfg.Revision); err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}

	ln := cfg.Listener
	if ln == nil && cfg.HTTPAddr != "" {
		if ln, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
		}
	}
	p, err := open(ctx, cfg, m)
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return err
	}
	defer p.close()

	g, gctx := errgroup.WithContext(ctx)
	if ln != nil {
		srv := probe.Server(p.handler(gatherer))
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("http: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	}
	g.Go(func() error { return p.run(gctx) })
	err = g.Wait()
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// open connects NATS (retrying in the background when it is down) and
// creates the database pool (lazy: nothing is dialled yet).
func open(ctx context.Context, cfg Config, m *metrics) (*persister, error) {
	log := cfg.Logger.With("component", "persister")
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	// Each writer holds one connection for a batch; refill, verification
	// and the migration lock need their own.
	if need := int32(cfg.Writers + 3); pcfg.MaxConns < need {
		pcfg.MaxConns = need
	}
	// Named sessions: the migration lock's waiters log who holds it.
	if _, ok := pcfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		pcfg.ConnConfig.RuntimeParams["application_name"] = "trm-live persister"
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("database pool: %w", err)
	}
	nc, err := nats.Connect(cfg.NATSURL, natsconn.Options("trm-live persister", "persister", time.Second, log, natsconn.Hooks{})...)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("nats connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		pool.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	mig := migrate.New(pool, migrate.Options{
		RequireTimescaleDB: cfg.RequireTimescaleDB,
		ChunkInterval:      cfg.ChunkInterval,
		Logger:             cfg.Logger.With("component", "migrate"),
	})
	w := &writer{pool: pool, path: cfg.WritePath, fallbacks: m.copyFallbacks, retries: m.writeRetries}
	return &persister{cfg: cfg, log: log, m: m, nc: nc, js: js, pool: pool, mig: mig, w: w, runCtx: ctx}, nil
}

// close runs after intake stopped and in-flight batches finished: database
// first, then NATS, drained so pending acks reach the server.
func (p *persister) close() {
	p.pool.Close()
	if err := p.nc.Drain(); err != nil {
		p.nc.Close()
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for !p.nc.IsClosed() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	p.nc.Close()
}

// run is the worker: schema first, then the verifier, the consumer
// statistics and the consume loop, until ctx ends.
func (p *persister) run(ctx context.Context) error {
	p.runCtx = ctx
	p.log.Info("persister starting", "config", p.cfg.String())
	rep, err := p.applySchema(ctx)
	if err != nil {
		return err
	}
	if !rep.CreatedPositions {
		// A table created earlier whose refill never finished (a crash
		// cut it short) still carries the marker.
		p.refillIfPending(ctx)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.verifyLoop(gctx) })
	g.Go(func() error { return p.statsLoop(gctx) })
	g.Go(func() error { return p.consumeLoop(gctx, rep.CreatedPositions) })
	err = g.Wait()
	p.stopRefill()
	p.refillWG.Wait()
	if ctx.Err() != nil {
		p.log.Info("persister stopped")
		return nil
	}
	return err
}

// fatalSchema reports errors that must stop the worker rather than be
// retried: a person has to act.
func fatalSchema(err error) bool {
	return errors.Is(err, migrate.ErrChecksum) || errors.Is(err, migrate.ErrDrift) || errors.Is(err, migrate.ErrNoTimescaleDB) ||
		errors.Is(err, migrate.ErrUntrusted)
}

// applySchema runs migrations at start, waiting with backoff while the
// database is unreachable.
func (p *persister) applySchema(ctx context.Context) (migrate.Report, error) {
	for attempt := 1; ; attempt++ {
		rep, err := p.mig.Apply(ctx)
		if err == nil {
			p.dbOK.Store(true)
			p.schemaOK.Store(true)
			p.schemaGen.Add(1)
			p.countRepairs(rep)
			if len(rep.Applied) > 0 || len(rep.Repaired) > 0 {
				p.log.Info("schema ready", "applied", len(rep.Applied), "repaired", len(rep.Repaired), "timescaledb", rep.TimescaleDB)
			}
			return rep, nil
		}
		if fatalSchema(err) {
			return rep, fmt.Errorf("schema: %w", err)
		}
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		p.dbOK.Store(false)
		d := backoff(p.cfg.BackoffMin, p.cfg.BackoffMax, attempt)
		if attempt == 1 || attempt%10 == 0 {
			p.log.Warn("database not ready for migrations; retrying", "err", err, "attempt", attempt, "retry_in", d.String())
		}
		if !sleep(ctx, d) {
			return rep, ctx.Err()
		}
	}
}

func (p *persister) countRepairs(rep migrate.Report) {
	for _, pr := range rep.Repaired {
		p.m.repairs.WithLabelValues(pr.Kind).Inc()
	}
}

// repair verifies and repairs the schema after a write met a missing
// object. seenGen is the schema generation read before that write: when
// another goroutine repaired since, there is nothing to do. A repair that
// re-created positions starts a refill.
func (p *persister) repair(ctx context.Context, seenGen int64, why string) error {
	p.repairMu.Lock()
	defer p.repairMu.Unlock()
	if p.schemaGen.Load() != seenGen {
		return nil
	}
	rep, err := p.mig.Apply(ctx)
	if err != nil {
		p.schemaOK.Store(false)
		if fatalSchema(err) {
			msg := err.Error()
			p.heldBack.Store(&msg)
			p.log.Error("schema cannot be repaired: writes are held back until a person fixes it", "err", err, "trigger", why)
		}
		return err
	}
	p.heldBack.Store(nil)
	p.schemaOK.Store(true)
	p.schemaGen.Add(1)
	p.countRepairs(rep)
	if len(rep.Repaired) > 0 {
		p.log.Warn("schema repaired", "trigger", why, "repaired", len(rep.Repaired))
	}
	if rep.CreatedPositions {
		p.startRefill("positions was re-created by a schema repair")
	}
	return nil
}

// verifyLoop verifies the schema every VerifyInterval and repairs drift.
func (p *persister) verifyLoop(ctx context.Context) error {
	t := time.NewTicker(p.cfg.VerifyInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		gen := p.schemaGen.Load()
		problems, err := p.mig.Verify(ctx)
		if err != nil {
			if ctx.Err() == nil {
				p.setDB(false, err)
			}
			continue
		}
		p.setDB(true, nil)
		if len(problems) == 0 {
			p.refillIfPending(ctx)
			if p.heldBack.Swap(nil) != nil {
				p.log.Info("schema verifies clean again: writes resume")
			}
			if !p.schemaOK.Load() {
				// A failed repair left it false; try again now the
				// schema verifies clean (a person fixed it).
				p.schemaOK.Store(true)
			}
			continue
		}
		p.log.Warn("periodic verification found schema drift", "problems", len(problems), "first", problems[0].Detail)
		_ = p.repair(ctx, gen, "periodic verification") //nolint:errcheck // repair logs and flags not-ready itself
	}
}

// setDB records whether the database answers (ping, verification, a
// write) and logs the transitions only.
func (p *persister) setDB(ok bool, err error) {
	if p.dbOK.Swap(ok) == ok {
		return
	}
	if ok {
		p.log.Info("database reachable again")
	} else {
		p.log.Warn("database unreachable: not ready", "err", err)
	}
}

// setWriteFailing records whether writes fail transiently and logs the
// transitions only.
func (p *persister) setWriteFailing(failing bool, err error) {
	if failing {
		p.writeFailures.Add(1)
	} else {
		p.writeFailures.Store(0)
	}
	if p.writeFailing.Swap(failing) == failing {
		return
	}
	if failing {
		p.log.Warn("database writes failing: not ready, batches handed back with backoff", "err", err)
	} else {
		p.log.Info("database writes succeed again")
	}
}

// backoff is min·2^(attempt-1), capped at max.
func backoff(minD, maxD time.Duration, attempt int) time.Duration {
	d := minD
	for i := 1; i < attempt && d < maxD; i++ {
		d *= 2
	}
	return min(d, maxD)
}

// sleep waits d or until ctx ends; false means ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
