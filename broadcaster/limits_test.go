package broadcaster

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"trm-live/contract/ws"
)

// fakeClock is a clock the test moves: timers fire, in order, inside
// advance.
type fakeClock struct {
	mu     sync.Mutex
	t      int64
	timers []*fakeTimer
	// onFire, if set, runs after each timer's function, at its time (a
	// writer that is free writes at once).
	onFire func()
}

type fakeTimer struct {
	at      int64
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock { return &fakeClock{t: int64(time.Hour)} }

func (c *fakeClock) now() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) afterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	tm := &fakeTimer{at: c.t + int64(d), f: f}
	c.timers = append(c.timers, tm)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !tm.stopped
		tm.stopped = true
		return was
	}
}

// advance moves the clock by d, firing each timer due on the way at its
// own time.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	end := c.t + int64(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		sort.Slice(c.timers, func(i, j int) bool { return c.timers[i].at < c.timers[j].at })
		var due *fakeTimer
		for len(c.timers) > 0 {
			tm := c.timers[0]
			if tm.stopped {
				c.timers = c.timers[1:]
				continue
			}
			if tm.at <= end {
				due = tm
				c.timers = c.timers[1:]
				c.t = max(c.t, tm.at)
			}
			break
		}
		if due == nil {
			c.t = end
			c.mu.Unlock()
			return
		}
		due.stopped = true
		c.mu.Unlock()
		due.f()
		if c.onFire != nil {
			c.onFire()
		}
	}
}

// sentPos is one position a rated client was sent, at fake time at.
type sentPos struct {
	at     int64
	device string
	ts     int64
}

// decodeSent reads the devices and fix times out of the test's frames.
func decodeSent(t *testing.T, at int64, frames []string) []sentPos {
	t.Helper()
	var out []sentPos
	for _, fr := range frames {
		var f struct {
			Type     string `json:"type"`
			Snapshot []struct {
				Device_ID string
				TS        int64
			}
			Positions []struct {
				Device_ID string
				TS        int64
			}
		}
		if err := json.Unmarshal([]byte(fr), &f); err != nil {
			t.Fatalf("%s: %v", fr, err)
		}
		for _, p := range append(f.Snapshot, f.Positions...) {
			out = append(out, sentPos{at: at, device: p.Device_ID, ts: p.TS})
		}
	}
	return out
}

func ratedFeed(x *mbFixture, clk *fakeClock, o ws.SubscribeOptions, snap []snapItem, tp *topic) *feed {
	x.t.Helper()
	x.mb.clk = clk
	f := newFeed(x.mb, "event:t")
	f.lim = newLimits(o)
	f.t = tp
	if _, ok := x.mb.activate(f, snap, "", 0); !ok {
		x.t.Fatal("activate failed")
	}
	return f
}

// TestRateCapNeverExceededLatestWithinInterval: devices at 10 Hz (and one
// at 3 Hz) to a client at max_hz=1, by the mailbox's clock: no device is
// sent twice within a second, every position is sent or replaced by a
// newer one that is sent within a second of its arrival, and each device's
// last position is sent. Half of the time the client's writer is stuck
// (no credit), which must not break either rule.
func TestRateCapNeverExceededLatestWithinInterval(t *testing.T) {
	x := newMB(t, 64, 100, 1<<20)
	clk := newFakeClock()
	interval := int64(time.Second)
	f := ratedFeed(x, clk, ws.SubscribeOptions{MaxHz: 1}, []snapItem{{idx: 0, ts: 1, data: pos("a", 1)}}, nil)
	var sent []sentPos
	base := clk.now()
	sent = append(sent, decodeSent(t, clk.now(), x.flush())...)
	x.release()
	type arrival struct {
		at     int64
		device string
		ts     int64
	}
	var arrived []arrival
	stuck := false
	clk.onFire = func() {
		sent = append(sent, decodeSent(t, clk.now(), x.flush())...)
		if !stuck {
			x.release()
		}
	}
	for step := int64(1); step <= 120; step++ { // 12 s at 100 ms steps
		clk.advance(100 * time.Millisecond)
		now := clk.now()
		devs := []string{"a", "b", "c"}
		if step%3 == 0 {
			devs = append(devs, "d") // 3.3 Hz
		}
		for i, d := range devs {
			idx := int32(i)
			if d == "d" {
				idx = 3
			}
			ts := step * 10
			x.mb.put(f, idx, ts, pos(d, ts))
			arrived = append(arrived, arrival{now, d, ts})
		}
		// Seconds 4 to 7: the client reads nothing (credits kept).
		if step == 40 {
			stuck = true
		}
		if step == 70 {
			stuck = false
		}
		sent = append(sent, decodeSent(t, now, x.flush())...)
		if !stuck {
			x.release()
		}
	}
	// Quiet: the held last positions go when their interval ends.
	for range 30 {
		clk.advance(100 * time.Millisecond)
		sent = append(sent, decodeSent(t, clk.now(), x.flush())...)
		x.release()
	}
	if x.mb.held(f) != 0 {
		t.Fatalf("%d positions still held", x.mb.held(f))
	}

	last := map[string]sentPos{}
	perDev := map[string][]sentPos{}
	for _, s := range sent {
		if p, ok := last[s.device]; ok {
			if s.at-p.at < interval {
				t.Fatalf("device %s sent at %v and %v: %v apart, under the 1 s interval", s.device,
					time.Duration(p.at), time.Duration(s.at), time.Duration(s.at-p.at))
			}
			if s.ts <= p.ts {
				t.Fatalf("device %s went back in time: %d after %d", s.device, s.ts, p.ts)
			}
		}
		last[s.device] = s
		perDev[s.device] = append(perDev[s.device], s)
	}
	for _, a := range arrived {
		ok := false
		for _, s := range perDev[a.device] {
			if s.ts >= a.ts && s.at >= a.at {
				// The first send at or after the arrival carries it or a
				// newer one; it must come within the interval, except
				// while the client read nothing.
				late := s.at - a.at
				rel := a.at - base
				if late > interval && !(rel > 3*interval && rel <= 7*interval) {
					t.Fatalf("%s@%d arrived at %v, first sent (as %d) %v later", a.device, a.ts, time.Duration(a.at), s.ts, time.Duration(late))
				}
				ok = true
				break
			}
		}
		if !ok {
			t.Fatalf("%s@%d arrived at %v and was never sent, nor a newer one", a.device, a.ts, time.Duration(a.at))
		}
	}
	for d, want := range map[string]int64{"a": 1200, "b": 1200, "c": 1200, "d": 1200} {
		if last[d].ts != want {
			t.Fatalf("device %s: last sent %d, want %d", d, last[d].ts, want)
		}
	}
	// 12 s at 1 Hz: about 13 positions per device, not 120.
	if n := len(perDev["a"]); n > 14 || n < 8 {
		t.Fatalf("device a sent %d times in 13 s at max_hz=1", n)
	}
}

// TestRateCapLatestWithinIntervalExact: with the writer always free, a
// position arriving while its device is held leaves exactly when the
// interval ends (not later), and one arriving after the interval leaves at
// once.
func TestRateCapLatestWithinIntervalExact(t *testing.T) {
	x := newMB(t, 64, 100, 1<<20)
	clk := newFakeClock()
	f := ratedFeed(x, clk, ws.SubscribeOptions{MaxHz: 4}, nil, nil) // 250 ms
	x.flush()
	x.release()
	start := clk.now()
	x.mb.put(f, 0, 1, pos("a", 1))
	if got := decodeSent(t, clk.now(), x.flush()); len(got) != 1 || got[0].at != start {
		t.Fatalf("first position: %v, want sent at once", got)
	}
	x.release()
	clk.advance(10 * time.Millisecond)
	x.mb.put(f, 0, 2, pos("a", 2))
	clk.advance(100 * time.Millisecond)
	x.mb.put(f, 0, 3, pos("a", 3))
	if got := x.flush(); len(got) != 0 {
		t.Fatalf("sent within the interval: %v", got)
	}
	clk.advance(139 * time.Millisecond)
	if got := x.flush(); len(got) != 0 {
		t.Fatalf("sent 1 ms before the interval ends: %v", got)
	}
	clk.advance(time.Millisecond)
	got := decodeSent(t, clk.now(), x.flush())
	if len(got) != 1 || got[0].ts != 3 || got[0].at != start+int64(250*time.Millisecond) {
		t.Fatalf("held position: %+v, want a@3 exactly 250 ms after the first", got)
	}
	x.release()
	clk.advance(time.Second)
	x.mb.put(f, 0, 4, pos("a", 4))
	if got := decodeSent(t, clk.now(), x.flush()); len(got) != 1 || got[0].ts != 4 {
		t.Fatalf("after a quiet interval: %v, want a@4 at once", got)
	}
}

// TestRatedFeedNoSharedFrames: a rated or filtered feed takes the
// per-client path while an unlimited feed of the same fan-out still gets
// the shared frame.
func TestRatedFeedNoSharedFrames(t *testing.T) {
	x := newMB(t, 64, 100, 1<<20)
	tp := &topic{h: &hub{maxItems: 100, maxBytes: 1 << 20}, devices: map[string]int32{}, head: ws.AppendPositionsHead(nil, "event:t")}
	tp.feeds.Store(&[]*feed{})
	a, b := tp.index("a"), tp.index("b")
	plain := activeFeed(x, "event:t")
	clk := newFakeClock()
	rated := ratedFeed(x, clk, ws.SubscribeOptions{MaxHz: 1, Devices: []string{"b"}}, nil, tp)
	x.flush()
	x.release()
	bs := tp.batches(1, []snapItem{{idx: a, ts: 5, data: pos("a", 5)}, {idx: b, ts: 5, data: pos("b", 5)}})
	for _, f := range []*feed{plain, rated} {
		if _, _, sched := x.mb.offer(f, bs); sched {
			x.w.schedule(x.mb)
		}
	}
	x.mb.mu.Lock()
	nShared, nRated := len(plain.shared), len(rated.shared)
	x.mb.mu.Unlock()
	if nShared != 1 || nRated != 0 {
		t.Fatalf("shared batches: plain %d (want 1), rated %d (want 0)", nShared, nRated)
	}
	got := x.drain()
	if len(got) != 2 || strings.Count(got[0]+got[1], `"device_id":"b"`) != 2 || strings.Count(got[0]+got[1], `"device_id":"a"`) != 1 {
		t.Fatalf("frames %v: want the shared one with a and b, and one with b alone", got)
	}
}

// TestDeviceFilterSnapshotAndLive: a feed listing devices gets only those,
// in the snapshot and live, including a device first seen after the
// subscribe.
func TestDeviceFilterSnapshotAndLive(t *testing.T) {
	x := newMB(t, 64, 100, 1<<20)
	tp := &topic{devices: map[string]int32{}}
	snap := []snapItem{
		{idx: tp.index("a"), ts: 1, data: pos("a", 1)},
		{idx: tp.index("b"), ts: 1, data: pos("b", 1)},
		{idx: tp.index("c"), ts: 1, data: pos("c", 1)},
	}
	f := ratedFeed(x, newFakeClock(), ws.SubscribeOptions{Devices: []string{"c", "late", "a"}}, snap, tp)
	first := x.flush()
	x.release()
	if len(first) != 1 || !strings.HasPrefix(first[0], `{"type":"subscribed"`) {
		t.Fatalf("subscribed: %v", first)
	}
	var devs []string
	for _, s := range decodeSent(t, 0, first) {
		devs = append(devs, s.device)
	}
	sort.Strings(devs)
	if fmt.Sprint(devs) != "[a c]" {
		t.Fatalf("snapshot devices %v, want [a c]", devs)
	}
	for ts := int64(2); ts <= 4; ts++ {
		for _, d := range []string{"a", "b", "c", "late", "other"} {
			if r := x.mb.put(f, tp.index(d), ts, pos(d, ts)); (r == putFiltered) != (d == "b" || d == "other") {
				t.Fatalf("put %s = %v", d, r)
			}
		}
	}
	got := map[string]int64{}
	for _, s := range decodeSent(t, 0, x.drain()) {
		got[s.device] = s.ts
	}
	if fmt.Sprint(got) != "map[a:4 c:4 late:4]" {
		t.Fatalf("live: %v, want a, c and late at 4 only", got)
	}
}

// TestRateCapSeekResets: a replay's seek (activateWith with reset) sends
// what was held in its new snapshot, forgets the old intervals, and starts
// new ones at the snapshot.
func TestRateCapSeekResets(t *testing.T) {
	x := newMB(t, 64, 100, 1<<20)
	clk := newFakeClock()
	f := ratedFeed(x, clk, ws.SubscribeOptions{MaxHz: 1}, nil, nil)
	x.flush()
	x.release()
	x.mb.put(f, 0, 1, pos("a", 1))
	x.flush()
	x.release()
	clk.advance(100 * time.Millisecond)
	x.mb.put(f, 0, 2, pos("a", 2)) // held until 1 s
	if x.mb.held(f) != 1 {
		t.Fatalf("held %d, want 1", x.mb.held(f))
	}
	snap := []snapItem{{idx: 0, ts: 50, data: pos("a", 50)}, {idx: 1, ts: 50, data: pos("b", 50)}}
	if _, ok := x.mb.activateWith(f, snap, true, func(b []byte, items [][]byte) []byte {
		return ws.AppendSubscribed(b, "event:t", "seek", items)
	}); !ok {
		t.Fatal("activateWith failed")
	}
	if x.mb.held(f) != 0 {
		t.Fatalf("held %d after the seek", x.mb.held(f))
	}
	got := decodeSent(t, clk.now(), x.flush())
	x.release()
	if len(got) != 2 || got[0].ts != 50 || got[1].ts != 50 {
		t.Fatalf("seek snapshot %+v, want a and b at 50", got)
	}
	// The held a@2 was dropped with the old slots; the timer must not
	// send anything.
	clk.advance(time.Second)
	if got := x.flush(); len(got) != 0 {
		t.Fatalf("after the seek: %v", got)
	}
	// New intervals start at the seek's snapshot.
	x.mb.put(f, 1, 51, pos("b", 51))
	if got := decodeSent(t, clk.now(), x.flush()); len(got) != 1 || got[0].ts != 51 {
		t.Fatalf("b after its interval: %v", got)
	}
}
