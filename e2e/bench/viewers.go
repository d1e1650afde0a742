package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"trm-live/contract"
	"trm-live/testkit/benchenv"
	"trm-live/testkit/directus"
)

// viewerResult is what a viewer process reports on stdout at the end.
type viewerResult struct {
	Counts    []uint64 `json:"counts"` // latency of the positions delivered in the window
	N         uint64   `json:"n"`
	MaxNS     int64    `json:"max_ns"`
	AllCounts []uint64 `json:"all_counts"` // latency of every position offered in the window
	AllN      uint64   `json:"all_n"`
	AllMaxNS  int64    `json:"all_max_ns"`
	Received  []int64  `json:"received"`  // per viewer: window positions received
	Closed    int      `json:"closed"`    // connections that ended before the parent's stop
	CloseErr  string   `json:"close_err"` // one of their errors
}

// ViewerConfig is a viewer process (-role=viewers): viewers First to
// First+N-1 of the Directus fake at DirectusURL, subscribed to EventID on
// WSURL.
type ViewerConfig struct {
	DirectusURL string
	WSURL       string
	EventID     string
	First, N    int
	RcvBuf      int           // SO_RCVBUF per connection, 0 = autotuning
	Devices     int           // devices of the event (ids deviceID(0…Devices-1))
	Period      time.Duration // the producer's period per device
}

// viewer is one viewer connection and what it measured.
type viewer struct {
	conn     *benchenv.RawConn
	h, all   *benchenv.Hist
	received int64
	lastTS   []int64  // per device index: fix time (Unix ms) of the newest position held
	tsText   [24]byte // the last fix time parsed, as in the frame
	tsMS     int64    // and its value
}

// Run logs the viewers in, connects and subscribes them, prints "ready";
// reads "window <start ns> <end ns>" on in; measures every position whose
// attrs.sent lies in the window; at the EOF of in closes and prints the
// result as JSON on out.
func (vc ViewerConfig) Run(ctx context.Context, in io.Reader, out io.Writer) error {
	viewers := make([]*viewer, vc.N)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	var connErr atomic.Value
	for i := range viewers {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			u := directus.User{Email: fmt.Sprintf("viewer%d@bench.local", vc.First+i), Password: "pw"}
			c, err := connectViewer(ctx, vc.DirectusURL, vc.WSURL, u, vc.EventID, vc.RcvBuf)
			if err != nil {
				connErr.Store(err)
				return
			}
			viewers[i] = &viewer{conn: c, h: benchenv.NewHist(), all: benchenv.NewHist(), lastTS: make([]int64, vc.Devices)}
		}()
	}
	wg.Wait()
	if err, _ := connErr.Load().(error); err != nil {
		return err
	}
	fmt.Fprintln(out, "ready")
	br := bufio.NewReader(in)
	line, err := br.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read window: %w", err)
	}
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "window" {
		return fmt.Errorf("bad window line %q", line)
	}
	ws, _ := strconv.ParseInt(f[1], 10, 64)
	we, _ := strconv.ParseInt(f[2], 10, 64)

	var stopping atomic.Bool
	var closed atomic.Int64
	var closeErr atomic.Value
	var readers sync.WaitGroup
	for _, v := range viewers {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				data, err := v.conn.ReadMessage()
				if err != nil {
					if !stopping.Load() {
						closed.Add(1)
						closeErr.Store(err.Error())
					}
					return
				}
				if bytes.HasPrefix(data, []byte(`{"type":"positions"`)) {
					v.apply(data, time.Now().UnixNano(), ws, we, int64(vc.Period))
				}
			}
		}()
	}
	_, _ = io.Copy(io.Discard, br) // until the parent closes stdin
	stopping.Store(true)
	for _, v := range viewers {
		v.conn.Close()
	}
	readers.Wait()
	total, all := benchenv.NewHist(), benchenv.NewHist()
	res := viewerResult{}
	for _, v := range viewers {
		total.Merge(v.h)
		all.Merge(v.all)
		res.Received = append(res.Received, v.received)
	}
	res.Counts, res.N, res.MaxNS = total.Counts, total.N, int64(total.Max)
	res.AllCounts, res.AllN, res.AllMaxNS = all.Counts, all.N, int64(all.Max)
	res.Closed = int(closed.Load())
	if e, ok := closeErr.Load().(string); ok {
		res.CloseErr = e
	}
	return json.NewEncoder(out).Encode(res)
}

// apply measures the positions of one frame received at now: each one
// sent in the window [ws, we) counts in h and all. The positions of its
// device the broadcaster coalesced since the one held before count in all,
// at now, the delivery of their successor, when sent in the window: the
// producer gives every position of a tick the tick's time as fix time, so
// their number is exact (fix times period apart); their send time is
// taken as the successor's less one period per position.
func (v *viewer) apply(data []byte, now, ws, we, period int64) {
	const devKey, tsKey, sentKey = `{"device_id":"`, `"ts":"`, `{"sent":` // "{" is rare in a frame: a fast first-byte search
	off := 0
	for {
		i := bytes.Index(data[off:], []byte(devKey))
		if i < 0 {
			return
		}
		var dev, sent int64
		dev, off = digits(data, off+i+len(devKey))
		k := bytes.Index(data[off:], []byte(tsKey))
		if k < 0 {
			return
		}
		off += k + len(tsKey)
		ts := v.parseTS(data[off:])
		j := bytes.Index(data[off:], []byte(sentKey))
		if j < 0 {
			return
		}
		sent, off = digits(data, off+j+len(sentKey))
		if sent >= ws && sent < we {
			v.h.Add(time.Duration(now - sent))
			v.all.Add(time.Duration(now - sent))
			v.received++
		}
		idx := deviceIndex(dev)
		if idx < 0 || idx >= len(v.lastTS) || ts <= v.lastTS[idx] {
			continue
		}
		prev := v.lastTS[idx]
		v.lastTS[idx] = ts
		if periodMS := period / int64(time.Millisecond); periodMS > 0 && prev > 0 {
			skipped := (ts-prev+periodMS/2)/periodMS - 1
			for m := int64(1); m <= skipped; m++ {
				if at := sent - m*period; at >= ws && at < we {
					v.all.Add(time.Duration(now - at))
				}
			}
		}
	}
}

// parseTS reads a fix time (contract.TimeLayout) at the start of b into
// Unix ms; 0 when it is not one. The positions of a tick share theirs, so
// the last one is kept.
func (v *viewer) parseTS(b []byte) int64 {
	if len(b) < len(v.tsText) {
		return 0
	}
	if string(b[:len(v.tsText)]) != string(v.tsText[:]) {
		t, err := time.Parse(contract.TimeLayout, string(b[:len(v.tsText)]))
		if err != nil {
			return 0
		}
		copy(v.tsText[:], b)
		v.tsMS = t.UnixMilli()
	}
	return v.tsMS
}

// digits reads the decimal digits of data from off and returns their
// value and the offset after them.
func digits(data []byte, off int) (int64, int) {
	var v int64
	for off < len(data) && data[off] >= '0' && data[off] <= '9' {
		v = v*10 + int64(data[off]-'0')
		off++
	}
	return v, off
}

// viewerProc is the parent's handle on one viewer process.
type viewerProc struct {
	proc *workerProc
	out  *bufio.Reader
}

func startViewers(ctx context.Context, e scenarioEnv, first, n int) (*viewerProc, error) {
	p, out, err := startChild(ctx, fmt.Sprintf("viewers-%d", first/500+1), "-role=viewers", "-directus", e.directusURL, "-ws", e.wsURL,
		"-event", e.db.eventID, "-first", strconv.Itoa(first), "-n", strconv.Itoa(n), "-rcvbuf", strconv.Itoa(e.rcvbuf),
		"-devices", strconv.Itoa(len(e.db.devices)), "-period", e.period.String())
	if err != nil {
		return nil, err
	}
	return &viewerProc{proc: p, out: out}, nil
}

func (v *viewerProc) waitReady(timeout time.Duration) error {
	line := make(chan string, 1)
	go func() {
		s, _ := v.out.ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if strings.TrimSpace(s) != "ready" {
			return fmt.Errorf("%s: not ready (%q); see stderr above", v.proc.name, s)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s: not ready after %s", v.proc.name, timeout)
	}
}

func (v *viewerProc) setWindow(start, end time.Time) error {
	_, err := fmt.Fprintf(v.proc.stdin, "window %d %d\n", start.UnixNano(), end.UnixNano())
	return err
}

func (v *viewerProc) finish() (viewerResult, error) {
	var r viewerResult
	_ = v.proc.stdin.Close()
	if err := json.NewDecoder(v.out).Decode(&r); err != nil {
		return r, fmt.Errorf("%s result: %w", v.proc.name, err)
	}
	<-v.proc.done
	return r, nil
}

func (v *viewerProc) kill() {
	select {
	case <-v.proc.done:
	default:
		_ = v.proc.cmd.Process.Kill()
		<-v.proc.done
	}
}
