package contract

import (
	"bytes"
	"strconv"
	"time"
)

// DecodePosition decodes and validates a position payload (the JetStream
// payload and the WebSocket item). Errors wrap ErrInvalidPosition.
func DecodePosition(data []byte) (Position, error) {
	p, _, err := DecodePayload(data)
	return p, err
}

// DecodePayload is DecodePosition that also reports whether data is in the
// layout Encode writes (field order, compact, no escapes in ids). Such a
// payload is compact, valid JSON of a valid position, so it can be
// forwarded as it is instead of re-encoded: the broadcaster does.
//
// The bridge writes every payload with Encode, whose layout is fixed; that
// layout is parsed here without reflection, and anything else goes through
// encoding/json (decodeJSON, the reference). Both end in Validate, so the
// result and the verdict are the same (FuzzDecodeMatchesJSON checks it);
// only the speed differs: encoding/json was a quarter of the persister's
// CPU.
func DecodePayload(data []byte) (p Position, exact bool, err error) {
	p, ok := decodeFast(data)
	if !ok {
		p, err = decodeJSON(data)
		return p, false, err
	}
	if err := p.Validate(); err != nil {
		return Position{}, false, err
	}
	return p, true, nil
}

// scanner walks the fixed layout; any surprise makes the caller fall back.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) lit(l string) bool {
	if !bytes.HasPrefix(s.b[s.i:], []byte(l)) {
		return false
	}
	s.i += len(l)
	return true
}

// str reads a JSON string without escapes or control characters (ids and
// timestamps never need them); the opening quote is already consumed.
func (s *scanner) str() (string, bool) {
	for j := s.i; j < len(s.b); j++ {
		c := s.b[j]
		if c == '"' {
			v := string(s.b[s.i:j])
			s.i = j + 1
			return v, true
		}
		if c == '\\' || c < 0x20 || c >= 0x80 {
			return "", false
		}
	}
	return "", false
}

// number reads a JSON number token: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() ([]byte, bool) {
	b, j := s.b, s.i
	digits := func() bool {
		k := j
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		return j > k
	}
	if j < len(b) && b[j] == '-' {
		j++
	}
	if j < len(b) && b[j] == '0' {
		j++
	} else if !digits() {
		return nil, false
	}
	if j < len(b) && b[j] == '.' {
		j++
		if !digits() {
			return nil, false
		}
	}
	if j < len(b) && (b[j] == 'e' || b[j] == 'E') {
		j++
		if j < len(b) && (b[j] == '+' || b[j] == '-') {
			j++
		}
		if !digits() {
			return nil, false
		}
	}
	tok := b[s.i:j]
	s.i = j
	return tok, true
}

func (s *scanner) float() (float64, bool) {
	tok, ok := s.number()
	if !ok {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(tok), 64)
	return f, err == nil
}

// optFloat reads an optional number into *dst and returns dst, or nil
// when the key is absent.
func (s *scanner) optFloat(key string, dst *float64) (*float64, bool) {
	if !s.lit(key) {
		return nil, true
	}
	f, ok := s.float()
	if !ok {
		return nil, false
	}
	*dst = f
	return dst, true
}

// optional holds the optional numbers of one position: one allocation
// instead of four.
type optional struct {
	alt, speed, heading float64
	sats                int
}

// object reads a JSON object's extent by balancing braces outside strings;
// its validity is Validate's concern (json.Valid on attrs).
func (s *scanner) object() ([]byte, bool) {
	b := s.b
	if s.i >= len(b) || b[s.i] != '{' {
		return nil, false
	}
	depth, inStr := 0, false
	for j := s.i; j < len(b); j++ {
		c := b[j]
		switch {
		case inStr:
			if c == '\\' {
				j++
			} else if c == '"' {
				inStr = false
			}
		case c == '"':
			inStr = true
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
			if depth == 0 {
				obj := bytes.Clone(b[s.i : j+1])
				s.i = j + 1
				return obj, true
			}
		}
	}
	return nil, false
}

func decodeFast(data []byte) (Position, bool) {
	var p Position
	s := &scanner{b: data}
	var ok bool
	if !s.lit(`{"device_id":"`) {
		return p, false
	}
	if p.DeviceID, ok = s.str(); !ok {
		return p, false
	}
	if s.lit(`,"event_id":"`) {
		if p.EventID, ok = s.str(); !ok {
			return p, false
		}
	}
	if !s.lit(`,"ts":"`) {
		return p, false
	}
	ts, ok := s.str()
	if !ok {
		return p, false
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return p, false
	}
	p.TS = t.UTC()
	if !s.lit(`,"lat":`) {
		return p, false
	}
	if p.Lat, ok = s.float(); !ok {
		return p, false
	}
	if !s.lit(`,"lon":`) {
		return p, false
	}
	if p.Lon, ok = s.float(); !ok {
		return p, false
	}
	var o *optional // allocated only when an optional number may follow
	if rest := data[s.i:]; len(rest) > 0 && rest[0] == ',' && !bytes.HasPrefix(rest, []byte(`,"attrs":`)) {
		o = new(optional)
	}
	if o != nil {
		if p.Alt, ok = s.optFloat(`,"alt":`, &o.alt); !ok {
			return p, false
		}
		if p.Speed, ok = s.optFloat(`,"speed":`, &o.speed); !ok {
			return p, false
		}
		if p.Heading, ok = s.optFloat(`,"heading":`, &o.heading); !ok {
			return p, false
		}
		if s.lit(`,"sats":`) {
			tok, ok := s.number()
			if !ok {
				return p, false
			}
			n, err := strconv.Atoi(string(tok)) // a fraction or exponent fails, as json does for an int
			if err != nil {
				return p, false
			}
			o.sats = n
			p.Sats = &o.sats
		}
	}
	if s.lit(`,"attrs":`) {
		if p.Attrs, ok = s.object(); !ok {
			return p, false
		}
	}
	if !s.lit(`}`) || s.i != len(data) {
		return p, false
	}
	return p, true
}
