// Command replay benchmarks replays over /ws-live (docs/replay.md).
//
// It records a race in an embedded nats-server's POSITIONS stream (500
// devices × 2 h at 1 Hz = 3.6 M positions by default), runs the real
// broadcaster as a child process (built from broadcaster/cmd/broadcaster)
// against it with an authsvc stand-in that admits every bench cookie, then
// measures:
//
//   - the raw ceiling: an ordered consumer reading the event's positions as
//     fast as JetStream gives them, in this process;
//   - one client replaying the whole race at "max": positions/s delivered
//     (and its ratio to the ceiling);
//   - ten clients replaying it at 100× at once: pacing error (receive time
//     minus the time the server's announced schedule gives each position)
//     p50/p99/max, and how many positions arrived (a client that falls
//     MaxLag behind loses the oldest pending position of a device).
//
// With -export it also times the export package (export/) over the whole race (NDJSON in
// one pass, GPX in one pass per device).
//
// Usage: scripts/bench replay [-devices 500] [-duration 2h] [-clients 10]
// [-speed 100] [-paced-range 10m] [-skip-max] [-reuse] [-max-lag D] [-export]
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

	"trm-live/contract"
	"trm-live/contract/auth"
	"trm-live/contract/streams"
	"trm-live/contract/ws"
	"trm-live/export"
	"trm-live/testkit/benchenv"
)

// Config is one benchmark run: the flags of scripts/bench replay, and the
// folder scripts/bench gave it.
type Config struct {
	Devices  int           // devices of the recorded race
	Duration time.Duration // length of the recorded race (fix times), 1 Hz per device
	Clients  int           // clients replaying at once at Speed
	Speed    float64       // speed of the concurrent replays
	// PacedRange is the fix-time range the concurrent replays play, from
	// the race's start; 0 plays all of it.
	PacedRange time.Duration
	SkipMax    bool          // skip the single client at max speed
	Reuse      bool          // reuse the race a previous run stored with the same Devices and Duration
	MaxLag     time.Duration // BROADCASTER_REPLAY_MAX_LAG (0: the broadcaster's default)
	Export     bool          // also time the export of the whole race
	// DataDir holds the stored race and the broadcaster's binary.
	benchenv.Servers
}

// LoadConfig reads the flags in args and the folder from getenv.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("bench replay", flag.ContinueOnError)
	fs.IntVar(&c.Devices, "devices", 500, "devices of the recorded race")
	fs.DurationVar(&c.Duration, "duration", 2*time.Hour, "length of the recorded race (fix times), 1 Hz per device")
	fs.IntVar(&c.Clients, "clients", 10, "clients replaying at once at -speed")
	fs.Float64Var(&c.Speed, "speed", 100, "speed of the concurrent replays")
	fs.DurationVar(&c.PacedRange, "paced-range", 10*time.Minute, "fix-time range the concurrent replays play (from the race's start; 0 = all of it)")
	fs.BoolVar(&c.SkipMax, "skip-max", false, "skip the single client at max speed")
	fs.BoolVar(&c.Reuse, "reuse", false, "reuse the race stored by a previous run with the same -devices and -duration")
	fs.DurationVar(&c.MaxLag, "max-lag", 0, "BROADCASTER_REPLAY_MAX_LAG for the broadcaster (0: its default)")
	fs.BoolVar(&c.Export, "export", false, "also time the export (NDJSON and GPX of the whole race, to a counting writer)")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	var err error
	c.Servers, err = benchenv.LoadServers(getenv, "replay")
	return c, err
}

const eventID = "5e1a7c00-0000-4000-8000-00000000be9c"

// Run records the race (or reuses it), then measures the ceiling, the
// replay at max and the paced replays.
func Run(ctx context.Context, o Config) error {
	dir := filepath.Join(o.DataDir, "replay")
	stamp := filepath.Join(dir, "race.txt")
	want := fmt.Sprintf("%d devices %s", o.Devices, o.Duration)
	reuse := false
	if o.Reuse {
		if b, err := os.ReadFile(stamp); err == nil && strings.HasPrefix(string(b), want+"\n") {
			reuse = true
		}
	}
	if !reuse {
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("replay bench: %s, %d cores, %s, load average %s\n", want, runtime.NumCPU(), runtime.Version(),
		strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))

	ns, stopNATS, err := benchenv.StartNATS(server.Options{
		ServerName: "bench-replay", JetStream: true,
		StoreDir: filepath.Join(dir, "nats"), JetStreamMaxMemory: 1 << 30, JetStreamMaxStore: 20 << 30,
		MaxPayload: 1 << 20,
	})
	if err != nil {
		return err
	}
	defer stopNATS()
	// The recording keeps up to 8,192 publishes in flight.
	nc, js, err := benchenv.ConnectJetStream(ns.ClientURL(), 16384)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := streams.Ensure(ctx, js, streams.Options{}); err != nil {
		return err
	}

	var first, last time.Time
	total := o.Devices * int(o.Duration/time.Second)
	if reuse {
		b, _ := os.ReadFile(stamp)
		lines := strings.Split(string(b), "\n")
		first, _ = time.Parse(time.RFC3339Nano, lines[1])
		last, _ = time.Parse(time.RFC3339Nano, lines[2])
		fmt.Printf("reusing the stored race: %d positions, fix times %s .. %s\n", total,
			first.Format(contract.TimeLayout), last.Format(contract.TimeLayout))
	} else {
		first, last, err = record(js, o)
		if err != nil {
			return err
		}
		_ = os.WriteFile(stamp, []byte(want+"\n"+first.Format(time.RFC3339Nano)+"\n"+last.Format(time.RFC3339Nano)+"\n"), 0o644)
	}

	stopAuth, err := authStandIn(nc)
	if err != nil {
		return err
	}
	defer stopAuth()

	ceiling, err := rawCeiling(ctx, js, first)
	if err != nil {
		return err
	}
	fmt.Printf("raw ceiling: ordered consumer read %d positions in %s = %.0f positions/s\n",
		ceiling.n, ceiling.d.Round(time.Millisecond), ceiling.rate())

	if o.Export {
		for _, f := range []export.Format{export.NDJSON, export.GPX} {
			var w countingWriter
			st, err := export.Export(ctx, js, &w, export.Options{EventID: eventID, From: first, Format: f})
			if err != nil {
				return err
			}
			fmt.Printf("export %s: %d positions, %d tracks, %.1f MB in %s = %.0f positions/s (%.2f × raw ceiling)\n",
				f, st.Written, st.Tracks, float64(w.n)/1e6, st.Elapsed.Round(time.Millisecond), st.Rate(), st.Rate()/ceiling.rate())
		}
	}

	b, err := startBroadcaster(dir, ns.ClientURL(), o.MaxLag)
	if err != nil {
		return err
	}
	defer b.stop()

	from := first.Add(-time.Second) // empty snapshot: every position is replayed
	if !o.SkipMax {
		res, err := replayMax(b.addr, from, last, total)
		if err != nil {
			return err
		}
		// The ceiling again, right after: the machine is shared and noisy;
		// the better of the two is the ratio's denominator.
		again, err := rawCeiling(ctx, js, first)
		if err != nil {
			return err
		}
		fmt.Printf("raw ceiling again: %.0f positions/s\n", again.rate())
		if again.rate() > ceiling.rate() {
			ceiling = again
		}
		fmt.Printf("one client at max: %d of %d positions in %s = %.0f positions/s (%.2f × raw ceiling), broadcaster RSS peak %s\n",
			res.n, total, res.d.Round(time.Millisecond), res.rate(), res.rate()/ceiling.rate(), b.peakRSS())
	}

	pacedTo, pacedTotal := time.Time{}, total
	if o.PacedRange > 0 && o.PacedRange < o.Duration {
		// The last fix of the range is device 0 at second PacedRange.
		pacedTo = first.Add(o.PacedRange)
		pacedTotal = o.Devices*int(o.PacedRange/time.Second) + 1
	}
	res, err := replayPaced(b.addr, from, pacedTo, last, pacedTotal, o.Clients, o.Speed)
	if err != nil {
		return err
	}
	need := float64(o.Devices) * o.Speed * float64(o.Clients) // positions/s the schedule asks for
	played := o.Duration
	if !pacedTo.IsZero() {
		played = o.PacedRange
	}
	fmt.Printf("%d clients at %g× over %s of the race: %d of %d positions delivered (%.2f%%) in %s (schedule: %s); pacing error p50 %s p99 %s max %s;"+
		" %.0f positions/s delivered in all, the schedule asks %.0f/s (%.2f × raw ceiling)\n",
		o.Clients, o.Speed, played, res.delivered, res.expected, 100*float64(res.delivered)/float64(res.expected),
		res.d.Round(time.Millisecond), time.Duration(float64(played)/o.Speed).Round(time.Millisecond),
		res.p50, res.p99, res.max, float64(res.delivered)/res.d.Seconds(), need, need/ceiling.rate())
	m := b.metrics()
	fmt.Printf("broadcaster: replay_positions_total %s, positions_coalesced_total %s, server-side pacing error ≤ 50 ms: %s of %s; RSS peak %s\n",
		m["broadcaster_replay_positions_total"], m["broadcaster_positions_coalesced_total"],
		m[`broadcaster_replay_pacing_error_seconds_bucket{le="0.05"}`], m["broadcaster_replay_pacing_error_seconds_count"], b.peakRSS())
	load, _ = os.ReadFile("/proc/loadavg")
	fmt.Printf("load average at the end: %s\n", strings.Join(strings.Fields(string(load))[:3], " "))
	return nil
}

// record publishes the race: every device once per second of fix time,
// the race ending a minute ago. No Nats-Msg-Id: dedup is the bridge's
// concern, and a 3.6 M-id window would only slow the recording.
func record(js jetstream.JetStream, o Config) (first, last time.Time, err error) {
	seconds := int(o.Duration / time.Second)
	first = time.Now().UTC().Add(-o.Duration - time.Minute).Truncate(time.Second)
	total := seconds * o.Devices
	start := time.Now()
	pending := make([]jetstream.PubAckFuture, 0, 8192)
	wait := func() error {
		err := benchenv.AwaitAcks(pending, 30*time.Second)
		pending = pending[:0]
		return err
	}
	buf := make([]byte, 0, 256)
	n := 0
	for s := range seconds {
		for d := range o.Devices {
			ts := first.Add(time.Duration(s)*time.Second + time.Duration(d)*time.Millisecond)
			p := contract.Position{DeviceID: fmt.Sprintf("dev-%04d", d), EventID: eventID, TS: ts,
				Lat: 45 + float64(s)*1e-5, Lon: 7 + float64(d)*1e-4, Speed: ptr(80 + float64(d%40)), Sats: ptr(11)}
			buf = p.AppendJSON(buf[:0])
			f, err := js.PublishAsync(p.Subject(), bytes.Clone(buf))
			if err != nil {
				return first, last, err
			}
			pending = append(pending, f)
			if len(pending) == cap(pending) {
				if err := wait(); err != nil {
					return first, last, err
				}
			}
			last = ts
			n++
		}
		if s%600 == 0 && s > 0 {
			fmt.Printf("  recorded %d of %d positions (%.0f/s)\n", n, total, float64(n)/time.Since(start).Seconds())
		}
	}
	if err := wait(); err != nil {
		return first, last, err
	}
	fmt.Printf("recorded %d positions in %s (%.0f/s)\n", n, time.Since(start).Round(time.Millisecond), float64(n)/time.Since(start).Seconds())
	return first, last, nil
}

func ptr[T any](v T) *T { return &v }

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

type rate struct {
	n int
	d time.Duration
}

func (r rate) rate() float64 { return float64(r.n) / r.d.Seconds() }

// rawCeiling reads every position of the event with an ordered consumer,
// as a replay's source does, without pacing, decoding or WebSocket.
func rawCeiling(ctx context.Context, js jetstream.JetStream, first time.Time) (rate, error) {
	start := first.Add(-contract.MaxFutureSkew)
	cons, err := js.OrderedConsumer(ctx, streams.Positions, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{contract.EventSubject(eventID)},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy, OptStartTime: &start,
	})
	if err != nil {
		return rate{}, err
	}
	t0 := time.Now()
	it, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return rate{}, err
	}
	defer it.Stop()
	n := 0
	for {
		msg, err := it.Next()
		if err != nil {
			return rate{}, err
		}
		n++
		meta, err := msg.Metadata()
		if err != nil {
			return rate{}, err
		}
		if meta.NumPending == 0 {
			return rate{n, time.Since(t0)}, nil
		}
	}
}

// authStandIn answers authsvc's contract: every cookie is an admin user of
// its own name, every event exists.
func authStandIn(nc *nats.Conn) (func(), error) {
	svc, err := micro.AddService(nc, micro.Config{Name: auth.ServiceName, Version: auth.ServiceVersion, QueueGroup: auth.QueueGroup})
	if err != nil {
		return nil, err
	}
	err = svc.AddEndpoint("session", micro.HandlerFunc(func(r micro.Request) {
		var req auth.SessionRequest
		if err := json.Unmarshal(r.Data(), &req); err != nil || req.Cookie == "" {
			_ = r.Error(auth.CodeUnauthorized, "no cookie", nil)
			return
		}
		_ = r.RespondJSON(auth.User{ID: "bench-" + req.Cookie, Admin: true})
	}), micro.WithEndpointSubject(auth.SessionSubject))
	if err != nil {
		return nil, err
	}
	err = svc.AddEndpoint("event", micro.HandlerFunc(func(r micro.Request) {
		_ = r.RespondJSON(auth.EventResponse{Decision: auth.Allowed})
	}), micro.WithEndpointSubject(auth.EventSubject))
	if err != nil {
		return nil, err
	}
	return func() { _ = svc.Stop() }, nil
}

// bcast is the broadcaster child process.
type bcast struct {
	cmd  *exec.Cmd
	addr string
}

func startBroadcaster(dir, natsURL string, maxLag time.Duration) (*bcast, error) {
	root, err := benchenv.RepoRoot()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(dir, "broadcaster")
	build := exec.Command("go", "build", "-o", bin, "./cmd/broadcaster")
	build.Dir = filepath.Join(root, "broadcaster")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("build broadcaster: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "NATS_URL="+natsURL, "HTTP_ADDR="+addr, "LOG_LEVEL=warn",
		"BROADCASTER_REPLAY_MAX_PER_USER=100", "BROADCASTER_REPLAY_MAX=1000", "BROADCASTER_MAX_CONNS_PER_USER=1000")
	if maxLag > 0 {
		cmd.Env = append(cmd.Env, "BROADCASTER_REPLAY_MAX_LAG="+maxLag.String())
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// The broadcaster goes with the benchmark, however that ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	b := &bcast{cmd: cmd, addr: addr}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return b, nil
			}
		}
		if time.Now().After(deadline) {
			b.stop()
			return nil, errors.New("broadcaster not ready after 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *bcast) stop() {
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = b.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = b.cmd.Process.Kill()
	}
}

// peakRSS is the child's VmHWM.
func (b *bcast) peakRSS() string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", b.cmd.Process.Pid))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// metrics scrapes the broadcaster's /metrics into name{labels} → value.
func (b *bcast) metrics() map[string]string {
	out := map[string]string{}
	resp, err := http.Get("http://" + b.addr + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			out[line[:i]] = line[i+1:]
		}
	}
	return out
}

// client is one WebSocket viewer of the race ending at end (the last
// recorded fix time).
type client struct {
	conn *websocket.Conn
	end  time.Time
	st   ws.ReplayStatus
}

// benchToken wraps a bench user's name in a value shaped like a Directus
// session JWT, which the broadcaster requires before asking authsvc.
func benchToken(name string) string {
	b64 := base64.RawURLEncoding
	return b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." +
		b64.EncodeToString([]byte(`{"id":"`+name+`"}`)) + ".YmVuY2g"
}

func dial(addr, cookie string, end time.Time) (*client, error) {
	h := http.Header{}
	h.Set("Cookie", auth.DefaultCookieName+"="+benchToken(cookie))
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 64 << 10}
	conn, _, err := d.Dial("ws://"+addr+ws.Path, h)
	if err != nil {
		return nil, err
	}
	return &client{conn: conn, end: end}, nil
}

// subscribe starts a replay to the end of the race and reads its
// subscribed frame.
func (c *client) subscribe(from time.Time, speed ws.Speed) error {
	return c.subscribeRange(from, time.Time{}, speed)
}

// subscribeRange starts a replay of [from, to] (to zero: to the race's
// end; a replay without to would be a rewind, which turns live instead of
// ending).
func (c *client) subscribeRange(from, to time.Time, speed ws.Speed) error {
	if to.IsZero() {
		to = c.end
	}
	req := ws.Request{Type: ws.TypeSubscribe, Topic: ws.EventTopic(eventID), ID: "bench", Replay: true,
		ReplayOptions: ws.ReplayOptions{From: from, To: to, Speed: speed}}
	if err := c.conn.WriteMessage(websocket.TextMessage, req.Encode()); err != nil {
		return err
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Minute))
	_, data, err := c.conn.ReadMessage()
	if err != nil {
		return err
	}
	f, err := ws.DecodeFrame(data)
	if err != nil {
		return err
	}
	if f.Type != ws.TypeSubscribed {
		return fmt.Errorf("subscribe: %s", data)
	}
	c.st, err = f.Status()
	return err
}

var (
	positionsHead = []byte(`{"type":"positions"`)
	tsKey         = []byte(`"ts":"`)
)

// read consumes frames until replay_end, calling fn with the fix time of
// every replayed position and the frame's receive time. Items are scanned,
// not decoded: the reader must stay cheaper than the server it measures.
func (c *client) read(fn func(ts, at time.Time)) error {
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Minute))
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			return err
		}
		at := time.Now()
		if !bytes.HasPrefix(data, positionsHead) {
			f, err := ws.DecodeFrame(data)
			if err != nil {
				return err
			}
			if f.Type == ws.TypeReplayEnd {
				return nil
			}
			return fmt.Errorf("unexpected frame: %.200s", data)
		}
		for rest := data; ; {
			i := bytes.Index(rest, tsKey)
			if i < 0 {
				break
			}
			rest = rest[i+len(tsKey):]
			ts, err := time.Parse(contract.TimeLayout, string(rest[:len(contract.TimeLayout)]))
			if err != nil {
				return fmt.Errorf("ts in %.200s: %v", data, err)
			}
			fn(ts, at)
		}
	}
}

func replayMax(addr string, from, end time.Time, total int) (rate, error) {
	c, err := dial(addr, "max-client", end)
	if err != nil {
		return rate{}, err
	}
	defer c.conn.Close()
	t0 := time.Now()
	if err := c.subscribe(from, ws.SpeedMax); err != nil {
		return rate{}, err
	}
	n := 0
	lastReport := time.Now()
	err = c.read(func(time.Time, time.Time) {
		n++
		if n%100000 == 0 && time.Since(lastReport) > 5*time.Second {
			lastReport = time.Now()
			fmt.Printf("  max: %d of %d (%.0f/s)\n", n, total, float64(n)/time.Since(t0).Seconds())
		}
	})
	return rate{n, time.Since(t0)}, err
}

type pacedResult struct {
	delivered, expected int
	d                   time.Duration
	p50, p99, max       time.Duration
}

func replayPaced(addr string, from, to, end time.Time, total, clients int, speed float64) (pacedResult, error) {
	cs := make([]*client, clients)
	for i := range cs {
		c, err := dial(addr, fmt.Sprintf("paced-%d", i), end)
		if err != nil {
			return pacedResult{}, err
		}
		defer c.conn.Close()
		cs[i] = c
	}
	// Each client keeps a histogram of lateness: 0.1 ms steps up to 1 s,
	// then 10 ms steps up to 100 s (memory: clients × 20k counters,
	// whatever the race's size).
	const fine, coarse, nFine, nCoarse = 100 * time.Microsecond, 10 * time.Millisecond, 10000, 10000
	const buckets = nFine + nCoarse
	bucketOf := func(late time.Duration) int {
		if late < nFine*fine {
			return int(late / fine)
		}
		return min(nFine+int((late-nFine*fine)/coarse), buckets)
	}
	upper := func(i int) time.Duration {
		if i < nFine {
			return time.Duration(i+1) * fine
		}
		return nFine*fine + time.Duration(i-nFine+1)*coarse
	}
	hists := make([][]uint32, clients)
	var delivered atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	t0 := time.Now()
	for i, c := range cs {
		hists[i] = make([]uint32, buckets+1)
		wg.Go(func() {
			if err := c.subscribeRange(from, to, ws.Speed(speed)); err != nil {
				errs <- err
				return
			}
			h := hists[i]
			err := c.read(func(ts, at time.Time) {
				delivered.Add(1)
				due, _ := c.st.Due(ts)
				late := max(0, at.Sub(due))
				h[bucketOf(late)]++
			})
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	d := time.Since(t0)
	close(errs)
	if err := <-errs; err != nil {
		return pacedResult{}, err
	}
	sum := make([]uint64, buckets+1)
	var n uint64
	for _, h := range hists {
		for i, v := range h {
			sum[i] += uint64(v)
			n += uint64(v)
		}
	}
	quantile := func(q float64) time.Duration {
		target := uint64(q * float64(n))
		var acc uint64
		for i, v := range sum {
			acc += v
			if acc > target {
				return upper(i)
			}
		}
		return upper(buckets)
	}
	var worst time.Duration
	for i := len(sum) - 1; i >= 0; i-- {
		if sum[i] > 0 {
			worst = upper(i)
			break
		}
	}
	return pacedResult{delivered: int(delivered.Load()), expected: total * clients, d: d,
		p50: quantile(0.5), p99: quantile(0.99), max: worst}, nil
}
