// Command e2e benchmarks the whole pipeline (scripts/bench e2e): XADD to
// Redis → bridge → JetStream → broadcaster → WebSocket clients, and →
// persister → PostgreSQL, each worker its own process built from its cmd/
// (the binaries stage and prod run), on nats-server in a process of its own
// (-nats-process=false embeds it in the bench process, whose CPU line then
// holds it), the Redis and PostgreSQL scripts/bench starts, and the
// Directus fake (testkit/directus) in this process.
//
// Scenarios (-scenarios): pilot = 500 devices at 1 Hz, 100 viewers; 10x =
// 500 devices at 10 Hz, 1,000 viewers; every viewer is a distinct logged-in
// user following the one event. For each it prints the latency from XADD to
// WebSocket receive twice, each beside the share of positions the viewers
// received (below 100% when the broadcaster coalesced a slow client's
// positions, latest per device): over the positions delivered, and over
// every position offered, a coalesced one counted at the delivery of its
// device's next position. Then CPU and peak RSS of each process, the
// broadcaster's CPU per delivered position (with nats-server's), and zero
// loss at the database. The same run measures the floor: XADD →
// XREADGROUP on the same Redis. It writes an SVG of the latency
// distributions (-svg).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"trm-live/contract"
	"trm-live/contract/ws"
	"trm-live/testkit/benchenv"
	"trm-live/testkit/directus"
)

// Config is one run of the benchmark (flags in main.go).
type Config struct {
	Scenarios    []string // pilot, 10x, in order
	Devices      int
	PilotViewers int
	X10Viewers   int
	Duration     time.Duration // measurement window of each scenario
	Warmup       time.Duration // load before the window opens
	RcvBuf       int           // SO_RCVBUF of each viewer connection, 0 = autotuning
	NATSProcess  bool          // nats-server in its own process; false embeds it here
	Probe        bool          // also time XADD → core NATS in this process
	SVG          string        // latency plot; "" = docs/bench/e2e-latency.svg

	benchenv.Servers // Redis, PostgreSQL and the data folder scripts/bench gives
}

type scenario struct {
	Name    string
	Devices int
	Hz      float64
	Viewers int
}

// Run runs the scenarios of cfg and prints their figures.
func Run(ctx context.Context, cfg Config) error {
	redisURL, dbURL, dataDir := cfg.RedisURL, cfg.DatabaseURL, cfg.DataDir
	root, err := benchenv.RepoRoot()
	if err != nil {
		return err
	}
	svgPath := cfg.SVG
	if svgPath == "" {
		svgPath = filepath.Join(root, "docs", "bench", "e2e-latency.svg")
	}
	var scenarios []scenario
	for _, s := range cfg.Scenarios {
		switch strings.TrimSpace(s) {
		case "pilot":
			scenarios = append(scenarios, scenario{"pilot", cfg.Devices, 1, cfg.PilotViewers})
		case "10x":
			scenarios = append(scenarios, scenario{"10x pilot", cfg.Devices, 10, cfg.X10Viewers})
		default:
			return fmt.Errorf("-scenarios: unknown %q", s)
		}
	}
	maxViewers := 0
	for _, s := range scenarios {
		maxViewers = max(maxViewers, s.Viewers)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	started, load0 := time.Now().UTC(), loadavg()
	fmt.Printf("e2e benchmark, %s, %d cores (GOMAXPROCS %d), load average %s\n", started.Format(time.RFC3339), runtime.NumCPU(), runtime.GOMAXPROCS(0), load0)
	binDir := filepath.Join(dataDir, "e2e-bin")
	t0 := time.Now()
	if err := buildWorkers(root, binDir); err != nil {
		return err
	}
	fmt.Printf("built worker binaries in %.1f s\n", time.Since(t0).Seconds())

	// NATS on loopback so the worker processes can reach it: in a process
	// of its own, as in production (-nats-process=false embeds it here).
	store := filepath.Join(dataDir, "e2e-nats")
	_ = os.RemoveAll(store)
	ns, err := benchenv.StartBenchNATS(ctx, natsOptions(store), cfg.NATSProcess, "-role=nats", store)
	if err != nil {
		return err
	}
	defer ns.Stop()
	natsURL := ns.URL
	var natsProc *workerProc // sampled like a worker when apart
	if ns.Child != nil {
		natsProc = &workerProc{name: "nats-server", pid: ns.Child.Pid}
	}

	db, err := setupDB(ctx, root, dbURL, cfg.Devices, maxViewers)
	if err != nil {
		return err
	}

	// The Directus fake (the dev auth backend's): one user per viewer, all
	// members.
	users := make([]directus.User, maxViewers)
	for i := range users {
		users[i] = directus.User{ID: db.userIDs[i], Email: fmt.Sprintf("viewer%d@bench.local", i), Password: "pw"}
	}
	fake := directus.New(directus.Config{Users: users,
		Events: func(context.Context) ([]directus.Event, error) { return []directus.Event{}, nil }})
	if err := fake.Listen("127.0.0.1:0"); err != nil {
		return err
	}
	defer fake.Stop()
	directusURL := fake.URL

	stream := "bench:e2e:positions"
	rdbOpts, err := redis.ParseURL(redisURL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(rdbOpts)
	defer rdb.Close()
	if err := rdb.Del(ctx, stream).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}

	// The workers, each its own process.
	logDir := filepath.Join(dataDir, "e2e-logs")
	_ = os.MkdirAll(logDir, 0o755)
	addrs := map[string]string{}
	workers := []string{"bridge", "persister", "authsvc", "broadcaster"}
	free, err := benchenv.FreeAddrs(len(workers))
	if err != nil {
		return err
	}
	for i, w := range workers {
		addrs[w] = free[i]
	}
	envs := map[string][]string{
		"bridge":      {"NATS_URL=" + natsURL, "REDIS_URL=" + redisURL, "DATABASE_URL=" + db.dsn, "HTTP_ADDR=" + addrs["bridge"], "BRIDGE_STREAMS=" + stream},
		"persister":   {"NATS_URL=" + natsURL, "DATABASE_URL=" + db.dsn, "HTTP_ADDR=" + addrs["persister"]},
		"authsvc":     {"NATS_URL=" + natsURL, "DATABASE_URL=" + db.dsn, "DIRECTUS_URL=" + directusURL, "HTTP_ADDR=" + addrs["authsvc"]},
		"broadcaster": {"NATS_URL=" + natsURL, "HTTP_ADDR=" + addrs["broadcaster"]},
	}
	var procs []*workerProc
	for _, name := range []string{"bridge", "persister", "authsvc", "broadcaster"} {
		p, err := startWorker(filepath.Join(binDir, name), name, envs[name], logDir)
		if err != nil {
			return err
		}
		defer p.stop()
		procs = append(procs, p)
	}
	for _, p := range procs {
		if err := waitReady(ctx, p, addrs[p.name], time.Minute); err != nil {
			return err
		}
	}
	if natsProc != nil {
		procs = append(procs, natsProc)
	}
	fmt.Printf("workers ready (logs in %s)\n", logDir)

	floor, err := redisFloor(ctx, rdb)
	if err != nil {
		return err
	}
	fmt.Printf("floor, XADD → XREADGROUP on the same Redis (2,000 sequential): p50 %s  p99 %s  max %s\n",
		ms(floor.Quantile(0.5)), ms(floor.Quantile(0.99)), ms(floor.Max))

	var results []result
	for _, s := range scenarios {
		r, err := runScenario(ctx, s, scenarioEnv{
			rdb: rdb, stream: stream, db: db, directusURL: directusURL, users: users,
			wsURL: "ws://" + addrs["broadcaster"] + ws.Path, procs: procs, warmup: cfg.Warmup, duration: cfg.Duration,
			rcvbuf: cfg.RcvBuf, natsURL: natsURL, probe: cfg.Probe, natsEmbedded: !cfg.NATSProcess,
		})
		if err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		r.print()
		results = append(results, r)
	}
	if err := os.MkdirAll(filepath.Dir(svgPath), 0o755); err != nil {
		return err
	}
	note := fmt.Sprintf("%s, %d cores; load average %s at start, %s at end (other processes included)",
		started.Format("2006-01-02 15:04 MST"), runtime.NumCPU(), load0, loadavg())
	if err := os.WriteFile(svgPath, plotSVG(results, floor, note), 0o644); err != nil {
		return err
	}
	fmt.Printf("latency plot: %s\nload average at the end: %s\n", svgPath, loadavg())
	return nil
}

// loadavg is the 1, 5 and 15 min load averages: how busy the machine was
// with everything, this benchmark included.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func buildWorkers(root, out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", out+string(filepath.Separator),
		"./bridge/cmd/bridge", "./persister/cmd/persister", "./authsvc/cmd/authsvc", "./broadcaster/cmd/broadcaster")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build workers: %v\n%s", err, b)
	}
	return nil
}

// ---- database ----

type benchDB struct {
	dsn     string
	eventID string
	devices []string
	userIDs []string
}

// setupDB makes a fresh database bench_e2e with the Directus stand-in
// tables, one organization and event, every device assigned to it, and
// `viewers` member users.
func setupDB(ctx context.Context, root, adminDSN string, devices, viewers int) (benchDB, error) {
	dsn, err := benchenv.FreshDatabase(ctx, adminDSN, "bench_e2e")
	if err != nil {
		return benchDB{}, err
	}
	db := benchDB{dsn: dsn, eventID: uuid(), devices: make([]string, devices), userIDs: make([]string, viewers)}
	if err := benchenv.SeedDirectusTables(ctx, db.dsn, root); err != nil {
		return db, fmt.Errorf("stand-in schema: %w", err)
	}
	conn, err := pgx.Connect(ctx, db.dsn)
	if err != nil {
		return db, err
	}
	defer conn.Close(ctx)
	org := uuid()
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO organizations (id, name) VALUES ($1, 'Bench Racing')`, org)
	b.Queue(`INSERT INTO events (id, organization_id, name) VALUES ($1, $2, 'Bench GP')`, db.eventID, org)
	for i := range db.devices {
		db.devices[i] = deviceID(i)
		b.Queue(`INSERT INTO event_devices (id, event_id, device_id) VALUES ($1, $2, $3)`, uuid(), db.eventID, db.devices[i])
	}
	for i := range db.userIDs {
		db.userIDs[i] = uuid()
		b.Queue(`INSERT INTO directus_users (id, email, status) VALUES ($1, $2, 'active')`, db.userIDs[i], fmt.Sprintf("viewer%d@bench.local", i))
		b.Queue(`INSERT INTO organization_users (id, organization_id, user_id) VALUES ($1, $2, $3)`, uuid(), org, db.userIDs[i])
	}
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return db, fmt.Errorf("seed: %w", err)
	}
	return db, nil
}

// deviceID is the IMEI-like id of device i; deviceIndex is its inverse
// (-1 for another id), for the viewers' per-device state.
func deviceID(i int) string { return fmt.Sprintf("35693803%07d", i+1) }

func deviceIndex(id int64) int {
	const base = 356938030000000
	if id <= base || id > base+9999999 {
		return -1
	}
	return int(id-base) - 1
}

func uuid() string {
	var b [16]byte
	f, _ := os.Open("/dev/urandom")
	_, _ = io.ReadFull(f, b[:])
	f.Close()
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// ---- nats-server process ----

func natsOptions(store string) server.Options {
	return server.Options{ServerName: "bench-e2e", JetStream: true,
		StoreDir: store, JetStreamMaxMemory: 512 << 20, JetStreamMaxStore: 16 << 30}
}

// natsMain is the -role=nats child: nats-server with JetStream on a free
// loopback port; it prints its client URL and stops at stdin EOF.
func natsMain(store string) error {
	return benchenv.ServeNATS(natsOptions(store), os.Stdin, os.Stdout)
}

// startChild starts this binary in another role, with a pipe to its
// stdin (kept in the workerProc) and one from its stdout; its stderr is
// ours.
func startChild(ctx context.Context, name string, args ...string) (*workerProc, *bufio.Reader, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	p := &workerProc{name: name, cmd: cmd, done: make(chan struct{}), stdin: stdin}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, bufio.NewReaderSize(stdout, 1<<20), nil
}

// ---- worker processes ----

type workerProc struct {
	name string
	cmd  *exec.Cmd
	pid  int // a process the benchmark only samples (the nats-server child): cmd nil
	done chan struct{}

	mu      sync.Mutex
	peakRSS int64 // bytes, sampled

	stdin io.WriteCloser // children of this binary only (startChild); stop closes it
}

func startWorker(path, name string, env []string, logDir string) (*workerProc, error) {
	f, err := os.Create(filepath.Join(logDir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "LOG_LEVEL=warn", "GOMAXPROCS=" + strconv.Itoa(runtime.NumCPU())}, env...)
	// The worker's own settings from the bench's environment apply, so
	// they can be compared: BROADCASTER_CLIENT_BACKLOG=-1 scripts/bench e2e
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, strings.ToUpper(name)+"_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &workerProc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

func (p *workerProc) stop() {
	if p.stdin != nil {
		_ = p.stdin.Close()
	} else {
		_ = p.cmd.Process.Signal(os.Interrupt)
	}
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func waitReady(ctx context.Context, p *workerProc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before ready; see its log", p.name)
		default:
		}
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s", p.name, timeout)
}

// cpuSeconds is the process's CPU time so far.
func (p *workerProc) cpuSeconds() float64 { return benchenv.CPUSeconds(p.processID()) }

func (p *workerProc) rss() int64 { return benchenv.RSS(p.processID()) }

func (p *workerProc) processID() int {
	if p.cmd == nil {
		return p.pid
	}
	return p.cmd.Process.Pid
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// ---- floor ----

func redisFloor(ctx context.Context, rdb *redis.Client) (*benchenv.Hist, error) {
	key := "bench:e2e:floor"
	_ = rdb.Del(ctx, key).Err()
	defer rdb.Del(ctx, key)
	if err := rdb.XGroupCreateMkStream(ctx, key, "g", "$").Err(); err != nil {
		return nil, err
	}
	reader := redis.NewClient(rdb.Options())
	defer reader.Close()
	h := benchenv.NewHist()
	for i := 0; i < 2000; i++ {
		t0 := time.Now()
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []string{"k", "v"}}).Err(); err != nil {
			return nil, err
		}
		if _, err := reader.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: []string{key, ">"}, Count: 1, Block: time.Second}).Result(); err != nil {
			return nil, err
		}
		h.Add(time.Since(t0))
	}
	return h, nil
}

// ---- scenario ----

type scenarioEnv struct {
	rdb         *redis.Client
	stream      string
	db          benchDB
	directusURL string
	users       []directus.User
	wsURL       string
	procs       []*workerProc
	warmup      time.Duration
	duration    time.Duration
	rcvbuf      int // SO_RCVBUF of each viewer connection; 0 = autotuning
	natsURL     string
	probe       bool // subscribe to core NATS for the XADD → NATS split
	// natsEmbedded: nats-server runs in this process, its CPU in the bench
	// line.
	natsEmbedded bool
	period       time.Duration // per device, set per scenario
}

type workerStat struct {
	name    string
	cpu     float64 // cores busy, averaged over the window
	peakRSS int64
}

type result struct {
	s            scenario
	lat          *benchenv.Hist // positions delivered in the window
	all          *benchenv.Hist // every position offered in the window, a coalesced one at its successor's delivery
	natsLat      *benchenv.Hist // XADD → core NATS receive, in the window: the bridge's share
	produced     int64          // in the window
	sent         int64          // in the whole scenario
	dbRows       int64
	delivered    []float64 // per viewer: share of window positions received
	workers      []workerStat
	benchCPU     float64
	window       time.Duration
	connectDur   time.Duration
	lateMax      time.Duration // how far the producer fell behind its schedule
	closedEarly  int           // viewer connections the server ended during the scenario
	closeErr     string        // one of their close errors
	errors       []string
	natsEmbedded bool
}

func runScenario(ctx context.Context, s scenario, e scenarioEnv) (result, error) {
	r := result{s: s, lat: benchenv.NewHist(), all: benchenv.NewHist(), natsLat: benchenv.NewHist(), natsEmbedded: e.natsEmbedded}
	e.period = time.Duration(float64(time.Second) / s.Hz)
	fmt.Printf("\n== %s: %d devices at %g Hz (%g positions/s), %d viewers\n", s.Name, s.Devices, s.Hz, float64(s.Devices)*s.Hz, s.Viewers)

	// Viewers run in child processes of this binary (-role viewers), so the
	// producer here keeps its pace however busy they are: up to 500
	// viewers per process. Each logs its users in, connects and
	// subscribes, then says "ready".
	t0 := time.Now()
	var kids []*viewerProc
	per := 500
	for first := 0; first < s.Viewers; first += per {
		n := min(per, s.Viewers-first)
		k, err := startViewers(ctx, e, first, n)
		if err != nil {
			for _, k := range kids {
				k.kill()
			}
			return r, err
		}
		kids = append(kids, k)
	}
	defer func() {
		for _, k := range kids {
			k.kill()
		}
	}()
	for _, k := range kids {
		if err := k.waitReady(2 * time.Minute); err != nil {
			return r, err
		}
	}
	r.connectDur = time.Since(t0)
	fmt.Printf("%d viewers (in %d processes) logged in, connected and subscribed in %.1f s\n", s.Viewers, len(kids), r.connectDur.Seconds())

	// Producer: each tick's positions in ten slices spread over the tick,
	// as unsynchronised trackers send. Every entry carries its send time in
	// attrs ({"sent":<unix ns>}, taken just before its slice's XADDs), which
	// the pipeline passes through to the WebSocket item unchanged.
	const slices = 10
	tick := time.Duration(float64(time.Second) / s.Hz)
	start := time.Now().Add(200 * time.Millisecond).Truncate(10 * time.Millisecond)
	windowStart, windowEnd := start.Add(e.warmup), start.Add(e.warmup+e.duration)
	for _, k := range kids {
		if err := k.setWindow(windowStart, windowEnd); err != nil {
			return r, err
		}
	}
	var cpu0 map[string]float64
	var self0 float64
	procs := append([]*workerProc(nil), e.procs...)
	for _, k := range kids {
		procs = append(procs, k.proc)
	}
	sampleStop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	peaks := map[string]int64{}
	go func() {
		defer sampler.Done()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-sampleStop:
				return
			case <-t.C:
				for _, p := range procs {
					peaks[p.name] = max(peaks[p.name], p.rss())
				}
			}
		}
	}()
	// Probe (-probe): the positions as the broadcaster receives them (core
	// NATS), to split the latency between the bridge and broadcaster +
	// viewers.
	var (
		probeMu sync.Mutex
		probe   *nats.Subscription
	)
	if e.probe {
		nc, err := nats.Connect(e.natsURL)
		if err != nil {
			return r, err
		}
		defer nc.Close()
		if probe, err = nc.Subscribe(contract.EventSubject(e.db.eventID), func(m *nats.Msg) {
			at := time.Now()
			i := bytes.Index(m.Data, []byte(`"sent":`))
			if i < 0 || at.Before(windowStart) {
				return
			}
			b := m.Data[i+len(`"sent":`):]
			n := 0
			for n < len(b) && b[n] >= '0' && b[n] <= '9' {
				n++
			}
			ns, err := strconv.ParseInt(string(b[:n]), 10, 64)
			if err != nil {
				return
			}
			probeMu.Lock()
			r.natsLat.Add(at.Sub(time.Unix(0, ns)))
			probeMu.Unlock()
		}); err != nil {
			return r, err
		}
		_ = probe.SetPendingLimits(-1, -1)
	}

	pipe := e.rdb.Pipeline()
	var produced, sent int64
	late := time.Duration(0)
	for k := 0; ; k++ {
		tickAt := start.Add(time.Duration(k) * tick)
		if !tickAt.Before(windowEnd) {
			break
		}
		if cpu0 == nil && !tickAt.Before(windowStart) {
			cpu0 = map[string]float64{}
			for _, p := range procs {
				cpu0[p.name] = p.cpuSeconds()
			}
			self0 = benchenv.CPUSeconds(os.Getpid())
		}
		ts := strconv.FormatInt(tickAt.UnixMilli(), 10)
		inWindow := !tickAt.Before(windowStart)
		for sl := 0; sl < slices; sl++ {
			at := tickAt.Add(time.Duration(sl) * tick / slices)
			if d := time.Until(at); d > 0 {
				time.Sleep(d)
			} else if inWindow {
				late = max(late, -d)
			}
			lo, hi := sl*s.Devices/slices, (sl+1)*s.Devices/slices
			sentNS := time.Now().UnixNano()
			attrs := `{"sent":` + strconv.FormatInt(sentNS, 10) + `}`
			for i := lo; i < hi; i++ {
				a := float64(k)/s.Hz/60*2*math.Pi + float64(i)
				pipe.XAdd(ctx, &redis.XAddArgs{Stream: e.stream, Values: []string{
					"device_id", e.db.devices[i], "ts", ts,
					"lat", strconv.FormatFloat(45.62+0.01*math.Sin(a), 'f', 6, 64),
					"lon", strconv.FormatFloat(9.28+0.014*math.Cos(a), 'f', 6, 64),
					"speed", "180.5", "heading", "90", "sats", "11", "attrs", attrs,
				}})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return r, fmt.Errorf("xadd: %w", err)
			}
			sent += int64(hi - lo)
			// The viewers count a position by its send time: so does the
			// share's denominator, or a late slice of the last tick
			// would read as undelivered.
			if sentNS >= windowStart.UnixNano() && sentNS < windowEnd.UnixNano() {
				produced += int64(hi - lo)
			}
		}
	}
	windowDur := time.Since(windowStart)
	r.lateMax = late
	for _, p := range procs {
		r.workers = append(r.workers, workerStat{name: p.name, cpu: (p.cpuSeconds() - cpu0[p.name]) / windowDur.Seconds()})
	}
	r.benchCPU = (benchenv.CPUSeconds(os.Getpid()) - self0) / windowDur.Seconds()
	r.window, r.produced, r.sent = windowDur, produced, sent

	// Let the last positions arrive, then collect the viewers' results.
	if probe != nil {
		_ = probe.Unsubscribe() // the window is over
	}
	time.Sleep(3 * time.Second)
	probeMu.Lock() // no callback runs after the unsubscribe; this orders its last add before the reads
	probeMu.Unlock()
	close(sampleStop)
	sampler.Wait()
	for i := range r.workers {
		r.workers[i].peakRSS = peaks[r.workers[i].name]
	}
	for _, k := range kids {
		vr, err := k.finish()
		if err != nil {
			return r, err
		}
		h := benchenv.NewHist()
		copy(h.Counts, vr.Counts)
		h.N, h.Max = vr.N, time.Duration(vr.MaxNS)
		r.lat.Merge(h)
		h = benchenv.NewHist()
		copy(h.Counts, vr.AllCounts)
		h.N, h.Max = vr.AllN, time.Duration(vr.AllMaxNS)
		r.all.Merge(h)
		for _, got := range vr.Received {
			r.delivered = append(r.delivered, float64(got)/float64(max(produced, 1)))
		}
		r.closedEarly += vr.Closed
		if vr.CloseErr != "" {
			r.closeErr = vr.CloseErr
		}
	}

	// Zero loss at the database: every position of the scenario is stored.
	conn, err := pgx.Connect(ctx, e.db.dsn)
	if err != nil {
		return r, err
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM positions WHERE ts >= $1 AND ts < $2`, start, windowEnd).Scan(&r.dbRows); err != nil {
			return r, err
		}
		if r.dbRows >= sent || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if r.dbRows != sent {
		r.errors = append(r.errors, fmt.Sprintf("DATABASE LOSS: %d rows for %d positions sent", r.dbRows, sent))
	}
	return r, nil
}

func connectViewer(ctx context.Context, directusURL, wsURL string, u directus.User, eventID string, rcvbuf int) (*benchenv.RawConn, error) {
	body, _ := json.Marshal(map[string]string{"email": u.Email, "password": u.Password, "mode": "session"})
	resp, err := http.Post(directusURL+"/auth/login", "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	var cookie string
	for _, c := range resp.Cookies() {
		if c.Name == directus.CookieName {
			cookie = c.Value
		}
	}
	if cookie == "" {
		return nil, fmt.Errorf("login %s: %d, no cookie", u.Email, resp.StatusCode)
	}
	h := http.Header{}
	wu, _ := url.Parse(wsURL)
	h.Set("Origin", "http://"+wu.Host)
	h.Set("Cookie", directus.CookieName+"="+cookie)
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := benchenv.DialRaw(dctx, wsURL, h, rcvbuf)
	if err != nil {
		return nil, err
	}
	if err := c.WriteText(ws.Request{Type: ws.TypeSubscribe, Topic: ws.EventTopic(eventID), ID: "s"}.Encode()); err != nil {
		c.Close()
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		data, err := c.ReadMessage()
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("subscribe: %w", err)
		}
		f, err := ws.DecodeFrame(data)
		if err != nil {
			continue
		}
		if f.Type == ws.TypeSubscribed {
			break
		}
		if f.Type == ws.TypeError {
			c.Close()
			return nil, fmt.Errorf("subscribe: %s %s", f.Code, f.Message)
		}
	}
	c.SetReadDeadline(time.Time{})
	return c, nil
}

// share is the mean and lowest share of the window's positions the
// viewers received.
func (r result) share() (mean, low float64) {
	if len(r.delivered) == 0 {
		return 0, 0
	}
	low = 1
	for _, x := range r.delivered {
		mean += x
		low = min(low, x)
	}
	return mean / float64(len(r.delivered)), low
}

func (r result) print() {
	rate := float64(r.produced) / r.window.Seconds()
	fmt.Printf("window %.1f s: %d positions XADDed (%.0f/s; producer at most %s behind schedule), %d viewer deliveries measured (%.0f/s)\n",
		r.window.Seconds(), r.produced, rate, ms(r.lateMax), r.lat.N, float64(r.lat.N)/r.window.Seconds())
	mean, low := r.share()
	fmt.Printf("latency XADD → WebSocket receive: p50 %s  p99 %s  p99.9 %s  max %s   (positions delivered: mean share %.2f%%, min %.2f%%)\n",
		ms(r.lat.Quantile(0.5)), ms(r.lat.Quantile(0.99)), ms(r.lat.Quantile(0.999)), ms(r.lat.Max), 100*mean, 100*low)
	fmt.Printf("latency XADD → WebSocket receive, every position offered, a coalesced one at its successor's delivery: p50 %s  p99 %s  p99.9 %s  max %s   (share delivered: mean %.2f%%, min %.2f%%)\n",
		ms(r.all.Quantile(0.5)), ms(r.all.Quantile(0.99)), ms(r.all.Quantile(0.999)), ms(r.all.Max), 100*mean, 100*low)
	if r.natsLat.N > 0 {
		fmt.Printf("  of which XADD → NATS (bridge; -probe subscriber, %d positions, every one): p50 %s  p99 %s  max %s\n",
			r.natsLat.N, ms(r.natsLat.Quantile(0.5)), ms(r.natsLat.Quantile(0.99)), ms(r.natsLat.Max))
	}
	if len(r.delivered) > 0 {
		fmt.Printf("share of window positions each viewer received: mean %.2f%%, min %.2f%%\n", 100*mean, 100*low)
	}
	if r.closedEarly > 0 {
		fmt.Printf("viewer connections ended by the server during the scenario: %d (e.g. %s)\n", r.closedEarly, r.closeErr)
	}
	fmt.Printf("database: %d rows for %d positions sent in the scenario\n", r.dbRows, r.sent)
	var bc, nc float64
	for _, w := range r.workers {
		fmt.Printf("  %-12s CPU %5.1f%% of a core   peak RSS %6.1f MiB\n", w.name, 100*w.cpu, float64(w.peakRSS)/(1<<20))
		switch w.name {
		case "broadcaster":
			bc = w.cpu
		case "nats-server":
			nc = w.cpu
		}
	}
	if r.natsEmbedded {
		fmt.Printf("  %-12s CPU %5.1f%% of a core (producer and the embedded nats-server, not apart)\n", "bench", 100*r.benchCPU)
	} else {
		fmt.Printf("  %-12s CPU %5.1f%% of a core (producer)\n", "bench", 100*r.benchCPU)
	}
	perSec := float64(r.lat.N) / r.window.Seconds()
	if perSec > 0 {
		if r.natsEmbedded {
			fmt.Printf("CPU per delivered position: broadcaster %.3f µs (nats-server embedded in the bench process: not attributed)\n", bc/perSec*1e6)
		} else {
			fmt.Printf("CPU per delivered position: broadcaster %.3f µs, with nats-server %.3f µs\n", bc/perSec*1e6, (bc+nc)/perSec*1e6)
		}
	}
	for _, e := range r.errors {
		fmt.Println("ERROR:", e)
	}
}
