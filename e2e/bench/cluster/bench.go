// Command cluster benchmarks the bridge and the persister on a three-node
// NATS cluster with the streams at three replicas and sync_interval always
// (deploy/nats/prod.conf: users, permissions, JetStream settings), beside
// the same workers on one node with JetStream's default lazy sync, in the
// same run on the same Redis and PostgreSQL (scripts/bench cluster).
//
// For each setup (single/default, single/always, R3/default, R3/always)
// it measures:
//
//  1. raw: async publishes/s of a bare client to a stream of that setup
//     (no worker): the NATS ceiling and the cost of fsync;
//  2. bridge: bridge.Run draining -n positions preloaded in a Redis stream
//     into POSITIONS (routing, publish with Nats-Msg-Id, ack after the
//     JetStream ack), positions/s from the first to the last stored;
//  3. persister: persister.Run draining those -n messages into an empty
//     positions table, rows/s from the first to the last committed.
//
// Every setup uses the users of deploy/nats/accounts.conf. The setups run
// in interleaved rounds (-runs) and each figure is the median, so a burst
// of load from elsewhere on the machine skews one round, not one setup. It
// prints each rate and the ratios R3/always ÷ single/default, the pair the
// issue asks for, plus the raw matrix the lazy-fsync section of
// docs/DEPLOY.md cites.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"trm-live/bridge"
	"trm-live/contract/streams"
	"trm-live/deploy/verify"
	"trm-live/persister"
	"trm-live/testkit/benchenv"
)

type setup struct {
	name  string
	nodes int
	sync  verify.SyncMode
	// pipeline: run the bridge and persister too (not only raw).
	pipeline bool
}

type result struct {
	raw, bridge, persister float64 // per second; 0 = not measured
}

// Config is one benchmark run: the flags of scripts/bench cluster, and the
// servers scripts/bench started.
type Config struct {
	N       int  // positions through the bridge and the persister per setup and run
	RawN    int  // raw async publishes per setup and run
	AlwaysN int  // positions and raw publishes on the single node with sync always
	Runs    int  // rounds over every setup, interleaved; each figure is the median
	Quick   bool // only the two setups the ratio needs
	// RedisURL and DatabaseURL are the servers the workers use; DataDir
	// holds the NATS nodes.
	benchenv.Servers
}

// LoadConfig reads the flags in args and the servers from getenv.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	var o Config
	fs := flag.NewFlagSet("bench cluster", flag.ContinueOnError)
	fs.IntVar(&o.N, "n", 50000, "positions through the bridge and the persister per setup and run")
	fs.IntVar(&o.RawN, "raw-n", 50000, "raw async publishes per setup and run")
	fs.IntVar(&o.AlwaysN, "always-n", 5000, "positions and raw publishes on the single node with sync always (about 1,000/s: keep it small)")
	fs.IntVar(&o.Runs, "runs", 3, "rounds over every setup, interleaved; each figure is the median")
	fs.BoolVar(&o.Quick, "quick", false, "only the two setups the ratio needs (single/default, R3/always)")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	var err error
	o.Servers, err = benchenv.LoadServers(getenv, "cluster", benchenv.EnvRedisURL, benchenv.EnvDatabaseURL)
	return o, err
}

// Run measures every setup in interleaved rounds and prints the medians
// and ratios.
func Run(ctx context.Context, o Config) error {
	redisURL, adminDSN, dataDir := o.RedisURL, o.DatabaseURL, o.DataDir
	root, err := benchenv.RepoRoot()
	if err != nil {
		return err
	}
	conf := filepath.Join(root, "deploy", "nats", "prod.conf")

	setups := []setup{
		{"single/default", 1, verify.SyncDefault, true},
		{"single/always", 1, verify.SyncAlways, true},
		{"R3/default", 3, verify.SyncDefault, true},
		{"R3/always", 3, verify.SyncAlways, true},
	}
	if o.Quick {
		setups = []setup{setups[0], setups[3]}
	}
	fmt.Printf("cluster benchmark: -n %d positions through bridge and persister, raw %d (single/always: %d of each), %d interleaved runs, medians; config %s\n",
		o.N, o.RawN, o.AlwaysN, o.Runs, strings.TrimPrefix(conf, root+"/"))
	all := map[string][]result{}
	for run := range o.Runs {
		for i, s := range setups {
			r, err := measure(ctx, o, s, i, conf, dataDir, redisURL, adminDSN, root)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			all[s.name] = append(all[s.name], r)
			fmt.Printf("run %d  %-15s raw %8.0f msg/s   bridge %8.0f pos/s   persister %8.0f rows/s\n", run+1, s.name, r.raw, r.bridge, r.persister)
		}
	}
	fmt.Println()
	results := map[string]result{}
	for _, s := range setups {
		rs := all[s.name]
		r := result{
			raw:       median(rs, func(r result) float64 { return r.raw }),
			bridge:    median(rs, func(r result) float64 { return r.bridge }),
			persister: median(rs, func(r result) float64 { return r.persister }),
		}
		results[s.name] = r
		fmt.Printf("median %-15s raw %8.0f msg/s   bridge %8.0f pos/s   persister %8.0f rows/s\n", s.name, r.raw, r.bridge, r.persister)
	}
	base, r3 := results["single/default"], results["R3/always"]
	fmt.Printf("\nratios R3/always ÷ single/default: raw %.2f   bridge %.2f   persister %.2f\n",
		r3.raw/base.raw, r3.bridge/base.bridge, r3.persister/base.persister)
	if a, ok := results["single/always"]; ok {
		fmt.Printf("cost of sync always, single node: raw %.3f   bridge %.2f   persister %.2f (÷ single/default)\n",
			a.raw/base.raw, a.bridge/base.bridge, a.persister/base.persister)
	}
	if d, ok := results["R3/default"]; ok {
		fmt.Printf("cost of sync always, R3:          raw %.2f   bridge %.2f   persister %.2f (R3/always ÷ R3/default)\n",
			r3.raw/d.raw, r3.bridge/d.bridge, r3.persister/d.persister)
		fmt.Printf("bridge ÷ raw ceiling:             single/default %.2f   R3/always %.2f\n", base.bridge/base.raw, r3.bridge/r3.raw)
	}
	return nil
}

func measure(ctx context.Context, o Config, s setup, idx int, conf, dataDir, redisURL, adminDSN, root string) (result, error) {
	var r result
	dir := filepath.Join(dataDir, "cluster", strings.ReplaceAll(s.name, "/", "-"))
	if err := os.RemoveAll(dir); err != nil {
		return r, err
	}
	c, err := verify.StartCluster(verify.ClusterConfig{Nodes: s.nodes, Dir: dir, ConfigFile: conf, Sync: s.sync})
	if err != nil {
		return r, err
	}
	defer func() {
		c.Shutdown()
		_ = os.RemoveAll(dir)
	}()
	ops, err := nats.Connect(c.URL("ops"))
	if err != nil {
		return r, err
	}
	defer ops.Close()
	js, err := jetstream.New(ops)
	if err != nil {
		return r, err
	}
	rawN, n := o.RawN, o.N
	if s.sync == verify.SyncAlways && s.nodes == 1 {
		rawN, n = o.AlwaysN, o.AlwaysN
	}
	if r.raw, err = rawPublish(ctx, js, s.nodes, rawN); err != nil {
		return r, fmt.Errorf("raw: %w", err)
	}
	if !s.pipeline {
		return r, nil
	}

	dsn, err := freshDatabase(ctx, adminDSN, fmt.Sprintf("bench_cluster_%d", idx), root)
	if err != nil {
		return r, err
	}
	rdb := redis.NewClient(mustRedisOpts(redisURL))
	defer rdb.Close()
	key := fmt.Sprintf("bench:cluster:%d:%d", idx, time.Now().UnixNano())
	defer rdb.Del(ctx, key)
	if err := preload(ctx, rdb, key, n); err != nil {
		return r, fmt.Errorf("preload redis: %w", err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	// Bridge: Redis -> POSITIONS at s.nodes replicas.
	bcfg, err := bridge.LoadConfig(nil, env(map[string]string{
		"NATS_URL": c.URL("bridge"), "REDIS_URL": redisURL, "DATABASE_URL": dsn,
		"BRIDGE_STREAMS": key, "BRIDGE_GROUP": "bench", "STREAM_REPLICAS": strconv.Itoa(s.nodes), "HTTP_ADDR": "127.0.0.1:0",
	}))
	if err != nil {
		return r, err
	}
	bcfg.Logger = quiet
	count := func() (int, error) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := js.Stream(ctx, streams.Positions)
		if err != nil {
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return 0, nil
			}
			return 0, err
		}
		return int(st.CachedInfo().State.Msgs), nil
	}
	if r.bridge, err = drain(ctx, n, func(ctx context.Context) error { return bridge.Run(ctx, bcfg) }, count); err != nil {
		return r, fmt.Errorf("bridge: %w", err)
	}

	// Persister: POSITIONS -> positions table.
	pcfg, err := persister.LoadConfig(nil, env(map[string]string{
		"NATS_URL": c.URL("persister"), "DATABASE_URL": dsn, "HTTP_ADDR": "127.0.0.1:0",
	}))
	if err != nil {
		return r, err
	}
	pcfg.Logger = quiet
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return r, err
	}
	defer pool.Close()
	rows := func() (int, error) {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM positions`).Scan(&n)
		if err != nil && strings.Contains(err.Error(), "does not exist") {
			return 0, nil
		}
		return n, err
	}
	if r.persister, err = drain(ctx, n, func(ctx context.Context) error { return persister.Run(ctx, pcfg) }, rows); err != nil {
		return r, fmt.Errorf("persister: %w", err)
	}
	return r, nil
}

func median(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func mustRedisOpts(u string) *redis.Options {
	o, err := redis.ParseURL(u)
	if err != nil {
		panic(err)
	}
	return o
}

// rawPublish sends n async publishes of a position-sized payload to a
// fresh stream with the setup's replicas, and returns publishes/s.
func rawPublish(ctx context.Context, js jetstream.JetStream, replicas, n int) (float64, error) {
	var err error
	for range 100 { // a fresh cluster may still be electing its meta leader
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "RAW", Subjects: []string{"raw.>"}, Replicas: replicas})
		if err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return 0, err
	}
	defer js.DeleteStream(ctx, "RAW")
	payload := []byte(`{"device_id":"356938035643809","event_id":"7c1e1111-2222-4333-8444-555566667777","ts":"2026-05-03T10:00:00.000Z","lat":45.07312,"lon":7.68612,"alt":231.5,"speed":88.2,"heading":121,"sats":11}`)
	t0 := time.Now()
	for i := range n {
		if _, err := js.PublishAsync("raw.e.d"+strconv.Itoa(i%500), payload, jetstream.WithStallWait(time.Minute)); err != nil {
			return 0, err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		return 0, errors.New("raw publishes not acknowledged after 5 min")
	}
	return float64(n) / time.Since(t0).Seconds(), nil
}

// freshDatabase (re)creates a database with the Directus stand-in tables.
func freshDatabase(ctx context.Context, adminDSN, name, root string) (string, error) {
	dsn, err := benchenv.FreshDatabase(ctx, adminDSN, name)
	if err != nil {
		return "", err
	}
	return dsn, benchenv.SeedDirectusTables(ctx, dsn, root)
}

// preload appends n positions over 500 devices (unassigned: no event_devices
// rows), fix times one millisecond apart.
func preload(ctx context.Context, rdb *redis.Client, key string, n int) error {
	base := time.Now().Add(-2 * time.Hour).UnixMilli()
	for start := 0; start < n; start += 1000 {
		pipe := rdb.Pipeline()
		for i := start; i < min(n, start+1000); i++ {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: map[string]any{
				"device_id": "dev-" + strconv.Itoa(i%500), "ts": strconv.FormatInt(base+int64(i), 10),
				"lat": "45.07312", "lon": "7.68612", "speed": "88.2",
			}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}
	return nil
}

// drain runs a worker until count reaches n and returns items/s from the
// first item counted to the last (start-up excluded).
func drain(ctx context.Context, n int, worker func(context.Context) error, count func() (int, error)) (float64, error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- worker(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	var t0 time.Time
	first := 0
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			return 0, fmt.Errorf("worker stopped: %v", err)
		default:
		}
		c, err := count()
		if err != nil {
			// A busy cluster may time an info request out; poll again.
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
				continue
			}
			return 0, err
		}
		if c > 0 && t0.IsZero() {
			t0, first = time.Now(), c
		}
		if c >= n {
			if c == first {
				return 0, errors.New("all items counted at once: raise -n")
			}
			return float64(c-first) / time.Since(t0).Seconds(), nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, errors.New("not drained after 10 min")
}
