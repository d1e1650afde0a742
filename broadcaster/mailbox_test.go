package broadcaster

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"trm-live/contract/ws"
)

// recorder stands in for the melody session: it records what the mailbox
// writes. Credits are returned by the test (mb.sent), as melody would after
// a socket write.
type recorder struct {
	mu     sync.Mutex
	frames []string
	closed []byte
}

func (r *recorder) Write(b []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.frames = append(r.frames, string(b))
	return nil
}

func (r *recorder) CloseWithMsg(b []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = b
	return nil
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.frames
	r.frames = nil
	return f
}

type mbFixture struct {
	t   *testing.T
	rec *recorder
	mb  *mailbox
	w   *writers
	m   *metrics
}

func newMB(t *testing.T, ctrlCap, maxItems, maxBytes int) *mbFixture {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	w := newWriters(maxItems, maxBytes, m) // not running: the test flushes
	return &mbFixture{t: t, rec: rec, mb: newMailbox(rec, w, ctrlCap), w: w, m: m}
}

// flush runs what a writer would, if the mailbox was scheduled.
func (x *mbFixture) flush() []string {
	x.w.mu.Lock()
	q := x.w.queue[x.w.head:]
	x.w.queue, x.w.head = nil, 0
	x.w.mu.Unlock()
	for _, mb := range q {
		mb.flush(nil, x.w.maxItems, x.w.maxBytes, x.m)
	}
	return x.rec.take()
}

// occupy takes every credit with a frame of its own (devices 1000+), so
// that what is put afterwards waits in the mailbox.
func (x *mbFixture) occupy(f *feed) {
	x.t.Helper()
	for i := range credits {
		x.mb.put(f, int32(1000+i), 1, pos(fmt.Sprint("busy", i), 1))
		if got := x.flush(); len(got) != 1 {
			x.t.Fatalf("occupy: credit %d: %v", i, got)
		}
	}
	if got := x.flush(); len(got) != 0 {
		x.t.Fatalf("wrote without credit: %v", got)
	}
}

// release returns every credit in use, as melody does after each write.
func (x *mbFixture) release() {
	x.mb.mu.Lock()
	n := x.mb.inflight
	x.mb.mu.Unlock()
	for range n {
		x.mb.sent()
	}
}

// drain writes until nothing is pending, returning credits after every
// round, and returns the frames in order.
func (x *mbFixture) drain() []string {
	var all []string
	for {
		got := x.flush()
		if len(got) == 0 {
			return all
		}
		all = append(all, got...)
		x.release()
	}
}

func pos(dev string, ts int64) []byte {
	return []byte(fmt.Sprintf(`{"device_id":"%s","ts":%d}`, dev, ts))
}

func activeFeed(x *mbFixture, topic string) *feed {
	f := newFeed(x.mb, topic)
	if _, ok := x.mb.activate(f, nil, "", 0); !ok {
		x.t.Fatal("activate failed")
	}
	if got := x.flush(); len(got) != 1 || !strings.HasPrefix(got[0], `{"type":"subscribed"`) {
		x.t.Fatalf("subscribed frame: %v", got)
	}
	x.mb.sent()
	return f
}

func TestMailboxKeepsUp(t *testing.T) {
	x := newMB(t, 8, 100, 1<<20)
	f := activeFeed(x, "event:t")
	// A client that keeps up: one position per frame, each at once.
	for i := int64(1); i <= 3; i++ {
		x.mb.put(f, 0, i, pos("a", i))
		got := x.flush()
		want := `{"type":"positions","topic":"event:t","positions":[` + string(pos("a", i)) + `]}`
		if len(got) != 1 || got[0] != want {
			t.Fatalf("frame %d: %v", i, got)
		}
		x.mb.sent()
	}
}

func TestMailboxCoalescesPerDevice(t *testing.T) {
	x := newMB(t, 8, 100, 1<<20)
	f := activeFeed(x, "event:t")
	// Positions pending together leave together.
	x.mb.put(f, 0, 1, pos("a", 1))
	x.mb.put(f, 1, 1, pos("b", 1))
	if got := x.flush(); len(got) != 1 || strings.Count(got[0], "device_id") != 2 {
		t.Fatalf("a and b pending together should leave in one frame: %v", got)
	}
	x.release()
	x.occupy(f)
	// Every credit is taken; later positions wait, latest-only.
	for ts := int64(3); ts <= 10; ts++ {
		if r := x.mb.put(f, 0, ts, pos("a", ts)); ts > 3 && r != putCoalesced {
			t.Fatalf("put a@%d = %v, want coalesced", ts, r)
		}
	}
	x.mb.put(f, 2, 5, pos("c", 5))
	if r := x.mb.put(f, 2, 4, pos("c", 4)); r != putStale {
		t.Fatalf("older position = %v, want stale", r)
	}
	if p, _ := x.mb.pending(); p != 2 {
		t.Fatalf("pending %d, want 2 (a and c)", p)
	}
	if got := x.flush(); len(got) != 0 {
		t.Fatalf("wrote without credit: %v", got)
	}
	x.mb.sent()
	got := x.flush()
	want := `{"type":"positions","topic":"event:t","positions":[` + string(pos("a", 10)) + "," + string(pos("c", 5)) + `]}`
	if len(got) != 1 || got[0] != want {
		t.Fatalf("got %v\nwant %s", got, want)
	}
}

func TestMailboxControlFirstAndNeverDropped(t *testing.T) {
	x := newMB(t, 4, 100, 1<<20)
	f := activeFeed(x, "event:t")
	x.mb.put(f, 0, 1, pos("a", 1))
	x.mb.put(f, 1, 1, pos("b", 1))
	x.mb.control([]byte(`C1`))
	x.mb.control([]byte(`C2`))
	got := x.drain()
	want := []string{"C1", "C2", `{"type":"positions","topic":"event:t","positions":[` + string(pos("a", 1)) + "," + string(pos("b", 1)) + `]}`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got  %v\nwant %v (control first, in order, nothing lost)", got, want)
	}
}

func TestMailboxControlOverflowCloses(t *testing.T) {
	x := newMB(t, 3, 100, 1<<20)
	activeFeed(x, "event:t")
	for i := range 3 {
		x.mb.control([]byte(fmt.Sprint("C", i)))
	}
	if got := x.flush(); len(got) != credits { // every credit taken
		t.Fatalf("frames %v", got)
	}
	for i := range credits {
		x.mb.control([]byte(fmt.Sprint("D", i))) // back to the cap; the next overflows
	}
	if x.rec.closed != nil {
		t.Fatal("closed too early")
	}
	x.mb.control([]byte("C5"))
	if x.rec.closed == nil {
		t.Fatal("control overflow did not close")
	}
	if code := closeCodeOf(x.rec.closed); code != ws.ClosePolicyViolation {
		t.Fatalf("close code %d, want 1008", code)
	}
	if x.mb.put(&feed{}, 0, 1, nil) != putClosed {
		t.Fatal("closed mailbox accepted a position")
	}
}

func closeCodeOf(b []byte) int {
	if len(b) < 2 {
		return 0
	}
	return int(b[0])<<8 | int(b[1])
}

func TestMailboxFrameCaps(t *testing.T) {
	x := newMB(t, 8, 3, 1<<20)
	f := activeFeed(x, "event:t")
	x.occupy(f)
	for i := int32(2); i < 9; i++ {
		x.mb.put(f, i, 1, pos(fmt.Sprint("d", i), 1))
	}
	x.release()
	got := x.drain()
	if len(got) != 3 || strings.Count(got[0], "device_id") != 3 || strings.Count(got[1], "device_id") != 3 || strings.Count(got[2], "device_id") != 1 {
		t.Fatalf("item cap: %v", got)
	}
	// Byte cap: two 620-byte items do not fit a 1,024-byte frame, so each
	// leaves in its own.
	y := newMB(t, 8, 100, 1024)
	g := activeFeed(y, "event:t")
	y.occupy(g)
	big := []byte(`{"device_id":"` + strings.Repeat("x", 600) + `"}`)
	y.mb.put(g, 2, 1, big)
	y.mb.put(g, 3, 1, big)
	y.release()
	got = y.drain()
	if len(got) != 2 || strings.Count(got[0], "device_id") != 1 {
		t.Fatalf("byte cap: %d frames", len(got))
	}
}

func TestMailboxSnapshotMerge(t *testing.T) {
	x := newMB(t, 8, 100, 1<<20)
	f := newFeed(x.mb, "event:t")
	// Live positions arrive before the snapshot is read: a@5 (newer than
	// the snapshot's a@3), b@1 (older than the snapshot's b@2).
	x.mb.put(f, 0, 5, pos("a", 5))
	x.mb.put(f, 1, 1, pos("b", 1))
	if got := x.flush(); len(got) != 0 {
		t.Fatalf("positions before subscribed: %v", got)
	}
	n, ok := x.mb.activate(f, []snapItem{{0, 3, pos("a", 3)}, {1, 2, pos("b", 2)}, {2, 7, pos("c", 7)}}, "id1", 0)
	if !ok || n != 3 {
		t.Fatalf("activate = %d %v", n, ok)
	}
	got := x.flush()
	if len(got) != 1 {
		t.Fatalf("frames %v", got)
	}
	fr, err := ws.DecodeFrame([]byte(got[0]))
	if err != nil || fr.Type != ws.TypeSubscribed || fr.ID != "id1" {
		t.Fatalf("%v %+v", err, fr)
	}
	snap := strings.Join(func() []string {
		var s []string
		for _, r := range fr.Snapshot {
			s = append(s, string(r))
		}
		return s
	}(), ",")
	for _, want := range [][]byte{pos("a", 5), pos("b", 2), pos("c", 7)} {
		if !strings.Contains(snap, string(want)) {
			t.Fatalf("snapshot %s lacks %s", snap, want)
		}
	}
	// What the snapshot carried is not sent again, nor anything older.
	if r := x.mb.put(f, 0, 5, pos("a", 5)); r != putStale {
		t.Fatalf("duplicate after snapshot = %v", r)
	}
}

func TestMailboxEndDropsPending(t *testing.T) {
	x := newMB(t, 8, 100, 1<<20)
	f := activeFeed(x, "event:t")
	x.occupy(f)
	x.mb.put(f, 2, 1, pos("c", 1)) // pending, no credit
	x.mb.end(f, []byte("UNSUB"))
	x.release()
	got := x.drain()
	if len(got) != 1 || got[0] != "UNSUB" {
		t.Fatalf("after end: %v", got)
	}
	if x.mb.put(f, 3, 1, pos("d", 1)) != putClosed {
		t.Fatal("ended feed accepted a position")
	}
}

func TestMailboxCloseAfterControl(t *testing.T) {
	x := newMB(t, 8, 100, 1<<20)
	f := activeFeed(x, "event:t")
	x.mb.control([]byte("E1"))
	x.mb.put(f, 0, 1, pos("a", 1))
	x.mb.closeAfterControl(websocket.CloseGoingAway, "bye")
	got := x.flush()
	if len(got) != 1 || got[0] != "E1" {
		t.Fatalf("frames before close: %v", got)
	}
	if closeCodeOf(x.rec.closed) != websocket.CloseGoingAway {
		t.Fatalf("close %v", x.rec.closed)
	}
}

// sharedTopic is a topic for offer tests: no NATS, frame caps of x.
func sharedTopic(x *mbFixture, feeds int) *topic {
	h := &hub{m: x.m, maxItems: x.w.maxItems, maxBytes: x.w.maxBytes}
	const id = "00000000-0000-4000-8000-000000000001"
	tp := &topic{h: h, eventID: id, head: ws.AppendPositionsHead(nil, ws.EventTopic(id)), drained: make(chan struct{}, 1)}
	fs := make([]*feed, feeds) // counted only: no fan-out runs here
	tp.feeds.Store(&fs)
	return tp
}

// offer hands the batches of pass seq to f as the fan-out does and
// schedules the mailbox.
func (x *mbFixture) offer(f *feed, tp *topic, seq uint64, items ...snapItem) (coalesced, stale int) {
	c, s, sched := x.mb.offer(f, tp.batches(seq, items))
	if sched {
		x.w.schedule(x.mb)
	}
	return c, s
}

// wantShared checks how many shared frames x's metrics counted.
func (x *mbFixture) wantShared(n float64) {
	x.t.Helper()
	if v := testutil.ToFloat64(x.m.framesShared); v != n {
		x.t.Fatalf("frames_shared_total %v, want %v", v, n)
	}
}

func positionsFrame(topic string, items ...[]byte) string {
	var s []string
	for _, it := range items {
		s = append(s, string(it))
	}
	return `{"type":"positions","topic":"` + topic + `","positions":[` + strings.Join(s, ",") + `]}`
}

// TestMailboxSharedBatch: a feed that has sent everything takes fan-out
// batches whole, each as the batch's one frame (built once for every
// client), up to sharedQueue of them; a feed further behind merges them per
// device; nothing is lost or sent out of order, and every queued batch is
// accounted for (the fan-out waits on that count).
func TestMailboxSharedBatch(t *testing.T) {
	x := newMB(t, 8, 100, 1<<20)
	y := newMB(t, 8, 100, 1<<20)
	y.m = x.m
	tp := sharedTopic(x, 2)
	topic := ws.EventTopic(tp.eventID)
	f, g := activeFeed(x, topic), activeFeed(y, topic)

	// Both clients are free: both send the batch's shared frame.
	b1 := tp.batches(1, []snapItem{{0, 1, pos("a", 1)}, {1, 1, pos("b", 1)}})
	for _, z := range []struct {
		x *mbFixture
		f *feed
	}{{x, f}, {y, g}} {
		if _, _, sched := z.x.mb.offer(z.f, b1); sched {
			z.x.w.schedule(z.x.mb)
		}
	}
	if n := tp.outstanding.Load(); n != 2 {
		t.Fatalf("outstanding %d, want 2", n)
	}
	want := positionsFrame(topic, pos("a", 1), pos("b", 1))
	for _, z := range []*mbFixture{x, y} {
		if got := z.flush(); len(got) != 1 || got[0] != want {
			t.Fatalf("got %v\nwant %s", got, want)
		}
	}
	if n := tp.outstanding.Load(); n != 0 {
		t.Fatalf("outstanding %d after both took the batch", n)
	}
	x.wantShared(2)
	if c := cap(b1[0].sharedFrame()); poolable(c) {
		t.Fatalf("shared frame capacity %d: putBuf would recycle it while other sessions write it", c)
	}
	// Also when its length is a power of two.
	pad := 256 - len(tp.head) - len(ws.PositionsTail)
	b0 := tp.batches(9, []snapItem{{0, 9, []byte(strings.Repeat("x", pad))}})[0]
	if n, c := len(b0.sharedFrame()), cap(b0.sharedFrame()); n != 256 || poolable(c) {
		t.Fatalf("shared frame of %d bytes has capacity %d: poolable", n, c)
	}
	if !poolable(cap(getBuf(300))) {
		t.Fatal("getBuf's buffers are not poolable")
	}

	// x's write is still in flight: the next batches wait whole, and go
	// as their own frames once it is written.
	x.offer(f, tp, 2, snapItem{0, 2, pos("a", 2)})
	x.offer(f, tp, 3, snapItem{1, 3, pos("b", 3)})
	if got := x.flush(); len(got) != 0 {
		t.Fatalf("wrote without credit: %v", got)
	}
	x.release()
	if got := x.drain(); fmt.Sprint(got) != fmt.Sprint([]string{positionsFrame(topic, pos("a", 2)), positionsFrame(topic, pos("b", 3))}) {
		t.Fatalf("queued batches: %v", got)
	}
	x.wantShared(4)

	// Further behind than sharedQueue batches: they merge per device (a@4
	// and a@5 give way to a@6, b@5 to b@7).
	x.occupy(f)
	items := [][]snapItem{{{0, 4, pos("a", 4)}, {2, 1, pos("c", 1)}}, {{0, 5, pos("a", 5)}, {1, 5, pos("b", 5)}}, {{3, 1, pos("d", 1)}}, {{0, 6, pos("a", 6)}}}
	for i, it := range items {
		x.offer(f, tp, uint64(4+i), it...)
	}
	if n := tp.outstanding.Load(); n != sharedQueue {
		t.Fatalf("outstanding %d, want %d", n, sharedQueue)
	}
	if c, s := x.offer(f, tp, 8, snapItem{1, 7, pos("b", 7)}); c != 3 || s != 0 {
		t.Fatalf("merge: %d coalesced, %d stale; want 3, 0", c, s)
	}
	if n := tp.outstanding.Load(); n != 0 {
		t.Fatalf("outstanding %d after the merge", n)
	}
	x.release()
	if got, want := x.drain(), positionsFrame(topic, pos("a", 6), pos("c", 1), pos("b", 7), pos("d", 1)); len(got) != 1 || got[0] != want {
		t.Fatalf("merged frame %v\nwant %s", got, want)
	}
	// Caught up again: back on shared frames.
	x.offer(f, tp, 9, snapItem{1, 9, pos("b", 9)})
	if got := x.flush(); len(got) != 1 || got[0] != positionsFrame(topic, pos("b", 9)) {
		t.Fatalf("after catching up: %v", got)
	}
	x.wantShared(5)
}

// TestBatchesCaps: a pass over the frame caps is cut into shared batches
// within them; a position alone over the byte cap is a batch of its own.
func TestBatchesCaps(t *testing.T) {
	x := newMB(t, 8, 2, 1<<20)
	tp := sharedTopic(x, 1)
	f := activeFeed(x, ws.EventTopic(tp.eventID))
	x.offer(f, tp, 1, snapItem{0, 1, pos("a", 1)}, snapItem{1, 1, pos("b", 1)}, snapItem{2, 1, pos("c", 1)})
	if got := x.drain(); len(got) != 2 || strings.Count(got[0], "device_id") != 2 || strings.Count(got[1], "device_id") != 1 {
		t.Fatalf("item cap: %v", got)
	}
	x.wantShared(2)

	y := newMB(t, 8, 100, 1024)
	ty := sharedTopic(y, 1)
	big := []byte(`{"device_id":"` + strings.Repeat("x", 600) + `"}`)
	huge := []byte(`{"device_id":"` + strings.Repeat("y", 2000) + `"}`)
	bs := ty.batches(1, []snapItem{{0, 1, big}, {1, 1, pos("s", 1)}, {2, 1, big}, {3, 1, huge}, {4, 1, pos("t", 1)}})
	var sizes []string
	for _, b := range bs {
		n := len(b.sharedFrame())
		if n > 1024 && len(b.items) > 1 {
			t.Fatalf("batch of %d positions, %d bytes, over the 1,024-byte cap", len(b.items), n)
		}
		sizes = append(sizes, fmt.Sprint(len(b.items)))
	}
	if got := strings.Join(sizes, ","); got != "2,1,1,1" {
		t.Fatalf("positions per batch %s, want 2,1,1,1", got)
	}
}

// TestMailboxSharedFrom: batches before the feed's sharedFrom are merged
// against its snapshot, so a live position older than the snapshot's,
// fanned out late, is never sent after it.
func TestMailboxSharedFrom(t *testing.T) {
	x := newMB(t, 8, 100, 1<<20)
	tp := sharedTopic(x, 1)
	topic := ws.EventTopic(tp.eventID)
	f := newFeed(x.mb, topic)
	if _, ok := x.mb.activate(f, []snapItem{{0, 5, pos("a", 5)}}, "", 3); !ok {
		t.Fatal("activate failed")
	}
	x.drain()
	if _, s := x.offer(f, tp, 2, snapItem{0, 4, pos("a", 4)}, snapItem{1, 1, pos("b", 1)}); s != 1 {
		t.Fatalf("a@4 after the snapshot's a@5: %d stale, want 1", s)
	}
	if got := x.drain(); len(got) != 1 || got[0] != positionsFrame(topic, pos("b", 1)) {
		t.Fatalf("before sharedFrom: %v", got)
	}
	x.wantShared(0)
	x.offer(f, tp, 3, snapItem{0, 6, pos("a", 6)})
	if got := x.drain(); len(got) != 1 || got[0] != positionsFrame(topic, pos("a", 6)) {
		t.Fatalf("from sharedFrom: %v", got)
	}
	x.wantShared(1)
}

// TestMailboxSharedDropped: a shared batch queued in a feed that ends, or
// in a mailbox that closes, is released, so the fan-out never waits for it.
func TestMailboxSharedDropped(t *testing.T) {
	for _, tc := range []struct {
		name string
		drop func(x *mbFixture, f *feed)
	}{
		{"end", func(x *mbFixture, f *feed) { x.mb.end(f, nil) }},
		{"close", func(x *mbFixture, f *feed) { x.mb.close(websocket.CloseGoingAway, "bye") }},
		{"closeAfterControl", func(x *mbFixture, f *feed) { x.mb.closeAfterControl(websocket.CloseGoingAway, "bye") }},
		{"shut", func(x *mbFixture, f *feed) { x.mb.shut() }},
		{"put", func(x *mbFixture, f *feed) { x.mb.put(f, 5, 1, pos("e", 1)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newMB(t, 8, 100, 1<<20)
			tp := sharedTopic(x, 1)
			f := activeFeed(x, ws.EventTopic(tp.eventID))
			x.occupy(f)
			x.offer(f, tp, 1, snapItem{0, 1, pos("a", 1)})
			if n := tp.outstanding.Load(); n != 1 {
				t.Fatalf("outstanding %d, want 1", n)
			}
			tc.drop(x, f)
			if n := tp.outstanding.Load(); n != 0 {
				t.Fatalf("outstanding %d after %s", n, tc.name)
			}
		})
	}
}

// TestFanoutPacing: a pass to F feeds follows the previous one by at least
// F / TopicFrameRate; 0 turns it off; the writers hold the next pass while
// more than 1/16 of the feeds still hold a shared batch.
func TestFanoutPacing(t *testing.T) {
	x := newMB(t, 8, 100, 1<<20)
	tp := sharedTopic(x, 1000)
	for rate, want := range map[int]time.Duration{40000: 25 * time.Millisecond, 80000: 12500 * time.Microsecond, 0: 0} {
		tp.h.frameRate = rate
		if got := tp.minInterval(); got != want {
			t.Errorf("rate %d, 1,000 feeds: interval %s, want %s", rate, got, want)
		}
	}
	tp.outstanding.Store(62)
	if !tp.drainedEnough() {
		t.Error("62 of 1,000 feeds holding a batch should not hold the next pass")
	}
	tp.outstanding.Store(63)
	if tp.drainedEnough() {
		t.Error("63 of 1,000 feeds holding a batch should hold the next pass")
	}
	tp.sharedTaken()
	select {
	case <-tp.drained:
	default:
		t.Error("no drained signal when the count fell to the threshold")
	}
}
