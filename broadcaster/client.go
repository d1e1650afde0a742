package broadcaster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/olahol/melody"

	"trm-live/contract/auth"
	"trm-live/contract/ws"
)

// client is one accepted WebSocket connection, bound to a user.
type client struct {
	srv *server
	s   *melody.Session
	mb  *mailbox
	// user is the user of the handshake; its ID never changes. The admin
	// flag and role in force are cur's (identity), which re-authorization
	// updates.
	user auth.User
	// cred is the handshake's credential, re-validated at every
	// re-authorization; held in memory only, never logged.
	cred auth.SessionRequest

	// tokens and last are the message-rate bucket; only the session's read
	// goroutine (melody's HandleMessage) touches them.
	tokens float64
	last   time.Time

	mu     sync.Mutex
	cur    auth.User
	subs   map[string]*subscription // by topic, including ones being set up
	closed bool
}

// identity is the user with the admin flag and role in force.
func (c *client) identity() auth.User {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// setIdentity applies what re-authorization found and returns the
// previous identity.
func (c *client) setIdentity(u auth.User) auth.User {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev := c.cur
	c.cur = u
	return prev
}

// subscription is a client's subscription to one event topic.
type subscription struct {
	topic   string
	eventID string
	feed    *feed
	t       *topic
	live    bool // subscribed frame queued; re-authorization applies
	// rp is set on a replay subscription, keyed replayKey(topic)
	// (replay.go); re-authorization applies to it too.
	rp *replay
	// rewind is set on a rewind's replay subscription and on the live
	// subscription it turned into (replay_live.go).
	rewind *rewindOf
}

// allow takes one token from the client's message bucket.
func (c *client) allow(now time.Time) bool {
	cfg := &c.srv.cfg
	if c.last.IsZero() {
		c.tokens = float64(cfg.MsgBurst)
	} else {
		c.tokens = min(float64(cfg.MsgBurst), c.tokens+now.Sub(c.last).Seconds()*cfg.MsgRate)
	}
	c.last = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// handle processes one client message, on the session's read goroutine:
// messages of one client are handled in order.
func (c *client) handle(data []byte) {
	if !c.allow(time.Now()) {
		c.srv.closeClient(c, ws.ClosePolicyViolation, "message rate exceeded")
		return
	}
	req, err := ws.ParseRequest(data)
	if err != nil {
		var re *ws.RequestError
		if !errors.As(err, &re) {
			re = &ws.RequestError{Message: err.Error()}
		}
		c.srv.m.requests.WithLabelValues("invalid", string(ws.CodeBadRequest)).Inc()
		c.sendError(ws.Error{Code: ws.CodeBadRequest, Topic: re.Topic, ID: re.ID, Message: re.Message, Replay: re.Replay})
		return
	}
	switch {
	case req.Type == ws.TypeReplay:
		c.controlReplay(req)
	case req.Type == ws.TypeSubscribe && req.Replay:
		c.subscribeReplay(req)
	case req.Type == ws.TypeUnsubscribe && req.Replay:
		c.unsubscribeReplay(req)
	case req.Type == ws.TypeSubscribe:
		c.subscribe(req)
	case req.Type == ws.TypeUnsubscribe:
		c.unsubscribe(req)
	}
}

func (c *client) sendError(e ws.Error) {
	c.mb.control(ws.AppendError(getBuf(128+len(e.Message)), e))
}

func (c *client) fail(req ws.Request, code ws.Code, msg string) {
	c.srv.m.requests.WithLabelValues(req.Type, string(code)).Inc()
	c.sendError(ws.Error{Code: code, Topic: req.Topic, ID: req.ID, Message: msg})
}

func (c *client) subscribe(req ws.Request) {
	srv := c.srv
	eventID, _ := ws.ParseTopic(req.Topic) // checked by ParseRequest
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return
	case c.subs[req.Topic] != nil:
		c.mu.Unlock()
		c.fail(req, ws.CodeBadRequest, "already subscribed to this topic")
		return
	case c.rewinding(req.Topic):
		c.mu.Unlock()
		c.fail(req, ws.CodeBadRequest, "a rewind of this topic is running: it turns live by itself")
		return
	case len(c.subs) >= srv.cfg.MaxSubscriptions:
		c.mu.Unlock()
		c.fail(req, ws.CodeTooManySubscriptions, fmt.Sprintf("at most %d subscriptions per connection", srv.cfg.MaxSubscriptions))
		return
	}
	sub := &subscription{topic: req.Topic, eventID: eventID}
	c.subs[req.Topic] = sub // reserve, so a second subscribe meanwhile is refused
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(c.s.Request.Context(), srv.cfg.AuthTimeout+srv.cfg.SnapshotTimeout)
	defer cancel()
	drop := func() {
		c.mu.Lock()
		if c.subs[req.Topic] == sub {
			delete(c.subs, req.Topic)
		}
		c.mu.Unlock()
	}

	decision, err := srv.auth.authorize(ctx, c.identity(), eventID)
	if err != nil {
		drop()
		if errors.Is(err, auth.ErrBadRequest) {
			c.fail(req, ws.CodeBadRequest, "authorization refused the request")
			return
		}
		srv.log.Warn("authorize", "user_id", c.user.ID, "event_id", eventID, "err", err)
		c.fail(req, ws.CodeUnavailable, "authorization service unavailable; try again")
		return
	}
	switch decision {
	case auth.Forbidden:
		drop()
		c.fail(req, ws.CodeForbidden, "not a member of the event's organization")
		return
	case auth.NotFound:
		drop()
		c.fail(req, ws.CodeNotFound, "no such event")
		return
	}

	// Live first, then the snapshot, then the merge in activate: nothing
	// published in between is lost, and no older position follows a newer.
	f := newFeed(c.mb, req.Topic)
	f.lim = newLimits(req.Options)
	t, err := srv.hub.attach(eventID, f)
	if err != nil {
		drop()
		srv.log.Warn("attach topic", "event_id", eventID, "err", err)
		c.fail(req, ws.CodeUnavailable, "live feed unavailable; try again")
		return
	}
	sub.feed, sub.t = f, t
	snap, err := t.snapshot(ctx)
	if err != nil {
		srv.hub.detach(t, f)
		drop()
		srv.log.Warn("snapshot", "event_id", eventID, "err", err)
		c.fail(req, ws.CodeUnavailable, "snapshot unavailable; try again")
		return
	}
	snap = t.complete(snap)
	c.mu.Lock()
	if c.closed || c.subs[req.Topic] != sub {
		// The connection ended or re-authorization removed it meanwhile.
		c.mu.Unlock()
		srv.hub.detach(t, f)
		return
	}
	sub.live = true
	srv.m.subscriptions.Inc()
	c.mu.Unlock()
	n, ok := c.mb.activate(f, snap, req.ID, t.sharedFrom(snap))
	if !ok {
		return // closed meanwhile; disconnect cleans up
	}
	srv.m.positionsSent.Add(float64(n))
	srv.m.requests.WithLabelValues(req.Type, "ok").Inc()
}

func (c *client) unsubscribe(req ws.Request) {
	c.mu.Lock()
	sub := c.subs[req.Topic]
	if sub == nil || !sub.live {
		c.mu.Unlock()
		c.fail(req, ws.CodeBadRequest, "not subscribed to this topic")
		return
	}
	delete(c.subs, req.Topic)
	c.mu.Unlock()
	c.srv.hub.detach(sub.t, sub.feed)
	c.srv.m.subscriptions.Dec()
	c.mb.end(sub.feed, ws.AppendUnsubscribed(getBuf(128), req.Topic, req.ID))
	c.srv.m.requests.WithLabelValues(req.Type, "ok").Inc()
}

// revoke ends a live subscription that re-authorization refused, with an
// error frame for its topic.
func (c *client) revoke(topic string, code ws.Code, msg string) {
	if r := c.takeReplay(topic); r != nil {
		r.stop(ws.AppendError(getBuf(160), ws.Error{Code: code, Topic: topic, Replay: true, Message: msg}), "revoked")
	}
	c.mu.Lock()
	sub := c.subs[topic]
	if sub == nil || !sub.live {
		c.mu.Unlock()
		return
	}
	delete(c.subs, topic)
	c.mu.Unlock()
	c.srv.hub.detach(sub.t, sub.feed)
	c.srv.m.subscriptions.Dec()
	c.mb.end(sub.feed, ws.AppendError(getBuf(160), ws.Error{Code: code, Topic: topic, Message: msg}))
}

// liveEvents lists the events of the client's live subscriptions.
func (c *client) liveEvents() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.subs))
	for _, s := range c.subs {
		if s.live || s.rp != nil {
			out = append(out, s.eventID)
		}
	}
	return out
}

// cleanup runs once the session has ended.
func (c *client) cleanup() {
	c.mb.shut()
	c.mu.Lock()
	c.closed = true
	subs := c.subs
	c.subs = nil
	c.mu.Unlock()
	for _, sub := range subs {
		if sub.t != nil {
			c.srv.hub.detach(sub.t, sub.feed)
			c.mb.stopTimer(sub.feed)
		}
		if sub.live {
			c.srv.m.subscriptions.Dec()
		}
		if sub.rp != nil {
			sub.rp.stop(nil, "disconnect")
		}
	}
}
