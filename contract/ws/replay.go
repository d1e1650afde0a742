package ws

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"trm-live/contract"
)

// Replay: a client may watch again what an event left in the POSITIONS
// stream, privately, paced by the server (docs/replay.md).
//
//	→ {"type":"subscribe","topic":T,"id":…,"replay":{"from":T1,"to":T2,"speed":S}}
//	← {"type":"subscribed","topic":T,"id":…,"replay":true,"from":…,"to":…,"speed":S,
//	   "state":"playing","at":T1,"wall":W,"snapshot":[…]}
//	← {"type":"positions","topic":T,"replay":true,"positions":[…]}
//	→ {"type":"replay","topic":T,"id":…,"action":"pause"|"resume"}
//	→ {"type":"replay","topic":T,"id":…,"action":"seek","to":T3}
//	→ {"type":"replay","topic":T,"id":…,"action":"speed","speed":S}
//	← {"type":"replay_state","topic":T,"id":…,"replay":true,"action":…,…status…[,"snapshot":[…] after a seek]}
//	← {"type":"replay_end","topic":T,"id":…,"replay":true}      (to given)
//	← {"type":"live","topic":T,"id":…,"replay":true}            (to omitted or "live")
//	← {"type":"positions","topic":T,"positions":[…]}             (live from then on)
//	→ {"type":"unsubscribe","topic":T,"id":…,"replay":true}
//	← {"type":"unsubscribed","topic":T,"id":…,"replay":true}
//
// Every server frame about a replay carries "replay":true, so a client that
// holds the live subscription and a replay of the same topic tells them
// apart; error frames answering a replay request carry it too.
//
// A replay without an end (to omitted or "live") is a rewind: it plays
// from From at its speed until it reaches the present, then turns into the
// live subscription of the topic. Its last replay frame is TypeLive (with
// "replay":true, the id of its subscribe); the frames after it are the
// live subscription's, without "replay". A seek after the switch starts a
// new rewind: its answer is the seek's replay_state with a snapshot, and
// replay frames follow again until the next live frame.

// Replay message types.
const (
	// TypeReplay is a client's control of its replay of a topic.
	TypeReplay = "replay"
	// TypeReplayState answers a replay control with the replay's status.
	TypeReplayState = "replay_state"
	// TypeReplayEnd says the replay delivered its last position; the
	// replay subscription is over.
	TypeReplayEnd = "replay_end"
	// TypeLive says a rewind reached the present: the replay is over and
	// the live subscription of its topic goes on, with no position missing
	// or repeated per device.
	TypeLive = "live"
)

// ToLive is the value of replay.to asking for a rewind (the same as no to).
const ToLive = "live"

// Replay control actions.
const (
	ActionPause  = "pause"
	ActionResume = "resume"
	ActionSeek   = "seek"
	ActionSpeed  = "speed"
)

// Replay states.
const (
	StatePlaying = "playing"
	StatePaused  = "paused"
)

// Replay speed bounds.
const (
	MinSpeed = 0.1
	MaxSpeed = 1000
)

// Speed is a replay speed: fix-time seconds per wall-clock second, or
// SpeedMax (as fast as the client reads).
type Speed float64

// SpeedMax is the speed "max".
var SpeedMax = Speed(math.Inf(1))

// IsMax reports whether s is "max".
func (s Speed) IsMax() bool { return math.IsInf(float64(s), 1) }

// AppendJSON appends s as a JSON number, or "max".
func (s Speed) AppendJSON(b []byte) []byte {
	if s.IsMax() {
		return append(b, `"max"`...)
	}
	return strconv.AppendFloat(b, float64(s), 'f', -1, 64)
}

func (s Speed) String() string { return string(s.AppendJSON(nil)) }

// ParseSpeed reads a speed: a JSON number from MinSpeed to MaxSpeed, or
// the string "max".
func ParseSpeed(raw json.RawMessage) (Speed, error) {
	raw = bytes.TrimSpace(raw)
	if string(raw) == `"max"` {
		return SpeedMax, nil
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil || math.IsNaN(f) || f < MinSpeed || f > MaxSpeed {
		return 0, fmt.Errorf("must be a number from %v to %v or \"max\"", MinSpeed, MaxSpeed)
	}
	return Speed(f), nil
}

// ReplayOptions are the options of a replay subscribe.
type ReplayOptions struct {
	// From is the replay's start: the snapshot is every device's latest
	// position with a fix time at or before From.
	From time.Time
	// To is the last fix time replayed; zero means none: a rewind, which
	// turns live when it reaches the present (to omitted or "live").
	To time.Time
	// Speed is the pace; 1 when the client gives none.
	Speed Speed
}

// ReplayControl is the body of a replay control message.
type ReplayControl struct {
	// Action is ActionPause, ActionResume, ActionSeek or ActionSpeed.
	Action string
	// To is the fix time a seek goes to.
	To time.Time
	// Speed is the new speed of a speed action.
	Speed Speed
}

// ReplayStatus is where a replay stands, sent in its subscribed and
// replay_state frames.
type ReplayStatus struct {
	From, To time.Time // To zero: a rewind (turns live at the present)
	Speed    Speed
	State    string // StatePlaying or StatePaused
	// At is the replay clock: the fix time the replay has reached.
	At time.Time
	// Wall is the server's wall-clock instant at which the clock was At,
	// set while playing at a finite speed: a position with fix time ts is
	// due at Wall + (ts − At) / Speed. Zero when paused or at "max".
	Wall time.Time
}

// parseReplay fills the replay fields of r from the raw message fields. It
// returns a message for the error frame, or "".
func parseReplay(r *Request, replay, action, to, speed json.RawMessage) string {
	switch r.Type {
	case TypeSubscribe:
		if replay == nil {
			return ""
		}
		r.Replay = true
		return parseReplayOptions(&r.ReplayOptions, replay)
	case TypeUnsubscribe:
		if replay == nil {
			return ""
		}
		var b bool
		if err := json.Unmarshal(replay, &b); err != nil {
			return "replay must be true or false on unsubscribe"
		}
		r.Replay = b
		return ""
	case TypeReplay:
		r.Replay = true
		return parseControl(&r.Control, action, to, speed)
	}
	return ""
}

func parseReplayOptions(o *ReplayOptions, raw json.RawMessage) string {
	var f struct {
		From  *string         `json:"from"`
		To    *string         `json:"to"`
		Speed json.RawMessage `json:"speed"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if !bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
		return `replay must be an object {"from":…,"to":…,"speed":…}`
	}
	if err := dec.Decode(&f); err != nil {
		return "replay: " + shorten(err.Error())
	}
	if f.From == nil {
		return "replay.from is required (RFC 3339)"
	}
	var err error
	if o.From, err = parseTime(*f.From); err != nil {
		return "replay.from: " + err.Error()
	}
	if f.To != nil && *f.To != ToLive {
		if o.To, err = parseTime(*f.To); err != nil {
			return "replay.to: " + err.Error()
		}
		if o.To.Before(o.From) {
			return fmt.Sprintf("replay.from %s is after replay.to %s", o.From.Format(contract.TimeLayout), o.To.Format(contract.TimeLayout))
		}
	}
	o.Speed = 1
	if f.Speed != nil {
		if o.Speed, err = ParseSpeed(f.Speed); err != nil {
			return "replay.speed " + err.Error()
		}
	}
	return ""
}

func parseControl(c *ReplayControl, action, to, speed json.RawMessage) string {
	if action == nil {
		return "missing action (pause, resume, seek or speed)"
	}
	if err := json.Unmarshal(action, &c.Action); err != nil {
		return "action must be a string: pause, resume, seek or speed"
	}
	switch c.Action {
	case ActionPause, ActionResume:
	case ActionSeek:
		var s string
		if to == nil {
			return "seek needs to (RFC 3339)"
		}
		if err := json.Unmarshal(to, &s); err != nil {
			return "to must be an RFC 3339 string"
		}
		t, err := parseTime(s)
		if err != nil {
			return "to: " + err.Error()
		}
		c.To = t
	case ActionSpeed:
		if speed == nil {
			return `speed action needs speed (a number from 0.1 to 1000 or "max")`
		}
		sp, err := ParseSpeed(speed)
		if err != nil {
			return "speed " + err.Error()
		}
		c.Speed = sp
	default:
		return fmt.Sprintf("unknown action %q: want pause, resume, seek or speed", shorten(c.Action))
	}
	return ""
}

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time", shorten(s))
	}
	return t.UTC().Truncate(time.Millisecond), nil
}

// encodeReplay encodes a replay request (Request.Encode for Replay set).
func (r Request) encodeReplay() []byte {
	b := append([]byte(nil), `{"type":`...)
	b = appendString(b, r.Type)
	b = append(b, `,"topic":`...)
	b = appendString(b, r.Topic)
	if r.ID != "" {
		b = append(b, `,"id":`...)
		b = appendString(b, r.ID)
	}
	switch r.Type {
	case TypeSubscribe:
		b = appendOptions(b, r.Options)
		o := r.ReplayOptions
		b = append(b, `,"replay":{"from":`...)
		b = appendTime(b, o.From)
		b = append(b, `,"to":`...)
		if o.To.IsZero() {
			b = appendString(b, ToLive)
		} else {
			b = appendTime(b, o.To)
		}
		if o.Speed != 0 {
			b = append(b, `,"speed":`...)
			b = o.Speed.AppendJSON(b)
		}
		b = append(b, '}')
	case TypeUnsubscribe:
		b = append(b, `,"replay":true`...)
	case TypeReplay:
		b = append(b, `,"action":`...)
		b = appendString(b, r.Control.Action)
		if r.Control.Action == ActionSeek {
			b = append(b, `,"to":`...)
			b = appendTime(b, r.Control.To)
		}
		if r.Control.Action == ActionSpeed {
			b = append(b, `,"speed":`...)
			b = r.Control.Speed.AppendJSON(b)
		}
	}
	return append(b, '}')
}

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, contract.TimeLayout)
	return append(b, '"')
}

func appendStatus(b []byte, st ReplayStatus) []byte {
	b = append(b, `,"from":`...)
	b = appendTime(b, st.From)
	if !st.To.IsZero() {
		b = append(b, `,"to":`...)
		b = appendTime(b, st.To)
	}
	b = append(b, `,"speed":`...)
	b = st.Speed.AppendJSON(b)
	b = append(b, `,"state":`...)
	b = appendString(b, st.State)
	b = append(b, `,"at":`...)
	b = appendTime(b, st.At)
	if !st.Wall.IsZero() {
		b = append(b, `,"wall":`...)
		b = appendTime(b, st.Wall)
	}
	return b
}

// AppendReplaySubscribed appends the subscribed frame of a replay:
// {"type":"subscribed","topic":…,"id":…,"replay":true,<status>,"snapshot":[…]}.
func AppendReplaySubscribed(b []byte, topic, id string, st ReplayStatus, snapshot [][]byte) []byte {
	b = append(b, `{"type":"subscribed"`...)
	b = appendTopicID(b, topic, id)
	b = append(b, `,"replay":true`...)
	b = appendStatus(b, st)
	b = append(b, `,"snapshot":[`...)
	b = appendItems(b, snapshot)
	return append(b, "]}"...)
}

// AppendReplayState appends the answer to a replay control:
// {"type":"replay_state","topic":…,"id":…,"replay":true,"action":…,<status>}, with
// "snapshot":[…] after a seek (withSnapshot).
func AppendReplayState(b []byte, topic, id, action string, st ReplayStatus, withSnapshot bool, snapshot [][]byte) []byte {
	b = append(b, `{"type":"replay_state"`...)
	b = appendTopicID(b, topic, id)
	b = append(b, `,"replay":true,"action":`...)
	b = appendString(b, action)
	b = appendStatus(b, st)
	if withSnapshot {
		b = append(b, `,"snapshot":[`...)
		b = appendItems(b, snapshot)
		b = append(b, ']')
	}
	return append(b, '}')
}

// AppendReplayEnd appends {"type":"replay_end","topic":…,"id":…,"replay":true};
// id is the one of the replay's subscribe.
func AppendReplayEnd(b []byte, topic, id string) []byte {
	b = append(b, `{"type":"replay_end"`...)
	b = appendTopicID(b, topic, id)
	return append(b, `,"replay":true}`...)
}

// AppendLive appends {"type":"live","topic":…,"id":…,"replay":true}: the
// last frame of a rewind, id the one of its subscribe. Positions frames of
// the topic without "replay" follow: the live subscription.
func AppendLive(b []byte, topic, id string) []byte {
	b = append(b, `{"type":"live"`...)
	b = appendTopicID(b, topic, id)
	return append(b, `,"replay":true}`...)
}

// AppendReplayUnsubscribed appends
// {"type":"unsubscribed","topic":…,"id":…,"replay":true}.
func AppendReplayUnsubscribed(b []byte, topic, id string) []byte {
	b = append(b, `{"type":"unsubscribed"`...)
	b = appendTopicID(b, topic, id)
	return append(b, `,"replay":true}`...)
}

// AppendReplayPositionsHead is AppendPositionsHead for a replay:
// {"type":"positions","topic":…,"replay":true,"positions":[
func AppendReplayPositionsHead(b []byte, topic string) []byte {
	b = append(b, `{"type":"positions","topic":`...)
	b = appendString(b, topic)
	return append(b, `,"replay":true,"positions":[`...)
}

// AppendReplayPositions appends a whole replay positions frame.
func AppendReplayPositions(b []byte, topic string, items [][]byte) []byte {
	b = AppendReplayPositionsHead(b, topic)
	b = appendItems(b, items)
	return append(b, PositionsTail...)
}

// Status returns the replay status carried by a replay subscribed or
// replay_state frame.
func (f Frame) Status() (ReplayStatus, error) {
	var st ReplayStatus
	var err error
	if !f.Replay {
		return st, fmt.Errorf("%w: %s frame is not about a replay", ErrBadFrame, f.Type)
	}
	parse := func(s string, dst *time.Time, name string, required bool) {
		if err != nil || (s == "" && !required) {
			return
		}
		if *dst, err = time.Parse(time.RFC3339Nano, s); err != nil {
			err = fmt.Errorf("%w: %s %q", ErrBadFrame, name, s)
		}
	}
	parse(f.From, &st.From, "from", true)
	parse(f.To, &st.To, "to", false)
	parse(f.At, &st.At, "at", true)
	parse(f.Wall, &st.Wall, "wall", false)
	if err != nil {
		return st, err
	}
	if st.Speed, err = ParseSpeed(f.Speed); err != nil {
		return st, fmt.Errorf("%w: speed %s", ErrBadFrame, f.Speed)
	}
	st.State = f.State
	return st, nil
}

// Due returns when, by the server's schedule in st, a position with fix
// time ts is due; ok is false when the replay is paused or at "max".
func (st ReplayStatus) Due(ts time.Time) (due time.Time, ok bool) {
	if st.State != StatePlaying || st.Wall.IsZero() || st.Speed.IsMax() || st.Speed <= 0 {
		return time.Time{}, false
	}
	return st.Wall.Add(time.Duration(float64(ts.Sub(st.At)) / float64(st.Speed))), true
}
