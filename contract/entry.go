package contract

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Reason is why a Redis entry was rejected. It travels in the
// Trm-Reason header of the dead-lettered message and labels metrics, so its
// values are stable snake_case words.
type Reason string

// Rejection reasons, one per bad-input class of the design.
const (
	ReasonMissingField Reason = "missing_field" // a required field is absent or empty
	ReasonBadDeviceID  Reason = "bad_device_id" // not 1-64 of [A-Za-z0-9_-]
	ReasonBadTS        Reason = "bad_ts"        // neither RFC 3339 with offset nor integer Unix ms
	ReasonFutureTS     Reason = "future_ts"     // more than MaxFutureSkew after the bridge's clock
	ReasonBadNumber    Reason = "bad_number"    // a numeric field that does not parse, or NaN/Inf
	ReasonOutOfRange   Reason = "out_of_range"  // a number outside its range
	ReasonBadAttrs     Reason = "bad_attrs"     // attrs is not a JSON object, or too large
	ReasonNotAnEntry   Reason = "not_an_entry"  // a field value that is not a string (never from XADD)
	ReasonUndecodable  Reason = "undecodable"   // a JetStream payload that is not a position (persister)
	ReasonUnstorable   Reason = "unstorable"    // a valid position the database refuses, e.g. \u0000 in attrs (persister)
	// ReasonUnpublishable is a valid position NATS refuses for good
	// (bridge): its message is over the server's max payload or the
	// stream's max message size, its subject is refused, or publishing to
	// it is not permitted. The parser cannot know the server's limits, so
	// the bridge decides this one when the publish fails.
	ReasonUnpublishable Reason = "unpublishable"
)

// Reasons lists every reason ParseEntry can reject an entry for, for
// metrics that want their label values up front.
var Reasons = []Reason{
	ReasonMissingField, ReasonBadDeviceID, ReasonBadTS, ReasonFutureTS,
	ReasonBadNumber, ReasonOutOfRange, ReasonBadAttrs, ReasonNotAnEntry,
}

// MaxFutureSkew is how far in the future a fix time may be before the entry
// is rejected (clock skew of trackers and of the ingestion service).
const MaxFutureSkew = 5 * time.Minute

// Rejection is the error ParseEntry returns for a bad entry.
type Rejection struct {
	Reason Reason
	Field  string // the offending field, when there is one
	Detail string // a sentence for people
}

func (r *Rejection) Error() string {
	if r.Field != "" {
		return fmt.Sprintf("%s: %s: %s", r.Reason, r.Field, r.Detail)
	}
	return fmt.Sprintf("%s: %s", r.Reason, r.Detail)
}

// ReasonOf returns the rejection reason of err, or "" when err is not a
// *Rejection.
func ReasonOf(err error) Reason {
	var r *Rejection
	if errors.As(err, &r) {
		return r.Reason
	}
	return ""
}

func reject(reason Reason, field, format string, args ...any) *Rejection {
	return &Rejection{Reason: reason, Field: field, Detail: fmt.Sprintf(format, args...)}
}

// ParseEntry validates the flat string fields of one Redis stream entry and
// returns the position it describes, without its event id (routing is the
// bridge's). now is the bridge's clock, for the future-time rule. Unknown
// fields are ignored, so the ingestion service can add fields before we read
// them. Values are strings when they come from go-redis; []byte is accepted
// too, any other type is ReasonNotAnEntry. It is ParseFields of a map.
func ParseEntry(fields map[string]any, now time.Time) (Position, error) {
	pairs := make([]string, 0, 2*len(fields))
	for name, v := range fields {
		switch s := v.(type) {
		case string:
			pairs = append(pairs, name, s)
		case []byte:
			pairs = append(pairs, name, string(s))
		default:
			if isPositionField(name) {
				return Position{}, reject(ReasonNotAnEntry, name, "value of type %T is not a string", v)
			}
		}
	}
	return ParseFields(pairs, now)
}

// positionFields are the entry fields ParseFields reads.
var positionFields = [...]string{"device_id", "ts", "lat", "lon", "alt", "speed", "heading", "sats", "attrs"}

// fieldIndex is the index of name in positionFields, -1 when it is not
// one of them.
func fieldIndex(name string) int {
	switch name {
	case "device_id":
		return 0
	case "ts":
		return 1
	case "lat":
		return 2
	case "lon":
		return 3
	case "alt":
		return 4
	case "speed":
		return 5
	case "heading":
		return 6
	case "sats":
		return 7
	case "attrs":
		return 8
	}
	return -1
}

func isPositionField(name string) bool { return fieldIndex(name) >= 0 }

// ParseFields is ParseEntry of an entry's fields as Redis sends them:
// name, value, name, value... (an odd last name is ignored). When a name
// repeats, its last value counts, as in a map built from the reply.
func ParseFields(pairs []string, now time.Time) (Position, error) {
	return ParseFieldsDecimals(pairs, now, nil)
}

// Decimals is the text of a position's numbers as its entry gave them,
// kept where that text is already what AppendJSON writes for the number
// (canonicalDecimal), so that AppendJSONDecimals copies it instead of
// formatting the float again. "" means format the float.
type Decimals struct{ Lat, Lon, Alt, Speed, Heading string }

// ParseFieldsDecimals is ParseFields that also fills d (when not nil)
// for AppendJSONDecimals.
func ParseFieldsDecimals(pairs []string, now time.Time, d *Decimals) (Position, error) {
	// One pass over the pairs: the last value of each field read.
	var vals [len(positionFields)]string
	for i := 0; i+1 < len(pairs); i += 2 {
		if f := fieldIndex(pairs[i]); f >= 0 {
			vals[f] = pairs[i+1]
		}
	}
	get := func(name string) (string, bool) {
		v := vals[fieldIndex(name)]
		return v, v != ""
	}
	required := func(name string) (string, *Rejection) {
		s, ok := get(name)
		if !ok {
			return "", reject(ReasonMissingField, name, "required field is missing or empty")
		}
		return s, nil
	}

	var p Position
	dev, rej := required("device_id")
	if rej != nil {
		return Position{}, rej
	}
	if !ValidDeviceID(dev) {
		return Position{}, reject(ReasonBadDeviceID, "device_id", "%q is not 1-64 of [A-Za-z0-9_-]", truncate(dev))
	}
	p.DeviceID = dev

	tsRaw, rej := required("ts")
	if rej != nil {
		return Position{}, rej
	}
	ts, rej := parseTS(tsRaw)
	if rej != nil {
		return Position{}, rej
	}
	if ts.Sub(now) > MaxFutureSkew {
		return Position{}, reject(ReasonFutureTS, "ts", "%s is %s ahead of the bridge clock (limit %s)",
			ts.Format(TimeLayout), ts.Sub(now).Round(time.Second), MaxFutureSkew)
	}
	p.TS = ts

	// Written to d at the end: d is left alone on a rejection.
	var text Decimals
	keep := d != nil
	s, rej := required("lat")
	if rej != nil {
		return Position{}, rej
	}
	if p.Lat, text.Lat, rej = parseNumber("lat", s, -90, 90, keep); rej != nil {
		return Position{}, rej
	}
	if s, rej = required("lon"); rej != nil {
		return Position{}, rej
	}
	if p.Lon, text.Lon, rej = parseNumber("lon", s, -180, 180, keep); rej != nil {
		return Position{}, rej
	}

	// The optional numbers share one allocation.
	var opt *optionalNumbers
	optional := func() {
		if opt == nil {
			opt = new(optionalNumbers)
		}
	}
	if s, ok := get("alt"); ok {
		v, t, rej := parseNumber("alt", s, -MaxAbsAlt, MaxAbsAlt, keep)
		if rej != nil {
			return Position{}, rej
		}
		optional()
		opt.alt, p.Alt, text.Alt = v, &opt.alt, t
	}
	if s, ok := get("speed"); ok {
		v, t, rej := parseNumber("speed", s, 0, MaxSpeed, keep)
		if rej != nil {
			return Position{}, rej
		}
		optional()
		opt.speed, p.Speed, text.Speed = v, &opt.speed, t
	}
	if s, ok := get("heading"); ok {
		v, t, rej := parseNumber("heading", s, 0, 360, keep)
		if rej != nil {
			return Position{}, rej
		}
		optional()
		opt.heading, p.Heading, text.Heading = v, &opt.heading, t
	}

	if s, ok := get("sats"); ok {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return Position{}, reject(ReasonBadNumber, "sats", "%q is not an integer", truncate(s))
		}
		if n < 0 || n > MaxSats {
			return Position{}, reject(ReasonOutOfRange, "sats", "%d outside 0..%d", n, MaxSats)
		}
		optional()
		opt.sats, p.Sats = n, &opt.sats
	}

	if s, ok := get("attrs"); ok {
		attrs := []byte(s)
		// Compact JSON without a space anywhere is its own compact form:
		// checking it is enough. Anything else is compacted.
		if strings.ContainsAny(s, " \t\r\n") || !json.Valid(attrs) {
			var buf bytes.Buffer
			if err := json.Compact(&buf, attrs); err != nil {
				return Position{}, reject(ReasonBadAttrs, "attrs", "not valid JSON: %v", err)
			}
			attrs = buf.Bytes()
		}
		if len(attrs) == 0 || attrs[0] != '{' {
			return Position{}, reject(ReasonBadAttrs, "attrs", "not a JSON object")
		}
		if len(attrs) > MaxAttrsBytes {
			return Position{}, reject(ReasonBadAttrs, "attrs", "%d bytes, more than %d", len(attrs), MaxAttrsBytes)
		}
		p.Attrs = attrs
	}
	if d != nil {
		*d = text
	}
	return p, nil
}

// optionalNumbers holds a parsed position's optional numbers, which its
// pointer fields point into.
type optionalNumbers struct {
	alt, speed, heading float64
	sats                int
}

// parseNumber is parseFloat, and, with keep, s itself when it is
// canonicalDecimal ("" otherwise).
func parseNumber(name, s string, min, max float64, keep bool) (float64, string, *Rejection) {
	v, rej := parseFloat(name, s, min, max)
	if rej != nil {
		return 0, "", rej
	}
	if keep && canonicalDecimal(s) {
		return v, s, nil
	}
	return v, "", nil
}

// canonicalDecimal reports whether s is exactly what AppendJSON writes for
// the number it denotes: an optional minus, an integer part without
// leading zeros, an optional fraction without trailing zeros, no exponent,
// at most 15 significant digits (so the float64 nearest s formats back to
// s, strconv's shortest form) and short enough to stay far from the
// subnormals. TestCanonicalDecimal checks it against strconv.
func canonicalDecimal(s string) bool {
	if len(s) == 0 || len(s) > 24 {
		return false
	}
	i := 0
	if s[0] == '-' {
		i++
	}
	intStart := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	intLen := i - intStart
	if intLen == 0 || intLen > 1 && s[intStart] == '0' {
		return false
	}
	sig := intLen
	if s[intStart] == '0' {
		sig = 0
	}
	if i == len(s) {
		return sig <= 15
	}
	if s[i] != '.' {
		return false
	}
	i++
	fracStart := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		if sig > 0 || s[i] != '0' {
			sig++
		}
		i++
	}
	return i == len(s) && i > fracStart && s[i-1] != '0' && sig <= 15
}

// parseTS accepts RFC 3339 with an offset (Z or ±hh:mm, any fraction) or
// integer Unix milliseconds, and truncates to milliseconds, the resolution of
// the wire and of the Msg-Id.
func parseTS(s string) (time.Time, *Rejection) {
	s = strings.TrimSpace(s)
	if s != "" && (s[0] >= '0' && s[0] <= '9') && !strings.ContainsAny(s, "-:T") {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, reject(ReasonBadTS, "ts", "%q is not integer Unix milliseconds", truncate(s))
		}
		if ms > maxUnixMillis {
			return time.Time{}, reject(ReasonBadTS, "ts", "%d ms is past year 9999", ms)
		}
		return time.UnixMilli(ms).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, reject(ReasonBadTS, "ts", "%q is neither RFC 3339 with offset nor Unix milliseconds", truncate(s))
	}
	if t.Year() < 1970 {
		return time.Time{}, reject(ReasonBadTS, "ts", "%q is before 1970", truncate(s))
	}
	return t.UTC().Truncate(time.Millisecond), nil
}

const maxUnixMillis = 253402300799999 // 9999-12-31T23:59:59.999Z

func parseFloat(name, s string, min, max float64) (float64, *Rejection) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || !finite(v) {
		return 0, reject(ReasonBadNumber, name, "%q is not a finite decimal number", truncate(s))
	}
	if v < min || v > max {
		return 0, reject(ReasonOutOfRange, name, "%v outside %v..%v", v, min, max)
	}
	return v, nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
