package broadcaster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"trm-live/contract"
	"trm-live/contract/ws"
)

// collector reads every frame of a client in the background and checks the
// delivery rules as it goes: per topic and device, fix times only increase;
// no positions of a topic before its subscribed frame or after its
// unsubscribed/error frame; every item belongs to the frame's topic.
type collector struct {
	c *wsClient

	mu         sync.Mutex
	subscribed map[string]bool
	last       map[string]map[string]int64 // topic → device → ts
	count      map[string]map[string]int   // topic → device → positions received
	frames     map[string]int              // by type
	control    []ws.Frame                  // every non-positions frame, in order
	violations []string
	closeErr   error
	done       chan struct{}
}

func collect(c *wsClient) *collector {
	k := &collector{c: c, subscribed: map[string]bool{}, last: map[string]map[string]int64{},
		count: map[string]map[string]int{}, frames: map[string]int{}, done: make(chan struct{})}
	go k.run()
	return k
}

func (k *collector) run() {
	defer close(k.done)
	for {
		_ = k.c.conn.SetReadDeadline(time.Now().Add(time.Minute))
		_, data, err := k.c.conn.ReadMessage()
		if err != nil {
			k.mu.Lock()
			k.closeErr = err
			k.mu.Unlock()
			return
		}
		f, err := ws.DecodeFrame(data)
		k.mu.Lock()
		if err != nil {
			k.violations = append(k.violations, err.Error())
		} else {
			k.add(f)
		}
		k.mu.Unlock()
	}
}

func (k *collector) add(f ws.Frame) {
	k.frames[f.Type]++
	switch f.Type {
	case ws.TypeSubscribed:
		k.subscribed[f.Topic] = true
		k.control = append(k.control, f)
		k.items(f.Topic, f)
	case ws.TypePositions:
		if !k.subscribed[f.Topic] {
			k.violations = append(k.violations, "positions of "+f.Topic+" while not subscribed")
		}
		k.items(f.Topic, f)
	default:
		if f.Type == ws.TypeUnsubscribed || f.Type == ws.TypeError && f.ID == "" && f.Topic != "" {
			k.subscribed[f.Topic] = false
		}
		k.control = append(k.control, f)
	}
}

func (k *collector) items(topic string, f ws.Frame) {
	ps, err := f.Items()
	if err != nil {
		k.violations = append(k.violations, err.Error())
		return
	}
	if k.last[topic] == nil {
		k.last[topic] = map[string]int64{}
		k.count[topic] = map[string]int{}
	}
	for _, p := range ps {
		if ws.EventTopic(p.EventID) != topic {
			k.violations = append(k.violations, fmt.Sprintf("position of %s in a frame of %s", p.EventID, topic))
		}
		ts := p.TSMillis()
		if prev, ok := k.last[topic][p.DeviceID]; ok && ts <= prev {
			k.violations = append(k.violations, fmt.Sprintf("%s %s: ts %d after %d", topic, p.DeviceID, ts, prev))
		}
		k.last[topic][p.DeviceID] = ts
		k.count[topic][p.DeviceID]++
	}
}

// check fails the test on any violation seen so far.
func (k *collector) check(t testing.TB) {
	t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.violations) > 0 {
		t.Fatalf("%d violations, first: %v", len(k.violations), k.violations[:min(5, len(k.violations))])
	}
}

// waitLatest waits until the client's view of every device of topic is
// want[device].
func (k *collector) waitLatest(t testing.TB, topic string, want map[string]int64) {
	t.Helper()
	waitFor(t, "latest position of every device", func() bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		for d, ts := range want {
			if k.last[topic][d] != ts {
				return false
			}
		}
		return true
	})
	k.check(t)
}

// waitControl waits for n control frames and returns them.
func (k *collector) waitControl(t testing.TB, n int) []ws.Frame {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d control frames", n), func() bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		return len(k.control) >= n
	})
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]ws.Frame(nil), k.control...)
}

func (k *collector) received(topic string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, c := range k.count[topic] {
		n += c
	}
	return n
}

// round is one position per device, all at fix time ts.
func round(eventID string, devices []string, ts int64) []contract.Position {
	out := make([]contract.Position, len(devices))
	for i, d := range devices {
		out[i] = contract.Position{DeviceID: d, EventID: eventID, TS: time.UnixMilli(ts).UTC(), Lat: float64(i % 90), Lon: 7}
	}
	return out
}

func deviceNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%04d", prefix, i)
	}
	return out
}

// TestSnapshotLiveMerge subscribes clients while positions are being
// published: every client sees only increasing fix times per device and
// ends with the last position of every device.
func TestSnapshotLiveMerge(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ev := newEventID()
	e.auth.addEvent(ev)
	devices := deviceNames("m", 40)
	const rounds, clients = 30, 6
	base := time.Now().Add(-time.Hour).UnixMilli()
	e.publishAsync(round(ev, devices, base)) // something in the snapshot from the start

	cols := make([]*collector, clients)
	for r := 1; r <= rounds; r++ {
		if r%(rounds/clients) == 0 && r/(rounds/clients) <= clients {
			i := r/(rounds/clients) - 1
			cookie := fmt.Sprintf("viewer-%d", i)
			e.auth.user(cookie, cookie, true)
			c := e.connect(cookie)
			cols[i] = collect(c)
			c.send(subscribe(topicOf(ev), "s"))
		}
		e.publishAsync(round(ev, devices, base+int64(r)*10))
	}
	want := map[string]int64{}
	for _, d := range devices {
		want[d] = base + rounds*10
	}
	for _, k := range cols {
		k.waitLatest(t, topicOf(ev), want)
	}
}

// slowListener gives every accepted connection a small socket send
// buffer, so a client that reads slowly pushes back within a few frames
// instead of after megabytes of kernel buffering.
type slowListener struct{ net.Listener }

func (l slowListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(8 << 10)
	}
	return c, err
}

// TestSlowClient: a client that reads slowly while 200 devices publish at
// 10 Hz gets every control frame, ends with the latest position of every
// device, and its pending state stays bounded by the device count; a fast
// client on the same topic gets every position.
func TestSlowClient(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) {
		c.Listener = slowListener{c.Listener}
		c.FrameMaxPositions = 50
	}})
	ev, ev2 := newEventID(), newEventID()
	e.auth.addEvent(ev)
	e.auth.addEvent(ev2)
	e.auth.user("fast", "fast", true)
	e.auth.user("slow", "slow", true)
	devices := deviceNames("s", 200)
	const rounds = 30 // 3 s at 10 Hz

	fast := collect(e.connect("fast"))
	fast.c.send(subscribe(topicOf(ev), "f"))
	fast.waitControl(t, 1)

	slow, _, err := e.dial(dialOpt{cookie: "slow", rcvbuf: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	slow.send(subscribe(topicOf(ev), "s"))
	if f := slow.expect(ws.TypeSubscribed, ""); f.ID != "s" {
		t.Fatalf("subscribed %+v", f)
	}
	var slowMB *mailbox
	e.srv.mu.Lock()
	for c := range e.srv.clients {
		if c.user.ID == "slow" {
			slowMB = c.mb
		}
	}
	e.srv.mu.Unlock()

	// The slow reader: one frame every 100 ms, checking the rules itself.
	k := &collector{c: slow, subscribed: map[string]bool{topicOf(ev): true}, last: map[string]map[string]int64{},
		count: map[string]map[string]int{}, frames: map[string]int{}, done: make(chan struct{})}
	stop := make(chan struct{})
	go func() {
		defer close(k.done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			f, err := slow.read(time.Minute)
			if err != nil {
				return
			}
			k.mu.Lock()
			k.add(f)
			k.mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(stop); _ = slow.conn.Close(); <-k.done })

	base := time.Now().Add(-time.Hour).UnixMilli()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	maxPending := 0
	for r := 1; r <= rounds; r++ {
		<-tick.C // pacing the load, not synchronisation
		e.publishAsync(round(ev, devices, base+int64(r)*100))
		if r%10 == 0 {
			// Control frames while the client lags: none may be lost.
			slow.send(`not json`)
			slow.send(subscribe(topicOf(ev), "dup"))
		}
		if r == rounds/2 {
			slow.send(subscribe(topicOf(ev2), "second"))
		}
		p, c := slowMB.pending()
		maxPending = max(maxPending, p)
		if p > len(devices) || c > e.srv.cfg.ControlQueue {
			t.Fatalf("slow client pending %d positions, %d control: unbounded", p, c)
		}
	}
	want := map[string]int64{}
	for _, d := range devices {
		want[d] = base + rounds*100
	}
	fast.waitLatest(t, topicOf(ev), want)
	k.waitLatest(t, topicOf(ev), want)

	// Fast: every position the instance fanned out, in order (checked by
	// the collector), except what its own mailbox coalesced, which happens
	// only if its writer was not free for a whole device period (never on
	// an idle machine). An overloaded instance coalesces before fan-out
	// (counted apart); then every client misses those alike. The counts
	// must add up exactly, and the fast client must lose far less than the
	// slow one.
	published := rounds * len(devices)
	dropped := int(e.metric("broadcaster_fanout_coalesced_total"))
	fastLost, slowLost := int(coalescedOf(e, "fast")), int(coalescedOf(e, "slow"))
	if got, want := fast.received(topicOf(ev)), published-dropped-fastLost; got != want {
		t.Fatalf("fast client got %d positions, want %d (%d published, %d coalesced before fan-out, %d in its mailbox)", got, want, published, dropped, fastLost)
	}
	if fastLost*4 > slowLost {
		t.Fatalf("fast client lost %d positions in its mailbox, the slow one %d: the slow client held the fast one back", fastLost, slowLost)
	}
	t.Logf("fast client: %d of %d positions (%d coalesced before fan-out: the instance fell behind; %d in its mailbox)", published-dropped-fastLost, published, dropped, fastLost)

	// Slow: every control frame, in the order asked.
	ctrl := k.waitControl(t, 7)
	var got []string
	for _, f := range ctrl {
		got = append(got, f.Type+":"+string(f.Code)+":"+f.ID)
	}
	wantCtrl := []string{"error:bad_request:", "error:bad_request:dup", "subscribed::second",
		"error:bad_request:", "error:bad_request:dup", "error:bad_request:", "error:bad_request:dup"}
	if fmt.Sprint(got) != fmt.Sprint(wantCtrl) {
		t.Fatalf("slow client control frames\n got %v\nwant %v", got, wantCtrl)
	}
	slowGot := k.received(topicOf(ev))
	if slowGot >= rounds*len(devices) {
		t.Fatalf("slow client got all %d positions: it never lagged, the test proves nothing", slowGot)
	}
	if e.metric("broadcaster_positions_coalesced_total") == 0 {
		t.Fatal("no position coalesced")
	}
	// The fast client keeps up, so it is sent the topic's shared frames.
	if e.metric("broadcaster_frames_shared_total") == 0 {
		t.Fatal("no shared frame: every frame was built per client")
	}
	t.Logf("slow client: %d of %d positions, %d frames, max pending %d", slowGot, rounds*len(devices), k.frames[ws.TypePositions], maxPending)
}

// coalescedOf is how many positions the mailbox of user's connection
// coalesced.
func coalescedOf(e *env, user string) int64 {
	e.srv.mu.Lock()
	defer e.srv.mu.Unlock()
	for c := range e.srv.clients {
		if c.user.ID == user {
			c.mb.mu.Lock()
			defer c.mb.mu.Unlock()
			return c.mb.coalesced
		}
	}
	e.t.Fatalf("no client of %s", user)
	return 0
}

// TestTopics: two topics, many clients: no cross-topic leak, unsubscribe
// stops delivery, the NATS subscription goes with the last subscriber.
func TestTopics(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := newEventID(), newEventID()
	e.auth.addEvent(a)
	e.auth.addEvent(b)
	devA, devB := deviceNames("a", 10), deviceNames("b", 10)
	base := time.Now().Add(-time.Hour).UnixMilli()

	var onA, onB, both []*collector
	for i := range 9 {
		cookie := fmt.Sprintf("t%d", i)
		e.auth.user(cookie, cookie, true)
		k := collect(e.connect(cookie))
		switch i % 3 {
		case 0:
			k.c.send(subscribe(topicOf(a), ""))
			onA = append(onA, k)
		case 1:
			k.c.send(subscribe(topicOf(b), ""))
			onB = append(onB, k)
		case 2:
			k.c.send(subscribe(topicOf(a), ""))
			k.c.send(subscribe(topicOf(b), ""))
			both = append(both, k)
		}
	}
	for _, k := range onA {
		k.waitControl(t, 1)
	}
	for _, k := range onB {
		k.waitControl(t, 1)
	}
	for _, k := range both {
		k.waitControl(t, 2)
	}
	if n := e.natsSubs(a); n != 1 {
		t.Fatalf("%d NATS subscriptions on topic a, want 1 shared", n)
	}
	for r := int64(1); r <= 5; r++ {
		e.publishAsync(round(a, devA, base+r))
		e.publishAsync(round(b, devB, base+r))
	}
	lastA, lastB := map[string]int64{}, map[string]int64{}
	for _, d := range devA {
		lastA[d] = base + 5
	}
	for _, d := range devB {
		lastB[d] = base + 5
	}
	for _, k := range append(append([]*collector{}, onA...), both...) {
		k.waitLatest(t, topicOf(a), lastA)
	}
	for _, k := range append(append([]*collector{}, onB...), both...) {
		k.waitLatest(t, topicOf(b), lastB)
	}
	for _, k := range onA {
		if k.received(topicOf(b)) != 0 {
			t.Fatal("a client of a received positions of b")
		}
	}
	for _, k := range onB {
		if k.received(topicOf(a)) != 0 {
			t.Fatal("a client of b received positions of a")
		}
	}

	// Unsubscribe stops delivery: after "unsubscribed", nothing of a, even
	// though a keeps publishing (the collector flags it); a marker on b
	// shows delivery went on.
	gotA := map[*collector]int{}
	for _, k := range both {
		k.c.send(unsubscribe(topicOf(a), "bye"))
		k.waitControl(t, 3)
		gotA[k] = k.received(topicOf(a))
	}
	e.publishAsync(round(a, devA, base+6))
	e.publishAsync(round(b, devB, base+6))
	for _, d := range devB {
		lastB[d] = base + 6
	}
	for _, k := range both {
		// The collector also flags any positions frame of a after
		// "unsubscribed" as a violation (checked by waitLatest).
		k.waitLatest(t, topicOf(b), lastB)
		if n := k.received(topicOf(a)); n != gotA[k] {
			t.Fatalf("client got %d positions of a after unsubscribing", n-gotA[k])
		}
	}
	// The last subscribers of a leave, by unsubscribe and by disconnect.
	onA[0].c.send(unsubscribe(topicOf(a), ""))
	for _, k := range onA[1:] {
		_ = k.c.conn.Close()
	}
	waitFor(t, "NATS subscription of a released", func() bool { return e.natsSubs(a) == 0 && e.srv.hub.topicCount() == 1 })
	if n := e.natsSubs(b); n != 1 {
		t.Fatalf("%d NATS subscriptions on b, want 1", n)
	}
	if got := e.metric("broadcaster_topics"); got != 1 {
		t.Fatalf("broadcaster_topics = %v", got)
	}
}

// TestReauthorization: a member removed from the event's organization gets
// a forbidden error for the topic within the interval and no more of its
// positions; other subscriptions go on.
func TestReauthorization(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.ReauthInterval = time.Second }})
	a, b := newEventID(), newEventID()
	e.auth.addEvent(a, "dave")
	e.auth.addEvent(b, "dave")
	e.auth.user("dave", "dave", false)
	k := collect(e.connect("dave"))
	k.c.send(subscribe(topicOf(a), "1"))
	k.c.send(subscribe(topicOf(b), "2"))
	k.waitControl(t, 2)
	base := time.Now().Add(-time.Hour).UnixMilli()
	e.publish(a, "x", base)
	k.waitLatest(t, topicOf(a), map[string]int64{"x": base})

	e.auth.removeMember(a, "dave")
	ctrl := k.waitControl(t, 3)
	if f := ctrl[2]; f.Type != ws.TypeError || f.Code != ws.CodeForbidden || f.Topic != topicOf(a) {
		t.Fatalf("after removal got %+v, want forbidden for %s", f, topicOf(a))
	}
	e.publish(a, "x", base+1)
	e.publish(b, "y", base+1)
	k.waitLatest(t, topicOf(b), map[string]int64{"y": base + 1})
	if n := k.received(topicOf(a)); n != 1 {
		t.Fatalf("got %d positions of a, want 1 (none after forbidden)", n)
	}
	// A new subscribe is refused too.
	k.c.send(subscribe(topicOf(a), "3"))
	ctrl = k.waitControl(t, 4)
	if f := ctrl[3]; f.Code != ws.CodeForbidden || f.ID != "3" {
		t.Fatalf("resubscribe: %+v", f)
	}
}

// TestShutdown: cancelling Run closes every client with 1001 and returns
// nil.
func TestShutdown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ev := newEventID()
	e.auth.addEvent(ev)
	var cs []*wsClient
	for i := range 3 {
		cookie := fmt.Sprintf("z%d", i)
		e.auth.user(cookie, cookie, true)
		c := e.connect(cookie)
		c.send(subscribe(topicOf(ev), ""))
		c.expect(ws.TypeSubscribed, "")
		cs = append(cs, c)
	}
	done := make(chan error, 1)
	go func() { done <- e.stop() }()
	for _, c := range cs {
		if code := c.closeCode(); code != websocket.CloseGoingAway {
			t.Fatalf("close %d, want 1001", code)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, _, err := e.dial(dialOpt{cookie: "z0"}); err == nil {
		t.Fatal("dial after shutdown succeeded")
	}
}

// TestStreamMissing: without the POSITIONS stream the broadcaster runs,
// reports not ready and answers unavailable; once the bridge creates the
// stream it becomes ready and subscribes work.
func TestStreamMissing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{noStream: true})
	ev := newEventID()
	e.auth.addEvent(ev)
	e.auth.user("k", "k", true)
	if code := e.get("/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d without the stream", code)
	}
	if code := e.get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d", code)
	}
	c := e.connect("k")
	c.send(subscribe(topicOf(ev), "1"))
	c.expect(ws.TypeError, ws.CodeUnavailable)
	waitFor(t, "topic released after a failed snapshot", func() bool { return e.srv.hub.topicCount() == 0 })

	e.ensureStream()
	waitFor(t, "ready", func() bool { return e.get("/readyz") == http.StatusOK })
	c.send(subscribe(topicOf(ev), "2"))
	if f := c.expect(ws.TypeSubscribed, ""); f.ID != "2" || len(f.Snapshot) != 0 {
		t.Fatalf("subscribed %+v", f)
	}
	e.auth.stop()
	if code := e.get("/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d without authsvc", code)
	}
}

func (e *env) get(path string) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+e.addr+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// TestLargeSnapshot: an event with more devices than one batch direct get
// may return (1,024) still gets every device in its snapshot.
func TestLargeSnapshot(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ev := newEventID()
	e.auth.addEvent(ev)
	e.auth.user("k", "k", true)
	devices := deviceNames("L", 1100)
	base := time.Now().Add(-time.Hour).UnixMilli()
	e.publishAsync(round(ev, devices, base))
	e.publishAsync(round(ev, devices[:10], base+1))
	c := e.connect("k")
	c.send(subscribe(topicOf(ev), ""))
	f := c.expect(ws.TypeSubscribed, "")
	ps := items(t, f)
	seen := map[string]int64{}
	for _, p := range ps {
		seen[p.DeviceID] = p.TSMillis()
	}
	if len(ps) != len(devices) || len(seen) != len(devices) {
		t.Fatalf("snapshot has %d positions of %d devices, want %d", len(ps), len(seen), len(devices))
	}
	for i, d := range devices {
		want := base
		if i < 10 {
			want = base + 1
		}
		if seen[d] != want {
			t.Fatalf("%s: ts %d, want %d", d, seen[d], want)
		}
	}
}

// TestMetricsServed: /metrics exposes the broadcaster's metrics.
func TestMetricsServed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.auth.user("k", "k", true)
	c := e.connect("k")
	c.send(`{}`)
	c.expect(ws.TypeError, ws.CodeBadRequest)
	resp, err := http.Get("http://" + e.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"broadcaster_connections 1", "broadcaster_frames_sent_total", "broadcaster_auth_seconds_bucket",
		"broadcaster_positions_coalesced_total", "broadcaster_slow_client_closes_total", "broadcaster_snapshot_seconds"} {
		if !strings.Contains(string(body), name) {
			t.Fatalf("/metrics lacks %q", name)
		}
	}
}
