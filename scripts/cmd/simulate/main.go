// Command simulate is the race simulator: N devices driving the Monza loop,
// their fixes XADDed to a Redis stream in the design's input format, with an
// optional share of deliberately bad entries and bursts. It first seeds the
// Directus-side tables (organizations, events, event_devices, a demo user)
// in PostgreSQL so the bridge routes the devices to events.
//
//	simulate -devices 500 -rate 1 -bad 0.01 -duration 10m
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"trm-live/scripts/simulate"
)

type config struct {
	redisURL, databaseURL, stream, seedSQL, start string
	devices, events                               int
	rate, bad                                     float64
	duration, burstEvery                          time.Duration
	count, maxLen                                 int64
	seed                                          uint64
	spread, seedDB, seedOnly                      bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "simulate")
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "simulate:", err)
		os.Exit(2)
	}
	if err := run(ctx, cfg, log); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("exit", "err", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	env := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	var c config
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	fs.StringVar(&c.redisURL, "redis-url", env("REDIS_URL", "redis://127.0.0.1:6379/0"), "Redis URL (REDIS_URL)")
	fs.StringVar(&c.databaseURL, "database-url", env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"), "PostgreSQL to seed (DATABASE_URL)")
	fs.StringVar(&c.stream, "stream", "telemetry:positions", "Redis stream key written")
	fs.IntVar(&c.devices, "devices", 500, "number of devices")
	fs.IntVar(&c.events, "events", 1, "events the devices are spread over (device i in event i mod events)")
	fs.Float64Var(&c.rate, "rate", 1, "fixes per second per device")
	fs.DurationVar(&c.duration, "duration", 0, "stop after this long (0: until Ctrl-C)")
	fs.Int64Var(&c.count, "count", 0, "stop after this many entries (0: no limit)")
	fs.Float64Var(&c.bad, "bad", 0, "share of deliberately bad entries, 0..1, cycling through every bad-input class")
	fs.BoolVar(&c.spread, "spread", true, "spread each tick's entries over the tick; false sends every tick as one burst")
	fs.DurationVar(&c.burstEvery, "burst-every", 0, "with -spread, send one tick in this many as a burst (all devices at once)")
	fs.Int64Var(&c.maxLen, "maxlen", 1_000_000, "trim the stream to about this many entries (0: never trim)")
	fs.Uint64Var(&c.seed, "seed", 1, "random seed: same seed, same devices, paces and bad entries")
	fs.StringVar(&c.start, "start", "", "simulated clock start (RFC 3339); empty: the wall clock")
	fs.BoolVar(&c.seedDB, "seed-db", true, "seed organizations, events, event_devices and demo users first")
	fs.BoolVar(&c.seedOnly, "seed-only", false, "seed PostgreSQL, then exit without writing entries")
	fs.StringVar(&c.seedSQL, "seed-sql", "", "Directus stand-in schema (default: deploy/seed/directus-standin.sql above the working directory)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case c.devices < 1:
		return c, fmt.Errorf("-devices %d: must be at least 1", c.devices)
	case c.rate <= 0 || c.rate > 100:
		return c, fmt.Errorf("-rate %v: must be in (0, 100]", c.rate)
	case c.bad < 0 || c.bad > 1:
		return c, fmt.Errorf("-bad %v: must be in 0..1", c.bad)
	}
	return c, nil
}

func run(ctx context.Context, c config, log *slog.Logger) error {
	sim := simulate.New(simulate.Options{Devices: c.devices, Seed: c.seed, BadFraction: c.bad})
	if c.seedDB || c.seedOnly {
		if err := seed(ctx, c, sim, log); err != nil {
			return err
		}
	}
	if c.seedOnly {
		return nil
	}
	opts, err := redis.ParseURL(c.redisURL)
	if err != nil {
		return fmt.Errorf("-redis-url: %w", err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	w := &simulate.Writer{RDB: rdb, Stream: c.stream, MaxLen: c.maxLen}

	tick := time.Duration(float64(time.Second) / c.rate)
	clock := time.Now().Truncate(time.Second)
	offset := time.Duration(0) // simulated time minus wall time
	if c.start != "" {
		t0, err := time.Parse(time.RFC3339, c.start)
		if err != nil {
			return fmt.Errorf("-start: %w", err)
		}
		offset = t0.Sub(clock)
	}
	log.Info("simulating", "devices", c.devices, "rate_hz", c.rate, "stream", c.stream, "track", sim.Track.Name,
		"track_m", int(sim.Track.Length), "bad", c.bad, "spread", c.spread, "burst_every", c.burstEvery, "seed", c.seed)
	var deadline <-chan time.Time
	if c.duration > 0 {
		t := time.NewTimer(c.duration)
		defer t.Stop()
		deadline = t.C
	}
	var written, bad int64
	report := time.NewTicker(10 * time.Second)
	defer report.Stop()
	entries := make([]simulate.Entry, 0, c.devices)
	burstEvery := int64(0)
	if c.burstEvery > 0 {
		burstEvery = max(1, int64(c.burstEvery/tick))
	}
	for k := int64(0); ; k++ {
		next := clock.Add(time.Duration(k) * tick)
		if d := time.Until(next); d > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-deadline:
				log.Info("done", "entries", written, "bad", bad)
				return nil
			case <-report.C:
				log.Info("progress", "entries", written, "bad", bad)
				k-- // the tick is still due
				continue
			case <-time.After(d):
			}
		}
		entries = sim.AppendTick(entries[:0], next.Add(offset))
		if c.count > 0 && written+int64(len(entries)) > c.count {
			entries = entries[:c.count-written]
		}
		for _, e := range entries {
			if e.Bad != "" {
				bad++
			}
		}
		burst := !c.spread || (burstEvery > 0 && k%burstEvery == 0)
		if err := send(ctx, w, entries, burst, tick); err != nil {
			return err
		}
		written += int64(len(entries))
		if c.count > 0 && written >= c.count {
			log.Info("done", "entries", written, "bad", bad)
			return nil
		}
	}
}

// send writes one tick: at once (a burst), or in ten slices over the tick
// as trackers that are not synchronised would.
func send(ctx context.Context, w *simulate.Writer, entries []simulate.Entry, burst bool, tick time.Duration) error {
	if burst || len(entries) < 10 {
		return w.Write(ctx, entries)
	}
	const slices = 10
	start := time.Now()
	for s := 0; s < slices; s++ {
		lo, hi := s*len(entries)/slices, (s+1)*len(entries)/slices
		if err := w.Write(ctx, entries[lo:hi]); err != nil {
			return err
		}
		if d := time.Until(start.Add(time.Duration(s+1) * tick / slices)); d > 0 && s < slices-1 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d):
			}
		}
	}
	return nil
}

func seed(ctx context.Context, c config, sim *simulate.Sim, log *slog.Logger) error {
	path := c.seedSQL
	if path == "" {
		p, err := findSeedSQL()
		if err != nil {
			return err
		}
		path = p
	}
	sql, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("-seed-sql: %w", err)
	}
	conn, err := pgx.Connect(ctx, c.databaseURL)
	if err != nil {
		return fmt.Errorf("connect postgres: %w", err)
	}
	defer conn.Close(context.Background())
	devs := make([]string, len(sim.Devices))
	for i, d := range sim.Devices {
		devs[i] = d.ID
	}
	s, err := simulate.Seed(ctx, conn, string(sql), devs, c.events)
	if err != nil {
		return err
	}
	log.Info("seeded", "organization_id", s.OrganizationID, "event_ids", s.EventIDs,
		"demo_user", simulate.DemoUserEmail, "devices", len(devs))
	return nil
}

// findSeedSQL looks for deploy/seed/directus-standin.sql above the working
// directory.
func findSeedSQL() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "deploy", "seed", "directus-standin.sql")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("deploy/seed/directus-standin.sql not found above the working directory; pass -seed-sql")
		}
		dir = parent
	}
}
