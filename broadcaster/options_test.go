package broadcaster

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"trm-live/contract"
	"trm-live/contract/ws"
)

// The rate cap over real sockets. A client cannot see the server's send
// times, but every send of the subscription happens after the test sent
// the subscribe and before it read the last position, and two sends of a
// device are at least 1/max_hz apart: so n sends of one device fit in the
// test's span only if (n−1)/max_hz ≤ span. That bound cannot flake; the
// exact spacing is asserted on an injected clock (limits_test.go).
func rateBound(span time.Duration, maxHz float64) int {
	return int(span.Seconds()*maxHz) + 1
}

// TestSubscribeOptionsLive: a client at max_hz=5 following two of four
// devices, while they publish at about 50 Hz: only those two devices, in
// the snapshot and live, never more often than the cap allows, each one's
// last position delivered; an unlimited client of the same topic gets
// every device (and many more positions).
func TestSubscribeOptionsLive(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ev := newEventID()
	e.auth.addEvent(ev)
	e.auth.user("c1", "u1", true)
	e.auth.user("c2", "u2", true)
	devices := []string{"a", "b", "c", "d"}
	base := time.Now().Add(-time.Hour).UnixMilli()
	e.publishAsync(round(ev, devices, base))
	topic := topicOf(ev)

	start := time.Now()
	rated := collect(e.connect("c1"))
	rated.c.send(ws.Request{Type: ws.TypeSubscribe, Topic: topic, ID: "r",
		Options: ws.SubscribeOptions{MaxHz: 5, Devices: []string{"c", "a", "z"}}})
	plain := collect(e.connect("c2"))
	plain.c.send(subscribe(topic, "p"))
	sub := rated.waitControl(t, 1)[0]
	if sub.Type != ws.TypeSubscribed || sub.ID != "r" {
		t.Fatalf("got %+v, want subscribed", sub)
	}
	var snapDevs []string
	for _, p := range items(t, sub) {
		snapDevs = append(snapDevs, p.DeviceID)
	}
	if strings.Join(snapDevs, ",") != "a,c" && strings.Join(snapDevs, ",") != "c,a" {
		t.Fatalf("snapshot devices %v, want a and c", snapDevs)
	}
	plain.waitControl(t, 1)

	// About 1.2 s at 50 Hz.
	const rounds = 60
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for r := 1; r <= rounds; r++ {
		<-tick.C
		e.publishAsync(round(ev, devices, base+int64(r)))
	}
	last := base + rounds
	rated.waitLatest(t, topic, map[string]int64{"a": last, "c": last})
	span := time.Since(start)
	plain.waitLatest(t, topic, map[string]int64{"a": last, "b": last, "c": last, "d": last})

	rated.mu.Lock()
	got := rated.count[topic]
	rated.mu.Unlock()
	if got["b"] != 0 || got["d"] != 0 || got["z"] != 0 {
		t.Fatalf("devices not followed were sent: %v", got)
	}
	bound := rateBound(span, 5)
	for _, d := range []string{"a", "c"} {
		if got[d] > bound {
			t.Fatalf("device %s: %d positions in %v at max_hz=5 (at most %d possible)", d, got[d], span, bound)
		}
	}
	plain.mu.Lock()
	pc := plain.count[topic]["a"]
	plain.mu.Unlock()
	t.Logf("in %v: rated client %v positions of a (bound %d), unlimited client %d", span.Round(time.Millisecond), got["a"], bound, pc)
}

// TestSubscribeOptionsRejected: bad values answer bad_request naming the
// field, with the id and topic echoed, live and replay; a second subscribe
// of the same topic (with other options) is refused; the connection stays
// usable.
func TestSubscribeOptionsRejected(t *testing.T) {
	t.Parallel()
	e, ev := newReplayEnv(t, nil)
	topic := topicOf(ev)
	c := e.connect("c1")
	from := `"replay":{"from":"2026-05-03T10:00:00Z"}`
	for _, tc := range []struct {
		extra, field string
		replay       bool
	}{
		{`"max_hz":0`, "max_hz", false},
		{`"max_hz":101`, "max_hz", false},
		{`"max_hz":"1"`, "max_hz", false},
		{`"devices":[]`, "devices", false},
		{`"devices":["a","a"]`, "devices", false},
		{`"devices":["a.b"]`, "devices", false},
		{`"devices":"a"`, "devices", false},
		{`"max_hz":-2,` + from, "max_hz", true},
		{`"devices":["*"],` + from, "devices", true},
	} {
		c.send(`{"type":"subscribe","topic":"` + topic + `","id":"x",` + tc.extra + `}`)
		f := c.expect(ws.TypeError, ws.CodeBadRequest)
		if f.ID != "x" || f.Topic != topic || f.Replay != tc.replay || !strings.HasPrefix(f.Message, tc.field) {
			t.Fatalf("%s: got %+v, want bad_request about %s echoing id and topic (replay %v)", tc.extra, f, tc.field, tc.replay)
		}
	}
	many := make([]string, ws.MaxDevices+1)
	for i := range many {
		many[i] = fmt.Sprintf("%064d", i)
	}
	c.send(`{"type":"subscribe","topic":"` + topic + `","id":"x","devices":["` + strings.Join(many, `","`) + `"]}`)
	if f := c.expect(ws.TypeError, ws.CodeBadRequest); !strings.Contains(f.Message, "devices must list 1 to 500") {
		t.Fatalf("501 devices: %+v", f)
	}
	c.send(ws.Request{Type: ws.TypeSubscribe, Topic: topic, ID: "ok", Options: ws.SubscribeOptions{MaxHz: 1, Devices: many[:ws.MaxDevices]}})
	c.expect(ws.TypeSubscribed, "")
	c.send(ws.Request{Type: ws.TypeSubscribe, Topic: topic, ID: "again", Options: ws.SubscribeOptions{MaxHz: 10}})
	if f := c.expect(ws.TypeError, ws.CodeBadRequest); f.ID != "again" || !strings.Contains(f.Message, "already subscribed") {
		t.Fatalf("second subscribe: %+v", f)
	}
}

// TestReplayOptions: a replay at max_hz=2 following two of three devices,
// whose positions (10 per second of fix time) replay at speed 20: only
// those devices, never more often than the cap allows, and the last
// position of each before replay_end.
func TestReplayOptions(t *testing.T) {
	t.Parallel()
	e, ev := newReplayEnv(t, nil)
	topic := topicOf(ev)
	devices := []string{"a", "b", "c"}
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	var ps []contract.Position
	for i := range 300 { // 30 s at 10 Hz
		for d, dev := range devices {
			ps = append(ps, contract.Position{DeviceID: dev, EventID: ev, Lat: 45, Lon: 7,
				TS: base.Add(time.Duration(i)*100*time.Millisecond + time.Duration(d)*time.Millisecond).UTC()})
		}
	}
	e.publishAsync(ps)
	lastTS := map[string]int64{}
	for _, p := range ps[len(ps)-3:] {
		lastTS[p.DeviceID] = p.TSMillis()
	}

	c := e.connect("c1")
	fr := readFrames(t, c)
	start := time.Now()
	req := replaySubscribe(topic, "r", base.Add(5*time.Second), base.Add(time.Minute), 20) // bounded: without to it would be a rewind
	req.Options = ws.SubscribeOptions{MaxHz: 2, Devices: []string{"c", "a"}}
	c.send(req)
	sub := fr.expect(ws.TypeSubscribed, "")
	count, last := map[string]int{}, map[string]int64{}
	see := func(ps []contract.Position) {
		for _, p := range ps {
			if p.TSMillis() <= last[p.DeviceID] {
				t.Fatalf("%s went back in time: %d after %d", p.DeviceID, p.TSMillis(), last[p.DeviceID])
			}
			count[p.DeviceID]++
			last[p.DeviceID] = p.TSMillis()
		}
	}
	see(items(t, sub.Frame))
	if count["b"] != 0 || count["a"] != 1 || count["c"] != 1 {
		t.Fatalf("snapshot %v, want a and c", count)
	}
	for {
		ps, end := fr.nextReplay()
		if end {
			break
		}
		see(ps)
	}
	span := time.Since(start)
	if count["b"] != 0 {
		t.Fatalf("device b replayed %d times", count["b"])
	}
	bound := rateBound(span, 2)
	for _, d := range []string{"a", "c"} {
		if count[d] > bound {
			t.Fatalf("device %s: %d positions in %v at max_hz=2 (at most %d possible)", d, count[d], span, bound)
		}
		if last[d] != lastTS[d] {
			t.Fatalf("device %s: last replayed %d, want %d", d, last[d], lastTS[d])
		}
	}
	t.Logf("replay of 25 s at 20× in %v: %v positions (bound %d)", span.Round(time.Millisecond), count, bound)
}
