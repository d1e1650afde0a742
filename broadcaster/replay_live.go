package broadcaster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/contract/ws"
)

// A rewind is a replay without an end (replay.to omitted or "live"): it
// plays from its from at its speed and, once it reaches the present, turns
// into the live subscription of its topic (docs/replay.md, "Rewind").
//
// The switch, run by the replay's goroutine:
//
//  1. The rewind's source reads on as positions arrive (window.live). When
//     it is idle (caught up with the stream, everything read handed on),
//     the replay attaches a live feed to the topic's hub, not yet ready:
//     from then on live positions collect in it, latest per device. A
//     flush makes sure the server has the topic's subscription.
//  2. It reads the stream sequence of the event's last stored position,
//     target: every position stored later reaches the live feed too. It
//     reads it again once the source has read through it (a position
//     routed by the server just before the live subscription existed is
//     stored a moment later: by then it is below the target).
//  3. When the source has read through target, is idle, the replay is
//     playing and the client's writer took every replayed position (none
//     pending, none parked), the replay ends and the live feed becomes the
//     client's live subscription: each device's pending live position is
//     dropped unless newer than the last one the rewind handed on, those
//     last ones become the feed's floor (older live positions are
//     dropped, as after a snapshot), and the live frame is queued before
//     anything of the feed. Between the source's last read and this
//     moment only positions stored within that instant go through the
//     live feed alone.
//
// Per device, then: every position the rewind read went out once, in
// fix-time order, and live goes on with the newer ones only. A position
// stored after the switch with a fix time before its device's last one
// sent is dropped, as live does for any subscriber.

// rewindOf is kept on the subscription of a rewind: on its reservation
// under replayKey (a live subscribe of the topic is refused meanwhile),
// then on the live subscription it turned into (a seek restarts it).
type rewindOf struct {
	id    string // of the rewind's subscribe
	from  time.Time
	speed ws.Speed
	opts  ws.SubscribeOptions // max_hz and devices, kept across the switch
}

// handover is a rewind's live feed, attached before the switch.
type handover struct {
	f      *feed
	t      *topic
	target uint64 // stream sequence the source must have read through
	reads  int    // of the target (see tryLive)
}

// tryLive switches the rewind to live when it can (see above). It returns
// true when the replay is over: switched, or failed.
func (r *replay) tryLive() bool {
	if r.state != ws.StatePlaying || len(r.src.ch) > 0 || len(r.parked) > 0 {
		return false
	}
	if _, idle := r.src.state(); !idle || r.c.mb.feedPending(r.feed) > 0 {
		return false
	}
	srv := r.srv
	if r.ho == nil {
		f := newFeed(r.c.mb, r.topic)
		f.lim = newLimits(r.subOpts) // the live feed keeps the subscription's options
		t, err := srv.hub.attach(r.eventID, f)
		if err != nil {
			r.failed(fmt.Errorf("attach live feed: %w", err))
			return true
		}
		r.ho = &handover{f: f, t: t}
		if err := srv.nc.FlushTimeout(srv.cfg.SnapshotTimeout); err != nil {
			r.failed(fmt.Errorf("flush live subscription: %w", err))
			return true
		}
	}
	// The target is read twice: at the attach, and again the first time
	// the rewind has read through it. A position the server routed just
	// before the live subscription existed is stored a moment later; by
	// the second read it is in the stream, below the new target.
	for r.ho.reads < 2 {
		if r.ho.reads == 1 {
			if seq, idle := r.src.state(); !idle || seq < r.ho.target || len(r.src.ch) > 0 {
				return false
			}
		}
		ctx, cancel := context.WithTimeout(r.ctx, srv.cfg.SnapshotTimeout)
		target, err := srv.lastSeqOf(ctx, r.eventID)
		cancel()
		if err != nil {
			r.failed(err)
			return true
		}
		r.ho.target = target
		r.ho.reads++
	}
	seq, idle := r.src.state()
	if !idle || seq < r.ho.target || len(r.src.ch) > 0 {
		return false
	}
	return r.switchLive()
}

// switchLive turns the rewind into the live subscription of its topic.
func (r *replay) switchLive() bool {
	srv, c, ho := r.srv, r.c, r.ho
	floors := make([]snapItem, 0, len(r.sent))
	for device, p := range r.sent {
		floors = append(floors, snapItem{idx: ho.t.index(device), ts: p.ts, data: p.data})
	}
	key := replayKey(r.topic)
	c.mu.Lock()
	if sub := c.subs[key]; c.closed || sub == nil || sub.rp != r {
		c.mu.Unlock()
		return true // ended meanwhile; run's end drops the handover
	}
	if c.subs[r.topic] != nil {
		// Live subscribed meanwhile (refused while rewinding, so not
		// expected): the rewind ends as a bounded replay would.
		c.mu.Unlock()
		r.end()
		return true
	}
	delete(c.subs, key)
	c.subs[r.topic] = &subscription{topic: r.topic, eventID: r.eventID, feed: ho.f, t: ho.t, live: true,
		rewind: &rewindOf{id: r.id, from: r.opts.From, speed: r.speed, opts: r.subOpts}}
	srv.m.subscriptions.Inc()
	c.mu.Unlock()
	r.ho = nil // the live subscription's now: unsubscribe and disconnect detach it
	r.stop(nil, "live")
	sharedFrom := ho.t.sharedFrom(floors)
	c.mb.activateLive(ho.f, floors, sharedFrom, ws.AppendLive(getBuf(128), r.topic, r.id))
	srv.log.Debug("rewind turned live", "user_id", c.user.ID, "event_id", r.eventID)
	return true
}

// dropHandover detaches a live feed attached for a switch that did not
// happen (seek, end, failure).
func (r *replay) dropHandover() {
	if r.ho == nil {
		return
	}
	r.srv.hub.detach(r.ho.t, r.ho.f)
	r.c.mb.end(r.ho.f, nil)
	r.ho = nil
}

// rewindAgain handles a seek on a topic whose rewind turned live: the live
// subscription ends (nothing more of it is sent) and a new rewind starts
// at the seek's time, with the first rewind's from, id and last speed. The
// seek is answered like a seek of a running replay (replay_state with a
// snapshot); the new rewind turns live again with a new live frame. It
// returns false when the topic has no such live subscription.
func (c *client) rewindAgain(req ws.Request) bool {
	srv := c.srv
	key := replayKey(req.Topic)
	c.mu.Lock()
	sub := c.subs[req.Topic]
	if c.closed || sub == nil || !sub.live || sub.rewind == nil || c.subs[key] != nil {
		c.mu.Unlock()
		return false
	}
	rw := *sub.rewind
	c.mu.Unlock()
	fail := func(code ws.Code, msg string) bool {
		srv.m.requests.WithLabelValues(req.Type, string(code)).Inc()
		c.sendError(ws.Error{Code: code, Topic: req.Topic, ID: req.ID, Replay: true, Message: msg})
		return true
	}
	if to := req.Control.To; to.Before(rw.from) {
		return fail(ws.CodeBadRequest, fmt.Sprintf("seek to %s is outside the replay (%s to live)",
			to.Format(contract.TimeLayout), rw.from.Format(contract.TimeLayout)))
	}
	if code, msg := srv.replays.acquire(c.user.ID, srv.cfg.Replay); code != "" {
		return fail(code, msg)
	}
	release := func() { srv.replays.release(c.user.ID) }
	c.mu.Lock()
	if c.closed || c.subs[req.Topic] != sub || c.subs[key] != nil {
		c.mu.Unlock()
		release()
		return fail(ws.CodeBadRequest, "the live subscription of this topic ended meanwhile")
	}
	delete(c.subs, req.Topic)
	nsub := &subscription{topic: req.Topic, eventID: sub.eventID, rewind: &rewindOf{id: rw.id}}
	c.subs[key] = nsub
	c.mu.Unlock()
	srv.hub.detach(sub.t, sub.feed)
	srv.m.subscriptions.Dec()
	c.mb.end(sub.feed, nil)
	srv.m.requests.WithLabelValues(req.Type, "ok").Inc()
	c.startReplay(nsub, ws.ReplayOptions{From: rw.from, Speed: rw.speed}, rw.opts, rw.id, 0, release, &req)
	return true
}

// rewinding reports whether a rewind of topic runs on c (a live subscribe
// of the topic is refused meanwhile: the rewind turns live by itself).
// Under c.mu.
func (c *client) rewinding(topic string) bool {
	sub := c.subs[replayKey(topic)]
	return sub != nil && sub.rewind != nil
}

// activateLive makes f, a live feed attached while a rewind played, the
// client's live subscription: a device's pending position is dropped
// unless newer than its floor (the last position the rewind sent), the
// floors become the devices' newest fix times, and frame (the live frame)
// is queued before anything of f. Fan-out batches from sharedFrom on may
// be queued whole (see activate). It returns false when f or the mailbox
// closed meanwhile.
func (mb *mailbox) activateLive(f *feed, floors []snapItem, sharedFrom uint64, frame []byte) bool {
	mb.mu.Lock()
	if f.closed || mb.closed || mb.closing != nil {
		mb.mu.Unlock()
		return false
	}
	f.sharedFrom = sharedFrom
	mb.unshareLocked(f)
	for _, it := range floors {
		sl := f.slotLocked(it.idx)
		if it.ts >= sl.ts {
			sl.ts = it.ts
			sl.data, sl.pending = nil, false
		}
	}
	kept := f.dirty[:0]
	for _, idx := range f.dirty[f.head0:] {
		if f.slots[idx].pending {
			kept = append(kept, idx)
		}
	}
	f.dirty, f.head0 = kept, 0
	f.ready = true
	if !mb.pushCtrlLocked(frame) {
		mb.mu.Unlock()
		mb.overflow()
		return false
	}
	if len(f.dirty) > 0 {
		mb.enqueueLocked(f)
	}
	mb.unlockSchedule()
	return true
}

// lastSeqOf is the stream sequence of the event's last stored position (0:
// none).
func (srv *server) lastSeqOf(ctx context.Context, eventID string) (uint64, error) {
	stream, err := srv.js.Stream(ctx, streams.Positions)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", streams.Positions, err)
	}
	m, err := stream.GetLastMsgForSubject(ctx, contract.EventSubject(eventID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last message of %s: %w", contract.EventSubject(eventID), err)
	}
	return m.Sequence, nil
}
