package broadcaster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract"
	"trm-live/contract/auth"
	"trm-live/contract/ws"
)

// Replays (docs/replay.md): a client watches again what an event left in
// the POSITIONS stream, through the same WebSocket, authorization and
// mailbox as live. Each replay is private to its client: its own consumer
// (replay_source.go), its own feed in the client's mailbox (positions
// frames marked "replay":true), and one goroutine, run, that owns the
// replay's clock, paces the positions and applies the controls.
//
// Ownership: the session's read goroutine creates a replay and sends it
// controls on ctl; run owns everything else (source, clock, device
// indexes) and is the only producer of the replay's feed.

// replayTick is the resolution of a replay's schedule: positions due
// within one tick are delivered together at its end. At 60× it is 0.3 s of
// race time; it bounds the pacing error it adds and divides the frames
// (and their CPU) by the positions per tick.
const replayTick = 5 * time.Millisecond

// replayKey is the key of a client's replay of topic in client.subs, apart
// from its live subscription of the same topic.
func replayKey(topic string) string { return "replay|" + topic }

// replay is one running replay.
type replay struct {
	srv     *server
	c       *client
	topic   string
	eventID string
	id      string // of the subscribe, echoed by replay_end
	opts    ws.ReplayOptions
	// lastSeq is the stream's last sequence when the replay started: a
	// replay with an end reads no further (streams.Reader.LastSeq).
	lastSeq uint64
	feed    *feed
	// want is the devices option: the only devices replayed; nil = all.
	// The feed caps the rate (max_hz), the replay filters by device id.
	want map[string]struct{}
	// subOpts are the subscribe's options, kept for the live feed a rewind
	// turns into and for a rewind restarted by a seek.
	subOpts ws.SubscribeOptions

	ctl    chan ws.Request
	ctx    context.Context
	cancel context.CancelFunc
	// endFrame, set before cancel, is queued when run ends (unsubscribed).
	endMu    sync.Mutex
	endFrame []byte

	// live: a rewind (no to), which turns into the live subscription of
	// its topic when it reaches the present (replay_live.go). seekReq,
	// set on a rewind restarted by a seek after its switch, is that seek:
	// the replay starts at its time and answers it instead of subscribed.
	live    bool
	seekReq *ws.Request

	// Owned by run.
	ho      *handover         // the live feed, attached near the present
	sent    map[string]srcPos // rewinds: last position handed on per device
	src     *source
	srcDone bool                  // src delivered everything
	head    *srcPos               // next position to deliver
	parked  map[int32][]parkedPos // by device index, oldest first
	parkedN int
	devices map[string]int32
	state   string
	speed   ws.Speed
	at      time.Time // replay clock at wall (or when paused / at max: now)
	wall    time.Time
}

// replayMetrics of the broadcaster's replays, registered with the others.
type replayMetrics struct {
	active      prometheus.Gauge
	consumers   prometheus.Gauge
	started     *prometheus.CounterVec // by result
	ended       *prometheus.CounterVec // by reason
	positions   prometheus.Counter
	pacingError prometheus.Histogram
	tooLate     prometheus.Counter
}

func newReplayMetrics(reg prometheus.Registerer) (*replayMetrics, error) {
	const ns = "broadcaster"
	m := &replayMetrics{
		active: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "replays",
			Help: "Replays running on this instance."}),
		consumers: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "replay_consumers",
			Help: "JetStream consumers held by replays of this instance."}),
		started: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "replay_requests_total",
			Help: "Replay subscribes by result: ok or an error code."}, []string{"result"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "replays_ended_total",
			Help: "Replays ended, by reason: end, live, unsubscribe, disconnect, revoked, error."}, []string{"reason"}),
		positions: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "replay_positions_total",
			Help: "Positions handed to clients' mailboxes by replays (snapshots excluded)."}),
		pacingError: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "replay_pacing_error_seconds",
			Help:    "Lateness of a replayed position handed to the mailbox against its schedule (finite speeds).",
			Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .25, 1}}),
		tooLate: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "replay_too_late_total",
			Help: "Positions a replay skipped: stored more than the lateness after a newer position of their device."}),
	}
	for _, c := range []prometheus.Collector{m.active, m.consumers, m.started, m.ended, m.positions, m.pacingError, m.tooLate} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// replayLimits counts running replays per user and per instance.
type replayLimits struct {
	mu      sync.Mutex
	perUser map[string]int
	total   int
}

// acquire takes a slot, or says which limit is reached.
func (l *replayLimits) acquire(user string, cfg ReplayConfig) (ws.Code, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perUser == nil {
		l.perUser = make(map[string]int)
	}
	switch {
	case l.perUser[user] >= cfg.MaxPerUser:
		return ws.CodeTooManySubscriptions, fmt.Sprintf("at most %d concurrent replays per user", cfg.MaxPerUser)
	case l.total >= cfg.MaxPerInstance:
		return ws.CodeUnavailable, "this server runs its maximum of replays; try again later"
	}
	l.perUser[user]++
	l.total++
	return "", ""
}

func (l *replayLimits) release(user string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perUser[user]--; l.perUser[user] <= 0 {
		delete(l.perUser, user)
	}
	l.total--
}

// subscribeReplay starts a replay of req.Topic for c. It runs on the
// session's read goroutine; the snapshot is read by the replay's own
// goroutine, which sends the subscribed frame.
func (c *client) subscribeReplay(req ws.Request) {
	srv := c.srv
	eventID, _ := ws.ParseTopic(req.Topic)
	key := replayKey(req.Topic)
	fail := func(code ws.Code, msg string) {
		srv.replayMetrics.started.WithLabelValues(string(code)).Inc()
		srv.m.requests.WithLabelValues("replay", string(code)).Inc()
		c.sendError(ws.Error{Code: code, Topic: req.Topic, ID: req.ID, Message: msg, Replay: true})
	}
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return
	case c.subs[key] != nil:
		c.mu.Unlock()
		fail(ws.CodeBadRequest, "a replay of this topic is already running on this connection")
		return
	case req.ReplayOptions.To.IsZero() && c.subs[req.Topic] != nil:
		c.mu.Unlock()
		fail(ws.CodeBadRequest, "already subscribed live to this topic: a rewind turns live by itself; unsubscribe first, or give replay.to")
		return
	case len(c.subs) >= srv.cfg.MaxSubscriptions:
		c.mu.Unlock()
		fail(ws.CodeTooManySubscriptions, fmt.Sprintf("at most %d subscriptions per connection", srv.cfg.MaxSubscriptions))
		return
	}
	sub := &subscription{topic: req.Topic, eventID: eventID}
	if req.ReplayOptions.To.IsZero() {
		sub.rewind = &rewindOf{id: req.ID}
	}
	c.subs[key] = sub // reserve
	c.mu.Unlock()
	drop := func() {
		c.mu.Lock()
		if c.subs[key] == sub {
			delete(c.subs, key)
		}
		c.mu.Unlock()
	}
	if code, msg := srv.replays.acquire(c.user.ID, srv.cfg.Replay); code != "" {
		drop()
		fail(code, msg)
		return
	}
	release := func() { srv.replays.release(c.user.ID) }

	ctx, cancel := context.WithTimeout(c.s.Request.Context(), srv.cfg.AuthTimeout+srv.cfg.SnapshotTimeout)
	defer cancel()
	decision, err := srv.auth.authorize(ctx, c.identity(), eventID)
	switch {
	case errors.Is(err, auth.ErrBadRequest):
		drop()
		release()
		fail(ws.CodeBadRequest, "authorization refused the request")
		return
	case err != nil:
		drop()
		release()
		srv.log.Warn("authorize replay", "user_id", c.user.ID, "event_id", eventID, "err", err)
		fail(ws.CodeUnavailable, "authorization service unavailable; try again")
		return
	case decision == auth.Forbidden:
		drop()
		release()
		fail(ws.CodeForbidden, "not a member of the event's organization")
		return
	case decision == auth.NotFound:
		drop()
		release()
		fail(ws.CodeNotFound, "no such event")
		return
	}

	o := req.ReplayOptions
	first, last, lastSeq, ok, err := srv.retained(ctx, eventID)
	switch {
	case err != nil:
		drop()
		release()
		srv.log.Warn("replay retained range", "event_id", eventID, "err", err)
		fail(ws.CodeUnavailable, "position stream unavailable; try again")
		return
	case !ok:
		drop()
		release()
		fail(ws.CodeNotFound, "no positions of this event are retained")
		return
	case o.From.After(last):
		drop()
		release()
		fail(ws.CodeBadRequest, fmt.Sprintf("replay.from %s is after the event's last retained position (%s)",
			o.From.Format(contract.TimeLayout), last.UTC().Format(contract.TimeLayout)))
		return
	case !o.To.IsZero() && o.To.Before(first):
		drop()
		release()
		fail(ws.CodeBadRequest, fmt.Sprintf("replay.to %s is before the event's first retained position (%s)",
			o.To.Format(contract.TimeLayout), first.UTC().Format(contract.TimeLayout)))
		return
	}

	c.startReplay(sub, o, req.Options, req.ID, lastSeq, release, nil)
}

// startReplay starts the replay reserved as sub (under replayKey) with
// options o and subscription options so; id is its subscribe's, release
// frees its limit slot. seek,
// when set, is the seek that restarts a rewind after its switch to live.
func (c *client) startReplay(sub *subscription, o ws.ReplayOptions, so ws.SubscribeOptions, id string, lastSeq uint64, release func(), seek *ws.Request) {
	srv := c.srv
	r := &replay{srv: srv, c: c, topic: sub.topic, eventID: sub.eventID, id: id, opts: o,
		lastSeq: lastSeq,
		ctl:     make(chan ws.Request, 16),
		devices: make(map[string]int32),
		speed:   o.Speed,
		live:    o.To.IsZero(),
		seekReq: seek,
	}
	if r.live {
		r.sent = make(map[string]srcPos)
	}
	r.feed = newFeed(c.mb, sub.topic)
	r.feed.head = ws.AppendReplayPositionsHead(nil, sub.topic)
	r.feed.taken = make(chan struct{}, 1)
	r.feed.lim = newLimits(ws.SubscribeOptions{MaxHz: so.MaxHz})
	r.want = so.DeviceSet()
	r.subOpts = so
	r.ctx, r.cancel = context.WithCancel(srv.base)
	key := replayKey(sub.topic)
	c.mu.Lock()
	if c.closed || c.subs[key] != sub {
		c.mu.Unlock()
		r.cancel()
		release()
		return
	}
	sub.rp = r
	c.mu.Unlock()
	srv.replayMetrics.active.Inc()
	srv.bg.Go(func() {
		defer release()
		defer srv.replayMetrics.active.Dec()
		r.run()
	})
}

// unsubscribeReplay ends c's replay of req.Topic with an unsubscribed frame.
func (c *client) unsubscribeReplay(req ws.Request) {
	r := c.takeReplay(req.Topic)
	if r == nil {
		c.srv.m.requests.WithLabelValues(req.Type, string(ws.CodeBadRequest)).Inc()
		c.sendError(ws.Error{Code: ws.CodeBadRequest, Topic: req.Topic, ID: req.ID, Replay: true, Message: "no replay of this topic"})
		return
	}
	r.stop(ws.AppendReplayUnsubscribed(getBuf(128), req.Topic, req.ID), "unsubscribe")
	c.srv.m.requests.WithLabelValues(req.Type, "ok").Inc()
}

// controlReplay hands a control to c's replay of req.Topic.
func (c *client) controlReplay(req ws.Request) {
	c.mu.Lock()
	var r *replay
	if sub := c.subs[replayKey(req.Topic)]; sub != nil {
		r = sub.rp
	}
	c.mu.Unlock()
	if r == nil {
		if req.Control.Action == ws.ActionSeek && c.rewindAgain(req) {
			return
		}
		c.srv.m.requests.WithLabelValues(req.Type, string(ws.CodeBadRequest)).Inc()
		c.sendError(ws.Error{Code: ws.CodeBadRequest, Topic: req.Topic, ID: req.ID, Replay: true, Message: "no replay of this topic"})
		return
	}
	select {
	case r.ctl <- req:
	default:
		c.sendError(ws.Error{Code: ws.CodeBadRequest, Topic: req.Topic, ID: req.ID, Replay: true, Message: "too many replay controls pending"})
	}
}

// takeReplay removes and returns c's replay of topic, if any.
func (c *client) takeReplay(topic string) *replay {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := replayKey(topic)
	sub := c.subs[key]
	if sub == nil || sub.rp == nil {
		return nil
	}
	delete(c.subs, key)
	return sub.rp
}

// stop ends the replay; frame (may be nil) is its last frame.
func (r *replay) stop(frame []byte, reason string) {
	r.endMu.Lock()
	if r.endFrame == nil && frame != nil {
		r.endFrame = frame
	}
	r.endMu.Unlock()
	r.srv.replayMetrics.ended.WithLabelValues(reason).Inc()
	r.cancel()
}

// run is the replay's goroutine: snapshot, pacing, controls, end.
func (r *replay) run() {
	srv := r.srv
	defer func() {
		if r.src != nil {
			r.src.close(srv)
		}
		r.dropHandover()
		r.endMu.Lock()
		frame := r.endFrame
		r.endMu.Unlock()
		r.c.mb.end(r.feed, frame)
	}()
	start := r.opts.From
	if r.seekReq != nil {
		start = r.seekReq.Control.To
	}
	src, snap, err := r.openSource(r.ctx, start)
	if err != nil {
		r.failed(err)
		return
	}
	r.src = src
	r.state, r.at, r.wall = ws.StatePlaying, start, time.Now()
	if _, ok := r.c.mb.activateWith(r.feed, r.snapItems(snap), false, func(b []byte, items [][]byte) []byte {
		if r.seekReq != nil {
			return ws.AppendReplayState(b, r.topic, r.seekReq.ID, ws.ActionSeek, r.status(), true, items)
		}
		return ws.AppendReplaySubscribed(b, r.topic, r.id, r.status(), items)
	}); !ok {
		return
	}
	srv.replayMetrics.started.WithLabelValues("ok").Inc()
	srv.m.requests.WithLabelValues("replay", "ok").Inc()
	srv.log.Debug("replay started", "user_id", r.c.user.ID, "event_id", r.eventID, "speed", r.speed.String())

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		if r.live && r.head == nil && !r.srcDone && r.tryLive() {
			return
		}
		if r.head == nil && !r.srcDone {
			select {
			case p, ok := <-r.src.ch:
				if !ok {
					if r.src.err != nil {
						r.failed(r.src.err)
						return
					}
					r.srcDone = true
					continue
				}
				if p.device == "" {
					continue // the snapshot's end mark, after a rewind's snapshot ended caught up
				}
				if !r.wants(p.device) {
					continue
				}
				r.head = &p
			case req := <-r.ctl:
				if !r.control(req) {
					return
				}
				continue
			case <-r.feed.taken:
				if !r.unpark() {
					return
				}
				continue
			case <-r.src.idleCh:
				continue // a rewind may switch to live now (tryLive)
			case <-r.ctx.Done():
				return
			}
		}
		if r.head == nil {
			// The source ended. Control frames overtake positions, so
			// replay_end waits until the client took every position.
			if len(r.parked) == 0 && r.c.mb.feedPending(r.feed) == 0 {
				r.end()
				return
			}
			timer.Reset(r.srv.cfg.Replay.MaxLag)
			select {
			case <-r.feed.taken:
			case <-timer.C:
			case req := <-r.ctl:
				if !r.control(req) {
					return
				}
			case <-r.ctx.Done():
				return
			}
			timer.Stop()
			if !r.unpark() {
				return
			}
			continue
		}
		if r.state == ws.StatePaused {
			// Positions parked before the pause were due before it: they
			// still go as the client takes the previous ones.
			select {
			case req := <-r.ctl:
				if !r.control(req) {
					return
				}
			case <-r.feed.taken:
				if !r.unpark() {
					return
				}
			case <-r.ctx.Done():
				return
			}
			continue
		}
		if r.speed.IsMax() {
			if !r.deliverMax() {
				return
			}
			continue
		}
		due := r.due(r.head.ts)
		// Under a millisecond ahead: deliver now rather than arm a timer
		// for it (the schedule's own resolution is the ms). Otherwise wake
		// at the next tick of the schedule, so that the positions due
		// within one tick reach the mailbox together and leave in one frame
		// rather than one frame each.
		if d := time.Until(due); d > time.Millisecond {
			since := due.Sub(r.wall)
			wake := r.wall.Add((since + replayTick - 1) / replayTick * replayTick)
			timer.Reset(time.Until(wake))
			select {
			case <-timer.C:
			case req := <-r.ctl:
				timer.Stop()
				if !r.control(req) {
					return
				}
				continue
			case <-r.feed.taken:
				timer.Stop()
				if !r.unpark() {
					return
				}
				continue
			case <-r.ctx.Done():
				return
			}
		}
		if !r.deliver(due) {
			return
		}
	}
}

// end sends replay_end, unless the replay was unsubscribed meanwhile.
func (r *replay) end() {
	if r.c.takeReplay(r.topic) == nil {
		return
	}
	r.stop(ws.AppendReplayEnd(getBuf(128), r.topic, r.id), "end")
}

// due is when a position with fix time ts (Unix ms) is due.
func (r *replay) due(ts int64) time.Time {
	return r.wall.Add(time.Duration(float64(time.UnixMilli(ts).Sub(r.at)) / float64(r.speed)))
}

// clock is the replay clock now.
func (r *replay) clock() time.Time {
	if r.state != ws.StatePlaying || r.speed.IsMax() {
		return r.at
	}
	return r.at.Add(time.Duration(float64(time.Since(r.wall)) * float64(r.speed)))
}

func (r *replay) status() ws.ReplayStatus {
	st := ws.ReplayStatus{From: r.opts.From, To: r.opts.To, Speed: r.speed, State: r.state, At: r.clock()}
	if r.state == ws.StatePlaying && !r.speed.IsMax() {
		st.At, st.Wall = r.at, r.wall
	}
	return st
}

// parkedPos is a position waiting for its device's previous one to be
// taken by the client's writer.
type parkedPos struct {
	srcPos
	due   time.Time
	since time.Time // when it was parked
}

// maxParked bounds the positions parked by one replay (about 2 MB);
// past it a device's oldest parked position is dropped, or its pending
// one replaced, as the mailbox drops the oldest. MaxLag usually drops
// first: it bounds a device's parked positions to about speed × fix rate
// × MaxLag.
const maxParked = 8192

func (r *replay) index(device string) int32 {
	idx, ok := r.devices[device]
	if !ok {
		idx = int32(len(r.devices))
		r.devices[device] = idx
	}
	return idx
}

// deliver hands r.head, due at due, to the feed. The mailbox holds one
// pending position per device; when the device's previous position is
// still pending (a client reading slower than the schedule, for a moment
// or for good), the new one is parked rather than replacing it, and the
// replay goes on with the other devices. Parked positions go to the
// mailbox, in order, as the writer takes the previous ones (unpark); one
// parked longer than MaxLag replaces the pending one instead (drop-oldest,
// as live). It returns false when the replay must end.
func (r *replay) deliver(due time.Time) bool {
	p := r.head
	r.head = nil
	idx := r.index(p.device)
	if len(r.parked) > 0 {
		if !r.unpark() {
			return false
		}
		if q := r.parked[idx]; len(q) > 0 {
			r.park(idx, p, due)
			return true
		}
	}
	switch r.c.mb.putReplay(r.feed, idx, p.ts, p.data, false) {
	case putClosed:
		return false
	case putBusy:
		r.park(idx, p, due)
	case putStale: // older than what the client has
	default:
		r.delivered(p, due)
	}
	return true
}

func (r *replay) park(idx int32, p *srcPos, due time.Time) {
	if r.parked == nil {
		r.parked = make(map[int32][]parkedPos)
	}
	q := r.parked[idx]
	if r.parkedN >= maxParked {
		r.srv.m.positionsCoalesced.Inc()
		if len(q) == 0 {
			// Nothing of the device parked: replace its pending position.
			if r.c.mb.putReplay(r.feed, idx, p.ts, p.data, true) != putClosed {
				r.delivered(p, due)
			}
			return
		}
		q = q[1:]
		r.parkedN--
	}
	r.parked[idx] = append(q, parkedPos{srcPos: *p, due: due, since: time.Now()})
	r.parkedN++
}

// unpark moves parked positions into the mailbox where their device's slot
// is free, and forces those parked longer than MaxLag (replacing the
// pending one). It returns false when the feed is closed.
func (r *replay) unpark() bool {
	maxLag := r.srv.cfg.Replay.MaxLag
	for idx, q := range r.parked {
		for len(q) > 0 {
			pp := q[0]
			force := time.Since(pp.since) > maxLag
			res := r.c.mb.putReplay(r.feed, idx, pp.ts, pp.data, force)
			if res == putClosed {
				return false
			}
			if res == putBusy {
				break
			}
			switch res {
			case putCoalesced:
				r.srv.m.positionsCoalesced.Inc()
				r.delivered(&pp.srcPos, pp.due)
			case putQueued:
				r.delivered(&pp.srcPos, pp.due)
			}
			q = q[1:]
			r.parkedN--
		}
		if len(q) == 0 {
			delete(r.parked, idx)
		} else {
			r.parked[idx] = q
		}
	}
	return true
}

// delivered records a position handed to the mailbox.
func (r *replay) delivered(p *srcPos, due time.Time) {
	ts := p.ts
	if r.sent != nil {
		r.sent[p.device] = *p
	}
	// Positions before the replay clock's anchor arrived late in the
	// stream: not a pacing miss.
	if !due.IsZero() && ts >= r.at.UnixMilli() {
		r.srv.replayMetrics.pacingError.Observe(max(0, time.Since(due).Seconds()))
	}
	r.srv.replayMetrics.positions.Inc()
}

// deliverMax hands r.head to the feed at "max": when the device's previous
// position is still pending it waits for the client's writer, so the
// client's reading rate is the speed and nothing is dropped.
func (r *replay) deliverMax() bool {
	p := r.head
	idx := r.index(p.device)
	for {
		switch r.c.mb.putReplay(r.feed, idx, p.ts, p.data, false) {
		case putClosed:
			return false
		case putBusy:
			select {
			case <-r.feed.taken:
				continue
			case req := <-r.ctl:
				// A control may drop or reschedule the head (seek, pause).
				return r.control(req)
			case <-r.ctx.Done():
				return false
			}
		}
		break
	}
	r.at = time.UnixMilli(p.ts).UTC()
	r.delivered(p, time.Time{})
	r.head = nil
	return true
}

// control applies one control message; false means the replay must end.
func (r *replay) control(req ws.Request) bool {
	c := req.Control
	switch c.Action {
	case ws.ActionPause:
		if r.state == ws.StatePlaying {
			r.at, r.state = r.clock(), ws.StatePaused
		}
	case ws.ActionResume:
		if r.state == ws.StatePaused {
			r.state, r.wall = ws.StatePlaying, time.Now()
		}
	case ws.ActionSpeed:
		r.at, r.wall, r.speed = r.clock(), time.Now(), c.Speed
	case ws.ActionSeek:
		return r.seek(req)
	}
	r.c.mb.control(ws.AppendReplayState(getBuf(256), r.topic, req.ID, c.Action, r.status(), false, nil))
	return true
}

// seek restarts the replay at c.To with a new snapshot.
func (r *replay) seek(req ws.Request) bool {
	to := req.Control.To
	if to.Before(r.opts.From) || (!r.opts.To.IsZero() && to.After(r.opts.To)) {
		end := "live"
		if !r.opts.To.IsZero() {
			end = r.opts.To.Format(contract.TimeLayout)
		}
		r.c.sendError(ws.Error{Code: ws.CodeBadRequest, Topic: r.topic, ID: req.ID, Replay: true,
			Message: fmt.Sprintf("seek to %s is outside the replay (%s to %s)", to.Format(contract.TimeLayout),
				r.opts.From.Format(contract.TimeLayout), end)})
		return true
	}
	r.src.close(r.srv)
	r.src, r.head = nil, nil
	clear(r.parked)
	r.parkedN = 0
	r.dropHandover()
	clear(r.sent)
	src, snap, err := r.openSource(r.ctx, to)
	if err != nil {
		r.failed(err)
		return false
	}
	r.src, r.srcDone = src, false
	r.at, r.wall = to, time.Now()
	clear(r.devices)
	_, ok := r.c.mb.activateWith(r.feed, r.snapItems(snap), true, func(b []byte, items [][]byte) []byte {
		return ws.AppendReplayState(b, r.topic, req.ID, ws.ActionSeek, r.status(), true, items)
	})
	return ok
}

func (r *replay) snapItems(snap []srcPos) []snapItem {
	items := make([]snapItem, 0, len(snap))
	for _, p := range snap {
		if !r.wants(p.device) {
			continue
		}
		idx, ok := r.devices[p.device]
		if !ok {
			idx = int32(len(r.devices))
			r.devices[p.device] = idx
		}
		items = append(items, snapItem{idx: idx, ts: p.ts, data: p.data})
		if r.sent != nil {
			r.sent[p.device] = p
		}
	}
	return items
}

// wants reports whether the replay carries device (the devices option).
func (r *replay) wants(device string) bool {
	if r.want == nil {
		return true
	}
	_, ok := r.want[device]
	return ok
}

// failed ends the replay after a JetStream failure, with an error frame.
func (r *replay) failed(err error) {
	if r.ctx.Err() != nil {
		return // ended meanwhile
	}
	r.srv.log.Warn("replay failed", "user_id", r.c.user.ID, "event_id", r.eventID, "err", err)
	if r.c.takeReplay(r.topic) == nil {
		return
	}
	r.stop(ws.AppendError(getBuf(160), ws.Error{Code: ws.CodeUnavailable, Topic: r.topic, ID: r.id, Replay: true,
		Message: "replay interrupted: position stream unavailable; subscribe again"}), "error")
}

// putBusy: the device's previous position is still pending (putReplay).
const putBusy putResult = 100

// putReplay offers a replayed position. Unlike put, it may refuse with
// putBusy when the device has a pending position and coalesce is false.
func (mb *mailbox) putReplay(f *feed, idx int32, ts int64, data []byte, coalesce bool) putResult {
	mb.mu.Lock()
	if f.closed || mb.closed {
		mb.mu.Unlock()
		return putClosed
	}
	// A rated feed keeps the newest per device (max_hz drops the others).
	if int(idx) < len(f.slots) && f.slots[idx].pending && !coalesce && !f.rated() {
		mb.mu.Unlock()
		return putBusy
	}
	mb.mu.Unlock()
	return mb.put(f, idx, ts, data)
}

// feedPending is the number of positions of f not yet taken by the writer.
func (mb *mailbox) feedPending(f *feed) int {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	if f.closed || mb.closed {
		return 0
	}
	n := len(f.dirty) - f.head0
	if f.lim != nil {
		n += len(f.lim.held) // due later, by the rate cap
	}
	return n
}
