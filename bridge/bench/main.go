// Command bench benchmarks the bridge worker (scripts/bench bridge): the
// bridge's rate against a raw JetStream publish of the same messages on
// the same servers, in one run, with A/B variants of its settings
// interleaved; or, with -catchup, the drain of a restart's backlog and the
// latency of live positions written meanwhile. See bench.go and catchup.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"trm-live/bridge"
)

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench bridge:", err)
		os.Exit(2)
	}
	if cfg.Role == "nats" {
		if err := serveNATS(cfg.Store); err != nil {
			fmt.Fprintln(os.Stderr, "bench bridge: nats-server:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench bridge:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (Config, error) {
	c := Config{
		RedisURL:    os.Getenv("BENCH_REDIS_URL"),
		DatabaseURL: os.Getenv("BENCH_DATABASE_URL"),
		DataDir:     os.Getenv("BENCH_DATA_DIR"),
		Out:         os.Stdout,
	}
	var ab string
	fs := flag.NewFlagSet("bench bridge", flag.ContinueOnError)
	fs.IntVar(&c.N, "n", 1_000_000, "entries preloaded into Redis")
	fs.IntVar(&c.Devices, "devices", 500, "simulated devices")
	fs.Float64Var(&c.Bad, "bad", 0, "share of bad entries (dead-lettered by the bridge, skipped by raw)")
	fs.IntVar(&c.Default.Batch, "batch", bridge.DefaultBatch, "BRIDGE_BATCH of the default variant")
	fs.IntVar(&c.Default.InFlight, "inflight", bridge.DefaultMaxInFlight, "BRIDGE_MAX_IN_FLIGHT of the default variant, and the raw publisher's cap")
	fs.IntVar(&c.Default.ParseWorkers, "parse-workers", bridge.DefaultParseWorkers, "BRIDGE_PARSE_WORKERS of the default variant")
	fs.StringVar(&c.Default.Mode, "mode", bridge.DefaultPublishMode, "BRIDGE_PUBLISH_MODE of the default variant (async or batch)")
	fs.StringVar(&ab, "ab", DefaultAB, `A/B variants run interleaved with the default, ";" separated, each "key=value,..." of batch, inflight, parse-workers, mode, typed-reads, aof-rewrite, gogc ("" none)`)
	fs.IntVar(&c.Rounds, "rounds", 1, "rounds of raw + every variant (the ceiling is the mean of every raw run)")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the default variant's first run to this file")
	fs.BoolVar(&c.Verbose, "v", false, "bridge logs to stderr")
	fs.BoolVar(&c.Catchup, "catchup", false, "measure a restart's catch-up instead: backlog drain time and live latency meanwhile")
	fs.DurationVar(&c.Backlog, "backlog", DefaultBacklog, "-catchup: fix-time span of the backlog")
	fs.Float64Var(&c.Hz, "hz", 10, "-catchup: positions per device per second, backlog and live")
	fs.BoolVar(&c.NATSProcess, "nats-process", true, "run nats-server in a process of its own, as in production (false: embedded in the benchmark's process)")
	fs.StringVar(&c.Role, "role", "", "internal: nats runs this binary as the nats-server child")
	fs.StringVar(&c.Store, "store", "", "internal: JetStream store of -role nats")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	vs, err := ParseVariants(ab)
	if err != nil {
		return Config{}, fmt.Errorf("-ab: %w", err)
	}
	c.Variants = vs
	return c, nil
}
