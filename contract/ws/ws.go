// Package ws is the wire contract of the broadcaster's /ws-live WebSocket
// endpoint (contract v1 of the design): the client's messages, the server's
// frames, error codes, close codes and topic names.
//
// Every frame is one JSON object in one WebSocket text message. Position
// items inside "snapshot" and "positions" are contract.Position.Encode()
// bytes, the same bytes as the JetStream payload, spliced in raw: the Append
// functions never re-encode them.
//
// Servers use ParseRequest and the Append functions; clients (tests, the
// e2e and replay programs, the viewer) use the Request encoder and
// DecodeFrame, so nobody hand-writes the protocol. Standard library only.
package ws

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"trm-live/contract"
)

// Path is the HTTP path of the endpoint.
const Path = "/ws-live"

// MaxClientMessage bounds a client message in bytes; a larger one closes the
// connection with CloseMessageTooBig.
const MaxClientMessage = 4096

// Message types. The first two are sent by clients, the others by the
// server.
const (
	TypeSubscribe    = "subscribe"
	TypeUnsubscribe  = "unsubscribe"
	TypeSubscribed   = "subscribed"
	TypeUnsubscribed = "unsubscribed"
	TypePositions    = "positions"
	TypeError        = "error"
)

// Code is the code of an error frame.
type Code string

// Error codes.
const (
	// CodeBadRequest: malformed JSON, unknown type, bad topic, a subscribe to
	// a topic already subscribed, an unsubscribe of a topic not subscribed.
	CodeBadRequest Code = "bad_request"
	// CodeForbidden: the user is neither admin nor a member of the event's
	// organization, also sent for a live subscription when re-authorization
	// finds the membership removed (the subscription is then ended).
	CodeForbidden Code = "forbidden"
	// CodeNotFound: no such event.
	CodeNotFound Code = "not_found"
	// CodeTooManySubscriptions: the connection already has the maximum
	// number of subscriptions.
	CodeTooManySubscriptions Code = "too_many_subscriptions"
	// CodeUnavailable: authsvc or JetStream could not answer; try again.
	CodeUnavailable Code = "unavailable"
)

// WebSocket close codes the server uses.
const (
	// CloseGoingAway: the server is shutting down.
	CloseGoingAway = 1001
	// ClosePolicyViolation: the client fell too far behind on control
	// frames, exceeded the message rate, or its user has too many
	// connections. The close reason says which.
	ClosePolicyViolation = 1008
	// CloseMessageTooBig: a client message over MaxClientMessage bytes.
	CloseMessageTooBig = 1009
	// CloseTryAgainLater: authsvc could not be reached at the handshake.
	CloseTryAgainLater = 1013
	// CloseUnauthorized: missing, invalid or expired credential.
	CloseUnauthorized = 4401
)

// TopicPrefix starts every event topic.
const TopicPrefix = "event:"

// EventTopic returns the topic of an event: event:<uuid>.
func EventTopic(eventID string) string { return TopicPrefix + eventID }

// ParseTopic returns the event id of an event topic. The id must be a
// canonical lowercase UUID (contract.ValidUUID).
func ParseTopic(topic string) (eventID string, ok bool) {
	id, found := strings.CutPrefix(topic, TopicPrefix)
	if !found || !contract.ValidUUID(id) {
		return "", false
	}
	return id, true
}

// Request is a client message: subscribe or unsubscribe. ID is optional and
// echoed in the reply.
type Request struct {
	Type  string `json:"type"`
	Topic string `json:"topic"`
	ID    string `json:"id,omitempty"`

	// Replay marks a request about the client's replay of Topic rather
	// than its live subscription: a subscribe with replay options, an
	// unsubscribe with "replay":true, every TypeReplay control
	// (replay.go).
	Replay bool `json:"-"`
	// ReplayOptions are the options of a replay subscribe.
	ReplayOptions ReplayOptions `json:"-"`
	// Control is the body of a TypeReplay message.
	Control ReplayControl `json:"-"`
}

// MaxIDLength bounds the id a client may send (it is echoed back).
const MaxIDLength = 64

// Encode returns the compact JSON of the request.
func (r Request) Encode() []byte {
	if r.Replay || r.Type == TypeReplay {
		return r.encodeReplay()
	}
	b, _ := json.Marshal(r) // three strings cannot fail
	return b
}

// RequestError is the reason a client message was refused. ID and Topic are
// filled in when they could be read, so the error frame can echo them.
type RequestError struct {
	ID, Topic string
	Message   string
	// Replay is set when the request was about a replay (its error frame
	// then carries "replay":true).
	Replay bool
}

func (e *RequestError) Error() string { return e.Message }

// ParseRequest decodes and checks a client message. On failure it returns a
// *RequestError whose Message suits the error frame (code bad_request).
func ParseRequest(data []byte) (Request, error) {
	var raw struct {
		Type  *string `json:"type"`
		Topic *string `json:"topic"`
		ID    *string `json:"id"`
		// Replay fields (replay.go).
		Replay json.RawMessage `json:"replay"`
		Action json.RawMessage `json:"action"`
		To     json.RawMessage `json:"to"`
		Speed  json.RawMessage `json:"speed"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil {
		return Request{}, &RequestError{Message: "malformed JSON: " + shorten(err.Error())}
	}
	if dec.More() {
		return Request{}, &RequestError{Message: "malformed JSON: trailing data after the object"}
	}
	var r Request
	if raw.ID != nil {
		if len(*raw.ID) > MaxIDLength {
			return Request{}, &RequestError{Message: fmt.Sprintf("id longer than %d bytes", MaxIDLength)}
		}
		r.ID = *raw.ID
	}
	if raw.Topic != nil {
		r.Topic = *raw.Topic
	}
	fail := func(msg string) (Request, error) {
		topic := r.Topic
		if len(topic) > 128 {
			topic = "" // do not echo arbitrary long strings back
		}
		return Request{}, &RequestError{ID: r.ID, Topic: topic, Message: msg, Replay: r.Type == TypeReplay || raw.Replay != nil}
	}
	if raw.Type == nil {
		return fail("missing type")
	}
	r.Type = *raw.Type
	switch r.Type {
	case TypeSubscribe, TypeUnsubscribe, TypeReplay:
	default:
		return fail(fmt.Sprintf("unknown type %q", shorten(r.Type)))
	}
	if raw.Topic == nil {
		return fail("missing topic")
	}
	if _, ok := ParseTopic(r.Topic); !ok {
		return fail("topic must be event:<lowercase uuid>")
	}
	if msg := parseReplay(&r, raw.Replay, raw.Action, raw.To, raw.Speed); msg != "" {
		return Request{}, &RequestError{ID: r.ID, Topic: r.Topic, Replay: true, Message: msg}
	}
	return r, nil
}

func shorten(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// Error is an error frame. Topic and ID are omitted when empty.
type Error struct {
	Code    Code
	Topic   string
	ID      string
	Message string
	// Replay marks an error about a replay request: "replay":true.
	Replay bool
}

// AppendError appends an error frame:
// {"type":"error","code":C,"topic":…,"id":…,"message":…}.
func AppendError(b []byte, e Error) []byte {
	b = append(b, `{"type":"error","code":`...)
	b = appendString(b, string(e.Code))
	b = appendTopicID(b, e.Topic, e.ID)
	if e.Replay {
		b = append(b, `,"replay":true`...)
	}
	b = append(b, `,"message":`...)
	b = appendString(b, e.Message)
	return append(b, '}')
}

// AppendSubscribed appends a subscribed frame with its snapshot, each item
// raw position bytes: {"type":"subscribed","topic":…,"id":…,"snapshot":[…]}.
func AppendSubscribed(b []byte, topic, id string, snapshot [][]byte) []byte {
	b = append(b, `{"type":"subscribed"`...)
	b = appendTopicID(b, topic, id)
	b = append(b, `,"snapshot":[`...)
	b = appendItems(b, snapshot)
	return append(b, "]}"...)
}

// AppendUnsubscribed appends {"type":"unsubscribed","topic":…,"id":…}.
func AppendUnsubscribed(b []byte, topic, id string) []byte {
	b = append(b, `{"type":"unsubscribed"`...)
	b = appendTopicID(b, topic, id)
	return append(b, '}')
}

// AppendPositions appends a positions frame, each item raw position bytes:
// {"type":"positions","topic":…,"positions":[…]}.
func AppendPositions(b []byte, topic string, items [][]byte) []byte {
	b = AppendPositionsHead(b, topic)
	b = appendItems(b, items)
	return append(b, PositionsTail...)
}

// AppendPositionsHead appends the part of a positions frame before its
// first item. A server may compute it once per topic, then append items
// separated by commas and PositionsTail.
func AppendPositionsHead(b []byte, topic string) []byte {
	b = append(b, `{"type":"positions","topic":`...)
	b = appendString(b, topic)
	return append(b, `,"positions":[`...)
}

// PositionsTail ends a positions frame.
const PositionsTail = "]}"

func appendItems(b []byte, items [][]byte) []byte {
	for i, it := range items {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, it...)
	}
	return b
}

func appendTopicID(b []byte, topic, id string) []byte {
	if topic != "" {
		b = append(b, `,"topic":`...)
		b = appendString(b, topic)
	}
	if id != "" {
		b = append(b, `,"id":`...)
		b = appendString(b, id)
	}
	return b
}

func appendString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string cannot fail; invalid UTF-8 is replaced
	return append(b, q...)
}

// Frame is any server frame, decoded. Which fields are set depends on Type.
type Frame struct {
	Type      string            `json:"type"`
	Topic     string            `json:"topic,omitempty"`
	ID        string            `json:"id,omitempty"`
	Code      Code              `json:"code,omitempty"`
	Message   string            `json:"message,omitempty"`
	Snapshot  []json.RawMessage `json:"snapshot,omitempty"`
	Positions []json.RawMessage `json:"positions,omitempty"`

	// Replay frames (replay.go): Replay is true on every frame about a
	// replay; the others make its status (Frame.Status).
	Replay bool            `json:"replay,omitempty"`
	Action string          `json:"action,omitempty"`
	From   string          `json:"from,omitempty"`
	To     string          `json:"to,omitempty"`
	Speed  json.RawMessage `json:"speed,omitempty"`
	State  string          `json:"state,omitempty"`
	At     string          `json:"at,omitempty"`
	Wall   string          `json:"wall,omitempty"`
}

// ErrBadFrame is wrapped by DecodeFrame for data that is not a server frame.
var ErrBadFrame = errors.New("bad frame")

// DecodeFrame decodes a server frame. Items of Snapshot and Positions stay
// raw; decode them with contract.DecodePosition or use Frame.Items.
func DecodeFrame(data []byte) (Frame, error) {
	var f Frame
	if err := json.Unmarshal(data, &f); err != nil {
		return Frame{}, fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	switch f.Type {
	case TypeSubscribed, TypeUnsubscribed, TypePositions, TypeError, TypeReplayState, TypeReplayEnd:
		return f, nil
	}
	return Frame{}, fmt.Errorf("%w: unknown type %q", ErrBadFrame, f.Type)
}

// Items decodes the positions of a subscribed (snapshot) or positions frame.
func (f Frame) Items() ([]contract.Position, error) {
	raw := f.Positions
	if f.Type == TypeSubscribed || f.Type == TypeReplayState {
		raw = f.Snapshot
	}
	out := make([]contract.Position, 0, len(raw))
	for _, r := range raw {
		p, err := contract.DecodePosition(r)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}
