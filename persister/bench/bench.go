// Command bench benchmarks the persister worker (scripts/bench persister).
//
// It fills the POSITIONS stream of an embedded nats-server with N positions
// (as the bridge publishes them: Encode() bytes with Nats-Msg-Id), then
// measures on the same servers:
//
//   - fetch: a bare JetStream fetch-and-ack of every message (a durable
//     pull consumer, batches of -batch, no decoding, no database): the
//     NATS ceiling;
//   - copy: a plain COPY of the same rows into an empty table of the
//     positions shape, -batch rows per COPY: the database ceiling;
//   - persister: persister.Run draining the stream into an empty database
//     (it applies its own schema; decode, idempotent write, commit, ack).
//
// The two ceilings are measured before each persister run and once more
// after the last; each persister run is compared with the lower of the two
// ceilings, each averaged over the measurements around it (target ratio
// ≥ 0.7). With -paths the persister runs once per write path
// (PERSISTER_WRITE_PATH auto, unnest, staging).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/persister"
	"trm-live/persister/migrate"
	"trm-live/testkit/benchenv"
)

// Config is one benchmark run: the flags of scripts/bench persister, and the
// servers scripts/bench started.
type Config struct {
	N, Batch, Writers, Devices int
	// Path is the persister's PERSISTER_WRITE_PATH; with Paths the
	// persister runs once per write path and the ratio uses the first.
	Path       string
	Paths      bool
	Verbose    bool   // persister logs to stderr
	CPUProfile string // a CPU profile of the persister phase, when set
	// DatabaseURL is where the benchmark creates its databases; DataDir
	// holds the NATS store.
	benchenv.Servers
}

// LoadConfig reads the flags in args and the servers from getenv.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("bench persister", flag.ContinueOnError)
	fs.IntVar(&c.N, "n", 1_000_000, "positions in the stream")
	fs.IntVar(&c.Batch, "batch", 1000, "batch size: persister PERSISTER_BATCH_SIZE, COPY rows per statement, fetch size")
	fs.IntVar(&c.Writers, "writers", persister.DefaultWriters, "persister PERSISTER_WRITERS")
	fs.IntVar(&c.Devices, "devices", 500, "distinct devices")
	fs.StringVar(&c.Path, "path", persister.PathAuto, "persister PERSISTER_WRITE_PATH: auto, unnest or staging")
	fs.BoolVar(&c.Paths, "paths", false, "run the persister once per write path (auto, unnest, staging); the ratio uses the first")
	fs.BoolVar(&c.Verbose, "v", false, "persister logs to stderr")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the persister phase to this file")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	var err error
	c.Servers, err = benchenv.LoadServers(getenv, "persister", benchenv.EnvDatabaseURL)
	return c, err
}

// Run fills the stream, then measures the ceilings and the persister.
func Run(ctx context.Context, o Config) error {
	adminDSN, dataDir := o.DatabaseURL, o.DataDir
	fmt.Printf("persister benchmark: n=%d batch=%d writers=%d devices=%d GOMAXPROCS=%d\n", o.N, o.Batch, o.Writers, o.Devices, runtime.GOMAXPROCS(0))

	// NATS, embedded, file store under BENCH_DATA_DIR.
	store := filepath.Join(dataDir, "persister-nats")
	_ = os.RemoveAll(store)
	ns, stopNATS, err := benchenv.StartNATS(server.Options{JetStream: true, StoreDir: store,
		JetStreamMaxMemory: 1 << 30, JetStreamMaxStore: 16 << 30})
	if err != nil {
		return err
	}
	defer stopNATS()
	nc, js, err := benchenv.ConnectJetStream(ns.ClientURL(), 8192)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := streams.Ensure(ctx, js, streams.Options{}); err != nil {
		return err
	}

	ps := generate(o.N, o.Devices)
	t0 := time.Now()
	if err := fill(ctx, js, ps); err != nil {
		return err
	}
	fmt.Printf("fill:      %9d msgs in %6.2fs  %9.0f msgs/s (PublishAsync with Msg-Id, not a ceiling)\n", o.N, time.Since(t0).Seconds(), rate(o.N, time.Since(t0)))

	paths := []string{o.Path}
	if o.Paths {
		paths = []string{persister.PathAuto, persister.PathUnnest, persister.PathStaging}
	}
	// The machine is shared and its load drifts: both ceilings are measured
	// right before each persister run and once more after the last, and each
	// run is compared with the mean of the ceilings around it.
	ceilings := func(round int) (float64, float64, error) {
		f, err := benchFetch(ctx, js, fmt.Sprintf("bench_fetch_%d", round), o)
		if err != nil {
			return 0, 0, fmt.Errorf("fetch: %w", err)
		}
		c, err := benchCopy(ctx, adminDSN, ps, o)
		if err != nil {
			return 0, 0, fmt.Errorf("copy: %w", err)
		}
		return f, c, nil
	}
	fetchRates, copyRates, persRates := make([]float64, len(paths)+1), make([]float64, len(paths)+1), make([]float64, len(paths))
	for i, path := range paths {
		var err error
		if fetchRates[i], copyRates[i], err = ceilings(i); err != nil {
			return err
		}
		if persRates[i], err = benchPersister(ctx, adminDSN, ns.ClientURL(), path, fmt.Sprintf("bench_persister_%d", i), o); err != nil {
			return fmt.Errorf("persister %s: %w", path, err)
		}
	}
	if fetchRates[len(paths)], copyRates[len(paths)], err = ceilings(len(paths)); err != nil {
		return err
	}
	for i, path := range paths {
		f, c := (fetchRates[i]+fetchRates[i+1])/2, (copyRates[i]+copyRates[i+1])/2
		ceiling, which := f, "fetch"
		if c < ceiling {
			ceiling, which = c, "copy"
		}
		fmt.Printf("ratio:     persister (%s) %.0f rows/s / %s %.0f (mean of the runs around it) = %.2f (target >= 0.70)\n",
			path, persRates[i], which, ceiling, persRates[i]/ceiling)
	}
	return nil
}

func rate(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }

// generate makes n distinct valid positions over devices at 1 Hz, two
// thirds assigned to one event, half with every optional field.
func generate(n, devices int) []contract.Position {
	base := time.Date(2026, 5, 3, 8, 0, 0, 0, time.UTC)
	out := make([]contract.Position, n)
	for i := range out {
		p := contract.Position{
			DeviceID: fmt.Sprintf("35693803%07d", i%devices),
			TS:       base.Add(time.Duration(i/devices) * time.Second),
			Lat:      45.07 + float64(i%1000)/100000,
			Lon:      7.68 + float64(i%997)/100000,
		}
		if i%3 != 0 {
			p.EventID = "7c1e4b2a-9d3f-4e1a-8b7c-0a1b2c3d4e5f"
		}
		if i%2 == 0 {
			alt, speed, heading, sats := 231.5, 88.2, float64(i%360), 11
			p.Alt, p.Speed, p.Heading, p.Sats = &alt, &speed, &heading, &sats
			p.Attrs = []byte(`{"io239":1}`)
		}
		out[i] = p
	}
	return out
}

func fill(ctx context.Context, js jetstream.JetStream, ps []contract.Position) error {
	const window = 4096
	futures := make([]jetstream.PubAckFuture, 0, window)
	wait := func() error {
		err := benchenv.AwaitAcks(futures, 30*time.Second)
		futures = futures[:0]
		return err
	}
	for i := range ps {
		f, err := js.PublishAsync(ps[i].Subject(), ps[i].Encode(), jetstream.WithMsgID(ps[i].MsgID()))
		if err != nil {
			return err
		}
		futures = append(futures, f)
		if len(futures) == window {
			if err := wait(); err != nil {
				return err
			}
		}
	}
	return wait()
}

// benchFetch drains the stream with a bare durable pull consumer: Fetch of
// -batch messages, Ack each, as the persister's consumer is configured.
func benchFetch(ctx context.Context, js jetstream.JetStream, name string, o Config) (float64, error) {
	cons, err := js.CreateOrUpdateConsumer(ctx, streams.Positions, jetstream.ConsumerConfig{
		Durable: name, AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: persister.DefaultMaxAckPending,
		AckWait: time.Minute, MaxDeliver: -1,
	})
	if err != nil {
		return 0, err
	}
	start := time.Now()
	got := 0
	for got < o.N {
		b, err := cons.Fetch(o.Batch, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return 0, err
		}
		for m := range b.Messages() {
			_ = m.Ack()
			got++
		}
		if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return 0, err
		}
	}
	d := time.Since(start)
	r := rate(got, d)
	fmt.Printf("fetch:     %9d msgs in %6.2fs  %9.0f msgs/s (bare Fetch(%d) + Ack: NATS ceiling)\n", got, d.Seconds(), r, o.Batch)
	return r, nil
}

// freshDB (re)creates a database and applies the persister's migrations,
// so the table has exactly the positions shape, keys and index.
func freshDB(ctx context.Context, adminDSN, name string) (string, *pgxpool.Pool, error) {
	dsn, err := benchenv.FreshDatabase(ctx, adminDSN, name)
	if err != nil {
		return "", nil, err
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return "", nil, err
	}
	if _, err := migrate.New(pool, migrate.Options{}).Apply(ctx); err != nil {
		pool.Close()
		return "", nil, err
	}
	return dsn, pool, nil
}

var columns = []string{"device_id", "ts", "event_id", "lat", "lon", "alt", "speed", "heading", "sats", "attrs"}

func row(p *contract.Position) []any {
	var event, sats, attrs any
	if p.EventID != "" {
		event = p.EventID
	}
	if p.Sats != nil {
		sats = int16(*p.Sats)
	}
	if len(p.Attrs) > 0 {
		attrs = []byte(p.Attrs)
	}
	f32 := func(v *float64) any {
		if v == nil {
			return nil
		}
		return float32(*v)
	}
	return []any{p.DeviceID, p.TS, event, p.Lat, p.Lon, f32(p.Alt), f32(p.Speed), f32(p.Heading), sats, attrs}
}

// benchCopy COPYs the rows into an empty positions table, -batch rows per
// COPY statement, one connection: the database ceiling.
func benchCopy(ctx context.Context, adminDSN string, ps []contract.Position, o Config) (float64, error) {
	_, pool, err := freshDB(ctx, adminDSN, "bench_persister_copy")
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	start := time.Now()
	for i := 0; i < len(ps); i += o.Batch {
		chunk := ps[i:min(i+o.Batch, len(ps))]
		if _, err := pool.CopyFrom(ctx, pgx.Identifier{"positions"}, columns, pgx.CopyFromSlice(len(chunk), func(j int) ([]any, error) {
			return row(&chunk[j]), nil
		})); err != nil {
			return 0, err
		}
	}
	d := time.Since(start)
	r := rate(len(ps), d)
	fmt.Printf("copy:      %9d rows in %6.2fs  %9.0f rows/s (plain COPY of %d rows per statement: database ceiling)\n", len(ps), d.Seconds(), r, o.Batch)
	return r, nil
}

// benchPersister runs the worker on an empty table until every position
// is a row.
func benchPersister(ctx context.Context, adminDSN, natsURL, path, db string, o Config) (float64, error) {
	dsn, pool, err := freshDB(ctx, adminDSN, db)
	if err != nil {
		return 0, err
	}
	// Start from an empty database: the persister applies its own schema.
	if _, err := pool.Exec(ctx, "DROP TABLE positions; DROP TABLE "+migrate.BookkeepingTable); err != nil {
		pool.Close()
		return 0, err
	}
	pool.Close()

	reg := prometheus.NewRegistry()
	logger := slog.New(slog.DiscardHandler)
	if o.Verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	cfg := persister.Config{
		NATSURL: natsURL, DatabaseURL: dsn, BatchSize: o.Batch, Writers: o.Writers, WritePath: path,
		Consumer:      "persister_" + path, // each run drains the whole stream
		MaxAckPending: max(persister.DefaultMaxAckPending, 4*o.Batch*o.Writers),
		Logger:        logger, Registerer: reg,
	}
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return 0, err
		}
		defer pprof.StopCPUProfile()
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- persister.Run(rctx, cfg) }()
	var d time.Duration
	last, lastProgress := 0.0, time.Now()
	for {
		select {
		case err := <-done:
			cancel()
			return 0, fmt.Errorf("Run returned early: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		got := inserted(reg)
		if got >= float64(o.N) {
			d = time.Since(start)
			break
		}
		if got > last {
			last, lastProgress = got, time.Now()
		} else if time.Since(lastProgress) > time.Minute {
			cancel()
			<-done
			return 0, fmt.Errorf("no row written for a minute after %.0f rows: was the database or NATS restarted under the benchmark?", got)
		}
	}
	cancel()
	if err := <-done; err != nil {
		return 0, err
	}
	r := rate(o.N, d)
	if sum, cnt := histogram(reg, "persister_commit_seconds"); cnt > 0 {
		bsum, _ := histogram(reg, "persister_batch_size")
		fmt.Printf("           %d batches, mean %.0f positions, mean write+commit %.1f ms\n", int(cnt), bsum/cnt, 1000*sum/cnt)
	}
	fmt.Printf("persister: %9d rows in %6.2fs  %9.0f rows/s (write path %s, %d writers: decode, write, commit, ack)\n", o.N, d.Seconds(), r, path, o.Writers)
	return r, nil
}

func inserted(g prometheus.Gatherer) float64 {
	mfs, err := g.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() == "persister_rows_inserted_total" && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

func histogram(g prometheus.Gatherer, name string) (sum, count float64) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, 0
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleSum(), float64(h.GetSampleCount())
		}
	}
	return 0, 0
}
