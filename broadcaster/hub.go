package broadcaster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"trm-live/contract"
	"trm-live/contract/ws"
)

// hub owns the topics of this instance: one core NATS subscription per
// event with at least one subscriber (pos.<event>.*), shared by all its
// feeds, created on the first subscriber and removed after the last.
type hub struct {
	nc   *nats.Conn
	snap *snapshotter
	m    *metrics
	log  *slog.Logger

	// A batch is sent as one shared frame only within the writers' frame
	// caps (Config.FrameMaxPositions, FrameMaxBytes).
	maxItems, maxBytes int
	frameRate          int // Config.TopicFrameRate; 0 = no pacing

	// resyncGen numbers NATS reconnects; a resync stops when a newer one
	// has started.
	resyncGen atomic.Uint64

	mu     sync.Mutex
	topics map[string]*topic // by event id
	closed bool
	fanout sync.WaitGroup // one fan-out goroutine per topic
}

// topic is one event's live fan-out.
type topic struct {
	h       *hub
	eventID string
	head    []byte // positions frame of the topic up to its first item
	sub     *nats.Subscription
	feeds   atomic.Pointer[[]*feed] // copy-on-write under h.mu; read lock-free per message

	devMu   sync.Mutex
	devices map[string]int32 // device id → index into each feed's slots
	names   []string         // by index: the device id

	// Positions received and not yet fanned out, latest per device: the
	// NATS callback adds, the fan-out goroutine takes the whole batch. When
	// fan-out falls behind, a device's older position is replaced here
	// (drop-oldest, as in the mailboxes), so memory stays bounded by the
	// device count and the fan-out always works on the freshest data.
	pmu     sync.Mutex
	pending []snapItem
	pendAt  []int32 // by device index: position in pending + 1; 0 = none
	spare   []snapItem
	kick    chan struct{} // cap 1
	done    chan struct{} // closed when the topic closes

	// The fan-out's order: every batch gets the next seq, and only
	// positions newer than the last one fanned out of their device pass
	// (last, by device index), so the batches are newer and newer per
	// device and a feed that has sent all of them may take the next one
	// as its shared frame without looking at each position.
	fanMu sync.Mutex
	seq   uint64
	last  []int64
	// lastItem is that last position itself, by device index (see
	// complete).
	lastItem []snapItem

	// Shared batches queued in feeds and not yet taken by a writer; the
	// fan-out waits for them before the next pass (see fanout).
	outstanding atomic.Int64
	drained     chan struct{} // cap 1: outstanding fell to the threshold
}

// feedCount is the number of feeds of t.
func (t *topic) feedCount() int64 { return int64(len(*t.feeds.Load())) }

// fanoutMaxWait bounds how long a fan-out pass waits for the writers to
// take the previous batch's shared frames.
const fanoutMaxWait = 50 * time.Millisecond

// minInterval is the pacing of t's fan-out passes: feeds / frameRate.
func (t *topic) minInterval() time.Duration {
	if t.h.frameRate <= 0 {
		return 0
	}
	return time.Duration(t.feedCount()) * time.Second / time.Duration(t.h.frameRate)
}

func newHub(nc *nats.Conn, snap *snapshotter, m *metrics, log *slog.Logger, cfg Config) *hub {
	return &hub{nc: nc, snap: snap, m: m, log: log, topics: make(map[string]*topic),
		maxItems: cfg.FrameMaxPositions, maxBytes: cfg.FrameMaxBytes, frameRate: cfg.TopicFrameRate}
}

// attach adds f to the topic of eventID, subscribing to NATS if f is the
// first feed. Live messages reach f from the moment attach returns.
func (h *hub) attach(eventID string, f *feed) (*topic, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errors.New("shutting down")
	}
	t := h.topics[eventID]
	if t == nil {
		t = &topic{h: h, eventID: eventID, head: ws.AppendPositionsHead(nil, ws.EventTopic(eventID)),
			devices: make(map[string]int32), kick: make(chan struct{}, 1), done: make(chan struct{}),
			drained: make(chan struct{}, 1)}
		empty := []*feed{}
		t.feeds.Store(&empty)
		sub, err := h.nc.Subscribe(contract.EventSubject(eventID), t.onMsg)
		if err != nil {
			return nil, fmt.Errorf("subscribe %s: %w", contract.EventSubject(eventID), err)
		}
		t.sub = sub
		h.topics[eventID] = t
		h.fanout.Go(t.fanout)
		h.m.topics.Set(float64(len(h.topics)))
		h.log.Debug("topic opened", "event_id", eventID)
	}
	f.t = t // before the feed is published to the fan-out
	old := *t.feeds.Load()
	feeds := make([]*feed, len(old), len(old)+1)
	copy(feeds, old)
	feeds = append(feeds, f)
	t.feeds.Store(&feeds)
	return t, nil
}

// detach removes f from t and drops the NATS subscription after the last
// feed.
func (h *hub) detach(t *topic, f *feed) {
	h.mu.Lock()
	defer h.mu.Unlock()
	old := *t.feeds.Load()
	feeds := make([]*feed, 0, len(old))
	for _, g := range old {
		if g != f {
			feeds = append(feeds, g)
		}
	}
	t.feeds.Store(&feeds)
	if len(feeds) > 0 || h.topics[t.eventID] != t {
		return
	}
	if err := t.sub.Unsubscribe(); err != nil {
		h.log.Debug("unsubscribe", "event_id", t.eventID, "err", err)
	}
	close(t.done)
	delete(h.topics, t.eventID)
	h.m.topics.Set(float64(len(h.topics)))
	h.log.Debug("topic closed", "event_id", t.eventID)
}

// topicCount is the number of open topics (NATS subscriptions).
func (h *hub) topicCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.topics)
}

// index returns the index of a device in t, adding it if new.
func (t *topic) index(device string) int32 {
	t.devMu.Lock()
	idx, ok := t.devices[device]
	if !ok {
		idx = int32(len(t.devices))
		t.devices[device] = idx
		t.names = append(t.names, device)
	}
	t.devMu.Unlock()
	return idx
}

// name returns the device id of index idx of t.
func (t *topic) name(idx int32) string {
	t.devMu.Lock()
	defer t.devMu.Unlock()
	return t.names[idx]
}

// onMsg queues one position for fan-out. It runs on the subscription's
// goroutine, one message at a time. The position is decoded and encoded
// once; its bytes are shared by every client.
func (t *topic) onMsg(msg *nats.Msg) {
	m := t.h.m
	m.messagesReceived.Inc()
	eventID, device, ok := contract.ParseSubject(msg.Subject)
	if !ok || eventID != t.eventID {
		m.messagesInvalid.Inc()
		return
	}
	ts, item, ok := payload(msg.Data, eventID, device)
	if !ok {
		m.messagesInvalid.Inc()
		return
	}
	t.deliver(t.index(device), ts, item)
}

// deliver queues a position for the fan-out goroutine, keeping only the
// newest per device.
func (t *topic) deliver(idx int32, ts int64, data []byte) {
	t.pmu.Lock()
	if int(idx) >= len(t.pendAt) {
		t.pendAt = append(t.pendAt, make([]int32, int(idx)+1-len(t.pendAt))...)
	}
	coalesced := false
	if at := t.pendAt[idx]; at > 0 {
		if p := &t.pending[at-1]; ts > p.ts {
			p.ts, p.data = ts, data
		}
		coalesced = true
	} else {
		t.pending = append(t.pending, snapItem{idx: idx, ts: ts, data: data})
		t.pendAt[idx] = int32(len(t.pending))
	}
	t.pmu.Unlock()
	if coalesced {
		t.h.m.fanoutCoalesced.Inc()
		return
	}
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// fanout is the topic's fan-out goroutine. Each pass takes every queued
// position as one batch (newest per device), drops those not newer than
// what the topic already fanned out, and offers the rest to every feed: a
// feed that has sent everything before queues the batch itself, whose
// frame is built once and written to all such clients (a shared frame); a
// feed still sending merges it into its per-device slots under one lock
// (mailbox.offer). A client that keeps up therefore gets a batch of one at
// once; under load batches grow.
//
// Passes are paced twice; meanwhile positions wait at the topic, newest
// per device, instead of in every client's slots:
//   - with Config.TopicFrameRate set (off by default), a pass follows the
//     previous one by at least feeds / TopicFrameRate (25 ms for 1,000
//     clients at 40,000): under load a topic sends fewer, larger frames,
//     which costs the server and every client less per position, at the
//     price of that delay; a lone position after a quiet spell goes at
//     once;
//   - while more than 1/16 of the feeds still hold the previous batch's
//     shared frame, the next pass waits for the writers (at most
//     fanoutMaxWait after the previous pass), so most clients stay on the
//     shared frame instead of falling back to per-client frames.
func (t *topic) fanout() {
	var (
		wake     []*mailbox
		lastPass time.Time
		timer    = time.NewTimer(time.Hour)
	)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-t.done:
			return
		case <-t.kick:
		}
		if d := time.Until(lastPass.Add(t.minInterval())); d > 0 {
			timer.Reset(d)
			select {
			case <-t.done:
				return
			case <-timer.C:
			}
		}
		if !t.drainedEnough() {
			timer.Reset(time.Until(lastPass.Add(fanoutMaxWait)))
		wait:
			for !t.drainedEnough() {
				select {
				case <-t.done:
					return
				case <-t.drained:
				case <-timer.C:
					break wait
				}
			}
			timer.Stop()
		}
		lastPass = time.Now()
		select { // a signal from before this pass
		case <-t.drained:
		default:
		}

		t.pmu.Lock()
		batch := t.pending
		t.pending = t.spare[:0]
		for _, it := range batch {
			t.pendAt[it.idx] = 0
		}
		t.pmu.Unlock()

		t.fanMu.Lock()
		fresh, stale := batch[:0], 0
		for _, it := range batch {
			if n := int(it.idx) + 1; len(t.last) < n {
				t.last = append(t.last, make([]int64, n-len(t.last))...)
				t.lastItem = append(t.lastItem, make([]snapItem, n-len(t.lastItem))...)
			}
			if it.ts <= t.last[it.idx] {
				stale++
				continue
			}
			t.last[it.idx] = it.ts
			t.lastItem[it.idx] = it
			fresh = append(fresh, it)
		}
		t.seq++
		seq := t.seq
		t.fanMu.Unlock()

		if len(fresh) > 0 {
			bs := t.batches(seq, fresh)
			var coalesced int
			for _, f := range *t.feeds.Load() {
				c, s, sched := f.mb.offer(f, bs)
				coalesced += c
				stale += s
				if sched {
					wake = append(wake, f.mb)
				}
			}
			if len(wake) > 0 {
				wake[0].w.scheduleAll(wake)
				clear(wake)
				wake = wake[:0]
			}
			if coalesced > 0 {
				t.h.m.positionsCoalesced.Add(float64(coalesced))
			}
		}
		if stale > 0 {
			t.h.m.positionsStale.Add(float64(stale))
		}
		clear(batch)
		t.spare = batch[:0]
	}
}

// drainedEnough reports whether at most 1/16 of the feeds still hold a
// shared frame not taken by a writer.
func (t *topic) drainedEnough() bool {
	return t.outstanding.Load()*16 <= t.feedCount()
}

// sharedTaken is called once for every shared batch a feed queued, when
// a writer takes it or the feed merges or drops it.
func (t *topic) sharedTaken() {
	if n := t.outstanding.Add(-1); n*16 <= t.feedCount() {
		select {
		case t.drained <- struct{}{}:
		default:
		}
	}
}

// complete returns snap with, for every device whose last fanned-out
// position is newer than the snapshot's (or that the snapshot lacks), that
// position. Core NATS can route a position to the topic before the stream
// has stored it: fanned out before a new feed attached and missing from the
// snapshot read just after, it would otherwise reach that feed in neither.
func (t *topic) complete(snap []snapItem) []snapItem {
	t.fanMu.Lock()
	defer t.fanMu.Unlock()
	have := make(map[int32]int64, len(snap))
	for _, it := range snap {
		have[it.idx] = max(have[it.idx], it.ts)
	}
	for idx, it := range t.lastItem {
		if it.data == nil {
			continue
		}
		if ts, ok := have[int32(idx)]; !ok || it.ts > ts {
			snap = append(snap, it)
		}
	}
	return snap
}

// sharedFrom returns the first batch a feed activated now may take as a
// shared frame, and offers to the topic the snapshot positions newer than
// what it fanned out. Those are fanned out in the pass after next at the
// latest (a pass may already hold its batch and wait for fanMu), to every
// feed; the new feed merges that pass and the one before it per device,
// against its snapshot. Every later batch is newer, per device, than the
// feed's snapshot, so the feed may take it whole.
func (t *topic) sharedFrom(snap []snapItem) uint64 {
	t.fanMu.Lock()
	defer t.fanMu.Unlock()
	for _, it := range snap {
		if int(it.idx) >= len(t.last) || it.ts > t.last[it.idx] {
			t.deliver(it.idx, it.ts, it.data)
		}
	}
	return t.seq + 3
}

// batch is one frame's worth of a fan-out pass's positions (a pass over
// the frame caps is cut into several), newest per device and each newer
// than its device's position in every earlier pass of the topic.
type batch struct {
	t     *topic
	seq   uint64 // of the pass
	items []snapItem
	size  int // of its frame

	once  sync.Once
	frame []byte
}

// batches cuts the positions of pass seq into batches within the frame
// caps (Config.FrameMaxPositions, FrameMaxBytes); a position alone over
// the byte cap is a batch of its own.
func (t *topic) batches(seq uint64, items []snapItem) []*batch {
	items = append([]snapItem(nil), items...)
	var bs []*batch
	fixed := len(t.head) + len(ws.PositionsTail)
	for len(items) > 0 {
		n, size := 0, fixed
		for n < len(items) && n < t.h.maxItems {
			add := len(items[n].data)
			if n > 0 {
				add++ // comma
			}
			if n > 0 && size+add > t.h.maxBytes {
				break
			}
			size += add
			n++
		}
		bs = append(bs, &batch{t: t, seq: seq, items: items[:n:n], size: size})
		items = items[n:]
	}
	return bs
}

// sharedFrame returns the batch's positions frame, built by the first
// writer that needs it. Its capacity is never a power of two, so putBuf
// never recycles it while other sessions still write it.
func (b *batch) sharedFrame() []byte {
	b.once.Do(func() {
		c := b.size
		if c&(c-1) == 0 {
			c++
		}
		items := make([][]byte, len(b.items))
		for i, it := range b.items {
			items[i] = it.data
		}
		b.frame = appendFrame(make([]byte, 0, c), b.t.head, items)
	})
	return b.frame
}

// snapshot reads the latest position of every device of t from JetStream,
// with device indexes of t.
func (t *topic) snapshot(ctx context.Context) ([]snapItem, error) {
	positions, err := t.h.snap.latest(ctx, t.eventID)
	if err != nil {
		return nil, err
	}
	items := make([]snapItem, len(positions))
	for i, p := range positions {
		items[i] = snapItem{idx: t.index(p.device), ts: p.ts, data: p.data}
	}
	return items, nil
}

// resync brings every topic's feeds up to date after NATS reconnect number
// gen. Core NATS lost what was published during the outage, and what was
// stored between the server's return and the resent subscriptions being
// live reached no one either. So each topic's snapshot is read until
// JetStream answers (retrying every second at most, as long as the
// connection does not reconnect again, when a newer resync takes over),
// then, once a flush round trip has confirmed that the server has the
// subscriptions, read once more. The positions are offered to the feeds as
// ordinary ones: older ones are dropped per device.
func (h *hub) resync(ctx context.Context, gen uint64) {
	current := func() bool { return ctx.Err() == nil && h.resyncGen.Load() == gen }
	h.mu.Lock()
	topics := make([]*topic, 0, len(h.topics))
	for _, t := range h.topics {
		topics = append(topics, t)
	}
	h.mu.Unlock()
	if len(topics) == 0 {
		return
	}
	wait := func(d *time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(*d):
		}
		*d = min(2**d, time.Second)
		return current()
	}
	for pass := 1; pass <= 2; pass++ {
		if pass == 2 {
			// The subscriptions were resent before the reconnect handler
			// ran; a round trip confirms the server has processed them.
			backoff := 250 * time.Millisecond
			for {
				fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := h.nc.FlushWithContext(fctx)
				cancel()
				if err == nil {
					break
				}
				if !wait(&backoff) {
					return
				}
			}
		}
		pending := topics
		backoff, warned := 250*time.Millisecond, false
		for {
			var failed []*topic
			var mu sync.Mutex
			var g errgroup.Group
			g.SetLimit(8)
			for _, t := range pending {
				select {
				case <-t.done:
					continue // closed meanwhile
				default:
				}
				g.Go(func() error {
					items, err := t.snapshot(ctx)
					if err != nil {
						h.m.resyncSnapshots.WithLabelValues("unavailable").Inc()
						mu.Lock()
						failed = append(failed, t)
						mu.Unlock()
						return err
					}
					h.m.resyncSnapshots.WithLabelValues("ok").Inc()
					for _, it := range items {
						t.deliver(it.idx, it.ts, it.data)
					}
					return nil
				})
			}
			if err := g.Wait(); err == nil {
				break
			} else if !warned && current() {
				h.log.Warn("resync after reconnect: snapshot unavailable; retrying", "topics", len(failed), "err", err)
				warned = true
			}
			pending = failed
			if !wait(&backoff) {
				return
			}
		}
	}
	h.log.Info("resynced topics after NATS reconnect", "topics", len(topics))
}

// close drops every NATS subscription.
func (h *hub) close() {
	h.mu.Lock()
	h.closed = true
	for id, t := range h.topics {
		_ = t.sub.Unsubscribe()
		close(t.done)
		delete(h.topics, id)
	}
	h.m.topics.Set(0)
	h.mu.Unlock()
	h.fanout.Wait() // the fan-out goroutines have returned
}
