package soakrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/contract/ws"
	"trm-live/scripts/simulate"
	"trm-live/testkit/directus"

	"trm-live/testkit/benchenv"
)

// ErrViolation is returned by Run when a model check failed.
var ErrViolation = errors.New("soak: model violation")

const (
	redisStream = "telemetry:positions"
	redisGroup  = "bridge"
	dbName      = "trm"
)

// natsUsers are the accounts.conf users whose passwords the soak sets.
var natsUsers = []string{"route", "sys", "bridge", "persister", "broadcaster", "authsvc", "ops"}

// soak is one run's state.
type soak struct {
	cfg  Config
	log  *slog.Logger
	out  io.Writer
	bin  string
	logs string

	pg        *pgServer
	redis     *proc
	redisPort int
	nats      []*proc
	natsPorts []int // client ports
	workers   []*proc
	standin   *directus.Server
	// With -directus: the real Directus, the proxy authsvc talks to, the
	// viewers' cookies and the version from /server/info.
	real      *realDirectus
	proxy     *Proxy
	dxViewers []dxViewer
	cookies   []string
	dxVersion string
	dfault    directusFaults
	viewers   []*viewer
	prod      *producer
	tl        *Timeline
	eventID   string
	passwords map[string]string

	mu      sync.Mutex
	faults  []faultRecord
	outages time.Duration
}

type faultRecord struct {
	Fault
	start, end time.Time     // injected, target back
	ready      time.Duration // from start until every process ready; -1 never
	latency    time.Duration // from start until a second's p99 under target; -1 never
	err        string
}

// Run runs one soak and writes its report to cfg.Out. It returns
// ErrViolation (wrapped) when a model check failed.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano()) % 1_000_000_000
	}
	if cfg.Root == "" {
		return errors.New("soak: Root (the repository root) is not set")
	}
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join(cfg.Root, ".data", "soak")
	}
	if cfg.SVG == "" {
		cfg.SVG = filepath.Join(cfg.DataDir, "timeline.svg")
	}
	s := &soak{cfg: cfg, log: cfg.Logger, out: cfg.Out, passwords: map[string]string{}}
	fmt.Fprintf(s.out, "soak: seed %d, duration %s, %d devices at %g Hz (bad %.1f%%), %d viewers, %d cores, load average %s\n",
		cfg.Seed, cfg.Duration, cfg.Devices, cfg.Rate, 100*cfg.Bad, cfg.Viewers, runtime.NumCPU(), loadavg())
	replayDX := ""
	if cfg.Directus != "" {
		replayDX = " -directus " + cfg.Directus
	}
	fmt.Fprintf(s.out, "soak: replay with: scripts/soak -seed %d -duration %s -viewers %d -gap %s -warmup %s -quiet %s%s\n",
		cfg.Seed, cfg.Duration, cfg.Viewers, cfg.Gap, cfg.Warmup, cfg.Quiet, replayDX)
	defer s.teardown()
	if err := s.setup(ctx); err != nil {
		return err
	}
	return s.race(ctx)
}

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

func (s *soak) setup(ctx context.Context) error {
	c := s.cfg
	_ = os.RemoveAll(c.DataDir)
	s.bin = filepath.Join(c.DataDir, "bin")
	s.logs = filepath.Join(c.DataDir, "logs")
	for _, d := range []string{s.bin, s.logs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	t0 := time.Now()
	if err := s.build(); err != nil {
		return err
	}
	fmt.Fprintf(s.out, "soak: built the workers and nats-server in %.1f s\n", time.Since(t0).Seconds())

	ports, err := benchenv.FreePorts(2 + 9 + 8)
	if err != nil {
		return err
	}
	// PostgreSQL.
	bin, err := pgBin()
	if err != nil {
		return err
	}
	s.pg = &pgServer{bin: bin, dir: filepath.Join(c.DataDir, "pg"), port: ports[0]}
	if err := s.pg.init(); err != nil {
		return err
	}
	if err := s.pg.start(); err != nil {
		return err
	}
	if c.Directus != "" {
		if err := s.seedDirectus(ctx); err != nil {
			return err
		}
	}
	if err := s.seed(ctx); err != nil {
		return err
	}
	// Redis: AOF with appendfsync always, so an acknowledged XADD survives
	// kill -9.
	s.redisPort = ports[1]
	rdir := filepath.Join(c.DataDir, "redis")
	_ = os.MkdirAll(rdir, 0o755)
	s.redis = &proc{name: "redis", path: "redis-server", log: filepath.Join(s.logs, "redis.log"), env: []string{"PATH=" + os.Getenv("PATH")},
		args: []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(s.redisPort), "--dir", rdir, "--appendonly", "yes", "--appendfsync", "always", "--save", ""}}
	if err := s.redis.start(); err != nil {
		return err
	}
	// NATS: three nodes from deploy/nats/prod.conf.
	for _, u := range natsUsers {
		s.passwords[u] = fmt.Sprintf("soak-%s-%d", u, c.Seed)
	}
	var routes []string
	for i := range 3 {
		routes = append(routes, fmt.Sprintf("nats://route:%s@127.0.0.1:%d", s.passwords["route"], ports[2+3*i+1]))
	}
	for i := range 3 {
		name := fmt.Sprintf("nats-%d", i+1)
		cp, rp, hp := ports[2+3*i], ports[2+3*i+1], ports[2+3*i+2]
		conf, err := natsNodeConf(c.Root, filepath.Join(c.DataDir, name), cp, rp, hp)
		if err != nil {
			return err
		}
		env := []string{"PATH=" + os.Getenv("PATH"), "NATS_SERVER_NAME=" + name, "NATS_ROUTES=[" + strings.Join(routes, ",") + "]"}
		for u, pw := range s.passwords {
			env = append(env, "NATS_"+strings.ToUpper(u)+"_PASSWORD="+pw)
		}
		p := &proc{name: name, path: filepath.Join(s.bin, "nats-server"), args: []string{"-c", conf}, env: env,
			log: filepath.Join(s.logs, name+".log"), ready: fmt.Sprintf("http://127.0.0.1:%d/healthz", hp)}
		s.nats = append(s.nats, p)
		s.natsPorts = append(s.natsPorts, cp)
		if err := p.start(); err != nil {
			return err
		}
	}
	for _, p := range s.nats {
		if err := p.waitReady(ctx, time.Minute); err != nil {
			return err
		}
	}
	// Directus: the stand-in with one user per viewer, or the proxy in
	// front of the real one.
	directusURL := ""
	if c.Directus != "" {
		p, err := NewProxy(c.Directus)
		if err != nil {
			return err
		}
		if err := p.Listen(""); err != nil {
			return err
		}
		s.proxy, s.dfault, directusURL = p, p, p.URL
	} else {
		users := make([]directus.User, c.Viewers)
		for i := range users {
			users[i] = directus.User{ID: simulate.StableUUID(fmt.Sprintf("soak-viewer:%d", i)), Email: fmt.Sprintf("viewer%d@soak.local", i), Password: "pw", AppAccess: true}
		}
		s.standin = directus.New(directus.Config{Users: users})
		if err := s.standin.Listen(""); err != nil {
			return err
		}
		s.dfault, directusURL = s.standin, s.standin.URL
	}
	// Workers: two of each.
	redisURL := fmt.Sprintf("redis://127.0.0.1:%d/0", s.redisPort)
	dbURL := s.pg.url(dbName)
	wp := ports[11:]
	k := 0
	for _, w := range []string{"bridge", "persister", "authsvc", "broadcaster"} {
		for i := 1; i <= 2; i++ {
			name := fmt.Sprintf("%s-%d", w, i)
			addr := fmt.Sprintf("127.0.0.1:%d", wp[k])
			k++
			env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "LOG_LEVEL=info", "NATS_URL=" + s.natsURL(w), "HTTP_ADDR=" + addr, "GOMAXPROCS=2"}
			switch w {
			case "bridge":
				env = append(env, "REDIS_URL="+redisURL, "DATABASE_URL="+dbURL, "BRIDGE_STREAMS="+redisStream, "BRIDGE_GROUP="+redisGroup,
					"BRIDGE_CONSUMER="+name, "STREAM_REPLICAS=3")
			case "persister":
				env = append(env, "DATABASE_URL="+dbURL)
			case "authsvc":
				env = append(env, "DATABASE_URL="+dbURL, "DIRECTUS_URL="+directusURL, "AUTHSVC_SESSION_TTL=5s", "AUTHSVC_FAILURE_TTL=1s")
			case "broadcaster":
				env = append(env, "BROADCASTER_REAUTH_INTERVAL=5s")
			}
			p := &proc{name: name, path: filepath.Join(s.bin, w), env: env, log: filepath.Join(s.logs, name+".log"),
				ready: "http://" + addr + "/readyz", metrics: "http://" + addr + "/metrics"}
			s.workers = append(s.workers, p)
			if err := p.start(); err != nil {
				return err
			}
		}
	}
	for _, p := range s.workers {
		if err := p.waitReady(ctx, 2*time.Minute); err != nil {
			return err
		}
	}
	if s.real != nil {
		// Logged in after the topology is up, so no session is older
		// than it needs to be.
		t1 := time.Now()
		cookies, err := s.real.loginAll(ctx, s.dxViewers)
		if err != nil {
			return fmt.Errorf("directus: viewer login: %w", err)
		}
		s.cookies = cookies
		fmt.Fprintf(s.out, "soak: %d viewers logged in to the real Directus (mode session) in %.1f s\n", len(cookies), time.Since(t1).Seconds())
	}
	fmt.Fprintf(s.out, "soak: topology ready in %.1f s: 3 NATS nodes (R3, sync always), 2 × bridge, persister, authsvc, broadcaster; Redis (AOF always), PostgreSQL; logs in %s\n",
		time.Since(t0).Seconds(), s.logs)
	return nil
}

// natsURL is the three nodes' URLs with user's credentials.
func (s *soak) natsURL(user string) string {
	var us []string
	for _, p := range s.natsPorts {
		us = append(us, fmt.Sprintf("nats://%s:%s@127.0.0.1:%d", user, s.passwords[user], p))
	}
	return strings.Join(us, ",")
}

func (s *soak) build() error {
	cmd := exec.Command("go", "build", "-o", s.bin+string(filepath.Separator),
		"./bridge/cmd/bridge", "./persister/cmd/persister", "./authsvc/cmd/authsvc", "./broadcaster/cmd/broadcaster")
	cmd.Dir = s.cfg.Root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build workers: %v\n%s", err, out)
	}
	// nats-server at the version the workspace requires.
	cmd = exec.Command("go", "build", "-o", filepath.Join(s.bin, "nats-server"), "github.com/nats-io/nats-server/v2")
	cmd.Dir = filepath.Join(s.cfg.Root, "scripts")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build nats-server: %v\n%s", err, out)
	}
	return nil
}

// seed creates the database with the Directus stand-in tables, the event
// with every device, and one member user per viewer. With a real Directus
// the rows are the ones seedDirectus created there, with the same ids: the
// workers read them from the soak's PostgreSQL (see docs/soak.md).
func (s *soak) seed(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.pg.url("postgres"))
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+dbName)
	conn.Close(ctx)
	if err != nil {
		return err
	}
	conn, err = pgx.Connect(ctx, s.pg.url(dbName))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	schema, err := os.ReadFile(filepath.Join(s.cfg.Root, "deploy", "seed", "directus-standin.sql"))
	if err != nil {
		return err
	}
	devices := s.devices()
	b := &pgx.Batch{}
	if s.real != nil {
		if _, err := conn.Exec(ctx, string(schema)); err != nil {
			return fmt.Errorf("apply stand-in schema: %w", err)
		}
		r := s.real
		s.eventID = r.eventID
		b.Queue(`INSERT INTO organizations (id, name) VALUES ($1, 'soak')`, r.orgID)
		b.Queue(`INSERT INTO events (id, organization_id, name) VALUES ($1, $2, 'soak')`, r.eventID, r.orgID)
		b.Queue(`INSERT INTO event_devices (id, event_id, device_id) SELECT gen_random_uuid(), $1, d FROM unnest($2::text[]) d`, r.eventID, devices)
		for _, v := range s.dxViewers {
			b.Queue(`INSERT INTO directus_users (id, email, status) VALUES ($1, $2, 'active')`, v.ID, v.Email)
			b.Queue(`INSERT INTO organization_users (id, organization_id, user_id) VALUES (gen_random_uuid(), $1, $2)`, r.orgID, v.ID)
		}
		return conn.SendBatch(ctx, b).Close()
	}
	seeded, err := simulate.Seed(ctx, conn, string(schema), devices, 1)
	if err != nil {
		return err
	}
	s.eventID = seeded.EventIDs[0]
	for i := range s.cfg.Viewers {
		id := simulate.StableUUID(fmt.Sprintf("soak-viewer:%d", i))
		b.Queue(`INSERT INTO directus_users (id, email, status) VALUES ($1, $2, 'active')`, id, fmt.Sprintf("viewer%d@soak.local", i))
		b.Queue(`INSERT INTO organization_users (id, organization_id, user_id) VALUES ($1, $2, $3)`, simulate.StableUUID(fmt.Sprintf("soak-member:%d", i)), seeded.OrganizationID, id)
	}
	return conn.SendBatch(ctx, b).Close()
}

func (s *soak) devices() []string {
	devices := make([]string, s.cfg.Devices)
	for i := range devices {
		devices[i] = simulate.DeviceID(i)
	}
	return devices
}

// seedDirectus logs in to the real Directus as its admin, reads its
// version and creates the organization, the event with every device and
// one member user per viewer there.
func (s *soak) seedDirectus(ctx context.Context) error {
	c := s.cfg
	t0 := time.Now()
	r := newRealDirectus(c.Directus, c.DirectusAdminEmail, c.DirectusAdminPassword)
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := r.adminLogin(sctx); err != nil {
		return err
	}
	s.real = r // from here on, teardown removes what was created
	s.dxVersion = r.version(sctx)
	vs, err := r.seed(sctx, fmt.Sprintf("soak-%d-%s", c.Seed, randomHex(3)), s.devices(), c.Viewers)
	if err != nil {
		return fmt.Errorf("directus: seed: %w", err)
	}
	s.dxViewers = vs
	fmt.Fprintf(s.out, "soak: real Directus %s (version %s): seeded an organization, an event with %d devices and %d member users in %.1f s\n",
		c.Directus, s.dxVersion, c.Devices, len(vs), time.Since(t0).Seconds())
	return nil
}

// directusLabel says which Directus the run used, for the report.
func (s *soak) directusLabel() string {
	if s.real != nil {
		return fmt.Sprintf("real, %s, version %s (authsvc through the soak's fault proxy %s)", s.cfg.Directus, s.dxVersion, s.proxy.URL)
	}
	return "the stand-in (testkit/directus, in the soak's process)"
}

func (s *soak) teardown() {
	for _, p := range s.workers {
		p.stop(30 * time.Second)
	}
	for _, p := range s.nats {
		p.stop(10 * time.Second)
	}
	if s.redis != nil {
		s.redis.stop(10 * time.Second)
	}
	if s.standin != nil {
		s.standin.Stop()
	}
	if s.proxy != nil {
		s.proxy.Close()
	}
	if s.real != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := s.real.cleanup(ctx); err != nil {
			fmt.Fprintf(s.out, "soak: removing the seeded organization and users from the real Directus: %v\n", err)
		}
		cancel()
	}
	if s.pg != nil {
		_ = s.pg.stop("fast")
	}
}

// allProcs is every process whose readiness counts.
func (s *soak) allProcs() []*proc {
	return append(append([]*proc{s.redis}, s.nats...), s.workers...)
}

func (s *soak) race(ctx context.Context) error {
	c := s.cfg
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", s.redisPort), MaxRetries: -1})
	defer rdb.Close()
	sim := simulate.New(simulate.Options{Devices: c.Devices, Seed: c.Seed, BadFraction: c.Bad})
	s.prod = newProducer(rdb, redisStream, sim, c.Rate)
	start := time.Now().Add(time.Second).Truncate(time.Second)
	s.tl = NewTimeline(start)
	s.tl.WarmFrom, s.tl.WarmTo = 5*time.Second, c.Warmup

	// Viewers: log in, then follow the event on alternating broadcasters.
	var urls []string
	for _, p := range s.workers {
		if strings.HasPrefix(p.name, "broadcaster") {
			urls = append(urls, "ws"+strings.TrimSuffix(strings.TrimPrefix(p.ready, "http"), "/readyz")+ws.Path)
		}
	}
	vctx, stopViewers := context.WithCancel(ctx)
	var vwg sync.WaitGroup
	defer func() { stopViewers(); vwg.Wait() }()
	calm := &atomic.Bool{}
	for i := range c.Viewers {
		var cookie string
		if s.real != nil {
			cookie = s.cookies[i]
		} else {
			var ok bool
			if cookie, ok = s.standin.Session(fmt.Sprintf("viewer%d@soak.local", i), "pw"); !ok {
				return fmt.Errorf("stand-in: viewer %d cannot log in", i)
			}
		}
		kind := kindNormal
		switch i % 10 {
		case 3:
			kind = kindSlow
		case 7:
			kind = kindReconnecting
		}
		v := &viewer{idx: i, name: ViewerName(i), kind: kind, urls: urls, cookie: cookie, topic: ws.EventTopic(s.eventID), tl: s.tl,
			sched: s.prod.scheduled, calm: calm, rnd: rand.New(rand.NewPCG(c.Seed, uint64(i)))}
		s.viewers = append(s.viewers, v)
		vwg.Add(1)
		go func() { defer vwg.Done(); v.run(vctx) }()
	}

	// Load.
	until := start.Add(c.Duration)
	pctx, stopProd := context.WithCancel(ctx)
	defer stopProd()
	prodErr := make(chan error, 1)
	go func() { prodErr <- s.prod.run(pctx, start, until) }()

	var workerNames []string
	for _, p := range s.workers {
		workerNames = append(workerNames, p.name)
	}
	schedule := Schedule(ScheduleConfig{Seed: c.Seed, Duration: c.Duration, Warmup: c.Warmup, Quiet: c.Quiet, Gap: c.Gap,
		Workers: workerNames, NATSNodes: len(s.nats), Viewers: c.Viewers, MaxLogouts: c.MaxLogouts})
	fmt.Fprintf(s.out, "soak: %d faults scheduled (seed %d):\n", len(schedule), c.Seed)
	for _, f := range schedule {
		fmt.Fprintf(s.out, "  %s\n", f)
	}
	// Baseline after warm-up.
	warm := map[string]Usage{}
	if err := sleepUntil(ctx, start.Add(c.Warmup-time.Second)); err != nil {
		return err
	}
	for _, p := range s.workers {
		u, err := p.usage(ctx)
		if err != nil {
			fmt.Fprintf(s.out, "soak: warm-up usage of %s: %v\n", p.name, err)
		}
		warm[p.name] = u
	}
	// Faults; a supervisor restarts a worker that exits by itself (counted).
	supCtx, stopSup := context.WithCancel(ctx)
	defer stopSup()
	go s.supervise(supCtx)
	for i, f := range schedule {
		if err := sleepUntil(ctx, start.Add(f.At)); err != nil {
			return err
		}
		// A slow recovery delays the rest; none starts in the quiet tail.
		if time.Now().After(until.Add(-c.Quiet)) {
			fmt.Fprintf(s.out, "soak: %d faults left out: recovery ran into the quiet tail\n", len(schedule)-i)
			break
		}
		s.inject(ctx, f)
	}
	select {
	case err := <-prodErr:
		if err != nil {
			return fmt.Errorf("producer: %w", err)
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	calm.Store(true)
	loadEnd := time.Now()
	fmt.Fprintf(s.out, "soak: load stopped after %s (%d entries written, producer at most %s behind schedule); draining\n",
		loadEnd.Sub(start).Round(time.Second), s.prod.sent, s.prod.late.Round(time.Millisecond))

	// Drain: everything stored, dead-lettered, acknowledged; every viewer
	// holding the latest.
	checks, err := s.drainAndCheck(ctx)
	if err != nil {
		fmt.Fprintf(s.out, "SOAK FAILED: the end state could not be read: %v (seed %d)\n", err, c.Seed)
		return err
	}
	// Resources: viewers gone, the workers idle.
	stopViewers()
	vwg.Wait()
	stopSup()
	var usage []WorkerUsage
	settle := time.Now().Add(5 * time.Second)
	_ = sleepUntil(ctx, settle)
	for _, p := range s.workers {
		u, err := p.usage(ctx)
		if err != nil {
			fmt.Fprintf(s.out, "soak: end usage of %s: %v\n", p.name, err)
		}
		usage = append(usage, WorkerUsage{Name: p.name, Warm: warm[p.name], End: u})
	}
	checks = append(checks, CheckUsage(c.Bounds, usage))
	crashes := 0
	var crashed []string
	for _, p := range s.allProcs() {
		if n := p.crashCount(); n > 0 {
			crashes += n
			crashed = append(crashed, fmt.Sprintf("%s×%d", p.name, n))
		}
	}
	checks = append(checks, Check{Name: "no process exited by itself", Pass: crashes == 0,
		Detail: fmt.Sprintf("%d unexpected exits %s", crashes, strings.Join(crashed, " "))})
	return s.report(checks)
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// supervise restarts a process that exited by itself, as the container
// runtime would; the exit is reported as a failure.
func (s *soak) supervise(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, p := range append(s.nats, s.workers...) {
			p.mu.Lock()
			dead := p.cmd == nil && !p.killed && p.crashes > 0
			p.mu.Unlock()
			if dead {
				s.log.Warn("restarting a process that exited by itself", "process", p.name)
				_ = p.start()
			}
		}
	}
}

func (s *soak) find(name string) *proc {
	for _, p := range append(s.nats, s.workers...) {
		if p.name == name {
			return p
		}
	}
	return nil
}

// inject performs one fault, waits out its down time, restores, then
// measures the time until every process is ready again.
func (s *soak) inject(ctx context.Context, f Fault) {
	rec := faultRecord{Fault: f, start: time.Now(), ready: -1, latency: -1}
	fmt.Fprintf(s.out, "[%s] fault: %s\n", time.Since(s.tl.Start).Round(100*time.Millisecond), f)
	wait := func() { _ = sleepUntil(ctx, rec.start.Add(f.Down)) }
	var err error
	switch f.Kind {
	case KillNATS:
		// Never two NATS nodes at once: a node whose /healthz still fails
		// (its stream replicas not current) counts as down.
		for _, n := range s.nats {
			if !n.isReady(ctx) {
				err = fmt.Errorf("left out: %s is not healthy", n.name)
				break
			}
		}
		if err != nil {
			break
		}
		p := s.find(f.Target)
		p.kill9()
		wait()
		err = p.start()
	case KillWorker:
		p := s.find(f.Target)
		p.kill9()
		wait()
		err = p.start()
	case RestartPostgres:
		if err = s.pg.stop("immediate"); err == nil {
			wait()
			err = s.pg.start()
		}
	case RestartRedis:
		s.redis.kill9()
		wait()
		err = s.redis.start()
	case Directus5xx:
		s.dfault.SetStatus(http.StatusServiceUnavailable)
		wait()
		s.dfault.SetStatus(0)
	case DirectusHang:
		release := s.dfault.Hold()
		wait()
		release()
	case DropTable:
		var conn *pgx.Conn
		if conn, err = pgx.Connect(ctx, s.pg.url(dbName)); err == nil {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err = conn.Exec(cctx, "DROP TABLE positions")
			cancel()
			conn.Close(ctx)
		}
	case Logout:
		err = s.logout(f.Target)
	}
	rec.end = time.Now()
	if err != nil {
		rec.err = err.Error()
		fmt.Fprintf(s.out, "  fault %s: %v\n", f.Kind, err)
	}
	// Readiness back: every process ready, polled for up to 2 min.
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		all := true
		for _, p := range s.allProcs() {
			if !p.isReady(ctx) {
				all = false
				break
			}
		}
		if all {
			rec.ready = time.Since(rec.start)
			break
		}
		_ = sleepUntil(ctx, time.Now().Add(100*time.Millisecond))
	}
	label := string(f.Kind)
	if f.Target != "" {
		label += " " + f.Target
	}
	s.tl.Mark(Event{At: rec.start.Sub(s.tl.Start), End: rec.end.Sub(s.tl.Start), Label: label})
	s.mu.Lock()
	s.faults = append(s.faults, rec)
	s.mu.Unlock()
}

func (s *soak) logout(name string) error {
	c := s.cfg
	for _, v := range s.viewers {
		if v.name != name {
			continue
		}
		v.mu.Lock()
		v.loggedOut = true
		v.mu.Unlock()
		// The real Directus directly, not through the proxy: the logout is
		// the viewer's, not authsvc's.
		base := c.Directus
		if s.real == nil {
			base = s.standin.URL
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := logout(ctx, http.DefaultClient, strings.TrimSuffix(base, "/"), v.cookie); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("no viewer %s", name)
}

// drainAndCheck waits until the pipeline settled (or Drain passed) and
// runs the model checks on the stores and the viewers.
func (s *soak) drainAndCheck(ctx context.Context) ([]Check, error) {
	c := s.cfg
	l := s.prod.ledger
	latest := l.Latest()
	nc, err := nats.Connect(s.natsURL("ops"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", s.redisPort)})
	defer rdb.Close()
	conn, err := pgx.Connect(ctx, s.pg.url(dbName))
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)

	t0 := time.Now()
	deadline := t0.Add(c.Drain)
	var pend Pending
	var rows int64
	settled := false
	stale := 0
	for time.Now().Before(deadline) {
		pend = s.pending(ctx, js, rdb)
		_ = conn.QueryRow(ctx, "SELECT count(*) FROM positions").Scan(&rows)
		stale = 0
		for _, v := range s.viewers {
			if !v.heldAll(latest) {
				stale++
			}
		}
		viewersDone := stale == 0
		if rows >= int64(l.Valid()) && CheckPending(pend).Pass && viewersDone {
			settled = true
			break
		}
		if err := sleepUntil(ctx, time.Now().Add(500*time.Millisecond)); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(s.out, "soak: drain %s after %.1f s (%d rows for %d valid positions; %d viewers without every latest position; %s)\n",
		map[bool]string{true: "settled", false: "gave up"}[settled], time.Since(t0).Seconds(), rows, l.Valid(), stale, CheckPending(pend).Detail)

	// The viewers' state as the drain ended, before anything else moves.
	var vr []ViewerResult
	for _, v := range s.viewers {
		vr = append(vr, v.result())
	}
	var checks []Check
	// Every valid position exactly once.
	l.ResetRows()
	rs, err := conn.Query(ctx, "SELECT device_id, (extract(epoch from ts)*1000)::bigint FROM positions")
	if err != nil {
		return nil, err
	}
	for rs.Next() {
		var d string
		var ms int64
		if err := rs.Scan(&d, &ms); err != nil {
			rs.Close()
			return nil, err
		}
		l.AddRow(d, ms)
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return nil, err
	}
	checks = append(checks, l.CheckRows())
	// Every bad entry dead-lettered with its reason.
	dlq, err := readDLQ(ctx, js)
	if err != nil {
		return nil, fmt.Errorf("read POSITIONS_DLQ: %w", err)
	}
	checks = append(checks, CheckDLQ(l.BadByID, dlq))
	// Viewers.
	checks = append(checks, CheckViewers(latest, vr)...)
	checks = append(checks, CheckPending(pend))
	return checks, nil
}

func (s *soak) pending(ctx context.Context, js jetstream.JetStream, rdb *redis.Client) Pending {
	var p Pending
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if cons, err := js.Consumer(cctx, streams.Positions, "persister"); err == nil {
		if info, err := cons.Info(cctx); err == nil {
			p.ConsumerPending, p.ConsumerAckPending = info.NumPending, uint64(info.NumAckPending)
		} else {
			p.ConsumerPending = 1 << 62
		}
	} else {
		p.ConsumerPending = 1 << 62
	}
	// Undelivered entries are counted after the group's last-delivered id,
	// not read from XINFO's lag: the group's entries-read counter (lag
	// is computed from it) drifted after Redis restarts in a soak, so lag
	// showed 133,950 with nothing left.
	p.GroupPending = 1 << 62
	if gs, err := rdb.XInfoGroups(cctx, redisStream).Result(); err == nil {
		for _, g := range gs {
			if g.Name == redisGroup {
				p.GroupPending = g.Pending
				if rest, err := rdb.XRangeN(cctx, redisStream, "("+g.LastDeliveredID, "+", 1000).Result(); err == nil {
					p.GroupLag = int64(len(rest))
				} else {
					p.GroupLag = 1 << 62
				}
			}
		}
	}
	return p
}

// readDLQ reads every dead letter's source id, reason and worker, message
// by message (a stream get per sequence: no consumer to go wrong).
func readDLQ(ctx context.Context, js jetstream.JetStream) ([]DeadLetter, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	st, err := js.Stream(cctx, streams.DLQ)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(cctx)
	if err != nil {
		return nil, err
	}
	var out []DeadLetter
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(cctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("get %d: %w", seq, err)
		}
		out = append(out, DeadLetter{SourceID: m.Header.Get(contract.HeaderSourceID), Reason: m.Header.Get(contract.HeaderReason), Worker: m.Header.Get(contract.HeaderWorker)})
	}
	return out, nil
}

func (s *soak) report(checks []Check) error {
	c := s.cfg
	secs := s.tl.Seconds()
	fmt.Fprintf(s.out, "\n== soak report, seed %d\n", c.Seed)
	fmt.Fprintf(s.out, "directus: %s\n", s.directusLabel())
	fmt.Fprintf(s.out, "faults (times from the start of the load; readiness from the injection, latency from the restore; target p99 < %s per second):\n", c.LatencyTarget)
	// The warm-up p99 (its first 5 s left out) is the second yardstick:
	// on a busy machine the pilot target may be out of reach even
	// without faults.
	warmP99 := s.tl.WarmP99()
	fmt.Fprintf(s.out, "warm-up p99 (before any fault): %s\n", warmP99.Round(100*time.Microsecond))
	back := func(from time.Time, target time.Duration) string {
		b := LatencyBack(secs, from.Sub(s.tl.Start), time.Duration(len(secs))*time.Second, target)
		if b < 0 {
			return "never"
		}
		return fmt.Sprintf("%.1f s", (b + time.Second - from.Sub(s.tl.Start)).Seconds())
	}
	for _, f := range s.faults {
		rec := f
		lat := fmt.Sprintf("under %s: %s, under warm-up p99: %s", c.LatencyTarget, back(rec.end, c.LatencyTarget), back(rec.end, max(warmP99, c.LatencyTarget)))
		rdy := "not ready within 2 min"
		if rec.ready >= 0 {
			rdy = fmt.Sprintf("%.1f s", rec.ready.Seconds())
		}
		line := fmt.Sprintf("  %7.1f s  %-16s %-14s down %5.1f s  ready back %-8s latency back %s", rec.start.Sub(s.tl.Start).Seconds(), rec.Kind, rec.Target, rec.end.Sub(rec.start).Seconds(), rdy, lat)
		if rec.err != "" {
			line += "  ERROR " + rec.err
		}
		fmt.Fprintln(s.out, line)
	}
	p50, p99, mx, n := s.tl.Total()
	fmt.Fprintf(s.out, "end-to-end latency over the run (XADD schedule → WebSocket receive, %d deliveries): p50 %s  p99 %s  max %s\n",
		n, p50.Round(100*time.Microsecond), p99.Round(100*time.Microsecond), mx.Round(time.Millisecond))
	under := 0
	with := 0
	for _, st := range secs {
		if st.N > 0 {
			with++
			if st.P99 < c.LatencyTarget {
				under++
			}
		}
	}
	fmt.Fprintf(s.out, "seconds with p99 under the target: %d of %d; load average at the end %s\n", under, with, loadavg())
	fmt.Fprintln(s.out, "model checks:")
	failed := 0
	for _, ch := range checks {
		fmt.Fprintf(s.out, "  %s\n", ch)
		if !ch.Pass {
			failed++
		}
	}
	ev := s.tl.Events()
	sort.Slice(ev, func(i, j int) bool { return ev[i].At < ev[j].At })
	title := fmt.Sprintf("trm-live soak, seed %d, %s, %d devices × %g Hz, %d viewers — %d of %d checks passed", c.Seed, c.Duration, c.Devices, c.Rate, c.Viewers, len(checks)-failed, len(checks))
	if err := os.MkdirAll(filepath.Dir(c.SVG), 0o755); err == nil {
		if err := os.WriteFile(c.SVG, SVG(title, secs, ev, c.LatencyTarget), 0o644); err != nil {
			fmt.Fprintf(s.out, "timeline: %v\n", err)
		} else {
			fmt.Fprintf(s.out, "timeline: %s\n", c.SVG)
		}
	}
	if failed > 0 {
		fmt.Fprintf(s.out, "SOAK FAILED: %d of %d checks (seed %d; logs in %s)\n", failed, len(checks), c.Seed, s.logs)
		return fmt.Errorf("%w: %d of %d checks failed (seed %d)", ErrViolation, failed, len(checks), c.Seed)
	}
	fmt.Fprintf(s.out, "SOAK PASSED: %d checks (seed %d)\n", len(checks), c.Seed)
	return nil
}
