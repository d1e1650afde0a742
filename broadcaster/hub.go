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

	"trm-live/contract"
)

// hub owns the topics of this instance: one core NATS subscription per
// event with at least one subscriber (pos.<event>.*), shared by all its
// feeds, created on the first subscriber and removed after the last.
type hub struct {
	nc   *nats.Conn
	snap *snapshotter
	m    *metrics
	log  *slog.Logger

	mu     sync.Mutex
	topics map[string]*topic // by event id
	closed bool
	fanout sync.WaitGroup // one fan-out goroutine per topic
}

// topic is one event's live fan-out.
type topic struct {
	h       *hub
	eventID string
	sub     *nats.Subscription
	feeds   atomic.Pointer[[]*feed] // copy-on-write under h.mu; read lock-free per message

	devMu   sync.Mutex
	devices map[string]int32 // device id → index into each feed's slots

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
}

func newHub(nc *nats.Conn, snap *snapshotter, m *metrics, log *slog.Logger) *hub {
	return &hub{nc: nc, snap: snap, m: m, log: log, topics: make(map[string]*topic)}
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
		t = &topic{h: h, eventID: eventID, devices: make(map[string]int32),
			kick: make(chan struct{}, 1), done: make(chan struct{})}
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
	}
	t.devMu.Unlock()
	return idx
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
	p, err := contract.DecodePosition(msg.Data)
	if err != nil || p.DeviceID != device || p.EventID != eventID {
		m.messagesInvalid.Inc()
		return
	}
	t.deliver(t.index(device), p.TSMillis(), p.Encode())
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

// fanout is the topic's fan-out goroutine: it takes every queued position
// as one batch and offers it to each feed under one mailbox lock. A client
// that keeps up gets a batch of one at once; under load batches grow, and
// the per-client cost is one lock per batch rather than per position.
func (t *topic) fanout() {
	var wake []*mailbox
	for {
		select {
		case <-t.done:
			return
		case <-t.kick:
		}
		t.pmu.Lock()
		batch := t.pending
		t.pending = t.spare[:0]
		for _, it := range batch {
			t.pendAt[it.idx] = 0
		}
		t.pmu.Unlock()
		var coalesced, stale int
		for _, f := range *t.feeds.Load() {
			c, s, sched := f.mb.putBatch(f, batch)
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
		if stale > 0 {
			t.h.m.positionsStale.Add(float64(stale))
		}
		clear(batch)
		t.spare = batch[:0]
	}
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

// resync re-reads every topic's snapshot and offers it to its feeds as
// ordinary positions (older ones are dropped per device). Run after a NATS
// reconnect: core NATS lost what was published during the outage.
func (h *hub) resync(ctx context.Context) {
	h.mu.Lock()
	topics := make([]*topic, 0, len(h.topics))
	for _, t := range h.topics {
		topics = append(topics, t)
	}
	h.mu.Unlock()
	for _, t := range topics {
		// JetStream may still be recovering right after a reconnect: retry
		// with backoff for about half a minute.
		wait := 250 * time.Millisecond
		for attempt := 1; ; attempt++ {
			items, err := t.snapshot(ctx)
			if err == nil {
				for _, it := range items {
					t.deliver(it.idx, it.ts, it.data)
				}
				break
			}
			if attempt == 8 || ctx.Err() != nil {
				h.log.Warn("resync after reconnect", "event_id", t.eventID, "err", err)
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			wait = min(2*wait, 5*time.Second)
		}
	}
	if len(topics) > 0 {
		h.log.Info("resynced topics after NATS reconnect", "topics", len(topics))
	}
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
