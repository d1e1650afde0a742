package broadcaster

import (
	"sync"

	"github.com/olahol/melody"

	"trm-live/contract/ws"
)

// credits is how many frames one session may have in melody's buffer or
// being written at once. melody drops silently when its buffer is full, so
// the mailbox never lets it fill: a frame takes a credit when it is queued
// and gives it back when melody reports it written (HandleSentMessage). The
// buffer is credits+1 slots, so a close always fits. One credit: a second
// frame waiting in melody's queue would hold positions that can no longer
// be coalesced (decision 33).
const credits = 1

// slot is what a feed holds for one device.
type slot struct {
	ts      int64  // newest fix time accepted for the device (Unix ms); 0 = none
	data    []byte // its encoded position while pending; nil once taken
	pending bool   // data waits to be sent
}

// feed is one subscription of one client: a stream of positions of many
// devices, kept latest-only per device until the client's writer is free.
// The topic hub feeds it today; a private paced replay can feed one the
// same way (put with its own device indexes), without touching the
// mailbox.
type feed struct {
	mb    *mailbox
	topic string
	head  []byte // positions frame up to its first item

	// Guarded by mb.mu.
	slots  []slot  // by device index
	dirty  []int32 // devices with a pending position, oldest first, from dirtyHead
	head0  int     // dirtyHead: first live entry of dirty
	ready  bool    // its subscribed frame is queued; positions may follow
	queued bool    // in mb.feeds
	closed bool

	// A topic feed that has sent everything queues whole fan-out batches
	// instead (offer), up to sharedQueue: shared, each written as its
	// batch's one frame. Batches before sharedFrom are merged per device
	// (see topic.sharedFrom). A non-empty shared implies no dirty device.
	shared     []*batch
	sharedFrom uint64

	// taken, set on replay feeds only, gets a non-blocking signal each
	// time the writer takes positions of the feed (replay.go waits on it).
	taken chan struct{}

	// lim holds the subscription's options (limits.go); nil = none. Set
	// before the feed is attached.
	lim *limits
	// t is the topic of a live feed, set by hub.attach; nil for replays.
	t *topic
}

func newFeed(mb *mailbox, topic string) *feed {
	return &feed{mb: mb, topic: topic, head: ws.AppendPositionsHead(nil, topic)}
}

// mailbox is the outbound queue of one WebSocket session. Every write to
// the session goes through it, so melody's buffer never fills and the
// credit count never drifts (docs/broadcaster.md, Mailbox). It holds:
//   - ctrl: encoded control frames, FIFO, never coalesced or dropped, capped;
//     past the cap the client is closed with 1008;
//   - per feed, the latest pending position of every device and the order in
//     which devices became pending.
//
// One writer goroutine at a time (scheduled) takes work from it and writes,
// so frames leave in the order they were taken.
type mailbox struct {
	s       sessionWriter
	w       *writers
	ctrlCap int
	clk     clock // for rated feeds (limits.go)

	mu        sync.Mutex
	ctrl      [][]byte
	feeds     []*feed // ready feeds with pending positions, round robin
	inflight  int
	scheduled bool
	closing   []byte // close frame to send once ctrl is flushed
	closed    bool   // nothing more is queued or sent
	coalesced int64  // pending positions this client lost to newer ones
}

// sessionWriter is the part of *melody.Session the mailbox writes to.
type sessionWriter interface {
	Write(msg []byte) error
	CloseWithMsg(msg []byte) error
}

func newMailbox(s sessionWriter, w *writers, ctrlCap int) *mailbox {
	return &mailbox{s: s, w: w, ctrlCap: ctrlCap, clk: realClock}
}

// putResult says what put did with a position.
type putResult uint8

const (
	putQueued    putResult = iota // now pending
	putCoalesced                  // replaced an older pending position of the device
	putStale                      // older than or equal to what the client has or will get
	putClosed                     // the feed or the mailbox is closed
	putFiltered                   // a device the feed does not carry (devices option)
)

// put offers a position of device idx with fix time ts (Unix ms) to f.
// data must not change afterwards: it is shared by every client.
func (mb *mailbox) put(f *feed, idx int32, ts int64, data []byte) putResult {
	mb.mu.Lock()
	if f.closed || mb.closed || mb.closing != nil {
		mb.mu.Unlock()
		return putClosed
	}
	mb.unshareLocked(f) // topic feeds only; kept for the invariant
	if !f.admitsLocked(idx) {
		mb.mu.Unlock()
		return putFiltered
	}
	sl := f.slotLocked(idx)
	if ts <= sl.ts {
		mb.mu.Unlock()
		return putStale
	}
	res := putQueued
	sl.ts, sl.data = ts, data
	if sl.pending {
		res = putCoalesced
		mb.coalesced++
	} else {
		mb.pendLocked(f, idx, mb.nowFor(f))
	}
	mb.unlockSchedule()
	return res
}

// sharedQueue is how many fan-out batches a feed may hold whole. A feed
// that falls further behind merges them per device: its client then gets
// the newest position of each device in one frame.
const sharedQueue = 4

// offer hands the batches of one fan-out pass to f. When f has sent
// everything but whole batches, holds fewer than sharedQueue with these,
// and the pass comes after f's snapshot, f queues them whole, each to be
// written as its shared frame. Otherwise they, and the batches f holds,
// are merged into f's slots, latest per device. It returns how many
// positions replaced a pending one and how many were stale, and whether
// the mailbox needs a writer: the caller then passes it to
// writers.scheduleAll, so a fan-out to many clients takes the writers'
// lock once, not once per client.
func (mb *mailbox) offer(f *feed, bs []*batch) (coalesced, stale int, sched bool) {
	mb.mu.Lock()
	if f.closed || mb.closed || mb.closing != nil || len(bs) == 0 {
		mb.mu.Unlock()
		return 0, 0, false
	}
	if f.lim == nil && f.ready && bs[0].seq >= f.sharedFrom && f.head0 == len(f.dirty) && len(f.shared)+len(bs) <= sharedQueue {
		f.shared = append(f.shared, bs...)
		bs[0].t.outstanding.Add(int64(len(bs)))
		mb.enqueueLocked(f)
	} else {
		coalesced, stale = mb.unshareLocked(f)
		for _, b := range bs {
			c, s := mb.mergeLocked(f, b.items)
			coalesced += c
			stale += s
		}
	}
	sched = mb.wantLocked()
	mb.mu.Unlock()
	return coalesced, stale, sched
}

// unshareLocked merges the batches f holds whole into its slots.
func (mb *mailbox) unshareLocked(f *feed) (coalesced, stale int) {
	for _, b := range f.shared {
		c, s := mb.mergeLocked(f, b.items)
		coalesced += c
		stale += s
	}
	f.releaseShared()
	return coalesced, stale
}

// releaseShared forgets the batches f holds whole (merged or never to be
// written), so the fan-out no longer waits for them. Under mb.mu.
func (f *feed) releaseShared() {
	for i, b := range f.shared {
		b.t.sharedTaken()
		f.shared[i] = nil
	}
	f.shared = f.shared[:0]
}

// unlockSchedule releases mb.mu and, when mb has something for a writer,
// schedules it (outside the lock).
func (mb *mailbox) unlockSchedule() {
	sched := mb.wantLocked()
	mb.mu.Unlock()
	if sched {
		mb.w.schedule(mb)
	}
}

// mergeLocked offers several positions, at most one per device, to f.
func (mb *mailbox) mergeLocked(f *feed, items []snapItem) (coalesced, stale int) {
	now := mb.nowFor(f)
	for _, it := range items {
		if !f.admitsLocked(it.idx) {
			continue
		}
		sl := f.slotLocked(it.idx)
		if it.ts <= sl.ts {
			stale++
			continue
		}
		sl.ts, sl.data = it.ts, it.data
		if sl.pending {
			coalesced++
			mb.coalesced++
			continue
		}
		mb.pendLocked(f, it.idx, now)
	}
	return coalesced, stale
}

// dropSharedLocked releases the shared batches queued in mb's feeds, which
// will not be written: the mailbox is closing.
func (mb *mailbox) dropSharedLocked() {
	for _, f := range mb.feeds {
		f.releaseShared()
	}
}

// enqueueLocked puts f among the feeds waiting for a writer, once. Under
// mb.mu.
func (mb *mailbox) enqueueLocked(f *feed) {
	if !f.queued {
		f.queued = true
		mb.feeds = append(mb.feeds, f)
	}
}

// dequeueLocked takes f out of the feeds waiting for a writer. Under mb.mu.
func (mb *mailbox) dequeueLocked(f *feed) {
	if !f.queued {
		return
	}
	f.queued = false
	for i, g := range mb.feeds {
		if g == f {
			mb.feeds = append(mb.feeds[:i], mb.feeds[i+1:]...)
			break
		}
	}
}

// slotLocked is f's slot of device idx, grown into when new. Under mb.mu.
func (f *feed) slotLocked(idx int32) *slot {
	if int(idx) >= len(f.slots) {
		f.growSlots(int(idx) + 1)
	}
	return &f.slots[idx]
}

func (f *feed) growSlots(n int) {
	c := cap(f.slots)
	if n <= c {
		f.slots = f.slots[:n]
		return
	}
	if c < 16 {
		c = 16
	}
	for c < n {
		c *= 2
	}
	s := make([]slot, n, c)
	copy(s, f.slots)
	f.slots = s
}

// snapItem is one position of a snapshot.
type snapItem struct {
	idx  int32
	ts   int64
	data []byte
}

// activate merges a snapshot into f and queues the subscribed frame, under
// one lock: the frame carries the newest position of every device known
// to f (from the snapshot or from live messages that arrived meanwhile), and
// only newer positions follow it. Fan-out batches from sharedFrom on may be
// queued whole (offer). It returns false when f or the mailbox closed
// meanwhile, or when the control queue overflowed (the client is then
// closed).
func (mb *mailbox) activate(f *feed, snap []snapItem, id string, sharedFrom uint64) (sent int, ok bool) {
	mb.mu.Lock()
	f.sharedFrom = sharedFrom
	mb.mu.Unlock()
	return mb.activateWith(f, snap, false, func(b []byte, items [][]byte) []byte {
		return ws.AppendSubscribed(b, f.topic, id, items)
	})
}

// activateWith is activate with the frame built by frame (from a pooled
// buffer and the snapshot items). With reset, f first forgets every device
// (its pending positions and newest fix times): a replay's seek.
func (mb *mailbox) activateWith(f *feed, snap []snapItem, reset bool, frame func(b []byte, items [][]byte) []byte) (sent int, ok bool) {
	mb.mu.Lock()
	if f.closed || mb.closed || mb.closing != nil {
		mb.mu.Unlock()
		return 0, false
	}
	if reset {
		clear(f.slots)
		f.dirty, f.head0 = f.dirty[:0], 0
		if f.lim != nil {
			f.lim.resetLocked()
		}
		mb.dequeueLocked(f)
	}
	for _, it := range snap {
		if !f.admitsLocked(it.idx) {
			continue
		}
		sl := f.slotLocked(it.idx)
		if it.ts <= sl.ts {
			continue // a live message of the device was newer
		}
		sl.ts, sl.data = it.ts, it.data
		if !sl.pending {
			sl.pending = true
			f.dirty = append(f.dirty, it.idx)
		}
	}
	if f.lim != nil && len(f.lim.held) > 0 {
		// Held positions go in the snapshot too: it is not rate capped.
		f.dirty = append(f.dirty, f.lim.held...)
		f.lim.held = f.lim.held[:0]
		f.lim.stopLocked()
	}
	items := make([][]byte, 0, len(f.dirty)-f.head0)
	for _, idx := range f.dirty[f.head0:] {
		sl := &f.slots[idx]
		items = append(items, sl.data)
		sl.data, sl.pending = nil, false
	}
	if f.rated() {
		// Each device's interval starts at the snapshot.
		f.sentLocked(f.dirty[f.head0:], mb.clk.now())
	}
	f.dirty, f.head0 = f.dirty[:0], 0
	f.ready = true
	if !mb.pushCtrlLocked(frame(getBuf(256+len(items)*200), items)) {
		mb.mu.Unlock()
		mb.overflow()
		return 0, false
	}
	mb.unlockSchedule()
	return len(items), true
}

// end closes f: its pending positions are dropped and nothing of it is sent
// after frame (unsubscribed or error), which is queued under the same lock.
// frame may be nil.
func (mb *mailbox) end(f *feed, frame []byte) {
	mb.mu.Lock()
	if mb.closed {
		mb.mu.Unlock()
		return
	}
	if !f.closed {
		f.closed = true
		f.slots, f.dirty, f.head0 = nil, nil, 0
		if f.lim != nil {
			f.lim.stopLocked()
			f.lim.held = nil
		}
		f.releaseShared()
		mb.dequeueLocked(f)
	}
	if frame != nil && mb.closing == nil && !mb.pushCtrlLocked(frame) {
		mb.mu.Unlock()
		mb.overflow()
		return
	}
	mb.unlockSchedule()
}

// control queues a control frame. A client whose control queue is full is
// closed with 1008.
func (mb *mailbox) control(frame []byte) {
	mb.mu.Lock()
	if mb.closed || mb.closing != nil {
		mb.mu.Unlock()
		return
	}
	if !mb.pushCtrlLocked(frame) {
		mb.mu.Unlock()
		mb.overflow()
		return
	}
	mb.unlockSchedule()
}

// pushCtrlLocked appends a control frame; false means the queue is full
// and the mailbox is now closed.
func (mb *mailbox) pushCtrlLocked(frame []byte) bool {
	if len(mb.ctrl) >= mb.ctrlCap {
		mb.closed = true
		mb.dropSharedLocked()
		mb.ctrl, mb.feeds = nil, nil
		return false
	}
	mb.ctrl = append(mb.ctrl, frame)
	return true
}

// overflow is called, without the lock, after pushCtrlLocked failed.
func (mb *mailbox) overflow() {
	mb.w.slowClose(mb)
	_ = mb.s.CloseWithMsg(melody.FormatCloseMessage(ws.ClosePolicyViolation, "too slow: control queue full"))
}

// closeAfterControl drops the pending positions, lets the queued control
// frames go out, then closes the session with code. It reports whether this
// call started the close.
func (mb *mailbox) closeAfterControl(code int, reason string) bool {
	mb.mu.Lock()
	if mb.closed || mb.closing != nil {
		mb.mu.Unlock()
		return false
	}
	mb.closing = melody.FormatCloseMessage(code, reason)
	mb.dropSharedLocked()
	for _, f := range mb.feeds {
		f.queued = false
	}
	mb.feeds = nil
	mb.unlockSchedule()
	return true
}

// close drops everything pending and closes the session with code at once.
// The close frame takes melody's reserved slot, so it is never lost.
func (mb *mailbox) close(code int, reason string) bool {
	mb.mu.Lock()
	if mb.closed {
		mb.mu.Unlock()
		return false
	}
	mb.closed, mb.closing = true, nil
	mb.dropSharedLocked()
	mb.ctrl, mb.feeds = nil, nil
	mb.mu.Unlock()
	_ = mb.s.CloseWithMsg(melody.FormatCloseMessage(code, reason))
	return true
}

// shut marks the mailbox closed after the session ended, so producers stop
// queueing to it.
func (mb *mailbox) shut() {
	mb.mu.Lock()
	mb.closed = true
	mb.dropSharedLocked()
	mb.ctrl, mb.feeds = nil, nil
	mb.mu.Unlock()
}

// sent returns the credit of a frame melody has written.
func (mb *mailbox) sent() {
	mb.mu.Lock()
	mb.inflight--
	mb.unlockSchedule()
}

// wantLocked reports whether a writer must be scheduled, and marks it so.
func (mb *mailbox) wantLocked() bool {
	if mb.scheduled || mb.closed || !mb.workLocked() {
		return false
	}
	mb.scheduled = true
	return true
}

// workLocked reports whether flush has something to do now.
func (mb *mailbox) workLocked() bool {
	if mb.closing != nil && len(mb.ctrl) == 0 {
		return true // the close needs no credit: it has its own slot
	}
	return mb.inflight < credits && (len(mb.ctrl) > 0 || len(mb.feeds) > 0)
}

// flush is run by one writer goroutine at a time: while credits last, it
// takes a control frame, or else one positions frame of the next feed, and
// hands it to melody. scratch is the writer's own item buffer.
func (mb *mailbox) flush(scratch [][]byte, maxItems, maxBytes int, m *metrics) [][]byte {
	for {
		mb.mu.Lock()
		if mb.closed || !mb.workLocked() {
			mb.scheduled = false
			mb.mu.Unlock()
			return scratch
		}
		if mb.closing != nil && len(mb.ctrl) == 0 {
			msg := mb.closing
			mb.closed, mb.closing, mb.scheduled = true, nil, false
			mb.mu.Unlock()
			_ = mb.s.CloseWithMsg(msg)
			return scratch
		}
		mb.inflight++
		if len(mb.ctrl) > 0 {
			frame := mb.ctrl[0]
			mb.ctrl[0] = nil
			mb.ctrl = mb.ctrl[1:]
			if len(mb.ctrl) == 0 {
				mb.ctrl = nil
			}
			mb.mu.Unlock()
			m.controlSent.Inc()
			m.framesSent.Inc()
			_ = mb.s.Write(frame)
			continue
		}
		f := mb.feeds[0]
		if len(f.shared) > 0 {
			b := f.shared[0]
			n := copy(f.shared, f.shared[1:])
			f.shared[n] = nil
			f.shared = f.shared[:n]
			mb.nextFeedLocked(n == 0)
			mb.mu.Unlock()
			frame := b.sharedFrame()
			b.t.sharedTaken()
			m.framesSent.Inc()
			m.framesShared.Inc()
			m.positionsSent.Add(float64(len(b.items)))
			_ = mb.s.Write(frame)
			continue
		}
		scratch = scratch[:0]
		size := len(f.head) + len(ws.PositionsTail)
		n := 0
		for _, idx := range f.dirty[f.head0:] {
			sl := &f.slots[idx]
			if n > 0 && (n >= maxItems || size+len(sl.data)+1 > maxBytes) {
				break
			}
			scratch = append(scratch, sl.data)
			size += len(sl.data) + 1
			sl.data, sl.pending = nil, false
			n++
		}
		if f.rated() {
			f.sentLocked(f.dirty[f.head0:f.head0+n], mb.clk.now())
		}
		f.head0 += n
		if f.taken != nil {
			select {
			case f.taken <- struct{}{}:
			default:
			}
		}
		done := f.head0 == len(f.dirty)
		if done {
			f.dirty, f.head0 = f.dirty[:0], 0
		} else if f.head0 > len(f.dirty)/2 {
			k := copy(f.dirty, f.dirty[f.head0:])
			f.dirty, f.head0 = f.dirty[:k], 0
		}
		mb.nextFeedLocked(done)
		mb.mu.Unlock()
		frame := appendFrame(getBuf(size), f.head, scratch)
		clear(scratch)
		m.framesSent.Inc()
		m.positionsSent.Add(float64(n))
		_ = mb.s.Write(frame)
	}
}

// nextFeedLocked moves on from mb.feeds[0] after a frame of it: it leaves
// the round robin when done (nothing pending), else goes behind the others.
func (mb *mailbox) nextFeedLocked(done bool) {
	f := mb.feeds[0]
	if done {
		f.queued = false
		mb.feeds = mb.feeds[1:]
	} else {
		mb.feeds = append(mb.feeds[1:], f)
	}
	if len(mb.feeds) == 0 {
		mb.feeds = nil
	}
}

// appendFrame appends a positions frame: head (the topic's, up to its
// first item), the items separated by commas, and the tail.
func appendFrame(b, head []byte, items [][]byte) []byte {
	b = append(b, head...)
	for i, it := range items {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, it...)
	}
	return append(b, ws.PositionsTail...)
}

// pending reports the positions and control frames waiting, for tests and
// the boundedness check.
func (mb *mailbox) pending() (positions, control int) {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	for _, f := range mb.feeds {
		positions += len(f.dirty) - f.head0
		for _, b := range f.shared {
			positions += len(b.items)
		}
	}
	return positions, len(mb.ctrl)
}

// held is the number of positions of f held back by its rate cap, for
// tests.
func (mb *mailbox) held(f *feed) int {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	if f.lim == nil {
		return 0
	}
	return len(f.lim.held)
}

// Frame buffers are recycled once melody has written them. Only buffers
// with a power-of-two capacity are: getBuf makes them so, and a shared
// frame, written by many sessions at once, never has one
// (batch.sharedFrame).
var bufPool sync.Pool

const maxPooledBuf = 256 << 10

func getBuf(size int) []byte {
	if p, ok := bufPool.Get().(*[]byte); ok && cap(*p) >= size {
		return (*p)[:0]
	}
	c := 256
	for c < size {
		c <<= 1
	}
	return make([]byte, 0, c)
}

func putBuf(b []byte) {
	if !poolable(cap(b)) {
		return
	}
	b = b[:0]
	bufPool.Put(&b)
}

// poolable reports whether putBuf recycles a buffer of capacity c.
func poolable(c int) bool {
	return c > 0 && c <= maxPooledBuf && c&(c-1) == 0
}

// writers is a pool of goroutines that build frames for mailboxes that have
// work and credits. A mailbox is queued at most once (mailbox.scheduled),
// so the queue is bounded by the number of sessions.
type writers struct {
	maxItems, maxBytes int
	m                  *metrics
	onSlow             func()

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []*mailbox
	head    int
	stopped bool
}

func newWriters(maxItems, maxBytes int, m *metrics) *writers {
	w := &writers{maxItems: maxItems, maxBytes: maxBytes, m: m}
	w.cond = sync.NewCond(&w.mu)
	return w
}

func (w *writers) schedule(mb *mailbox) {
	w.mu.Lock()
	w.queue = append(w.queue, mb)
	w.mu.Unlock()
	w.cond.Signal()
}

// scheduleAll queues several mailboxes (each marked scheduled by
// wantLocked) under one lock and wakes the writers.
func (w *writers) scheduleAll(mbs []*mailbox) {
	switch len(mbs) {
	case 0:
		return
	case 1:
		w.schedule(mbs[0])
		return
	}
	w.mu.Lock()
	w.queue = append(w.queue, mbs...)
	w.mu.Unlock()
	w.cond.Broadcast()
}

func (w *writers) slowClose(*mailbox) {
	w.m.slowCloses.Inc()
	w.m.closes.WithLabelValues("1008").Inc()
}

// run is one writer goroutine; it returns after stop.
func (w *writers) run() {
	var scratch [][]byte
	for {
		w.mu.Lock()
		for w.head == len(w.queue) && !w.stopped {
			w.cond.Wait()
		}
		if w.stopped {
			w.mu.Unlock()
			return
		}
		mb := w.queue[w.head]
		w.queue[w.head] = nil
		w.head++
		if w.head == len(w.queue) {
			w.queue, w.head = w.queue[:0], 0
		} else if w.head > 1024 && w.head > len(w.queue)/2 {
			k := copy(w.queue, w.queue[w.head:])
			clear(w.queue[k:])
			w.queue, w.head = w.queue[:k], 0
		}
		w.mu.Unlock()
		scratch = mb.flush(scratch, w.maxItems, w.maxBytes, w.m)
	}
}

func (w *writers) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	w.cond.Broadcast()
}
