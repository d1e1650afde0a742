package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"trm-live/contract/ws"
	"trm-live/testkit/benchenv"
)

// ClientsConfig is a load process (-role load): N WebSocket clients of the
// broadcaster (or of the raw server), driven by the coordinator over
// stdin and stdout.
type ClientsConfig struct {
	URL    string // ws:// URL of /ws-live, or of the raw server's /raw
	RawURL string // raw server /raw: N more clients for the fan-out ceiling; "" none
	N      int
	// Topic to subscribe; "" = connected, not subscribed; "raw" = the
	// clients of the synthetic reference.
	Topic    string
	Period   time.Duration // publishing period per device: a coalesced position's fix time
	RcvBuf   int           // SO_RCVBUF per connection, 0 = autotuning
	MaxHz    float64       // max_hz of each subscribe, 0 = none
	Follow   int           // devices each client follows, 0 = all
	DevTotal int           // devices of the event, for Follow
}

// lclient is one WebSocket client of the load process.
type lclient struct {
	closed  atomic.Bool
	conn    *websocket.Conn
	frames  atomic.Int64 // frames received in the window
	firstAt atomic.Int64 // Unix ns of the first frame received while counting (raw clients)
	lastAt  atomic.Int64 // and of the last

	mu        sync.Mutex
	last      []int64  // fix time held per device index
	lat       []int32  // latency of delivered positions, ms; the last bucket is "or more"
	all       []int32  // latency of every offered position, ms
	delivered int64    // positions received in the window
	offered   int64    // delivered + coalesced ones
	day       [10]byte // date of dayMS, as in ts
	dayMS     int64
	follow    []int // device indexes followed (Follow); nil = all
}

const latBuckets = 4096

// loadRun is the state of one load process.
type loadRun struct {
	cfg                        ClientsConfig
	cls, raws                  []*lclient
	counting, rawCounting      atomic.Bool
	frames, positions, bytesIn atomic.Int64
	rawFrames, rawPositions    atomic.Int64
	recMu                      sync.Mutex
	rec                        [][]byte // client 0's frames in the window
}

// Run connects the clients, says READY, then obeys the coordinator's
// commands on in until it closes: GO and END bound a window; SAVE writes
// client 0's frames of the window to a file and answers every client's
// frame count; FINAL checks every client holds the latest positions and
// answers the window's RESULT; RAWGO and RAWWAIT bound the fan-out of
// recorded frames to the raw clients and answer RAWRESULT.
func (cfg ClientsConfig) Run(ctx context.Context, in io.Reader, out io.Writer) error {
	lr := &loadRun{cfg: cfg, cls: make([]*lclient, cfg.N)}
	dialer := websocket.Dialer{HandshakeTimeout: 30 * time.Second}
	if cfg.RcvBuf > 0 {
		// A CPU-starved load generator would otherwise queue megabytes of
		// old frames in its own kernel buffers, which no server can
		// coalesce; a browser has its own CPU.
		dialer.NetDialContext = benchenv.DialReceiveBuffer(cfg.RcvBuf)
	}
	if err := lr.connect(ctx, &dialer); err != nil {
		return err
	}
	defer func() {
		for _, c := range append(lr.cls, lr.raws...) {
			if c != nil {
				_ = c.conn.Close()
			}
		}
	}()
	fmt.Fprintln(out, "READY")

	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	var start, stop, rawStart time.Time
	var cpuStart, loadCPU, rawCPU0 float64
	stale := newHist()
	var samplerDone chan struct{}
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "GO":
			cpuStart = benchenv.CPUSeconds(os.Getpid())
			lr.frames.Store(0)
			lr.positions.Store(0)
			lr.bytesIn.Store(0)
			for _, c := range lr.cls {
				if c != nil {
					c.reset()
				}
			}
			lr.recMu.Lock()
			lr.rec = nil
			lr.recMu.Unlock()
			stale = newHist()
			start = time.Now()
			lr.counting.Store(true)
			samplerDone = make(chan struct{})
			if cfg.Topic == "raw" {
				close(samplerDone)
			} else {
				go sampleStaleness(lr.cls, stale, &lr.counting, samplerDone)
			}
		case line == "END":
			lr.counting.Store(false)
			stop = time.Now()
			loadCPU = (benchenv.CPUSeconds(os.Getpid()) - cpuStart) / stop.Sub(start).Seconds()
			if samplerDone != nil {
				<-samplerDone
			}
			if cfg.Topic == "raw" {
				secs := stop.Sub(start).Seconds()
				printResult(out, "RESULT", result{Clients: len(lr.cls), FramesPerSec: float64(lr.frames.Load()) / secs,
					PositionsPerSec: float64(lr.positions.Load()) / secs, LoadCPU: loadCPU})
			}
		case strings.HasPrefix(line, "SAVE "):
			lr.recMu.Lock()
			err := writeFrames(strings.TrimPrefix(line, "SAVE "), lr.rec)
			lr.recMu.Unlock()
			if err != nil {
				return err
			}
			counts := make([]int, len(lr.cls))
			for i, c := range lr.cls {
				if c != nil {
					counts[i] = int(c.frames.Load())
				}
			}
			printResult(out, "SAVED", counts)
		case strings.HasPrefix(line, "FINAL "):
			var final map[string]int64
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "FINAL ")), &final); err != nil {
				return err
			}
			r := lr.final(final)
			secs := stop.Sub(start).Seconds()
			r.FramesPerSec, r.PositionsPerSec, r.BytesPerSec = float64(lr.frames.Load())/secs, float64(lr.positions.Load())/secs, float64(lr.bytesIn.Load())/secs
			r.StaleP50, r.StaleP99, r.LoadCPU = stale.pct(50), stale.pct(99), loadCPU
			printResult(out, "RESULT", r)
		case line == "RAWGO":
			lr.rawFrames.Store(0)
			lr.rawPositions.Store(0)
			for _, c := range lr.raws {
				c.firstAt.Store(0)
			}
			rawCPU0 = benchenv.CPUSeconds(os.Getpid())
			rawStart = time.Now()
			lr.rawCounting.Store(true)
			fmt.Fprintln(out, "RAWREADY")
		case strings.HasPrefix(line, "RAWWAIT "):
			want, _ := strconv.ParseInt(strings.TrimPrefix(line, "RAWWAIT "), 10, 64)
			deadline := time.Now().Add(time.Minute)
			for lr.rawFrames.Load() < want && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			lr.rawCounting.Store(false)
			// From the first frame received to the last: the blast's
			// set-up (reading the file, preparing the frames) is not
			// the fan-out.
			var firstAt, lastAt int64
			for _, c := range lr.raws {
				if f := c.firstAt.Load(); f > 0 && (firstAt == 0 || f < firstAt) {
					firstAt = f
				}
				lastAt = max(lastAt, c.lastAt.Load())
			}
			secs := max(float64(lastAt-firstAt)/1e9, 1e-3)
			pos := lr.rawPositions.Load()
			printResult(out, "RAWRESULT", ceiling{Frames: lr.rawFrames.Load(), Positions: pos, Secs: secs,
				PositionsPerSec: float64(pos) / secs, LoadCPU: (benchenv.CPUSeconds(os.Getpid()) - rawCPU0) / time.Since(rawStart).Seconds()})
		}
	}
	return nil
}

// connect dials and subscribes the clients, and the raw clients.
func (lr *loadRun) connect(ctx context.Context, dialer *websocket.Dialer) error {
	cfg := lr.cfg
	var connected sync.WaitGroup
	sem := make(chan struct{}, 64)
	errs := make(chan error, 2*cfg.N)
	for i := range lr.cls {
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
			h := http.Header{}
			h.Set("Cookie", "directus_session_token="+benchCookie(fmt.Sprintf("bench-%d", i)))
			// Like a browser, retry with backoff on 1013 (authsvc slow or
			// down) and on "unavailable".
			var conn *websocket.Conn
			var err error
			for attempt := 0; attempt < 8; attempt++ {
				if attempt > 0 {
					time.Sleep(time.Duration(attempt) * 250 * time.Millisecond)
				}
				if conn, err = lr.dialSubscribe(ctx, dialer, h, followed(cfg, i)); err == nil {
					break
				}
			}
			if err != nil {
				errs <- err
				connected.Done()
				return
			}
			lc := &lclient{conn: conn, follow: followedIdx(cfg, i)}
			lr.cls[i] = lc
			connected.Done()
			release()
			if cfg.Topic == "" {
				return // connected, not subscribed: read nothing
			}
			lr.read(lc, i == 0, &lr.counting, &lr.frames, &lr.positions)
		}()
	}
	if cfg.RawURL != "" {
		lr.raws = make([]*lclient, cfg.N)
		for i := range lr.raws {
			conn, _, err := dialer.DialContext(ctx, fmt.Sprintf("%s?i=%d", cfg.RawURL, i), nil)
			if err != nil {
				return fmt.Errorf("raw client: %w", err)
			}
			lc := &lclient{conn: conn}
			lr.raws[i] = lc
			go lr.read(lc, false, &lr.rawCounting, &lr.rawFrames, &lr.rawPositions)
		}
	}
	connected.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	return nil
}

// read counts lc's frames and positions while counting, and records
// them when record is set.
func (lr *loadRun) read(lc *lclient, record bool, counting *atomic.Bool, frames, positions *atomic.Int64) {
	periodMS := lr.cfg.Period.Milliseconds()
	var buf []byte // reused: the load process must spend its CPU on reading, not on garbage
	for {
		var data []byte
		var err error
		data, buf, err = benchenv.ReadFrame(lc.conn, buf)
		if err != nil {
			lc.closed.Store(true)
			return
		}
		now := time.Now()
		on := counting.Load()
		n := lc.apply(data, now.UnixMilli(), periodMS, on)
		if on {
			frames.Add(1)
			positions.Add(int64(n))
			lr.bytesIn.Add(int64(len(data)))
			lc.frames.Add(1)
			lc.firstAt.CompareAndSwap(0, now.UnixNano())
			lc.lastAt.Store(now.UnixNano())
			if record {
				lr.recMu.Lock()
				lr.rec = append(lr.rec, bytes.Clone(data))
				lr.recMu.Unlock()
			}
		}
	}
}

// reset clears the client's window counts.
func (lc *lclient) reset() {
	lc.frames.Store(0)
	lc.mu.Lock()
	clear(lc.lat)
	clear(lc.all)
	lc.delivered, lc.offered = 0, 0
	lc.mu.Unlock()
}

// final waits for every client to hold the final positions and sums the
// clients' latencies.
func (lr *loadRun) final(final map[string]int64) result {
	complete := waitFinal(lr.cls, final, 20*time.Second)
	closed := 0
	lat, all := newHist(), newHist()
	var delivered, offered int64
	for _, c := range lr.cls {
		if c == nil {
			continue
		}
		if c.closed.Load() {
			closed++
		}
		c.mu.Lock()
		for ms, n := range c.lat {
			lat.addN(ms, int64(n))
		}
		for ms, n := range c.all {
			all.addN(ms, int64(n))
		}
		delivered += c.delivered
		offered += c.offered
		c.mu.Unlock()
	}
	return result{Clients: len(lr.cls), LatP50: lat.pct(50), LatP99: lat.pct(99), AllP50: all.pct(50), AllP99: all.pct(99),
		Delivered: delivered, Offered: offered, Complete: complete, Closed: closed}
}

// followedIdx is the device indexes load client i follows with Follow:
// consecutive ones, so that every device has followers; nil = all.
func followedIdx(cfg ClientsConfig, i int) []int {
	if cfg.Follow <= 0 || cfg.DevTotal <= 0 {
		return nil
	}
	out := make([]int, cfg.Follow)
	for j := range out {
		out[j] = (i*cfg.Follow + j) % cfg.DevTotal
	}
	return out
}

// followed is the devices option of load client i, or nil.
func followed(cfg ClientsConfig, i int) []string {
	idx := followedIdx(cfg, i)
	if idx == nil {
		return nil
	}
	out := make([]string, len(idx))
	for j, d := range idx {
		out[j] = fmt.Sprintf("d%05d", d)
	}
	return out
}

// dialSubscribe connects and, unless Topic is "" or raw, subscribes to it
// (with MaxHz and the devices given).
func (lr *loadRun) dialSubscribe(ctx context.Context, dialer *websocket.Dialer, h http.Header, devices []string) (*websocket.Conn, error) {
	conn, _, err := dialer.DialContext(ctx, lr.cfg.URL, h)
	if err != nil {
		return nil, err
	}
	if lr.cfg.Topic == "" || lr.cfg.Topic == "raw" {
		return conn, nil
	}
	req := ws.Request{Type: ws.TypeSubscribe, Topic: lr.cfg.Topic, Options: ws.SubscribeOptions{MaxHz: lr.cfg.MaxHz, Devices: devices}}
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

func printResult(out io.Writer, prefix string, v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintln(out, prefix+" "+string(b))
}

// apply scans a frame for its positions without a full JSON decode (the
// raw clients do the same work) and returns how many it held. Positions
// are contract.Encode's compact JSON, fields in a fixed order: device_id,
// event_id (a UUID), ts; the scan relies on that order and falls back to a
// search where a frame differs.
//
// While counting, each position's latency (now − fix time) goes to lat and
// all; and the positions of the device the broadcaster coalesced since
// the one held before (one per periodMS, the publisher's schedule) go to
// all at now, the delivery of their successor.
func (lc *lclient) apply(data []byte, now, periodMS int64, counting bool) int {
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
		prev := lc.last[dev]
		if ts > prev {
			lc.last[dev] = ts
		}
		if counting {
			if lc.lat == nil {
				lc.lat, lc.all = make([]int32, latBuckets), make([]int32, latBuckets)
			}
			lc.lat[bucket(now-ts)]++
			lc.all[bucket(now-ts)]++
			lc.delivered++
			lc.offered++
			if periodMS > 0 && prev > 0 && ts > prev {
				skipped := (ts-prev+periodMS/2)/periodMS - 1
				for m := int64(1); m <= skipped; m++ {
					lc.all[bucket(now-ts+m*periodMS)]++
				}
				lc.offered += max(skipped, 0)
			}
		}
		n++
	}
}

func bucket(ms int64) int { return int(max(0, min(ms, latBuckets-1))) }

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

// ---------------------------------------------------------------- load handle

// load is a running -role load process, seen from the coordinator.
type load struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func (c *coord) startLoad(url string, n int, topic string, period time.Duration, extra ...string) (*load, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := append([]string{"-role", "load", "-url", url, "-n", strconv.Itoa(n), "-topic", topic, "-period", period.String(),
		"-rcvbuf", strconv.Itoa(c.cfg.RcvBuf)}, extra...)
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
