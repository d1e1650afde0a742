package contract

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// TimeLayout is the layout of every timestamp on the wire: UTC with
// milliseconds, for example 2026-05-03T10:00:00.000Z.
const TimeLayout = "2006-01-02T15:04:05.000Z"

// Position is one GPS fix of one device. It is the JetStream payload on
// pos.<event>.<device> and the item of WebSocket positions frames: the same
// bytes, produced by Encode.
//
// Optional fields are pointers (nil = absent, omitted on the wire). EventID is
// empty for an unassigned position: the subject then carries the token
// "unassigned" and the payload omits event_id.
type Position struct {
	DeviceID string          `json:"device_id"`
	EventID  string          `json:"event_id,omitempty"`
	TS       time.Time       `json:"ts"`
	Lat      float64         `json:"lat"`
	Lon      float64         `json:"lon"`
	Alt      *float64        `json:"alt,omitempty"`
	Speed    *float64        `json:"speed,omitempty"`
	Heading  *float64        `json:"heading,omitempty"`
	Sats     *int            `json:"sats,omitempty"`
	Attrs    json.RawMessage `json:"attrs,omitempty"`
}

// TSMillis is the fix time in Unix milliseconds, the resolution of the wire.
func (p *Position) TSMillis() int64 { return p.TS.UnixMilli() }

// MsgID is the Nats-Msg-Id of the position: <device_id>:<ts unix ms>.
func (p *Position) MsgID() string { return MsgID(p.DeviceID, p.TS) }

// Subject is the NATS subject the position is published on.
func (p *Position) Subject() string { return PositionSubject(p.EventID, p.DeviceID) }

// Encode returns the compact JSON of the position with a fixed field order.
func (p *Position) Encode() []byte { return p.AppendJSON(make([]byte, 0, 192+len(p.Attrs))) }

// AppendJSON appends the compact JSON of the position to b. Field order is
// fixed (device_id, event_id, ts, lat, lon, alt, speed, heading, sats,
// attrs) so that equal positions give equal bytes.
func (p *Position) AppendJSON(b []byte) []byte { return p.AppendJSONDecimals(b, nil) }

// AppendJSONDecimals is AppendJSON with the numbers' text from d where d
// has it (see ParseFieldsDecimals): the same bytes, without formatting
// those floats again. d nil formats every number.
func (p *Position) AppendJSONDecimals(b []byte, d *Decimals) []byte {
	var text Decimals
	if d != nil {
		text = *d
	}
	b = append(b, `{"device_id":`...)
	b = appendString(b, p.DeviceID)
	if p.EventID != "" {
		b = append(b, `,"event_id":`...)
		b = appendString(b, p.EventID)
	}
	b = append(b, `,"ts":"`...)
	b = appendTime(b, p.TS)
	b = append(b, `","lat":`...)
	b = appendNumber(b, p.Lat, text.Lat)
	b = append(b, `,"lon":`...)
	b = appendNumber(b, p.Lon, text.Lon)
	if p.Alt != nil {
		b = append(b, `,"alt":`...)
		b = appendNumber(b, *p.Alt, text.Alt)
	}
	if p.Speed != nil {
		b = append(b, `,"speed":`...)
		b = appendNumber(b, *p.Speed, text.Speed)
	}
	if p.Heading != nil {
		b = append(b, `,"heading":`...)
		b = appendNumber(b, *p.Heading, text.Heading)
	}
	if p.Sats != nil {
		b = append(b, `,"sats":`...)
		b = strconv.AppendInt(b, int64(*p.Sats), 10)
	}
	if len(p.Attrs) > 0 {
		b = append(b, `,"attrs":`...)
		b = append(b, p.Attrs...)
	}
	return append(b, '}')
}

// appendTime appends t in TimeLayout, as t.UTC().AppendFormat(b,
// TimeLayout) does (half of the encoder's time went to that general
// formatter). A year outside 0–9999 goes through AppendFormat.
func appendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, TimeLayout)
	}
	hour, minute, sec := t.Clock()
	ms := t.Nanosecond() / int(time.Millisecond)
	return append(b,
		byte('0'+year/1000), byte('0'+year/100%10), byte('0'+year/10%10), byte('0'+year%10), '-',
		byte('0'+month/10), byte('0'+month%10), '-',
		byte('0'+day/10), byte('0'+day%10), 'T',
		byte('0'+hour/10), byte('0'+hour%10), ':',
		byte('0'+minute/10), byte('0'+minute%10), ':',
		byte('0'+sec/10), byte('0'+sec%10), '.',
		byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10), 'Z')
}

// MarshalJSON implements json.Marshaler with the same bytes as Encode.
func (p Position) MarshalJSON() ([]byte, error) { return p.Encode(), nil }

// wirePosition mirrors Position for decoding, with ts as a string.
type wirePosition struct {
	DeviceID string          `json:"device_id"`
	EventID  string          `json:"event_id"`
	TS       string          `json:"ts"`
	Lat      *float64        `json:"lat"`
	Lon      *float64        `json:"lon"`
	Alt      *float64        `json:"alt"`
	Speed    *float64        `json:"speed"`
	Heading  *float64        `json:"heading"`
	Sats     *int            `json:"sats"`
	Attrs    json.RawMessage `json:"attrs"`
}

// ErrInvalidPosition is wrapped by every error of DecodePosition and
// Validate for a payload that is not a valid position.
var ErrInvalidPosition = errors.New("invalid position")

// decodeJSON is the reference decoder of a position payload, by
// encoding/json: DecodePayload falls back to it for any layout other than
// Encode's.
func decodeJSON(data []byte) (Position, error) {
	var w wirePosition
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&w); err != nil {
		return Position{}, fmt.Errorf("%w: json: %v", ErrInvalidPosition, err)
	}
	if dec.More() {
		return Position{}, fmt.Errorf("%w: trailing data after the object", ErrInvalidPosition)
	}
	if w.Lat == nil || w.Lon == nil {
		return Position{}, fmt.Errorf("%w: lat and lon are required", ErrInvalidPosition)
	}
	ts, err := time.Parse(time.RFC3339Nano, w.TS)
	if err != nil {
		return Position{}, fmt.Errorf("%w: ts: %v", ErrInvalidPosition, err)
	}
	p := Position{
		DeviceID: w.DeviceID, EventID: w.EventID, TS: ts.UTC().Truncate(time.Millisecond),
		Lat: *w.Lat, Lon: *w.Lon, Alt: w.Alt, Speed: w.Speed, Heading: w.Heading, Sats: w.Sats,
	}
	if len(w.Attrs) > 0 && !bytes.Equal(w.Attrs, []byte("null")) {
		p.Attrs = w.Attrs
	}
	if err := p.Validate(); err != nil {
		return Position{}, err
	}
	return p, nil
}

// Validate checks the rules of the design that a decoded position must still
// satisfy (the future-time rule is the bridge's, at ingestion, and is not
// re-checked here: a replayed race is in the past anyway).
func (p *Position) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidPosition, fmt.Sprintf(format, args...))
	}
	if !ValidDeviceID(p.DeviceID) {
		return bad("device_id %q is not 1-64 of [A-Za-z0-9_-]", p.DeviceID)
	}
	if p.EventID != "" && !ValidUUID(p.EventID) {
		return bad("event_id %q is not a lowercase UUID", p.EventID)
	}
	if p.TS.IsZero() {
		return bad("ts is missing")
	}
	if !finite(p.Lat) || p.Lat < -90 || p.Lat > 90 {
		return bad("lat %v outside -90..90", p.Lat)
	}
	if !finite(p.Lon) || p.Lon < -180 || p.Lon > 180 {
		return bad("lon %v outside -180..180", p.Lon)
	}
	if p.Alt != nil && (!finite(*p.Alt) || math.Abs(*p.Alt) > MaxAbsAlt) {
		return bad("alt %v outside ±%v", *p.Alt, MaxAbsAlt)
	}
	if p.Speed != nil && (!finite(*p.Speed) || *p.Speed < 0 || *p.Speed > MaxSpeed) {
		return bad("speed %v outside 0..%v", *p.Speed, MaxSpeed)
	}
	if p.Heading != nil && (!finite(*p.Heading) || *p.Heading < 0 || *p.Heading > 360) {
		return bad("heading %v outside 0..360", *p.Heading)
	}
	if p.Sats != nil && (*p.Sats < 0 || *p.Sats > MaxSats) {
		return bad("sats %d outside 0..%d", *p.Sats, MaxSats)
	}
	if len(p.Attrs) > 0 {
		if len(p.Attrs) > MaxAttrsBytes {
			return bad("attrs is %d bytes, more than %d", len(p.Attrs), MaxAttrsBytes)
		}
		if !isJSONObject(p.Attrs) {
			return bad("attrs is not a JSON object")
		}
	}
	return nil
}

// Limits that complete the design's rules. They exist because the columns
// that store the values are bounded (real, smallint) and because a bound
// that no vehicle can reach is still a useful guard against garbage.
const (
	// MaxAbsAlt bounds alt in metres (the Dead Sea to above airliners).
	MaxAbsAlt = 100000
	// MaxSpeed bounds speed in km/h.
	MaxSpeed = 2000
	// MaxSats bounds sats: no receiver tracks more satellites than exist.
	MaxSats = 255
	// MaxAttrsBytes bounds the compact JSON of attrs.
	MaxAttrsBytes = 8192
)

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func isJSONObject(raw []byte) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 1 && raw[0] == '{' && json.Valid(raw)
}

func appendFloat(b []byte, f float64) []byte {
	return strconv.AppendFloat(b, f, 'f', -1, 64)
}

// appendNumber appends text, appendFloat's form of f, when given, else
// formats f.
func appendNumber(b []byte, f float64, text string) []byte {
	if text != "" {
		return append(b, text...)
	}
	return appendFloat(b, f)
}

// appendString appends a JSON string. Device and event ids are validated to
// plain ASCII, but encode defensively anyway.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
