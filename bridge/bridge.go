// Package bridge republishes GPS positions from Redis Streams onto NATS
// JetStream: it reads the streams through a consumer group, validates each
// entry with the contract's parser, routes it to its event through the
// event_devices table, publishes it to pos.<event>.<device> with a
// Nats-Msg-Id, and acknowledges the entry in Redis only after JetStream
// acknowledged the publish. Bad entries go to the dead-letter stream.
//
// Run is the one entry point; cmd/bridge is its thin main.
package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"trm-live/contract/buildinfo"
	"trm-live/contract/natsconn"
	"trm-live/contract/streams"
)

// errCrash is returned by Run when a test's crash hook stopped it.
var errCrash = errors.New("bridge: simulated crash")

// bridge is one running bridge. Producers (the reader and the claimer)
// parse, route and publish; the reply handler (onReply) takes each PubAck
// and hands its entry to the acker, which batches XACKs; the completer
// re-sends or dead-letters the publishes that failed or got no reply. sem
// bounds the entries between publish and the acker.
type bridge struct {
	cfg Config
	log *slog.Logger
	m   *metrics
	rdb redis.UniversalClient
	// raw reads XREADGROUP replies unparsed (xread.go) for blocks shorter
	// than rawBlockMax (the connection's read timeout, less a margin: a raw
	// command does not extend it as the typed one does). nil: typed reads.
	raw         rawDoer
	rawBlockMax time.Duration
	rawOff      atomic.Bool // set when a raw reply could not be parsed
	// readGroups are the indexes of the streams read by one XREADGROUP
	// each: all of them on one server, one group per hash slot on a
	// cluster (a command's keys must share a slot there).
	readGroups [][]int
	nc         *nats.Conn
	js         jetstream.JetStream
	// jsLegacy serves the loss check's regular (leader-answered) gets.
	jsLegacy nats.JetStreamContext
	watch    *lossWatch
	router   *router
	denied   *deniedSubjects // publishes the server refused for want of permission
	full     *fullStreams    // streams refusing publishes for a full store

	streamIndex map[string]int
	sem         chan struct{}   // one token per item between publish and XACK hand-off
	open        *atomic.Int64   // items holding a sem token (sem's length, synchronized); bridge_in_flight
	pa          *pubAcks        // publishes awaiting their reply
	produced    chan struct{}   // closed when the producers end
	pipeCtx     context.Context // the pipeline's: the reply handler hands acks over under it
	acks        chan ackRef     // acked by JetStream (or to skip), awaiting XACK
	inflight    *inflightSet    // entries between read and XACK, so a claim skips them
	ackMu       sync.Mutex      // held by an XACK with its in-flight removal, and by a claim with its in-flight check

	ensured chan struct{} // closed once the streams exist
	redisOK atomic.Bool
	// readersFailing counts the stream readers whose last XREADGROUP
	// failed (on a cluster, one shard may be down while the others read).
	readersFailing atomic.Int32
	// fastOff is set once JetStream refused a fast-ingest batch for good
	// (batch mode then publishes asynchronously); fastFailing while fast
	// batches fail, so that a run of failures is logged once.
	fastOff, fastFailing atomic.Bool
	stopping             atomic.Bool
}

// Run runs the bridge until ctx ends, then stops reading, waits for the
// in-flight publishes (at most ShutdownTimeout), acknowledges them in Redis
// and returns nil. Dependencies that are down are retried with backoff.
func Run(ctx context.Context, cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg.Logger = cfg.Logger.With("component", "bridge")
	cfg.Logger.Info("starting", "config", cfg.String())
	reg, gat := cfg.Registerer, cfg.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg = r
		if gat == nil {
			gat = r
		}
	}
	if gat == nil {
		if g, ok := reg.(prometheus.Gatherer); ok {
			gat = g
		} else {
			gat = prometheus.NewRegistry()
		}
	}
	open := new(atomic.Int64)
	m, err := newMetrics(reg, open)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	if err := buildinfo.Register(reg, cfg.Version, cfg.Revision); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}

	ln := cfg.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
		}
	}
	defer ln.Close()

	target, err := parseRedisURL(cfg.RedisURL, cfg.RedisSentinelPassword)
	if err != nil {
		return fmt.Errorf("REDIS_URL: %w", err)
	}
	// No hidden retries: a retried XREADGROUP whose first reply was lost
	// would leave that batch pending unseen. Every call is in a retry
	// loop of ours that knows what to do.
	rdb := target.client()
	defer rdb.Close()

	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	pcfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		return fmt.Errorf("postgres pool: %w", err)
	}
	defer pool.Close()

	log := cfg.Logger
	watch := newLossWatch()
	denied := newDeniedSubjects(log)
	opts := natsconn.Options("trm-bridge "+cfg.Consumer, "bridge", 250*time.Millisecond, log,
		natsconn.Hooks{Disconnected: watch.disconnected, Reconnected: watch.check})
	nc, err := nats.Connect(cfg.NATSURL, append(opts,
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied.record(err) }))...)
	if err != nil {
		return fmt.Errorf("nats connect: %w", err)
	}
	defer nc.Close()
	// js serves the stream set-up and the fast-ingest batches; positions go
	// through the bridge's own PubAck path (pubAcks).
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	jsLegacy, err := nc.JetStream()
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	b := &bridge{
		cfg: cfg, log: log, m: m, open: open, rdb: rdb, nc: nc, js: js, jsLegacy: jsLegacy, watch: watch,
		denied: denied, full: newFullStreams(log, m.streamFull),
		router:      newRouter(pool, log, m, cfg.RoutingRefresh),
		streamIndex: make(map[string]int, len(cfg.Streams)),
		sem:         make(chan struct{}, cfg.MaxInFlight),
		pa:          newPubAcks(nc.NewInbox(), cfg.MaxInFlight),
		produced:    make(chan struct{}),
		acks:        make(chan ackRef, cfg.MaxInFlight),
		inflight:    newInflightSet(len(cfg.Streams)),
		ensured:     make(chan struct{}),
	}
	if d, ok := rdb.(rawDoer); ok && !cfg.TypedReads {
		b.raw, b.rawBlockMax = d, target.rawBlockMax()
	}
	for i, s := range cfg.Streams {
		b.streamIndex[s] = i
	}
	b.readGroups = readGroups(cfg.Streams, target.mode == redisCluster)
	log.Info("redis", "mode", target.mode, "url", redactRedisURL(cfg.RedisURL), "streams", len(cfg.Streams), "reads", len(b.readGroups))
	b.redisOK.Store(true)

	// hard ends ShutdownTimeout after ctx: in-flight work is abandoned then
	// (it stays pending in Redis and is re-delivered).
	hard, cancelHard := context.WithCancel(context.Background())
	defer cancelHard()
	stopHard := context.AfterFunc(ctx, func() {
		b.stopping.Store(true)
		log.Info("stopping: no more reads, waiting for in-flight acks", "timeout", cfg.ShutdownTimeout)
		t := time.AfterFunc(cfg.ShutdownTimeout, cancelHard)
		context.AfterFunc(hard, func() { t.Stop() })
	})
	defer stopHard()

	// Background services live until the pipeline has drained.
	bgCtx, cancelBG := context.WithCancel(context.Background())
	defer cancelBG()
	bg, bgctx := errgroup.WithContext(bgCtx)
	srv := b.httpServer(gat)
	bg.Go(func() error {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, httpErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	bg.Go(func() error {
		<-bgctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	bg.Go(func() error { return b.router.run(bgctx) })
	bg.Go(func() error { b.ensureStreams(bgctx); return nil })
	bg.Go(func() error { b.lagLoop(bgctx); return nil })

	pg, pctx := errgroup.WithContext(hard)
	b.pipeCtx = pctx
	// Every publish's reply comes to one subscription (pubAcks); the
	// completer hears of a dropped connection, whose pending replies are lost.
	status := nc.StatusChanged(nats.RECONNECTING, nats.CLOSED)
	defer nc.RemoveStatusListener(status)
	replies, err := nc.Subscribe(b.pa.subject(), b.onReply)
	if err != nil {
		return fmt.Errorf("nats subscribe %s: %w", b.pa.subject(), err)
	}
	defer replies.Unsubscribe()
	intake, cancelIntake := context.WithCancel(pctx)
	defer cancelIntake()
	context.AfterFunc(ctx, cancelIntake)
	context.AfterFunc(bgctx, cancelIntake) // a failed background service stops the bridge
	pg.Go(func() error {
		defer close(b.produced)
		var wg sync.WaitGroup
		var readErr error
		wg.Go(func() { readErr = b.readLoop(intake, pctx) })
		wg.Go(func() { b.claimLoop(intake, pctx) })
		wg.Go(func() { b.verifyLoop(intake, pctx) })
		wg.Wait()
		return readErr
	})
	pg.Go(func() error {
		err := b.completeLoop(pctx, status)
		if err == nil {
			// Every item is done: no reply handler sends on acks again.
			close(b.acks)
		}
		return err
	})
	pg.Go(func() error { return b.ackLoop(pctx) })
	err = pg.Wait()

	b.stopping.Store(true)
	if errors.Is(err, errCrash) {
		cancelBG()
		_ = bg.Wait()
		return err
	}
	if err != nil && hard.Err() != nil && ctx.Err() != nil {
		log.Warn("shutdown timeout: in-flight entries stay pending in Redis and will be re-delivered",
			"in_flight", len(b.sem))
		err = nil
	}
	if ferr := nc.FlushTimeout(time.Second); ferr != nil && nc.IsConnected() {
		log.Warn("nats flush at shutdown", "err", ferr)
	}
	cancelBG()
	if berr := bg.Wait(); berr != nil && err == nil {
		err = berr
	}
	if err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// ensureStreams creates or updates POSITIONS and POSITIONS_DLQ, retrying with
// backoff until it succeeds (DECISIONS #6: only the bridge does this).
func (b *bridge) ensureStreams(ctx context.Context) {
	for attempt := 0; ; attempt++ {
		ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := streams.Ensure(ectx, b.js, b.cfg.Stream)
		cancel()
		if err == nil {
			b.log.Info("jetstream streams ensured", "positions", streams.Positions, "dlq", streams.DLQ,
				"max_age", b.cfg.Stream.MaxAge, "replicas", b.cfg.Stream.Replicas, "duplicates", b.cfg.Stream.Duplicates,
				"max_bytes", b.cfg.Stream.MaxBytes, "dlq_max_bytes", b.cfg.Stream.DLQMaxBytes)
			close(b.ensured)
			return
		}
		if ctx.Err() != nil {
			return
		}
		if attempt == 0 {
			b.log.Warn("cannot ensure jetstream streams yet; retrying", "err", err)
		}
		if sleep(ctx, backoff(attempt)) != nil {
			return
		}
	}
}

// lagLoop publishes each stream's group lag and pending count as gauges.
func (b *bridge) lagLoop(ctx context.Context) {
	t := time.NewTicker(b.cfg.LagInterval)
	defer t.Stop()
	for {
		for _, s := range b.cfg.Streams {
			qctx, cancel := context.WithTimeout(ctx, time.Second)
			groups, err := b.rdb.XInfoGroups(qctx, s).Result()
			cancel()
			if err != nil {
				continue
			}
			for _, g := range groups {
				if g.Name == b.cfg.Group {
					b.m.lag.WithLabelValues(s).Set(float64(g.Lag))
					b.m.pending.WithLabelValues(s).Set(float64(g.Pending))
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// backoff is the wait before retry attempt n (0-based): 50 ms doubling to 5 s.
func backoff(n int) time.Duration {
	d := 50 * time.Millisecond
	for i := 0; i < n && d < 5*time.Second; i++ {
		d *= 2
	}
	return min(d, 5*time.Second)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
