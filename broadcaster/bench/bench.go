package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"trm-live/contract"
	"trm-live/contract/auth"
	"trm-live/contract/streams"
	"trm-live/contract/ws"
	"trm-live/testkit/benchenv"
)

const (
	defaultDuration      = 10 * time.Second
	defaultFloodDuration = 5 * time.Second
	defaultFloodLatency  = 20 * time.Millisecond
	staleTarget          = 250 // ms, staleness p99 of the sweep
)

// Config is one invocation: the coordinator's settings, and the internal
// settings the coordinator gives the processes it starts (Role other than
// "coord").
type Config struct {
	Role     string
	Clients  []int // client counts
	Devices  int
	Rates    []int // positions per second per device
	Duration time.Duration
	Sweep    []int // device counts at 10 Hz, ascending
	Repeat   int   // runs per sweep point
	Burst    int   // positions published back to back
	RcvBuf   int   // SO_RCVBUF of each load client, 0 = autotuning
	Idle     int   // idle subscribed connections, 0 skips

	Options       bool
	OptionsHz     float64
	OptionsFollow int

	Flood         int
	FloodReal     int
	FloodDuration time.Duration
	FloodLatency  time.Duration

	benchenv.Servers // DataDir: the recorded frames and the NATS store

	NATSURL   string // -role server
	DebugAddr string // -role server: /mem and pprof
	Addr      string // -role server and raw: listen address
	Store     string // -role nats: JetStream store
	Load      ClientsConfig
}

// Run runs cfg.Role until it is done or ctx ends.
func Run(ctx context.Context, cfg Config) error {
	raiseFileLimit()
	switch cfg.Role {
	case "coord":
		return coordinate(ctx, cfg)
	case "server":
		return runServer(ctx, cfg)
	case "nats":
		return runNATS(cfg.Store)
	case "raw":
		return runRaw(ctx, cfg.Addr)
	case "load":
		return cfg.Load.Run(ctx, os.Stdin, os.Stdout)
	}
	return fmt.Errorf("unknown role %q", cfg.Role)
}

// raiseFileLimit lifts the soft limit on open files to the hard one:
// thousands of sockets per process.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// ---------------------------------------------------------------- coordinator

type coord struct {
	cfg       Config
	dataDir   string
	nc        *nats.Conn
	js        jetstream.JetStream
	natsCmd   *exec.Cmd
	srvCmd    *exec.Cmd
	srvAddr   string
	debugAddr string
	rawCmd    *exec.Cmd
	rawAddr   string
	eventID   string
	lastTS    map[string]int64
	files     int // recorded-frame files written
}

func coordinate(ctx context.Context, cfg Config) error {
	dataDir := cfg.DataDir
	storeDir := filepath.Join(dataDir, "broadcaster-nats")
	_ = os.RemoveAll(storeDir)
	var l syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	fmt.Printf("broadcaster benchmark  %s  %d cores (GOMAXPROCS %d), open-file limit %d\n",
		time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), runtime.GOMAXPROCS(0), l.Cur)
	if l.Cur < 4096 {
		fmt.Printf("warning: open-file limit %d is low for 1,000+ clients; raise ulimit -n\n", l.Cur)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	c := &coord{cfg: cfg, dataDir: dataDir, eventID: "0b5e7c1e-0000-4000-8000-00000000beef", lastTS: map[string]int64{}}

	// nats-server in a process of its own, so its CPU is counted apart
	// from the publisher's.
	c.natsCmd = exec.Command(self, "-role", "nats", "-store", storeDir)
	c.natsCmd.Stderr = os.Stderr
	natsIn, _ := c.natsCmd.StdinPipe()
	natsOut, _ := c.natsCmd.StdoutPipe()
	if err := c.natsCmd.Start(); err != nil {
		return err
	}
	defer func() { _ = natsIn.Close(); _ = c.natsCmd.Wait() }()
	natsURL, err := bufio.NewReader(natsOut).ReadString('\n')
	if err != nil {
		return fmt.Errorf("nats-server process: %w", err)
	}
	natsURL = strings.TrimSpace(natsURL)

	if c.nc, err = nats.Connect(natsURL); err != nil {
		return err
	}
	defer c.nc.Close()
	if c.js, err = jetstream.New(c.nc, jetstream.WithPublishAsyncMaxPending(20000)); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := streams.Ensure(sctx, c.js, streams.Options{MaxAge: time.Hour}); err != nil {
		return err
	}
	authNC, err := nats.Connect(natsURL)
	if err != nil {
		return err
	}
	defer authNC.Close()
	if err := startAuth(authNC, cfg.FloodLatency); err != nil {
		return err
	}
	free, err := benchenv.FreeAddrs(3)
	if err != nil {
		return err
	}
	c.srvAddr, c.rawAddr, c.debugAddr = free[0], free[1], free[2]
	c.srvCmd = exec.Command(self, "-role", "server", "-nats", natsURL, "-addr", c.srvAddr, "-debug", c.debugAddr)
	c.rawCmd = exec.Command(self, "-role", "raw", "-addr", c.rawAddr)
	for _, cmd := range []*exec.Cmd{c.srvCmd, c.rawCmd} {
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	}
	if err := waitHTTP("http://"+c.srvAddr+"/readyz", 30*time.Second); err != nil {
		return fmt.Errorf("broadcaster not ready: %w", err)
	}
	if err := waitHTTP("http://"+c.rawAddr+"/ready", 30*time.Second); err != nil {
		return fmt.Errorf("raw server not ready: %w", err)
	}
	fmt.Printf("broadcaster pid %d (profile: http://%s/debug/pprof/profile), nats-server pid %d, raw server pid %d; %d devices, window %s per run\n",
		c.srvCmd.Process.Pid, c.debugAddr, c.natsCmd.Process.Pid, c.rawCmd.Process.Pid, cfg.Devices, cfg.Duration)
	fmt.Println("CPU: broadcaster, nats-server (its own process) and the load clients are measured apart; the coordinator's is the publisher and the authsvc stand-in")
	fmt.Println()

	if cfg.Flood > 0 {
		return c.floodRun()
	}
	cs := cfg.Clients
	if len(cs) == 0 {
		return fmt.Errorf("-c: no client count")
	}
	if cfg.Options {
		return c.optionsRuns(slices.Max(cs), cfg.Devices)
	}

	// Idle memory first, on a fresh process.
	if cfg.Idle > 0 {
		if err := c.idleRun(cfg.Idle); err != nil {
			return err
		}
	}

	// Synthetic frames, for reference: one position per frame and 50.
	synthetic := map[string]result{}
	for _, n := range cs {
		for _, per := range []int{1, 50} {
			r, err := c.rawRun(n, per)
			if err != nil {
				return err
			}
			synthetic[fmt.Sprint(n, "/", per)] = r
			fmt.Printf("raw synthetic C=%-5d %2d pos/frame: %10.0f frames/s %11.0f positions/s   load CPU %.2f cores, load average %s\n",
				n, per, r.FramesPerSec, r.PositionsPerSec, r.LoadCPU, loadavg())
		}
	}
	fmt.Println()

	// The broadcaster at each client count and rate.
	fmt.Println("broadcaster, one event, every client subscribed; ceiling = bare fan-out of the broadcaster's own frames to the same clients, before and after the window:")
	for _, n := range cs {
		for _, hz := range cfg.Rates {
			r, err := c.broadcastRun(n, cfg.Devices, hz, subOpts{}, true)
			if err != nil {
				return err
			}
			c.print(r, n, cfg.Devices, hz, synthetic)
		}
	}

	if len(cfg.Sweep) > 0 {
		return c.sweep(slices.Max(cs), synthetic)
	}
	return nil
}

// sweep runs the device counts of -sweep (and -devices) at 10 Hz in
// ascending order, each -repeat times, and stops at the first count where
// any run misses staleness p99 < 250 ms or leaves a client without the
// latest position of every device: the highest passing rate is the figure,
// given with its spread over the repeats.
func (c *coord) sweep(n int, synthetic map[string]result) error {
	repeat := max(1, c.cfg.Repeat)
	fmt.Printf("\nsweep at C=%d, 10 Hz, ascending, %d runs per point, stopping at the first point where any run misses staleness p99 < %d ms:\n", n, repeat, staleTarget)
	run := func(d int) (result, error) {
		r, err := c.broadcastRun(n, d, 10, subOpts{}, true)
		if err == nil {
			c.print(r, n, d, 10, synthetic)
		}
		return r, err
	}
	bestDevices, best, err := sweepPoints(append(slices.Clone(c.cfg.Sweep), c.cfg.Devices), repeat, run, func(d int, rs []result, ok bool) {
		verdict := "pass"
		if !ok {
			verdict = "FAIL"
		}
		fmt.Printf("point %d devices × 10 Hz: %s   %s\n", d, verdict, spreadLine(rs))
	})
	if err != nil {
		return err
	}
	if best == nil {
		fmt.Printf("highest delivered rate with staleness p99 < %d ms: none (the lowest point failed)\n", staleTarget)
		return nil
	}
	fmt.Printf("highest delivered rate with staleness p99 < %d ms: %d devices × 10 Hz, %s\n", staleTarget, bestDevices, spreadLine(best))
	return nil
}

// passes is the sweep's criterion for one run.
func passes(r result) bool {
	return r.StaleP99 >= 0 && r.StaleP99 < staleTarget && r.Complete == r.Clients && r.Closed == 0
}

// sweepPoints runs the points (device counts) in ascending order, each
// repeat times, reports each, and stops after the first point where a run
// fails. It returns the highest point whose every run passed, with its
// runs; nil when the first failed.
func sweepPoints(points []int, repeat int, run func(devices int) (result, error), report func(devices int, rs []result, ok bool)) (int, []result, error) {
	points = slices.Clone(points)
	slices.Sort(points)
	var best []result
	bestDevices := 0
	for _, d := range slices.Compact(points) {
		var rs []result
		ok := true
		for range repeat {
			r, err := run(d)
			if err != nil {
				return 0, nil, err
			}
			rs = append(rs, r)
			ok = ok && passes(r)
		}
		report(d, rs, ok)
		if !ok {
			break
		}
		best, bestDevices = rs, d
	}
	return bestDevices, best, nil
}

// spreadLine is the median and range of a point's runs.
func spreadLine(rs []result) string {
	pick := func(f func(result) float64) (lo, med, hi float64) {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[0], v[len(v)/2], v[len(v)-1]
	}
	dl, dm, dh := pick(func(r result) float64 { return r.PositionsPerSec })
	rl, rm, rh := pick(func(r result) float64 { return r.PositionsPerSec / r.Ceiling() })
	sl, sm, sh := pick(func(r result) float64 { return float64(r.StaleP99) })
	al, am, ah := pick(func(r result) float64 { return float64(r.AllP99) })
	return fmt.Sprintf("delivered %.0f positions/s (%.0f–%.0f) = %.3f (%.3f–%.3f) of the fan-out of its own frames; staleness p99 %.0f ms (%.0f–%.0f); latency p99 of every offered position %.0f ms (%.0f–%.0f)",
		dm, dl, dh, rm, rl, rh, sm, sl, sh, am, al, ah)
}

func (c *coord) print(r result, n, devices, hz int, synthetic map[string]result) {
	one := synthetic[fmt.Sprint(n, "/1")]
	offered := r.Published * float64(n)
	fmt.Printf("C=%-5d %4d dev × %2d Hz  offered %9.0f pos/s  delivered %9.0f pos/s (%.3f of the fan-out of its own frames: %.0f before, %.0f after)  %8.0f frames/s (%.2f of 1-pos synthetic) %5.1f pos/frame\n",
		n, devices, hz, offered, r.PositionsPerSec, r.PositionsPerSec/r.Ceiling(), r.Before.PositionsPerSec, r.After.PositionsPerSec,
		r.FramesPerSec, r.FramesPerSec/max(one.FramesPerSec, 1), r.PositionsPerSec/max(r.FramesPerSec, 1))
	fmt.Printf("        load average %s\n", loadavg())
	fmt.Printf("        latency p50 %s p99 %s (delivered positions, %.1f%% of those offered)   every offered position, a coalesced one at its successor's delivery: p50 %s p99 %s   staleness p50 %4d ms p99 %5d ms   latest of every device: %d/%d clients (%d closed)   RSS %s\n",
		msCap(r.LatP50), msCap(r.LatP99), 100*r.Share(), msCap(r.AllP50), msCap(r.AllP99), r.StaleP50, r.StaleP99, r.Complete, r.Clients, r.Closed, mib(r.RSS))
	fmt.Printf("        CPU broadcaster %.2f nats-server %.2f publisher+auth %.2f load %.2f cores   per delivered position: broadcaster %.3f µs, with nats-server %.3f µs; raw fan-out server %.3f µs\n",
		r.ServerCPU, r.NATSCPU, r.CoordCPU, r.LoadCPU, r.usPerPos(r.ServerCPU), r.usPerPos(r.ServerCPU+r.NATSCPU), r.rawUsPerPos())
}

// msCap prints a latency percentile; the histogram stops at 4.095 s.
func msCap(ms int) string {
	if ms >= latBuckets-1 {
		return ">4095 ms"
	}
	return fmt.Sprintf("%4d ms", ms)
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func waitHTTP(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

// startAuth answers authsvc's subjects: every bench cookie (benchCookie) is
// an admin user named in it, so every event is allowed; a bogus one
// (-flood) is refused after refuseAfter.
func startAuth(nc *nats.Conn, refuseAfter time.Duration) error {
	svc, err := micro.AddService(nc, micro.Config{Name: auth.ServiceName, Version: auth.ServiceVersion, QueueGroup: auth.QueueGroup})
	if err != nil {
		return err
	}
	if err := svc.AddEndpoint("session", micro.HandlerFunc(func(r micro.Request) {
		var req auth.SessionRequest
		if json.Unmarshal(r.Data(), &req) != nil || req.Cookie == "" {
			_ = r.Error(auth.CodeUnauthorized, "no", nil)
			return
		}
		id := cookieUser(req.Cookie)
		if id == "" {
			refuseLater(nc, r, refuseAfter)
			return
		}
		_ = r.RespondJSON(auth.User{ID: id, Admin: true})
	}), micro.WithEndpointSubject(auth.SessionSubject)); err != nil {
		return err
	}
	return svc.AddEndpoint("event", micro.HandlerFunc(func(r micro.Request) {
		_ = r.RespondJSON(auth.EventResponse{Decision: auth.Allowed})
	}), micro.WithEndpointSubject(auth.EventSubject))
}

// result is what a load process measured in a run's window, plus what the
// coordinator measured around it.
type result struct {
	Clients         int     `json:"clients"`
	FramesPerSec    float64 `json:"frames_per_sec"`
	PositionsPerSec float64 `json:"positions_per_sec"`
	LatP50          int     `json:"lat_p50_ms"` // delivered positions only
	LatP99          int     `json:"lat_p99_ms"`
	AllP50          int     `json:"all_p50_ms"` // every offered position: a coalesced one at its successor's delivery
	AllP99          int     `json:"all_p99_ms"`
	Delivered       int64   `json:"delivered"` // positions received in the window
	Offered         int64   `json:"offered"`   // delivered + coalesced ones
	StaleP50        int     `json:"stale_p50_ms"`
	StaleP99        int     `json:"stale_p99_ms"`
	Complete        int     `json:"complete"`
	Closed          int     `json:"closed"` // connections that ended during the run
	LoadCPU         float64 `json:"load_cpu"`
	BytesPerSec     float64 `json:"bytes_per_sec"` // frame payload bytes received by all clients

	RSS       int64   `json:"-"`
	ServerCPU float64 `json:"-"` // broadcaster, cores over the window
	NATSCPU   float64 `json:"-"` // nats-server, cores over the window
	CoordCPU  float64 `json:"-"` // publisher and authsvc stand-in
	Published float64 `json:"-"` // positions published per second (the publisher may fall short of the nominal rate)
	Before    ceiling `json:"-"` // fan-out of the pass-before's frames
	After     ceiling `json:"-"` // fan-out of the window's frames
}

// Ceiling is the mean of the two fan-outs of the broadcaster's own frames.
func (r result) Ceiling() float64 {
	n, sum := 0, 0.0
	for _, c := range []ceiling{r.Before, r.After} {
		if c.PositionsPerSec > 0 {
			n++
			sum += c.PositionsPerSec
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// Share is the delivered positions over the offered ones.
func (r result) Share() float64 {
	if r.Offered == 0 {
		return 0
	}
	return float64(r.Delivered) / float64(r.Offered)
}

// usPerPos is CPU µs per delivered position for cores busy.
func (r result) usPerPos(cores float64) float64 {
	return cores / max(r.PositionsPerSec, 1) * 1e6
}

// rawUsPerPos is the raw server's CPU µs per position in the ceiling runs.
func (r result) rawUsPerPos() float64 {
	cpu, pos := r.Before.ServerCPUSec+r.After.ServerCPUSec, r.Before.Positions+r.After.Positions
	if pos == 0 {
		return 0
	}
	return cpu / float64(pos) * 1e6
}

// subOpts are the subscription options of a run's clients.
type subOpts struct {
	maxHz  float64
	follow int // devices each client follows; 0 = all
}

func (o subOpts) String() string {
	switch {
	case o.maxHz > 0 && o.follow > 0:
		return fmt.Sprintf("max_hz=%g, %d devices each", o.maxHz, o.follow)
	case o.maxHz > 0:
		return fmt.Sprintf("max_hz=%g", o.maxHz)
	case o.follow > 0:
		return fmt.Sprintf("%d devices each", o.follow)
	}
	return "unlimited"
}

// optionsRuns is the -options scenario: n clients at devices × 10 Hz,
// unlimited, rated, then following a few devices each, in one run.
func (c *coord) optionsRuns(n, devices int) error {
	fmt.Printf("subscription options, C=%d, %d devices × 10 Hz, window %s each:\n", n, devices, c.cfg.Duration)
	runs := []subOpts{{}, {maxHz: c.cfg.OptionsHz}, {follow: c.cfg.OptionsFollow}}
	var rs []result
	for _, o := range runs {
		r, err := c.broadcastRun(n, devices, 10, o, false)
		if err != nil {
			return err
		}
		rs = append(rs, r)
		perClient := r.BytesPerSec / float64(n)
		fmt.Printf("%-22s published %6.0f pos/s (of %d)   bytes/client/s %9.0f   positions delivered %9.0f /s (%7.1f per client/s)   CPU broadcaster %.2f nats-server %.2f load %.2f cores   staleness p50 %4d ms p99 %5d ms   latency p99 %s (delivered, %.1f%% of offered), every offered position p99 %s   latest of every followed device: %d/%d clients (%d closed)   RSS %s   load average %s\n",
			o.String(), r.Published, devices*10, perClient, r.PositionsPerSec, r.PositionsPerSec/float64(n), r.ServerCPU, r.NATSCPU, r.LoadCPU, r.StaleP50, r.StaleP99,
			msCap(r.LatP99), 100*r.Share(), msCap(r.AllP99), r.Complete, r.Clients, r.Closed, mib(r.RSS), loadavg())
	}
	base := rs[0]
	for i, r := range rs[1:] {
		fmt.Printf("%s against unlimited: bytes per client %.3f (1/%.1f), positions %.3f, broadcaster CPU %.2f\n", runs[i+1].String(),
			r.BytesPerSec/base.BytesPerSec, base.BytesPerSec/max(r.BytesPerSec, 1), r.PositionsPerSec/base.PositionsPerSec, r.ServerCPU/max(base.ServerCPU, 1e-9))
	}
	return nil
}

// broadcastRun connects n clients to the event and publishes devices × hz.
// With withCeiling: a warm-up, a short recorded pass and the fan-out of its
// frames (the ceiling before), a warm-up again, the measured window, the
// check that every client ends with the latest position of every device,
// and the fan-out of the window's frames (the ceiling after). Without: the
// warm-up, the window and the check.
func (c *coord) broadcastRun(n, devices, hz int, o subOpts, withCeiling bool) (result, error) {
	period := time.Second / time.Duration(hz)
	extra := []string{"-max-hz", strconv.FormatFloat(o.maxHz, 'f', -1, 64), "-follow", strconv.Itoa(o.follow), "-devtotal", strconv.Itoa(devices)}
	if withCeiling {
		extra = append(extra, "-raw-url", "ws://"+c.rawAddr+"/raw")
	}
	l, err := c.startLoad("ws://"+c.srvAddr+ws.Path, n, ws.EventTopic(c.eventID), period, extra...)
	if err != nil {
		return result{}, err
	}
	defer l.finish()
	names := make([]string, devices)
	for i := range names {
		names[i] = fmt.Sprintf("d%05d", i)
	}
	// Warm-up of at least a second (the fresh clients' first frames, the
	// broadcaster's heap growing to the new load).
	warm := max(period, time.Second)
	c.publish(names, period, warm)
	var before ceiling
	if withCeiling {
		pass := min(c.cfg.Duration, 3*time.Second)
		l.send("GO")
		c.publish(names, period, pass)
		l.send("END")
		file, counts, err := c.save(l)
		if err != nil {
			return result{}, err
		}
		scale := float64(c.cfg.Duration) / float64(pass)
		for i := range counts {
			counts[i] = int(float64(counts[i])*scale + 0.5)
		}
		if before, err = c.fanOut(l, file, counts); err != nil {
			return result{}, err
		}
		c.publish(names, period, warm) // the clients idled during the fan-out
	}
	l.send("GO")
	t0 := time.Now()
	cpu0 := c.cpu()
	last, count := c.publish(names, period, c.cfg.Duration)
	l.send("END")
	window := time.Since(t0).Seconds()
	cpu1 := c.cpu()
	var file string
	var counts []int
	if withCeiling {
		if file, counts, err = c.save(l); err != nil {
			return result{}, err
		}
	}
	final, _ := json.Marshal(last)
	l.send("FINAL " + string(final))
	line, err := l.expect("RESULT")
	if err != nil {
		return result{}, err
	}
	var r result
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return result{}, err
	}
	r.RSS = benchenv.RSS(c.srvCmd.Process.Pid)
	r.ServerCPU = (cpu1[0] - cpu0[0]) / window
	r.NATSCPU = (cpu1[1] - cpu0[1]) / window
	r.CoordCPU = (cpu1[2] - cpu0[2]) / window
	r.Published = float64(count) / window
	r.Before = before
	if withCeiling {
		if r.After, err = c.fanOut(l, file, counts); err != nil {
			return result{}, err
		}
	}
	return r, nil
}

// cpu is the CPU seconds so far of the broadcaster, nats-server and this
// process.
func (c *coord) cpu() [3]float64 {
	return [3]float64{benchenv.CPUSeconds(c.srvCmd.Process.Pid), benchenv.CPUSeconds(c.natsCmd.Process.Pid), benchenv.CPUSeconds(os.Getpid())}
}

// loadavg is the machine's 1-minute load average: other work on the
// machine skews every figure.
func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

// publish sends one position per device every period for d, each with the
// publish time as fix time, and returns the last fix time per device.
func (c *coord) publish(names []string, period, d time.Duration) (map[string]int64, int) {
	last := make(map[string]int64, len(names))
	count := 0
	start := time.Now()
	end := start.Add(d)
	b := max(1, c.cfg.Burst)
	groups := (len(names) + b - 1) / b
	gap := period / time.Duration(groups)
	// Spread the devices over the period in small bursts, as real
	// trackers are spread, on an absolute schedule: a late burst is sent at
	// once and does not shift the ones after it.
	for k := 0; ; k++ {
		periodStart := start.Add(time.Duration(k) * period)
		if !periodStart.Before(end) {
			break
		}
		for g := 0; g < groups; g++ {
			time.Sleep(time.Until(periodStart.Add(time.Duration(g) * gap)))
			for _, name := range names[g*b : min((g+1)*b, len(names))] {
				ts := max(time.Now().UnixMilli(), c.lastTS[name]+1)
				c.lastTS[name] = ts
				p := contract.Position{DeviceID: name, EventID: c.eventID, TS: time.UnixMilli(ts).UTC(), Lat: 45.1, Lon: 7.6,
					Speed: &speed, Heading: &heading, Sats: &sats}
				if _, err := c.js.PublishAsync(p.Subject(), p.Encode(), jetstream.WithMsgID(p.MsgID())); err != nil {
					log.Printf("publish: %v", err)
					continue
				}
				last[name] = ts
				count++
			}
		}
	}
	time.Sleep(time.Until(end))
	select {
	case <-c.js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		log.Printf("publish acks still pending after 30s")
	}
	return last, count
}

var (
	speed, heading = 88.2, 121.0
	sats           = 11
)

// idleRun measures the broadcaster's memory per idle connection: n
// authenticated clients, each subscribed to the event (no position flows),
// with no collection forced before either reading, as a peer's server
// would be measured.
func (c *coord) idleRun(n int) error {
	pid := c.srvCmd.Process.Pid
	heap0, g0 := c.mem()
	rss0 := benchenv.RSS(pid)
	l, err := c.startLoad("ws://"+c.srvAddr+ws.Path, n, ws.EventTopic(c.eventID), 0)
	if err != nil {
		return err
	}
	rss1 := benchenv.RSS(pid)
	heap1, g1 := c.mem()
	if p := os.Getenv("BENCH_HEAP_PROFILE"); p != "" {
		if resp, err := http.Get("http://" + c.debugAddr + "/debug/pprof/heap"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			_ = os.WriteFile(p, b, 0o644)
		}
	}
	l.finish()
	fmt.Printf("idle connections: %d, each subscribed to the event, no collection forced  broadcaster RSS %s → %s: %.1f KiB per connection; Go heap in use %.1f KiB, goroutines %.1f per connection\n\n",
		n, mib(rss0), mib(rss1), float64(rss1-rss0)/1024/float64(n), float64(heap1-heap0)/1024/float64(n), float64(g1-g0)/float64(n))
	return nil
}

// mem asks the broadcaster process for its heap in use and goroutines,
// without collecting first.
func (c *coord) mem() (heap, goroutines int64) {
	resp, err := http.Get("http://" + c.debugAddr + "/mem")
	if err != nil {
		log.Printf("mem: %v", err)
		return
	}
	defer resp.Body.Close()
	_, _ = fmt.Fscan(resp.Body, &heap, &goroutines)
	return
}
