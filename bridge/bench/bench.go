// Command bridge benchmarks the bridge worker (scripts/bench bridge).
//
// It seeds event_devices for the simulator's devices, preloads -n simulator
// entries into a Redis stream (pipelined XADD), then measures on the same
// servers, in this order:
//
//  1. raw: an async JetStream publish of the very payloads the bridge will
//     publish (same subjects, same Nats-Msg-Id headers, same in-flight cap),
//     with no Redis: the ceiling;
//  2. bridge: bridge.Run draining the stream (XREADGROUP, parse, route,
//     encode, PublishAsync, XACK after the PubAck) until every entry is
//     acknowledged, then a check that POSITIONS holds exactly -n messages.
//
// Between the two, the streams are deleted so the dedup window is empty
// again. It prints both rates and the ratio bridge/raw (target ≥ 0.5).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"trm-live/bridge"
	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/scripts/simulate"
	"trm-live/testkit/benchenv"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench bridge:", err)
		os.Exit(1)
	}
}

type options struct {
	n, devices, batch, inflight int
	bad                         float64
	cpuprofile                  string
	verbose                     bool
}

// payloads are the positions as the bridge publishes them, in one byte
// arena with pointer-free offsets: a million of them held during the bridge
// phase then cost the garbage collector nothing to scan, so they do not tax
// the bridge's GC with the benchmark's own memory.
type payloads struct {
	arena []byte
	items []span3
}

type span3 struct{ subj, id, data [2]int32 } // offset, length in arena

func (p *payloads) add(subject, msgID string, data []byte) {
	put := func(b []byte) [2]int32 {
		off := len(p.arena)
		p.arena = append(p.arena, b...)
		return [2]int32{int32(off), int32(len(b))}
	}
	p.items = append(p.items, span3{put([]byte(subject)), put([]byte(msgID)), put(data)})
}

func (p *payloads) len() int { return len(p.items) }

// at returns the i-th subject, Msg-Id and data (copies: the publisher owns them).
func (p *payloads) at(i int) (string, string, []byte) {
	it := p.items[i]
	get := func(s [2]int32) []byte { return p.arena[s[0] : s[0]+s[1]] }
	return string(get(it.subj)), string(get(it.id)), append([]byte(nil), get(it.data)...)
}

func run() error {
	var o options
	flag.IntVar(&o.n, "n", 1_000_000, "entries preloaded into Redis")
	flag.IntVar(&o.devices, "devices", 500, "simulated devices")
	flag.IntVar(&o.batch, "batch", bridge.DefaultBatch, "bridge BRIDGE_BATCH")
	flag.IntVar(&o.inflight, "inflight", bridge.DefaultMaxInFlight, "bridge BRIDGE_MAX_IN_FLIGHT, and the raw publisher's cap")
	flag.Float64Var(&o.bad, "bad", 0, "share of bad entries (dead-lettered by the bridge, skipped by raw)")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the bridge phase to this file")
	flag.BoolVar(&o.verbose, "v", false, "bridge logs to stderr")
	flag.Parse()

	redisURL, dsn, dataDir := os.Getenv("BENCH_REDIS_URL"), os.Getenv("BENCH_DATABASE_URL"), os.Getenv("BENCH_DATA_DIR")
	if redisURL == "" || dsn == "" || dataDir == "" {
		return errors.New("BENCH_REDIS_URL, BENCH_DATABASE_URL and BENCH_DATA_DIR must be set: run through scripts/bench bridge")
	}
	ctx := context.Background()

	// NATS, embedded, fresh store.
	store := filepath.Join(dataDir, "bridge-nats")
	if err := os.RemoveAll(store); err != nil {
		return err
	}
	ns, stopNATS, err := benchenv.StartNATS(server.Options{
		ServerName: "bench-bridge", JetStream: true, StoreDir: store,
		JetStreamMaxMemory: 256 << 20, JetStreamMaxStore: 16 << 30,
	})
	if err != nil {
		return err
	}
	defer stopNATS()

	// PostgreSQL: the stand-in tables and the devices' assignments.
	sim := simulate.New(simulate.Options{Devices: o.devices, Seed: 1, BadFraction: o.bad})
	devs := make([]string, len(sim.Devices))
	for i, d := range sim.Devices {
		devs[i] = d.ID
	}
	root, err := benchenv.RepoRoot()
	if err != nil {
		return err
	}
	seedSQL, err := os.ReadFile(filepath.Join(root, "deploy", "seed", "directus-standin.sql"))
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	seeded, err := simulate.Seed(ctx, conn, string(seedSQL), devs, 1)
	conn.Close(ctx)
	if err != nil {
		return err
	}
	event := seeded.EventIDs[0]

	// Redis: preload, and build the raw publisher's payloads from the same
	// entries (parse, route to the seeded event, encode, as the bridge does).
	ropts, err := redis.ParseURL(redisURL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	stream := "bench:positions"
	if err := rdb.Del(ctx, stream).Err(); err != nil {
		return err
	}
	w := &simulate.Writer{RDB: rdb, Stream: stream}
	ticks := (o.n + o.devices - 1) / o.devices
	at := time.Now().Add(-time.Duration(ticks+60) * time.Second).Truncate(time.Second)
	var pl payloads
	var entries []simulate.Entry
	var preload time.Duration
	written := 0
	for written < o.n {
		entries = sim.AppendTick(entries[:0], at)
		at = at.Add(time.Second)
		if rest := o.n - written; len(entries) > rest {
			entries = entries[:rest]
		}
		for _, e := range entries {
			fields := make(map[string]any, len(e.Values)/2)
			for i := 0; i+1 < len(e.Values); i += 2 {
				fields[e.Values[i]] = e.Values[i+1]
			}
			p, err := contract.ParseEntry(fields, time.Now())
			if err != nil {
				continue // dead-lettered by the bridge; not part of the ceiling
			}
			p.EventID = event
			pl.add(p.Subject(), p.MsgID(), p.Encode())
		}
		t0 := time.Now()
		if err := w.Write(ctx, entries); err != nil {
			return err
		}
		preload += time.Since(t0)
		written += len(entries)
	}
	fmt.Printf("preload: %d entries (%d devices, %d valid) XADDed in %s: %.0f entries/s (pipelined)\n",
		written, o.devices, pl.len(), preload.Round(time.Millisecond), float64(written)/preload.Seconds())

	// 1. Raw ceiling.
	cpu0 := cpuTime()
	rawRate, err := raw(ctx, ns.ClientURL(), &pl, o.inflight)
	if err != nil {
		return fmt.Errorf("raw: %w", err)
	}
	rawCPU := (cpuTime() - cpu0) / time.Duration(pl.len())
	fmt.Printf("raw:    %d async JetStream publishes with Nats-Msg-Id in %s: %.0f msgs/s (process CPU %.1f µs/msg, nats-server included)\n",
		pl.len(), time.Duration(float64(pl.len())/rawRate*float64(time.Second)).Round(time.Millisecond), rawRate,
		float64(rawCPU)/float64(time.Microsecond))

	// 2. The bridge.
	cpu0 = cpuTime()
	bridgeRate, elapsed, err := runBridge(ctx, o, ns.ClientURL(), redisURL, dsn, stream, written, pl.len())
	if err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	bridgeCPU := (cpuTime() - cpu0) / time.Duration(written)
	fmt.Printf("bridge: %d entries read, published and acked in %s: %.0f positions/s (process CPU %.1f µs/entry, nats-server included, redis-server not)\n",
		written, elapsed.Round(time.Millisecond), bridgeRate, float64(bridgeCPU)/float64(time.Microsecond))

	// 3. The ceiling again, so that a machine whose load drifts during the
	// run (other processes) is seen, and the ratio uses the mean.
	rawRate2, err := raw(ctx, ns.ClientURL(), &pl, o.inflight)
	if err != nil {
		return fmt.Errorf("raw again: %w", err)
	}
	fmt.Printf("raw:    again after the bridge: %.0f msgs/s\n", rawRate2)
	ceiling := (rawRate + rawRate2) / 2
	fmt.Printf("ratio bridge/raw: %.2f (bridge %.0f / mean raw %.0f positions/s; target >= 0.5)\n",
		bridgeRate/ceiling, bridgeRate, ceiling)
	return nil
}

// raw publishes every payload asynchronously with its Msg-Id, at most
// inflight awaiting an ack, into freshly created streams, and returns the
// rate. It deletes the streams afterwards, emptying the dedup window.
func raw(ctx context.Context, url string, pl *payloads, inflight int) (float64, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	var failed atomic.Int64
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(inflight),
		jetstream.WithPublishAsyncTimeout(bridge.DefaultPublishTimeout),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }))
	if err != nil {
		return 0, err
	}
	for _, name := range []string{streams.Positions, streams.DLQ} {
		if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return 0, err
		}
	}
	if err := streams.Ensure(ctx, js, streams.Options{}); err != nil {
		return 0, err
	}
	start := time.Now()
	for i := range pl.len() {
		subject, msgID, data := pl.at(i)
		for {
			_, err := js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: data}, jetstream.WithMsgID(msgID))
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				return 0, err
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		return 0, errors.New("acks still pending after a minute")
	}
	elapsed := time.Since(start)
	if f := failed.Load(); f > 0 {
		return 0, fmt.Errorf("%d publishes failed", f)
	}
	s, err := js.Stream(ctx, streams.Positions)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	if info.State.Msgs != uint64(pl.len()) {
		return 0, fmt.Errorf("POSITIONS holds %d messages, want %d", info.State.Msgs, pl.len())
	}
	for _, name := range []string{streams.Positions, streams.DLQ} {
		if err := js.DeleteStream(ctx, name); err != nil {
			return 0, err
		}
	}
	return float64(pl.len()) / elapsed.Seconds(), nil
}

func runBridge(ctx context.Context, o options, natsURL, redisURL, dsn, stream string, entries, valid int) (float64, time.Duration, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	reg := prometheus.NewRegistry()
	log := slog.New(slog.DiscardHandler)
	if o.verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	cfg := bridge.Config{
		NATSURL: natsURL, RedisURL: redisURL, DatabaseURL: dsn,
		Streams: []string{stream}, Group: "bench", Consumer: "bench-1",
		Batch: o.batch, MaxInFlight: o.inflight,
		Listener: ln, Registerer: reg, Logger: log,
	}
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err != nil {
			return 0, 0, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return 0, 0, err
		}
		defer pprof.StopCPUProfile()
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- bridge.Run(runCtx, cfg) }()
	var elapsed time.Duration
	for {
		select {
		case err := <-done:
			return 0, 0, fmt.Errorf("Run returned early: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		acked, err := counter(reg, "bridge_entries_acked_total")
		if err != nil {
			return 0, 0, err
		}
		if int(acked) >= entries {
			elapsed = time.Since(start)
			break
		}
		if time.Since(start) > 10*time.Minute {
			return 0, 0, fmt.Errorf("only %v of %d acked after 10 minutes", acked, entries)
		}
	}
	cancel()
	if err := <-done; err != nil {
		return 0, 0, err
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	s, err := js.Stream(ctx, streams.Positions)
	if err != nil {
		return 0, 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	if info.State.Msgs != uint64(valid) {
		return 0, 0, fmt.Errorf("POSITIONS holds %d messages, want %d", info.State.Msgs, valid)
	}
	runtime.GC()
	return float64(entries) / elapsed.Seconds(), elapsed, nil
}

func counter(reg *prometheus.Registry, name string) (float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum, nil
		}
	}
	return 0, nil
}

// cpuTime is the user+system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// repoRoot is the nearest folder above the working directory holding go.work.
