package main

// The throughput benchmark. It seeds event_devices for the fleet, preloads
// Config.N entries into a Redis stream (pipelined XADD), then measures on
// the same servers, interleaved, Rounds times:
//
//  1. raw: an async JetStream publish of the very messages the bridge will
//     publish (same subjects, same Nats-Msg-Id headers, same in-flight cap),
//     with no Redis: the ceiling;
//  2. each variant of the bridge (the default settings first, then every
//     A/B variant): bridge.Run draining the stream through a fresh
//     consumer group (XREADGROUP, parse, route, encode, PublishAsync, XACK
//     after the PubAck) until every entry is acknowledged, then a check
//     that POSITIONS holds exactly the valid entries;
//
// and raw once more at the end. The streams are deleted before every phase
// so the dedup window starts empty. It prints each phase, then one line per
// variant: median rate, CPU per entry (the benchmark process plus the
// nats-server child, which runs apart as in production (-nats-process);
// redis-server apart) and the ratio to the ceiling, the mean of every raw
// phase of the run.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"trm-live/bridge"
	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/testkit/benchenv"
)

// DefaultAB are the A/B variants of a plain run: go-redis's typed reads
// instead of raw ones, the old single-goroutine path, the other publish
// mode (fast-ingest batches when the default is async), and the default
// bridge with Redis rewriting its append-only file on its own policy
// during the phase.
const DefaultAB = "typed-reads=1;parse-workers=1;mode=batch;aof-rewrite=auto"

// DefaultBacklog is the fix-time span of the -catchup backlog.
const DefaultBacklog = 5 * time.Minute

// Target is the ratio bridge/raw issue 19 asks for.
const Target = 0.8

// Config is one benchmark run.
type Config struct {
	// RedisURL, DatabaseURL and DataDir are the servers and the folder
	// scripts/bench started for this run.
	RedisURL, DatabaseURL, DataDir string
	// N entries from Devices devices; a share Bad of them invalid.
	N, Devices int
	Bad        float64
	// Default is the bridge's settings measured first and printed as the
	// headline; Variants are measured interleaved with it.
	Default  Variant
	Variants []Variant
	// Rounds of raw + every variant.
	Rounds int
	// CPUProfile, when set, receives a profile of the default variant's
	// first run.
	CPUProfile string
	// Verbose sends the bridge's log to stderr.
	Verbose bool
	// Catchup runs the catch-up measurement instead (catchup.go): a
	// backlog of Backlog at Hz per device, then live positions at Hz.
	Catchup bool
	Backlog time.Duration
	Hz      float64
	// NATSProcess runs nats-server as a child process (Role "nats" of
	// this binary, store Store), as in production; false embeds it.
	NATSProcess bool
	Role, Store string
	// Out receives the figures.
	Out io.Writer
}

// Variant is one setting of the bridge under test.
type Variant struct {
	Name                          string
	Batch, InFlight, ParseWorkers int    // zero: the default variant's
	Mode                          string // BRIDGE_PUBLISH_MODE; "": the default variant's
	TypedReads                    bool   // BRIDGE_TYPED_READS (variants only: typed-reads=1)
	// AOFRewrite lets Redis rewrite its append-only file on its own
	// policy during the phase (aof-rewrite=auto); otherwise the phase
	// starts from a rewritten file and no rewrite runs during it (see
	// world.settle).
	AOFRewrite bool
	// GOGC is the collector's target percentage during the phase
	// (gogc=N; 0: the process's, 100 unless GOGC says otherwise).
	GOGC int
}

// ParseVariants reads "key=value,...;key=value,...".
func ParseVariants(s string) ([]Variant, error) {
	var out []Variant
	for _, spec := range strings.Split(s, ";") {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			continue
		}
		v := Variant{Name: spec}
		for _, kv := range strings.Split(spec, ",") {
			k, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if k == "aof-rewrite" {
				if val != "auto" {
					return nil, fmt.Errorf("%q: want aof-rewrite=auto", kv)
				}
				v.AOFRewrite = true
				continue
			}
			if k == "mode" {
				if val != bridge.PublishAsync && val != bridge.PublishBatch {
					return nil, fmt.Errorf("%q: want mode=%s or mode=%s", kv, bridge.PublishAsync, bridge.PublishBatch)
				}
				v.Mode = val
				continue
			}
			n, err := strconv.Atoi(val)
			if !ok || err != nil || n < 1 {
				return nil, fmt.Errorf("%q: want key=positive integer", kv)
			}
			switch k {
			case "batch":
				v.Batch = n
			case "inflight":
				v.InFlight = n
			case "parse-workers":
				v.ParseWorkers = n
			case "gogc":
				v.GOGC = n
			case "typed-reads":
				if n != 1 {
					return nil, fmt.Errorf("%q: typed-reads takes 1 only (0 is the default)", kv)
				}
				v.TypedReads = true
			default:
				return nil, fmt.Errorf("%q: unknown key (batch, inflight, parse-workers, mode, typed-reads, aof-rewrite, gogc)", k)
			}
		}
		out = append(out, v)
	}
	return out, nil
}

// payloads are the positions as the bridge publishes them, for the raw
// publisher, held off the Go heap in anonymous memory maps. On the heap a
// million of them (about 400 MB) raised the collector's goal as much: the
// bridge phase, in the same process, then collected once per 400 MB
// allocated (8 cycles for a million entries) where a bridge process of its
// own collects every few MB, and its collector's CPU went unmeasured.
type payloads struct {
	arena []byte  // mapped; append stays within its capacity
	items []span3 // mapped
	maps  [][]byte
}

type span3 struct{ subj, id, data [2]int32 } // offset, length in arena

// payloadRoom is the arena reserved per entry: subject, Msg-Id and the
// JSON of a position. Untouched pages of a private anonymous map cost no
// memory.
const payloadRoom = 4 << 10

// newPayloads maps room for n entries.
func newPayloads(n int) (*payloads, error) {
	arena, err := syscall.Mmap(-1, 0, max(n, 1)*payloadRoom, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("map the raw payloads: %w", err)
	}
	spans, err := syscall.Mmap(-1, 0, max(n, 1)*int(unsafe.Sizeof(span3{})), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_NORESERVE)
	if err != nil {
		_ = syscall.Munmap(arena)
		return nil, fmt.Errorf("map the raw payloads: %w", err)
	}
	return &payloads{
		arena: arena[:0],
		items: unsafe.Slice((*span3)(unsafe.Pointer(&spans[0])), max(n, 1))[:0],
		maps:  [][]byte{arena, spans},
	}, nil
}

// free unmaps the payloads; p is unusable after.
func (p *payloads) free() {
	for _, m := range p.maps {
		_ = syscall.Munmap(m)
	}
	*p = payloads{}
}

func (p *payloads) add(subject, msgID string, data []byte) error {
	if len(p.items) == cap(p.items) || cap(p.arena)-len(p.arena) < len(subject)+len(msgID)+len(data) {
		return fmt.Errorf("raw payloads: no room for entry %d (%d bytes)", len(p.items), len(subject)+len(msgID)+len(data))
	}
	put := func(b []byte) [2]int32 {
		off := len(p.arena)
		p.arena = append(p.arena, b...) // within capacity: never reallocated onto the heap
		return [2]int32{int32(off), int32(len(b))}
	}
	p.items = append(p.items, span3{put([]byte(subject)), put([]byte(msgID)), put(data)})
	return nil
}

func (p *payloads) len() int { return len(p.items) }

// at returns the i-th subject, Msg-Id and data as views of the map, valid
// until free: the raw publisher allocates nothing of its own for them, so
// its garbage collector works only for nats.go's publish (the ceiling stays
// the highest the raw publish reaches). No caller writes to data.
func (p *payloads) at(i int) (string, string, []byte) {
	it := p.items[i]
	get := func(s [2]int32) []byte { return p.arena[s[0] : s[0]+s[1] : s[0]+s[1]] }
	str := func(s [2]int32) string { return unsafe.String(&p.arena[s[0]], int(s[1])) }
	return str(it.subj), str(it.id), get(it.data)
}

// world is what every phase shares: the servers and the preloaded entries.
type world struct {
	cfg     Config
	natsURL string
	natsCPU func() time.Duration // the nats-server child's CPU so far; 0 when embedded
	rdb     *redis.Client
	stream  string
	event   string
	devices []string
	root    string
	// rewritePct is Redis's auto-aof-rewrite-percentage, held at 0
	// between and during phases ("" when Redis keeps no append-only file
	// or refused CONFIG).
	rewritePct string
}

// Run runs the benchmark cfg describes and prints its figures to cfg.Out.
func Run(ctx context.Context, cfg Config) error {
	if cfg.RedisURL == "" || cfg.DatabaseURL == "" || cfg.DataDir == "" {
		return errors.New("BENCH_REDIS_URL, BENCH_DATABASE_URL and BENCH_DATA_DIR must be set: run through scripts/bench bridge")
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	cfg.Rounds = max(cfg.Rounds, 1)
	cfg.Devices = max(cfg.Devices, 1)
	if cfg.Default.Name == "" {
		cfg.Default.Name = "default"
	}

	// NATS with a fresh store: in a process of its own (its CPU read from
	// /proc), or embedded (its CPU is then the benchmark process's).
	store := filepath.Join(cfg.DataDir, "bridge-nats")
	if err := os.RemoveAll(store); err != nil {
		return err
	}
	ns, err := benchenv.StartBenchNATS(ctx, natsOptions(store), cfg.NATSProcess, "-role", "nats", "-store", store)
	if err != nil {
		return err
	}
	defer ns.Stop()

	root, err := benchenv.RepoRoot()
	if err != nil {
		return err
	}
	ropts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return err
	}
	w := &world{cfg: cfg, natsURL: ns.URL, natsCPU: ns.CPU, rdb: redis.NewClient(ropts), stream: "bench:positions", root: root}
	defer w.rdb.Close()
	fl := newFleet(cfg.Devices, cfg.Bad)
	w.devices = fl.ids
	if w.event, err = seed(ctx, cfg.DatabaseURL, root, fl.ids); err != nil {
		return err
	}
	if err := w.rdb.Del(ctx, w.stream).Err(); err != nil {
		return err
	}
	fmt.Fprintf(cfg.Out, "load average at start: %s\n", loadAvg())
	defer func() { fmt.Fprintf(cfg.Out, "load average at end: %s\n", loadAvg()) }()
	if cfg.Catchup {
		return w.catchup(ctx, fl)
	}
	return w.throughput(ctx, fl)
}

func natsOptions(store string) server.Options {
	return server.Options{ServerName: "bench-bridge", JetStream: true, StoreDir: store,
		JetStreamMaxMemory: 256 << 20, JetStreamMaxStore: 16 << 30}
}

// serveNATS is the -role nats child: nats-server on a free loopback port;
// it prints its client URL and stops at stdin EOF.
func serveNATS(store string) error {
	return benchenv.ServeNATS(natsOptions(store), os.Stdin, os.Stdout)
}

// loadAvg is the 1, 5 and 15 minute load average (Linux), to tell a quiet
// run from a loaded one.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func (w *world) throughput(ctx context.Context, fl *fleet) error {
	cfg, out := w.cfg, w.cfg.Out
	// Preload, and build the raw publisher's payloads from the same
	// entries (parse, route to the seeded event, encode, as the bridge does).
	ticks := (cfg.N + cfg.Devices - 1) / cfg.Devices
	at := time.Now().Add(-time.Duration(ticks+60) * time.Second).Truncate(time.Second)
	pl, err := newPayloads(cfg.N)
	if err != nil {
		return err
	}
	defer pl.free()
	var entries [][]string
	var preload time.Duration
	written := 0
	for written < cfg.N {
		entries = fl.tick(entries[:0], at)
		at = at.Add(time.Second)
		if rest := cfg.N - written; len(entries) > rest {
			entries = entries[:rest]
		}
		for _, e := range entries {
			fields := make(map[string]any, len(e)/2)
			for i := 0; i+1 < len(e); i += 2 {
				fields[e[i]] = e[i+1]
			}
			p, err := contract.ParseEntry(fields, time.Now())
			if err != nil {
				continue // dead-lettered by the bridge; not part of the ceiling
			}
			p.EventID = w.event
			if err := pl.add(p.Subject(), p.MsgID(), p.Encode()); err != nil {
				return err
			}
		}
		t0 := time.Now()
		if err := xadd(ctx, w.rdb, w.stream, entries); err != nil {
			return err
		}
		preload += time.Since(t0)
		written += len(entries)
	}
	fmt.Fprintf(out, "preload: %d entries (%d devices, %d valid) XADDed in %s: %.0f entries/s (pipelined)\n",
		written, cfg.Devices, pl.len(), preload.Round(time.Millisecond), float64(written)/preload.Seconds())

	w.holdRewrites(ctx)
	variants := append([]Variant{cfg.Default}, cfg.Variants...)
	for i := range variants[1:] {
		v := &variants[i+1]
		v.Batch = cmp0(v.Batch, cfg.Default.Batch)
		v.InFlight = cmp0(v.InFlight, cfg.Default.InFlight)
		v.ParseWorkers = cmp0(v.ParseWorkers, cfg.Default.ParseWorkers)
		if v.Mode == "" {
			v.Mode = cfg.Default.Mode
		}
	}
	type result struct{ rate, cpu, redisCPU float64 }
	results := make([][]result, len(variants))
	var raws, rawCPU, fasts, fastCPU []float64
	runRaw := func(label string) error {
		w.settle(ctx)
		mark := w.cpuMark()
		rate, err := raw(ctx, w.natsURL, pl, cfg.Default.InFlight)
		if err != nil {
			return fmt.Errorf("raw: %w", err)
		}
		c := w.cpuSince(mark, pl.len())
		raws, rawCPU = append(raws, rate), append(rawCPU, c.total())
		fmt.Fprintf(out, "raw:    %s%d async JetStream publishes with Nats-Msg-Id: %.0f msgs/s (CPU %s µs/msg)\n",
			label, pl.len(), rate, c)
		w.settle(ctx)
		mark = w.cpuMark()
		rate, err = rawFast(ctx, w.natsURL, pl, cfg.Default.Batch)
		if err != nil {
			return fmt.Errorf("raw fast batch: %w", err)
		}
		c = w.cpuSince(mark, pl.len())
		fasts, fastCPU = append(fasts, rate), append(fastCPU, c.total())
		fmt.Fprintf(out, "raw:    %s%d fast-batch JetStream publishes with Nats-Msg-Id, %d per batch: %.0f msgs/s (CPU %s µs/msg)\n",
			label, pl.len(), cfg.Default.Batch, rate, c)
		return nil
	}
	run := 0
	for round := range cfg.Rounds {
		if err := runRaw(fmt.Sprintf("round %d: ", round+1)); err != nil {
			return err
		}
		for i, v := range variants {
			profile := ""
			if round == 0 && i == 0 {
				profile = cfg.CPUProfile
			}
			run++
			w.settle(ctx)
			restore := w.conditions(ctx, v)
			mark, rcpu0 := w.cpuMark(), redisCPU(ctx, w.rdb)
			reads0, acks0 := redisCalls(ctx, w.rdb)
			rewrites0 := aofRewrites(ctx, w.rdb)
			rate, elapsed, err := w.runBridge(ctx, v, run, written, pl.len(), profile)
			restore()
			if err != nil {
				return fmt.Errorf("bridge %s: %w", v.Name, err)
			}
			c := w.cpuSince(mark, written)
			r := result{rate, c.total(), usPer(redisCPU(ctx, w.rdb)-rcpu0, written)}
			results[i] = append(results[i], r)
			reads, acks := redisCalls(ctx, w.rdb)
			fmt.Fprintf(out, "bridge: %-28s %d entries read, published and acked in %s: %.0f positions/s (CPU %s µs/entry; redis-server %.1f; %d XREADGROUP, %d XACK, %d AOF rewrites)\n",
				v.Name, written, elapsed.Round(time.Millisecond), r.rate, c, r.redisCPU, reads-reads0, acks-acks0, aofRewrites(ctx, w.rdb)-rewrites0)
		}
	}
	if err := runRaw("again: "); err != nil {
		return err
	}
	ceiling := mean(raws)
	fmt.Fprintf(out, "ceiling: raw async publish with Msg-Id, mean of %d runs: %.0f msgs/s (min %.0f, max %.0f), %.1f µs CPU/msg\n",
		len(raws), ceiling, slices.Min(raws), slices.Max(raws), mean(rawCPU))
	// The same publishes cost the same CPU on a steady machine: a spread
	// says some minutes of the run were slower for every process.
	fmt.Fprintf(out, "steadiness: the raw async phases took %.1f–%.1f µs CPU/msg (spread %.0f %%; a quiet machine stays under 10 %%)\n",
		slices.Min(rawCPU), slices.Max(rawCPU), 100*(slices.Max(rawCPU)/slices.Min(rawCPU)-1))
	fastCeiling := mean(fasts)
	fmt.Fprintf(out, "ceiling: raw fast-batch publish with Msg-Id, mean of %d runs: %.0f msgs/s (min %.0f, max %.0f), %.1f µs CPU/msg; %.2f of the async ceiling\n",
		len(fasts), fastCeiling, slices.Min(fasts), slices.Max(fasts), mean(fastCPU), fastCeiling/ceiling)
	fmt.Fprintf(out, "\nA/B (same run, same servers; median of %d round(s)):\n", cfg.Rounds)
	fmt.Fprintf(out, "| variant | mode | batch | inflight | parse workers | positions/s | ratio to raw | ratio to raw fast | CPU µs/entry (client + nats-server) | redis-server µs/entry |\n")
	fmt.Fprintf(out, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	var headline result
	for i, v := range variants {
		rs := results[i]
		med := result{
			rate:     median(rs, func(r result) float64 { return r.rate }),
			cpu:      median(rs, func(r result) float64 { return r.cpu }),
			redisCPU: median(rs, func(r result) float64 { return r.redisCPU }),
		}
		if i == 0 {
			headline = med
		}
		fmt.Fprintf(out, "| %s | %s | %d | %d | %d | %.0f | %.2f | %.2f | %.1f | %.1f |\n",
			v.Name, v.Mode, v.Batch, v.InFlight, v.ParseWorkers, med.rate, med.rate/ceiling, med.rate/fastCeiling, med.cpu, med.redisCPU)
	}
	fmt.Fprintf(out, "\nratio bridge/raw: %.2f (bridge %.0f / mean raw %.0f positions/s; target >= %.1f)\n",
		headline.rate/ceiling, headline.rate, ceiling, Target)
	return nil
}

// holdRewrites turns Redis's automatic append-only file rewrites off for
// the run (settle rewrites the file before each phase instead). Each
// entry the bridge reads grows the file by about 200 bytes (Redis logs
// the consumer group's delivery as an XCLAIM, then the XACK), so at the
// bridge's rate Redis's default policy (rewrite when the file has doubled
// since the last rewrite) forked a rewrite of the whole preloaded stream
// every 5 s: a core for most of a second each time, in a child process
// whose CPU no figure of the phase counted. That cost is the benchmark's
// million-entry preload and the server's policy, not the bridge's; the
// aof-rewrite=auto variant measures it.
func (w *world) holdRewrites(ctx context.Context) {
	if info, err := redisInfo(ctx, w.rdb, "persistence"); err != nil || info["aof_enabled"] != "1" {
		return
	}
	cfg, err := w.rdb.ConfigGet(ctx, "auto-aof-rewrite-percentage").Result()
	if err != nil || cfg["auto-aof-rewrite-percentage"] == "" {
		fmt.Fprintf(w.cfg.Out, "redis: CONFIG GET auto-aof-rewrite-percentage failed (%v): automatic AOF rewrites may run during the phases\n", err)
		return
	}
	if err := w.rdb.ConfigSet(ctx, "auto-aof-rewrite-percentage", "0").Err(); err != nil {
		fmt.Fprintf(w.cfg.Out, "redis: CONFIG SET auto-aof-rewrite-percentage 0 failed (%v): automatic AOF rewrites may run during the phases\n", err)
		return
	}
	w.rewritePct = cfg["auto-aof-rewrite-percentage"]
	fmt.Fprintf(w.cfg.Out, "redis: automatic AOF rewrites held (auto-aof-rewrite-percentage %s → 0); each phase starts from a rewritten file; aof-rewrite=auto runs a phase on Redis's policy\n", w.rewritePct)
}

// conditions sets what variant v changes around its phase besides the
// bridge's settings (Redis's own AOF rewrite policy, the collector's
// target) and returns what puts them back.
func (w *world) conditions(ctx context.Context, v Variant) (restore func()) {
	setRewrites := func(pct string) {
		if err := w.rdb.ConfigSet(ctx, "auto-aof-rewrite-percentage", pct).Err(); err != nil {
			fmt.Fprintf(w.cfg.Out, "redis: CONFIG SET auto-aof-rewrite-percentage %s failed: %v\n", pct, err)
		}
	}
	rewrites := v.AOFRewrite && w.rewritePct != ""
	if rewrites {
		setRewrites(w.rewritePct)
	}
	gogc := 0
	if v.GOGC > 0 {
		gogc = debug.SetGCPercent(v.GOGC)
	}
	return func() {
		if rewrites {
			setRewrites("0")
		}
		if v.GOGC > 0 {
			debug.SetGCPercent(gogc)
		}
	}
}

// aofRewrites is how many AOF rewrites Redis has completed; 0 when it
// cannot be read.
func aofRewrites(ctx context.Context, rdb *redis.Client) int {
	info, _ := redisInfo(ctx, rdb, "persistence")
	n, _ := strconv.Atoi(info["aof_rewrites"])
	return n
}

// settle prepares the next phase. Redis's append-only file is rewritten
// (while automatic rewrites are held, see holdRewrites), then every dirty
// page of the phases before (the preload's append-only file, a deleted
// stream's store) is written to disk, so that the kernel's write-back of
// one phase does not take CPU from the next: without it the first phases
// after the preload ran up to a fifth slower than the same phase later in
// the run.
func (w *world) settle(ctx context.Context) {
	if w.rewritePct != "" {
		// An error is a rewrite already in progress: wait for it alike.
		_ = w.rdb.BgRewriteAOF(ctx).Err()
		deadline := time.Now().Add(5 * time.Minute)
		for time.Now().Before(deadline) {
			info, err := redisInfo(ctx, w.rdb, "persistence")
			if err != nil || info["aof_rewrite_in_progress"] == "0" && info["aof_rewrite_scheduled"] == "0" {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	syscall.Sync()
}

func cmp0(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func mean(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func median[T any](xs []T, f func(T) float64) float64 {
	vs := make([]float64, len(xs))
	for i, x := range xs {
		vs[i] = f(x)
	}
	slices.Sort(vs)
	if len(vs)%2 == 1 {
		return vs[len(vs)/2]
	}
	return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
}

// cpuShare is the CPU per message of one phase: client is the benchmark
// process (the bridge or the raw publisher, and nats-server when
// embedded), of which gc its garbage collector (in gcCycles cycles); nats
// the nats-server child; machine the busy time of every core, whoever
// spent it, which also shows the work no process is charged for (a
// child such as an AOF rewrite, the kernel's write-back, other load) and
// how near the phase came to the machine's cores.
type cpuShare struct {
	client, nats, machine float64
	gc                    float64
	gcCycles              uint64
}

func (c cpuShare) total() float64 { return c.client + c.nats }

func (c cpuShare) String() string {
	return fmt.Sprintf("%.1f = client %.1f (GC %.1f in %d cycles) + nats-server %.1f; machine %.1f",
		c.total(), c.client, c.gc, c.gcCycles, c.nats, c.machine)
}

// cpuMark is the CPU counters at the start of a phase.
type cpuMark struct {
	client, nats time.Duration
	machine, gc  float64
	gcCycles     uint64
}

func (w *world) cpuMark() cpuMark {
	gc, cycles := gcCPU()
	return cpuMark{cpuTime(), w.natsCPU(), benchenv.MachineBusySeconds(), gc, cycles}
}

// cpuSince is the CPU per message of n messages since m.
func (w *world) cpuSince(m cpuMark, n int) cpuShare {
	gc, cycles := gcCPU()
	return cpuShare{usPer(cpuTime()-m.client, n), usPer(w.natsCPU()-m.nats, n),
		(benchenv.MachineBusySeconds() - m.machine) * 1e6 / float64(n),
		(gc - m.gc) * 1e6 / float64(n), cycles - m.gcCycles}
}

// gcCPU is this process's garbage collector CPU so far (an estimate the
// runtime keeps) and its completed cycles.
func gcCPU() (float64, uint64) {
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}, {Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Float64(), s[1].Value.Uint64()
}

func usPer(d time.Duration, n int) float64 {
	return float64(d) / float64(time.Microsecond) / float64(n)
}

// freshStreams connects to url and deletes POSITIONS and POSITIONS_DLQ,
// emptying the dedup window; with ensure it creates them again (raw
// phases), without it the bridge does. The caller closes nc.
func freshStreams(ctx context.Context, url string, ensure bool, opts ...jetstream.JetStreamOpt) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc, opts...)
	if err == nil {
		for _, name := range []string{streams.Positions, streams.DLQ} {
			if err = js.DeleteStream(ctx, name); errors.Is(err, jetstream.ErrStreamNotFound) {
				err = nil
			}
			if err != nil {
				break
			}
		}
	}
	if err == nil && ensure {
		err = streams.Ensure(ctx, js, streams.Options{})
	}
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// raw publishes every payload asynchronously with its Msg-Id, at most
// inflight awaiting an ack, into freshly created streams, and returns the
// rate.
func raw(ctx context.Context, url string, pl *payloads, inflight int) (float64, error) {
	var failed atomic.Int64
	nc, js, err := freshStreams(ctx, url, true,
		jetstream.WithPublishAsyncMaxPending(inflight),
		jetstream.WithPublishAsyncTimeout(bridge.DefaultPublishTimeout),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { failed.Add(1) }))
	if err != nil {
		return 0, err
	}
	defer nc.Close()
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
	if err := expectMsgs(ctx, js, pl.len()); err != nil {
		return 0, err
	}
	runtime.GC()
	return float64(pl.len()) / elapsed.Seconds(), nil
}

// rawFast publishes every payload with its Msg-Id as fast-ingest batches
// of perBatch messages (orbit.go's FastPublisher, default flow control,
// each batch committed with its last message) into freshly created
// streams, and returns the rate.
func rawFast(ctx context.Context, url string, pl *payloads, perBatch int) (float64, error) {
	nc, js, err := freshStreams(ctx, url, true)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	start := time.Now()
	for lo := 0; lo < pl.len(); lo += perBatch {
		hi := min(lo+perBatch, pl.len())
		fp, err := jetstreamext.NewFastPublisher(js, jetstreamext.FastPublishFlowControl{AckTimeout: bridge.DefaultPublishTimeout})
		if err != nil {
			return 0, err
		}
		for i := lo; i < hi; i++ {
			subject, msgID, data := pl.at(i)
			msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{jetstream.MsgIDHeader: []string{msgID}}}
			if i == hi-1 {
				_, err = fp.CommitMsg(ctx, msg)
			} else {
				_, err = fp.AddMsg(msg)
			}
			if err != nil {
				return 0, fmt.Errorf("batch at %d: %w", lo, err)
			}
		}
	}
	elapsed := time.Since(start)
	if err := expectMsgs(ctx, js, pl.len()); err != nil {
		return 0, err
	}
	runtime.GC()
	return float64(pl.len()) / elapsed.Seconds(), nil
}

func expectMsgs(ctx context.Context, js jetstream.JetStream, want int) error {
	s, err := js.Stream(ctx, streams.Positions)
	if err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs != uint64(want) {
		return fmt.Errorf("POSITIONS holds %d messages, want %d", info.State.Msgs, want)
	}
	return nil
}

// bridgeConfig is the bridge of variant v reading w's stream as group.
func (w *world) bridgeConfig(v Variant, group string) (bridge.Config, *ackTap, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return bridge.Config{}, nil, err
	}
	reg := &ackTap{Registerer: prometheus.NewRegistry()}
	log := slog.New(slog.DiscardHandler)
	if w.cfg.Verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return bridge.Config{
		NATSURL: w.natsURL, RedisURL: w.cfg.RedisURL, DatabaseURL: w.cfg.DatabaseURL,
		Streams: []string{w.stream}, Group: group, Consumer: "bench-1",
		Batch: v.Batch, MaxInFlight: v.InFlight, ParseWorkers: v.ParseWorkers, PublishMode: v.Mode, TypedReads: v.TypedReads,
		Listener: ln, Registerer: reg, Logger: log,
	}, reg, nil
}

// runBridge drains the whole stream with a fresh consumer group (created
// from 0 by the bridge) and returns the rate from start to the last XACK.
func (w *world) runBridge(ctx context.Context, v Variant, run, entries, valid int, profile string) (float64, time.Duration, error) {
	nc, js, err := freshStreams(ctx, w.natsURL, false)
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	group := fmt.Sprintf("bench-%d", run)
	defer w.rdb.XGroupDestroy(context.WithoutCancel(ctx), w.stream, group)
	cfg, reg, err := w.bridgeConfig(v, group)
	if err != nil {
		return 0, 0, err
	}
	if profile != "" {
		f, err := os.Create(profile)
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
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		acked, err := reg.acked()
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
	if err := expectMsgs(ctx, js, valid); err != nil {
		return 0, 0, err
	}
	runtime.GC()
	return float64(entries) / elapsed.Seconds(), elapsed, nil
}

// ackTap is the bridge's Registerer with a hand on its acked-entries
// counter, polled every 20 ms: a Gather of the whole registry would also
// read /proc for the process metrics each time, and the benchmark would
// measure that.
type ackTap struct {
	prometheus.Registerer
	mu      sync.Mutex
	counter prometheus.Metric
}

const ackedName = "bridge_entries_acked_total"

func (t *ackTap) Register(c prometheus.Collector) error {
	if m, ok := c.(prometheus.Counter); ok && strings.Contains(m.Desc().String(), `"`+ackedName+`"`) {
		t.mu.Lock()
		t.counter = m
		t.mu.Unlock()
	}
	return t.Registerer.Register(c)
}

func (t *ackTap) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := t.Register(c); err != nil {
			panic(err)
		}
	}
}

// acked is the counter's value; 0 before the bridge registered it.
func (t *ackTap) acked() (float64, error) {
	t.mu.Lock()
	c := t.counter
	t.mu.Unlock()
	if c == nil {
		return 0, nil
	}
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0, err
	}
	return m.GetCounter().GetValue(), nil
}

// cpuTime is the user+system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisInfo is one section of INFO as name → value.
func redisInfo(ctx context.Context, rdb *redis.Client, section string) (map[string]string, error) {
	text, err := rdb.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	info := make(map[string]string)
	for _, line := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			info[k] = v
		}
	}
	return info, nil
}

// redisCalls is how many times redis-server ran each of the bridge's
// read and acknowledge commands (INFO commandstats).
func redisCalls(ctx context.Context, rdb *redis.Client) (xreadgroup, xack int) {
	info, _ := redisInfo(ctx, rdb, "commandstats")
	calls := func(cmd string) int {
		n, _, _ := strings.Cut(strings.TrimPrefix(info["cmdstat_"+cmd], "calls="), ",")
		c, _ := strconv.Atoi(n)
		return c
	}
	return calls("xreadgroup"), calls("xack")
}

// redisCPU is the redis-server's user+system CPU time so far (INFO cpu);
// zero when it cannot be read.
func redisCPU(ctx context.Context, rdb *redis.Client) time.Duration {
	info, _ := redisInfo(ctx, rdb, "cpu")
	sys, _ := strconv.ParseFloat(info["used_cpu_sys"], 64)
	user, _ := strconv.ParseFloat(info["used_cpu_user"], 64)
	return time.Duration((sys + user) * float64(time.Second))
}
