// Command broadcaster benchmarks the broadcaster's /ws-live fan-out
// against a bare WebSocket server measured in the same run.
//
// Three processes, so their CPU and memory stay apart: this coordinator
// (embedded nats-server with the POSITIONS stream, an authsvc stand-in
// that admits every bench cookie, and the publisher), the broadcaster
// (this binary re-executed with -role server, running broadcaster.Run),
// and the WebSocket clients (-role load). The raw ceiling is a bare
// gorilla/websocket server (-role raw) that writes pre-built frames, one
// position per frame and 50 per frame, to the same clients.
//
// Usage: scripts/bench broadcaster [-c 100,1000] [-devices 500] [-rates 1,10]
// [-duration 10s] [-sweep 100,200,300,400,700,1000] [-idle 2000]
//
// With -flood N it measures instead real users' handshake latency while N
// bogus handshakes per second arrive from one address, against the same
// without the flood in the same run (flood.go).
//
// With -options it runs the subscription-options scenario instead: at the
// largest -c and -devices × 10 Hz, the same number of clients unlimited,
// then all at max_hz=1 (-options-hz), then each following 5 devices
// (-options-follow), one after the other in the same run.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/pprof"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"trm-live/broadcaster"
	"trm-live/contract"
	"trm-live/contract/auth"
	"trm-live/contract/streams"
	"trm-live/contract/ws"
	"trm-live/testkit/benchenv"
)

var (
	role     = flag.String("role", "coord", "coord, server, raw or load (internal)")
	clientsF = flag.String("c", "100,1000", "client counts")
	devicesF = flag.Int("devices", 500, "devices of the event")
	ratesF   = flag.String("rates", "1,10", "positions per second per device")
	duration = flag.Duration("duration", 10*time.Second, "measurement window of each run")
	sweepF   = flag.String("sweep", "100,200,300,400,700,1000", "device counts at 10 Hz and the largest client count, for the highest rate with staleness p99 < 250 ms (the -devices run is added); empty skips")
	burstF   = flag.Int("burst", 10, "positions published back to back; bursts are spread evenly over the period")
	rcvbufF  = flag.Int("rcvbuf", 64<<10, "SO_RCVBUF of each load client in bytes, 0 = system autotuning (see the docs)")
	idleF    = flag.Int("idle", 2000, "idle connections for the per-connection memory; 0 skips")
	natsURL  = flag.String("nats", "", "internal: NATS URL")
	debugF   = flag.String("debug", "", "internal: address of the server role's /mem endpoint")
	addrF    = flag.String("addr", "", "internal: listen address")
	urlF     = flag.String("url", "", "internal: WebSocket URL for -role load")
	nF       = flag.Int("n", 0, "internal: clients for -role load")
	topicF   = flag.String("topic", "", "internal: topic for -role load; empty = idle clients")
	periodF  = flag.Duration("period", 0, "internal: publishing period per device, for staleness")

	optionsF = flag.Bool("options", false, "subscription options scenario (max_hz, devices) instead of the default runs")
	optHzF   = flag.Float64("options-hz", 1, "max_hz of the rated run of -options")
	optFolF  = flag.Int("options-follow", 5, "devices each client follows in the filtered run of -options")
	maxHzF   = flag.Float64("max-hz", 0, "internal: max_hz of each load client's subscribe; 0 = none")
	followF  = flag.Int("follow", 0, "internal: devices each load client follows, 0 = all")
	devTotF  = flag.Int("devtotal", 0, "internal: devices of the event, for -follow")
)

func main() {
	flag.Parse()
	raiseFileLimit()
	var err error
	switch *role {
	case "coord":
		err = coordinate()
	case "server":
		err = runServer()
	case "raw":
		err = runRaw()
	case "load":
		err = runLoad()
	default:
		err = fmt.Errorf("unknown role %q", *role)
	}
	if err != nil {
		log.Fatalf("%s: %v", *role, err)
	}
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

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			n, err := strconv.Atoi(f)
			if err != nil {
				log.Fatalf("bad number %q", f)
			}
			out = append(out, n)
		}
	}
	return out
}

// ---------------------------------------------------------------- coordinator

type coord struct {
	ns        *server.Server
	nc        *nats.Conn
	js        jetstream.JetStream
	srvCmd    *exec.Cmd
	srvAddr   string
	debugAddr string
	rawCmd    *exec.Cmd
	rawAddr   string
	eventID   string
	lastTS    map[string]int64
}

func coordinate() error {
	dataDir := os.Getenv("BENCH_DATA_DIR")
	if dataDir == "" {
		dataDir = os.TempDir()
	}
	storeDir := filepath.Join(dataDir, "broadcaster-nats")
	_ = os.RemoveAll(storeDir)
	var l syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	fmt.Printf("broadcaster benchmark  %s  %d cores (GOMAXPROCS %d), open-file limit %d\n",
		time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), runtime.GOMAXPROCS(0), l.Cur)
	if l.Cur < 4096 {
		fmt.Printf("warning: open-file limit %d is low for 1,000+ clients; raise ulimit -n\n", l.Cur)
	}

	ns, stopNATS, err := benchenv.StartNATS(server.Options{ServerName: "bench", JetStream: true,
		StoreDir: storeDir, JetStreamMaxMemory: 1 << 30, JetStreamMaxStore: 20 << 30, MaxPending: 256 << 20})
	if err != nil {
		return err
	}
	defer stopNATS()
	c := &coord{ns: ns, eventID: "0b5e7c1e-0000-4000-8000-00000000beef", lastTS: map[string]int64{}}
	if c.nc, err = nats.Connect(ns.ClientURL()); err != nil {
		return err
	}
	defer c.nc.Close()
	if c.js, err = jetstream.New(c.nc, jetstream.WithPublishAsyncMaxPending(20000)); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, c.js, streams.Options{MaxAge: time.Hour}); err != nil {
		return err
	}
	authNC, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return err
	}
	defer authNC.Close()
	if err := startAuth(authNC); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	free, err := benchenv.FreeAddrs(3)
	if err != nil {
		return err
	}
	c.srvAddr, c.rawAddr, c.debugAddr = free[0], free[1], free[2]
	c.srvCmd = exec.Command(self, "-role", "server", "-nats", ns.ClientURL(), "-addr", c.srvAddr, "-debug", c.debugAddr)
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
	fmt.Printf("broadcaster pid %d (profile: http://%s/debug/pprof/profile), raw server pid %d; %d devices, window %s per run\n\n",
		c.srvCmd.Process.Pid, c.debugAddr, c.rawCmd.Process.Pid, *devicesF, *duration)

	if *floodF > 0 {
		return c.floodRun()
	}

	cs := ints(*clientsF)
	rates := ints(*ratesF)
	if *optionsF {
		return c.optionsRuns(slices.Max(cs), *devicesF)
	}

	// Idle memory first, on a fresh process.
	if *idleF > 0 {
		if err := c.idleRun(*idleF); err != nil {
			return err
		}
	}

	// Raw ceiling first, per client count: one position per frame and 50.
	ceiling := map[string]result{}
	for _, n := range cs {
		for _, per := range []int{1, 50} {
			r, err := c.rawRun(n, per)
			if err != nil {
				return err
			}
			ceiling[fmt.Sprint(n, "/", per)] = r
			fmt.Printf("raw ceiling  C=%-5d %2d pos/frame: %10.0f frames/s %11.0f positions/s   load CPU %.2f cores, load average %s\n",
				n, per, r.FramesPerSec, r.PositionsPerSec, r.LoadCPU, loadavg())
		}
	}
	fmt.Println()

	// The broadcaster at each client count and rate.
	fmt.Println("broadcaster, one event, every client subscribed:")
	for _, n := range cs {
		for _, hz := range rates {
			r, err := c.broadcastRun(n, *devicesF, hz)
			if err != nil {
				return err
			}
			c.print(r, n, *devicesF, hz, ceiling)
		}
	}

	// The highest rate with staleness p99 < 250 ms at the largest C.
	if sweep := ints(*sweepF); len(sweep) > 0 {
		n := slices.Max(cs)
		fmt.Printf("\nsweep at C=%d, 10 Hz: highest offered rate with staleness p99 < 250 ms\n", n)
		best := 0.0
		sweep = append(sweep, *devicesF)
		slices.Sort(sweep)
		for _, d := range slices.Compact(sweep) {
			r, err := c.broadcastRun(n, d, 10)
			if err != nil {
				return err
			}
			c.print(r, n, d, 10, ceiling)
			if r.StaleP99 < 250 && r.Complete == r.Clients {
				best = max(best, r.PositionsPerSec)
			}
		}
		b := ceiling[fmt.Sprint(n, "/50")]
		fmt.Printf("highest delivered rate with staleness p99 < 250 ms: %.0f positions/s = %.3f of the batched ceiling (%.0f)\n",
			best, best/b.PositionsPerSec, b.PositionsPerSec)
	}
	return nil
}

func (c *coord) print(r result, n, devices, hz int, ceiling map[string]result) {
	one, fifty := ceiling[fmt.Sprint(n, "/1")], ceiling[fmt.Sprint(n, "/50")]
	offered := r.Published * float64(n)
	fmt.Printf("C=%-5d %4d dev × %2d Hz  offered %9.0f pos/s  delivered %9.0f pos/s (%.2f of batched ceiling)  %8.0f frames/s (%.2f of 1-pos ceiling) %5.1f pos/frame\n",
		n, devices, hz, offered, r.PositionsPerSec, r.PositionsPerSec/fifty.PositionsPerSec, r.FramesPerSec, r.FramesPerSec/one.FramesPerSec,
		r.PositionsPerSec/max(r.FramesPerSec, 1))
	fmt.Printf("        load average %s\n", loadavg())
	fmt.Printf("        latency p50 %s p99 %s   staleness p50 %4d ms p99 %5d ms   latest of every device: %d/%d clients (%d closed)   RSS %s   CPU broadcaster %.2f load %.2f cores\n",
		msCap(r.LatP50), msCap(r.LatP99), r.StaleP50, r.StaleP99, r.Complete, r.Clients, r.Closed, mib(r.RSS), r.ServerCPU, r.LoadCPU)
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
// (-flood) is refused after -flood-directus-latency.
func startAuth(nc *nats.Conn) error {
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
			refuseLater(nc, r, *floodLatF)
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

// result is what a load process measured, plus the server's RSS.
type result struct {
	Clients         int     `json:"clients"`
	FramesPerSec    float64 `json:"frames_per_sec"`
	PositionsPerSec float64 `json:"positions_per_sec"`
	LatP50          int     `json:"lat_p50_ms"`
	LatP99          int     `json:"lat_p99_ms"`
	StaleP50        int     `json:"stale_p50_ms"`
	StaleP99        int     `json:"stale_p99_ms"`
	Complete        int     `json:"complete"`
	Closed          int     `json:"closed"` // connections that ended during the run
	RSS             int64   `json:"-"`
	ServerCPU       float64 `json:"-"` // broadcaster CPU seconds per second of the window
	Published       float64 `json:"-"` // positions published per second (the publisher may fall short of the nominal rate)
	LoadCPU         float64 `json:"load_cpu"`
	BytesPerSec     float64 `json:"bytes_per_sec"` // frame payload bytes received by all clients
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
	fmt.Printf("subscription options, C=%d, %d devices × 10 Hz, window %s each:\n", n, devices, *duration)
	runs := []subOpts{{}, {maxHz: *optHzF}, {follow: *optFolF}}
	var rs []result
	for _, o := range runs {
		r, err := c.broadcastRunWith(n, devices, 10, o)
		if err != nil {
			return err
		}
		rs = append(rs, r)
		perClient := r.BytesPerSec / float64(n)
		fmt.Printf("%-22s published %6.0f pos/s (of %d)   bytes/client/s %9.0f   positions delivered %9.0f /s (%7.1f per client/s)   CPU broadcaster %.2f load %.2f cores   staleness p50 %4d ms p99 %5d ms   latency p99 %s   latest of every followed device: %d/%d clients (%d closed)   RSS %s   load average %s\n",
			o.String(), r.Published, devices*10, perClient, r.PositionsPerSec, r.PositionsPerSec/float64(n), r.ServerCPU, r.LoadCPU, r.StaleP50, r.StaleP99,
			msCap(r.LatP99), r.Complete, r.Clients, r.Closed, mib(r.RSS), loadavg())
	}
	base := rs[0]
	for i, r := range rs[1:] {
		fmt.Printf("%s against unlimited: bytes per client %.3f (1/%.1f), positions %.3f, broadcaster CPU %.2f\n", runs[i+1].String(),
			r.BytesPerSec/base.BytesPerSec, base.BytesPerSec/max(r.BytesPerSec, 1), r.PositionsPerSec/base.PositionsPerSec, r.ServerCPU/max(base.ServerCPU, 1e-9))
	}
	return nil
}

// load is a running -role load process.
type load struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startLoad(url string, n int, topic string, period time.Duration, extra ...string) (*load, error) {
	self, _ := os.Executable()
	args := append([]string{"-role", "load", "-url", url, "-n", strconv.Itoa(n), "-topic", topic, "-period", period.String(),
		"-rcvbuf", strconv.Itoa(*rcvbufF)}, extra...)
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	outPipe, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	l := &load{cmd: cmd, in: in, out: bufio.NewScanner(outPipe)}
	l.out.Buffer(make([]byte, 1<<20), 1<<24)
	if line, err := l.expect("READY"); err != nil {
		return nil, fmt.Errorf("load: %v %s", err, line)
	}
	return l, nil
}

func (l *load) send(line string) { _, _ = io.WriteString(l.in, line+"\n") }

func (l *load) expect(prefix string) (string, error) {
	for l.out.Scan() {
		line := l.out.Text()
		if strings.HasPrefix(line, prefix) {
			return strings.TrimSpace(strings.TrimPrefix(line, prefix)), nil
		}
		fmt.Fprintln(os.Stderr, "load:", line)
	}
	return "", fmt.Errorf("load process ended before %s", prefix)
}

func (l *load) finish() {
	_ = l.in.Close()
	_ = l.cmd.Wait()
}

func (c *coord) rawRun(n, per int) (result, error) {
	l, err := startLoad("ws://"+c.rawAddr+"/raw", n, "raw", 0)
	if err != nil {
		return result{}, err
	}
	defer l.finish()
	l.send("GO")
	resp, err := http.Post(fmt.Sprintf("http://%s/blast?per=%d&dur=%s", c.rawAddr, per, *duration), "text/plain", nil)
	if err != nil {
		return result{}, err
	}
	resp.Body.Close()
	l.send("END")
	line, err := l.expect("RESULT")
	if err != nil {
		return result{}, err
	}
	var r result
	return r, json.Unmarshal([]byte(line), &r)
}

// broadcastRun connects n clients to the event, publishes devices × hz for
// the window, then checks every client ends with the latest position of
// every device.
func (c *coord) broadcastRun(n, devices, hz int) (result, error) {
	return c.broadcastRunWith(n, devices, hz, subOpts{})
}

// broadcastRunWith is broadcastRun with subscription options.
func (c *coord) broadcastRunWith(n, devices, hz int, o subOpts) (result, error) {
	period := time.Second / time.Duration(hz)
	l, err := startLoad("ws://"+c.srvAddr+ws.Path, n, ws.EventTopic(c.eventID), period,
		"-max-hz", strconv.FormatFloat(o.maxHz, 'f', -1, 64), "-follow", strconv.Itoa(o.follow), "-devtotal", strconv.Itoa(devices))
	if err != nil {
		return result{}, err
	}
	defer l.finish()
	names := make([]string, devices)
	for i := range names {
		names[i] = fmt.Sprintf("d%05d", i)
	}
	// Warm-up of at least a second (the fresh clients' first frames, the
	// broadcaster's heap growing to the new load), then the measured window.
	c.publish(names, period, max(period, time.Second))
	l.send("GO")
	cpu0, t0 := cpuSeconds(c.srvCmd.Process.Pid), time.Now()
	last, count := c.publish(names, period, *duration)
	l.send("END")
	window := time.Since(t0).Seconds()
	serverCPU := (cpuSeconds(c.srvCmd.Process.Pid) - cpu0) / window
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
	r.RSS = rss(c.srvCmd.Process.Pid)
	r.ServerCPU = serverCPU
	r.Published = float64(count) / window
	return r, nil
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

// cpuSeconds is the user+system CPU time of a process.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which ends with ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// publish sends one position per device every period for d, each with the
// publish time as fix time, and returns the last fix time per device.
func (c *coord) publish(names []string, period, d time.Duration) (map[string]int64, int) {
	last := make(map[string]int64, len(names))
	count := 0
	start := time.Now()
	end := start.Add(d)
	b := max(1, *burstF)
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

// idleRun measures the broadcaster's memory per idle authenticated
// connection.
func (c *coord) idleRun(n int) error {
	heap0, rss0, g0 := c.mem()
	l, err := startLoad("ws://"+c.srvAddr+ws.Path, n, "", 0)
	if err != nil {
		return err
	}
	heap1, rss1, g1 := c.mem()
	if p := os.Getenv("BENCH_HEAP_PROFILE"); p != "" {
		if resp, err := http.Get("http://" + c.debugAddr + "/debug/pprof/heap"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			_ = os.WriteFile(p, b, 0o644)
		}
	}
	l.finish()
	fmt.Printf("idle connections: %d  broadcaster RSS %s → %s: %.1f KiB per connection; Go heap in use %.1f KiB, goroutines %.1f per connection\n\n",
		n, mib(rss0), mib(rss1), float64(rss1-rss0)/1024/float64(n), float64(heap1-heap0)/1024/float64(n), float64(g1-g0)/float64(n))
	return nil
}

// mem asks the broadcaster process for heap in use, RSS and goroutines
// after a full collection.
func (c *coord) mem() (heap, rss, goroutines int64) {
	resp, err := http.Get("http://" + c.debugAddr + "/mem")
	if err != nil {
		log.Printf("mem: %v", err)
		return
	}
	defer resp.Body.Close()
	_, _ = fmt.Fscan(resp.Body, &heap, &rss, &goroutines)
	return
}

func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// ---------------------------------------------------------------- server

func runServer() error {
	ctx, stop := signalContext()
	defer stop()
	// /mem collects garbage, returns memory to the OS, then reports heap in
	// use and RSS: the idle-connection figure needs a settled process.
	go func() {
		mux := http.NewServeMux()
		mux.HandleFunc("/mem", func(w http.ResponseWriter, _ *http.Request) {
			runtime.GC()
			debug.FreeOSMemory()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Fprintf(w, "%d %d %d\n", ms.HeapInuse, rss(os.Getpid()), runtime.NumGoroutine())
		})
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.Handle("/debug/pprof/heap", pprof.Handler("heap"))
		_ = http.ListenAndServe(*debugF, mux)
	}()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// BROADCASTER_* variables of the bench's environment apply, so settings
	// can be compared: BROADCASTER_FRAME_MAX_BYTES=32768 scripts/bench broadcaster
	cfg, err := broadcaster.LoadConfig(nil, os.Getenv)
	if err != nil {
		return err
	}
	cfg.NATSURL, cfg.HTTPAddr, cfg.Registerer = *natsURL, *addrF, reg
	if os.Getenv("BROADCASTER_MAX_CONNS_PER_USER") == "" {
		cfg.MaxConnsPerUser = 100000
	}
	if *role == "server" && os.Getenv("BENCH_PRINT_CONFIG") != "" {
		fmt.Fprintln(os.Stderr, cfg.String())
	}
	return broadcaster.Run(ctx, cfg)
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// ---------------------------------------------------------------- raw ceiling

// runRaw is a bare WebSocket server: no auth, no mailbox, no encoding per
// client; on /blast every connection writes the same pre-built frame as
// fast as the socket takes it.
func runRaw() error {
	var mu sync.Mutex
	conns := map[*websocket.Conn]bool{}
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("/raw", func(w http.ResponseWriter, r *http.Request) {
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		mu.Lock()
		conns[conn] = true
		mu.Unlock()
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				break
			}
		}
		mu.Lock()
		delete(conns, conn)
		mu.Unlock()
		conn.Close()
	})
	mux.HandleFunc("/blast", func(w http.ResponseWriter, r *http.Request) {
		per, _ := strconv.Atoi(r.URL.Query().Get("per"))
		d, _ := time.ParseDuration(r.URL.Query().Get("dur"))
		items := make([][]byte, per)
		for i := range items {
			ts := time.Now().UTC()
			p := contract.Position{DeviceID: fmt.Sprintf("d%05d", i), EventID: "0b5e7c1e-0000-4000-8000-00000000beef", TS: ts,
				Lat: 45.1, Lon: 7.6, Speed: &speed, Heading: &heading, Sats: &sats}
			items[i] = p.Encode()
		}
		frame := ws.AppendPositions(nil, "event:0b5e7c1e-0000-4000-8000-00000000beef", items)
		pm, err := websocket.NewPreparedMessage(websocket.TextMessage, frame)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		mu.Lock()
		list := make([]*websocket.Conn, 0, len(conns))
		for c := range conns {
			list = append(list, c)
		}
		mu.Unlock()
		end := time.Now().Add(d)
		var wg sync.WaitGroup
		for _, c := range list {
			wg.Go(func() {
				for time.Now().Before(end) {
					_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
					if err := c.WritePreparedMessage(pm); err != nil {
						return
					}
				}
			})
		}
		wg.Wait()
		_, _ = w.Write([]byte("done"))
	})
	return http.ListenAndServe(*addrF, mux)
}

// ---------------------------------------------------------------- load

// lclient is one WebSocket client of the load process.
type lclient struct {
	closed atomic.Bool
	conn   *websocket.Conn
	mu     sync.Mutex
	last   []int64  // fix time held per device index
	lat    []int32  // latency histogram, ms; the last bucket is "or more"
	day    [10]byte // date of dayMS, as in ts
	dayMS  int64
	follow []int // device indexes followed (-follow); nil = all
}

const latBuckets = 4096

// runLoad connects -n clients, subscribes them to -topic, then counts
// between GO and END, and checks the final state after FINAL.
func runLoad() error {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	var counting atomic.Bool
	var frames, positions, bytesIn atomic.Int64
	lat := newHist()
	stale := newHist()
	cls := make([]*lclient, *nF)
	hdr := http.Header{}
	dialer := websocket.Dialer{HandshakeTimeout: 30 * time.Second}
	if *rcvbufF > 0 {
		// A CPU-starved load generator would otherwise queue megabytes of
		// old frames in its own kernel buffers, which no server can
		// coalesce; a browser has its own CPU.
		dialer.NetDialContext = benchenv.DialReceiveBuffer(*rcvbufF)
	}
	var connected sync.WaitGroup
	sem := make(chan struct{}, 64)
	errs := make(chan error, *nF)
	for i := range cls {
		sem <- struct{}{}
		connected.Add(1)
		go func() {
			released := false
			release := func() {
				if !released {
					released = true
					<-sem
				}
			}
			defer release()
			h := hdr.Clone()
			h.Set("Cookie", "directus_session_token="+benchCookie(fmt.Sprintf("bench-%d", i)))
			// Like a browser, retry with backoff on 1013 (authsvc slow or
			// down) and on "unavailable".
			var conn *websocket.Conn
			var err error
			for attempt := 0; attempt < 8; attempt++ {
				if attempt > 0 {
					time.Sleep(time.Duration(attempt) * 250 * time.Millisecond)
				}
				if conn, err = dialSubscribe(&dialer, h, followed(i)); err == nil {
					break
				}
			}
			if err != nil {
				errs <- err
				connected.Done()
				return
			}
			lc := &lclient{conn: conn, follow: followedIdx(i)}
			cls[i] = lc
			connected.Done()
			release()
			if *topicF == "" {
				return // idle: keep the socket, read nothing
			}
			var buf []byte // reused: the load process must spend its CPU on reading, not on garbage
			for {
				var data []byte
				data, buf, err = benchenv.ReadFrame(conn, buf)
				if err != nil {
					lc.closed.Store(true)
					return
				}
				now := time.Now().UnixMilli()
				n := lc.apply(data, now, counting.Load())
				if counting.Load() {
					frames.Add(1)
					positions.Add(int64(n))
					bytesIn.Add(int64(len(data)))
				}
			}
		}()
	}
	connected.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	fmt.Println("READY")

	var start, stop time.Time
	var cpuStart, loadCPU float64
	var samplerDone chan struct{}
	for in.Scan() {
		line := in.Text()
		switch {
		case line == "GO":
			cpuStart = cpuSeconds(os.Getpid())
			frames.Store(0)
			positions.Store(0)
			bytesIn.Store(0)
			start = time.Now()
			counting.Store(true)
			samplerDone = make(chan struct{})
			if *topicF == "raw" {
				close(samplerDone)
			} else {
				go sampleStaleness(cls, stale, &counting, samplerDone)
			}
		case line == "END":
			counting.Store(false)
			stop = time.Now()
			loadCPU = (cpuSeconds(os.Getpid()) - cpuStart) / stop.Sub(start).Seconds()
			if samplerDone != nil {
				<-samplerDone
			}
			if *topicF == "raw" {
				printResult(result{Clients: len(cls), FramesPerSec: float64(frames.Load()) / stop.Sub(start).Seconds(),
					PositionsPerSec: float64(positions.Load()) / stop.Sub(start).Seconds(), LoadCPU: loadCPU})
			}
		case strings.HasPrefix(line, "FINAL "):
			var final map[string]int64
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "FINAL ")), &final); err != nil {
				return err
			}
			complete := waitFinal(cls, final, 20*time.Second)
			closed := 0
			for _, c := range cls {
				if c != nil && c.closed.Load() {
					closed++
				}
			}
			for _, c := range cls {
				if c == nil {
					continue
				}
				c.mu.Lock()
				for ms, n := range c.lat {
					lat.addN(ms, int64(n))
				}
				c.mu.Unlock()
			}
			secs := stop.Sub(start).Seconds()
			printResult(result{Clients: len(cls), FramesPerSec: float64(frames.Load()) / secs, PositionsPerSec: float64(positions.Load()) / secs,
				LatP50: lat.pct(50), LatP99: lat.pct(99), StaleP50: stale.pct(50), StaleP99: stale.pct(99), Complete: complete, Closed: closed, LoadCPU: loadCPU,
				BytesPerSec: float64(bytesIn.Load()) / secs})
		}
	}
	for _, c := range cls {
		if c != nil {
			_ = c.conn.Close()
		}
	}
	return nil
}

// followedIdx is the device indexes load client i follows with -follow:
// consecutive ones, so that every device has followers; nil = all.
func followedIdx(i int) []int {
	if *followF <= 0 || *devTotF <= 0 {
		return nil
	}
	out := make([]int, *followF)
	for j := range out {
		out[j] = (i*(*followF) + j) % *devTotF
	}
	return out
}

// followed is the devices option of load client i, or nil.
func followed(i int) []string {
	idx := followedIdx(i)
	if idx == nil {
		return nil
	}
	out := make([]string, len(idx))
	for j, d := range idx {
		out[j] = fmt.Sprintf("d%05d", d)
	}
	return out
}

// dialSubscribe connects and, unless idle or raw, subscribes to the topic
// (with -max-hz and the devices given).
func dialSubscribe(dialer *websocket.Dialer, h http.Header, devices []string) (*websocket.Conn, error) {
	conn, _, err := dialer.Dial(*urlF, h)
	if err != nil {
		return nil, err
	}
	if *topicF == "" || *topicF == "raw" {
		return conn, nil
	}
	req := ws.Request{Type: ws.TypeSubscribe, Topic: *topicF, Options: ws.SubscribeOptions{MaxHz: *maxHzF, Devices: devices}}
	_ = conn.WriteMessage(websocket.TextMessage, req.Encode())
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, data, err := conn.ReadMessage()
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil || !bytes.Contains(data[:min(40, len(data))], []byte(`"subscribed"`)) {
		conn.Close()
		return nil, fmt.Errorf("subscribe: %v %.80s", err, data)
	}
	return conn, nil
}

func printResult(r result) {
	b, _ := json.Marshal(r)
	fmt.Println("RESULT " + string(b))
}

// apply scans a frame for its positions without a full JSON decode (the
// raw ceiling's clients do the same work) and returns how many it held.
// Positions are contract.Encode's compact JSON, fields in a fixed order:
// device_id, event_id (a UUID), ts; the scan relies on that order and
// falls back to a search where a frame differs.
func (lc *lclient) apply(data []byte, now int64, counting bool) int {
	const devKey, tsKey = `{"device_id":"d`, `"ts":"` // "{" is rare in a frame: a fast first-byte search
	n := 0
	rest := data
	lc.mu.Lock()
	defer lc.mu.Unlock()
	for {
		i := bytes.Index(rest, []byte(devKey))
		if i < 0 {
			return n
		}
		rest = rest[i+len(devKey):]
		dev := 0
		j := 0
		for ; j < len(rest) && rest[j] >= '0' && rest[j] <= '9'; j++ {
			dev = dev*10 + int(rest[j]-'0')
		}
		// `","event_id":"` + 36-character UUID + `","ts":"`
		k := j + len(`","event_id":"`) + 36 + len(`",`)
		if k+len(tsKey) > len(rest) || string(rest[k:k+len(tsKey)]) != tsKey {
			if k = bytes.Index(rest, []byte(tsKey)); k < 0 {
				return n
			}
		}
		rest = rest[k+len(tsKey):]
		ts := lc.parseTS(rest)
		if dev >= len(lc.last) {
			lc.last = append(lc.last, make([]int64, dev+1-len(lc.last))...)
		}
		if ts > lc.last[dev] {
			lc.last[dev] = ts
		}
		if counting {
			if lc.lat == nil {
				lc.lat = make([]int32, latBuckets)
			}
			lc.lat[max(0, min(int(now-ts), latBuckets-1))]++
		}
		n++
	}
}

// parseTS reads 2006-01-02T15:04:05.000Z into Unix ms. The date is
// converted once per client and day; the time of day is plain digits.
func (lc *lclient) parseTS(b []byte) int64 {
	if len(b) < 24 {
		return 0
	}
	num := func(s []byte) int64 {
		var v int64
		for _, c := range s {
			v = v*10 + int64(c-'0')
		}
		return v
	}
	if string(b[:10]) != string(lc.day[:]) {
		copy(lc.day[:], b[:10])
		lc.dayMS = time.Date(int(num(b[0:4])), time.Month(num(b[5:7])), int(num(b[8:10])), 0, 0, 0, 0, time.UTC).UnixMilli()
	}
	return lc.dayMS + num(b[11:13])*3600000 + num(b[14:16])*60000 + num(b[17:19])*1000 + num(b[20:23])
}

// sampleStaleness records, every 50 ms, the age of the view of every
// device held by 50 clients (rotating over all clients): now minus the fix
// time the client holds.
func sampleStaleness(cls []*lclient, h *hist, counting *atomic.Bool, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	next := 0
	for counting.Load() {
		<-t.C
		now := time.Now().UnixMilli()
		for range min(50, len(cls)) {
			c := cls[next%len(cls)]
			next++
			if c == nil {
				continue
			}
			c.mu.Lock()
			for _, ts := range c.last {
				if ts > 0 {
					h.add(int(now - ts))
				}
			}
			c.mu.Unlock()
		}
	}
}

func waitFinal(cls []*lclient, final map[string]int64, timeout time.Duration) int {
	want := make([]int64, 0, len(final))
	for name, ts := range final {
		idx, _ := strconv.Atoi(strings.TrimPrefix(name, "d"))
		for len(want) <= idx {
			want = append(want, 0)
		}
		want[idx] = ts
	}
	deadline := time.Now().Add(timeout)
	for {
		complete := 0
		for _, c := range cls {
			if c == nil {
				continue
			}
			ok := true
			c.mu.Lock()
			if c.follow != nil {
				for _, i := range c.follow {
					if i < len(want) && want[i] > 0 && (i >= len(c.last) || c.last[i] != want[i]) {
						ok = false
						break
					}
				}
			} else {
				for i, ts := range want {
					if ts > 0 && (i >= len(c.last) || c.last[i] != ts) {
						ok = false
						break
					}
				}
			}
			c.mu.Unlock()
			if ok {
				complete++
			}
		}
		if complete == len(cls) || time.Now().After(deadline) {
			return complete
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// hist is a millisecond histogram up to 60 s.
type hist struct {
	mu     sync.Mutex
	counts []int64
	total  int64
}

func newHist() *hist { return &hist{counts: make([]int64, 60001)} }

func (h *hist) add(ms int) { h.addN(ms, 1) }

func (h *hist) addN(ms int, n int64) {
	ms = max(0, min(ms, len(h.counts)-1))
	h.mu.Lock()
	h.counts[ms] += n
	h.total += n
	h.mu.Unlock()
}

func (h *hist) pct(p float64) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.total == 0 {
		return -1
	}
	target := int64(float64(h.total) * p / 100)
	var sum int64
	for ms, c := range h.counts {
		sum += c
		if sum > target {
			return ms
		}
	}
	return len(h.counts) - 1
}
