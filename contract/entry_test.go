package contract

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)

func valid() map[string]any {
	return map[string]any{
		"device_id": "356938035643809",
		"ts":        "2026-05-03T10:00:00.000Z",
		"lat":       "45.07312",
		"lon":       "7.68612",
		"alt":       "231.5",
		"speed":     "88.2",
		"heading":   "121",
		"sats":      "11",
		"attrs":     `{"io239": 1}`,
	}
}

func with(kv ...any) map[string]any {
	m := valid()
	for i := 0; i < len(kv); i += 2 {
		k := kv[i].(string)
		if kv[i+1] == nil {
			delete(m, k)
		} else {
			m[k] = kv[i+1]
		}
	}
	return m
}

func TestParseEntryValid(t *testing.T) {
	p, err := ParseEntry(valid(), now)
	if err != nil {
		t.Fatal(err)
	}
	got := string(p.Encode())
	want := `{"device_id":"356938035643809","ts":"2026-05-03T10:00:00.000Z","lat":45.07312,"lon":7.68612,"alt":231.5,"speed":88.2,"heading":121,"sats":11,"attrs":{"io239":1}}`
	if got != want {
		t.Fatalf("encode:\n got %s\nwant %s", got, want)
	}
}

func TestParseEntryAccepts(t *testing.T) {
	cases := []struct {
		name   string
		fields map[string]any
		check  func(t *testing.T, p Position)
	}{
		{"required only", map[string]any{"device_id": "d1", "ts": "1777802400000", "lat": "0", "lon": "0"}, func(t *testing.T, p Position) {
			if p.Alt != nil || p.Speed != nil || p.Heading != nil || p.Sats != nil || p.Attrs != nil {
				t.Fatalf("optional fields should be absent: %+v", p)
			}
			if got := p.TS.Format(TimeLayout); got != "2026-05-03T10:00:00.000Z" {
				t.Fatalf("ts %s", got)
			}
		}},
		{"rfc3339 with offset", with("ts", "2026-05-03T12:00:00.5+02:00"), func(t *testing.T, p Position) {
			if got := p.TS.Format(TimeLayout); got != "2026-05-03T10:00:00.500Z" {
				t.Fatalf("ts %s", got)
			}
		}},
		{"sub-millisecond truncated", with("ts", "2026-05-03T10:00:00.123999Z"), func(t *testing.T, p Position) {
			if p.TS.Nanosecond() != 123_000_000 {
				t.Fatalf("ts %v", p.TS)
			}
		}},
		{"bounds inclusive", with("lat", "-90", "lon", "180", "heading", "360", "speed", "0", "sats", "0"), nil},
		{"future within skew", with("ts", now.Add(MaxFutureSkew).Format(time.RFC3339Nano)), nil},
		{"empty optional is absent", with("alt", "", "attrs", ""), func(t *testing.T, p Position) {
			if p.Alt != nil || p.Attrs != nil {
				t.Fatalf("empty optional should be absent")
			}
		}},
		{"bytes values", map[string]any{"device_id": []byte("d-1_X"), "ts": []byte("1777802400000"), "lat": []byte("1.5"), "lon": []byte("-2")}, nil},
		{"unknown field ignored", with("extra", "x"), nil},
		{"64-char device id", with("device_id", strings.Repeat("a", 64)), nil},
		{"attrs compacted", with("attrs", "{ \"a\" : [1, 2] }"), func(t *testing.T, p Position) {
			if string(p.Attrs) != `{"a":[1,2]}` {
				t.Fatalf("attrs %s", p.Attrs)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := ParseEntry(c.fields, now)
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if err := p.Validate(); err != nil {
				t.Fatalf("parsed position does not validate: %v", err)
			}
			if c.check != nil {
				c.check(t, p)
			}
		})
	}
}

func TestParseEntryRejects(t *testing.T) {
	cases := []struct {
		name   string
		fields map[string]any
		reason Reason
		field  string
	}{
		{"missing device_id", with("device_id", nil), ReasonMissingField, "device_id"},
		{"empty device_id", with("device_id", ""), ReasonMissingField, "device_id"},
		{"missing ts", with("ts", nil), ReasonMissingField, "ts"},
		{"missing lat", with("lat", nil), ReasonMissingField, "lat"},
		{"missing lon", with("lon", nil), ReasonMissingField, "lon"},
		{"device_id with dot", with("device_id", "a.b"), ReasonBadDeviceID, "device_id"},
		{"device_id with wildcard", with("device_id", "*"), ReasonBadDeviceID, "device_id"},
		{"device_id with space", with("device_id", "a b"), ReasonBadDeviceID, "device_id"},
		{"device_id too long", with("device_id", strings.Repeat("a", 65)), ReasonBadDeviceID, "device_id"},
		{"device_id unicode", with("device_id", "é"), ReasonBadDeviceID, "device_id"},
		{"ts garbage", with("ts", "yesterday"), ReasonBadTS, "ts"},
		{"ts without offset", with("ts", "2026-05-03T10:00:00"), ReasonBadTS, "ts"},
		{"ts float ms", with("ts", "1777802400000.5"), ReasonBadTS, "ts"},
		{"ts negative", with("ts", "-5"), ReasonBadTS, "ts"},
		{"ts ms overflow", with("ts", "99999999999999999999"), ReasonBadTS, "ts"},
		{"ts before 1970", with("ts", "1969-12-31T23:59:59Z"), ReasonBadTS, "ts"},
		{"ts in the future", with("ts", now.Add(MaxFutureSkew+time.Second).Format(time.RFC3339)), ReasonFutureTS, "ts"},
		{"lat not a number", with("lat", "north"), ReasonBadNumber, "lat"},
		{"lat NaN", with("lat", "NaN"), ReasonBadNumber, "lat"},
		{"lon Inf", with("lon", "+Inf"), ReasonBadNumber, "lon"},
		{"lat out of range", with("lat", "90.0001"), ReasonOutOfRange, "lat"},
		{"lon out of range", with("lon", "-180.5"), ReasonOutOfRange, "lon"},
		{"speed negative", with("speed", "-1"), ReasonOutOfRange, "speed"},
		{"speed absurd", with("speed", "5000"), ReasonOutOfRange, "speed"},
		{"heading over 360", with("heading", "361"), ReasonOutOfRange, "heading"},
		{"heading negative", with("heading", "-0.1"), ReasonOutOfRange, "heading"},
		{"alt not a number", with("alt", "high"), ReasonBadNumber, "alt"},
		{"alt absurd", with("alt", "1e9"), ReasonOutOfRange, "alt"},
		{"sats float", with("sats", "7.5"), ReasonBadNumber, "sats"},
		{"sats negative", with("sats", "-1"), ReasonOutOfRange, "sats"},
		{"sats huge", with("sats", "1000"), ReasonOutOfRange, "sats"},
		{"attrs not json", with("attrs", "{io239:1}"), ReasonBadAttrs, "attrs"},
		{"attrs array", with("attrs", "[1,2]"), ReasonBadAttrs, "attrs"},
		{"attrs string", with("attrs", `"x"`), ReasonBadAttrs, "attrs"},
		{"attrs too large", with("attrs", `{"k":"`+strings.Repeat("x", MaxAttrsBytes)+`"}`), ReasonBadAttrs, "attrs"},
		{"non-string value", with("lat", 45.0), ReasonNotAnEntry, "lat"},
	}
	seen := map[Reason]bool{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseEntry(c.fields, now)
			if err == nil {
				t.Fatal("accepted")
			}
			rej, ok := err.(*Rejection)
			if !ok {
				t.Fatalf("error %T is not a *Rejection: %v", err, err)
			}
			if rej.Reason != c.reason || rej.Field != c.field {
				t.Fatalf("got %s/%s (%v), want %s/%s", rej.Reason, rej.Field, err, c.reason, c.field)
			}
			if ReasonOf(err) != c.reason {
				t.Fatalf("ReasonOf = %q", ReasonOf(err))
			}
			if rej.Detail == "" {
				t.Fatal("no detail for people")
			}
		})
		seen[c.reason] = true
	}
	for _, r := range Reasons {
		if !seen[r] {
			t.Errorf("reason %s has no test case", r)
		}
	}
}

// ParseFields reads pairs as Redis sends them: a repeated name's last value
// counts (as in the map go-redis builds), and an odd trailing name is
// ignored.
func TestParseFields(t *testing.T) {
	pairs := []string{"device_id", "a", "ts", "1777802400000", "lat", "1", "lon", "2", "device_id", "dev-2", "sats"}
	p, err := ParseFields(pairs, now)
	if err != nil {
		t.Fatal(err)
	}
	if p.DeviceID != "dev-2" || p.Sats != nil || p.Lat != 1 || p.Lon != 2 {
		t.Fatalf("got %+v", p)
	}
	// The same entry as a map and as pairs parses the same, and a
	// missing field is named in both.
	var flat []string
	for k, v := range valid() {
		flat = append(flat, k, v.(string))
	}
	a, errA := ParseEntry(valid(), now)
	b, errB := ParseFields(flat, now)
	if errA != nil || errB != nil || string(a.Encode()) != string(b.Encode()) {
		t.Fatalf("map %s (%v), pairs %s (%v)", a.Encode(), errA, b.Encode(), errB)
	}
	_, err = ParseFields([]string{"device_id", "a", "ts", ""}, now)
	if r := ReasonOf(err); r != ReasonMissingField || !strings.Contains(err.Error(), "ts") {
		t.Fatalf("empty ts: %v", err)
	}
}

// fieldIndex and positionFields name the same fields in the same order.
func TestFieldIndex(t *testing.T) {
	for i, f := range positionFields {
		if got := fieldIndex(f); got != i {
			t.Errorf("fieldIndex(%q) = %d, want %d", f, got, i)
		}
	}
	for _, f := range []string{"", "Device_id", "event_id", "ts ", "attr"} {
		if fieldIndex(f) != -1 || isPositionField(f) {
			t.Errorf("%q taken for a position field", f)
		}
	}
}

// canonicalDecimal takes only what strconv writes back unchanged: the text
// AppendJSONDecimals copies is the text AppendJSON would format.
func TestCanonicalDecimal(t *testing.T) {
	roundTrips := func(s string) bool {
		v, err := strconv.ParseFloat(s, 64)
		return err == nil && string(appendFloat(nil, v)) == s
	}
	for _, s := range []string{"0", "-0", "1", "12", "-7", "0.5", "-0.5", "45.07312", "7.68612",
		"359.9", "0.000001", "123456789012345", "12345678.9012345", "0.1", "0.123456789012345",
		"0.0000000000000000000001"} {
		if !canonicalDecimal(s) {
			t.Errorf("canonicalDecimal(%q) = false, want true", s)
		}
		if !roundTrips(s) {
			t.Errorf("%q does not round-trip: the test's premise is wrong", s)
		}
	}
	for _, s := range []string{"", "-", "+1", "01", "00", "-01", "1.", ".5", "1.0", "1.50", "-0.0", "1e5",
		"1E5", " 1", "1 ", "0x10", "1_0", "NaN", "Inf", "1234567890123456", "0.1234567890123456",
		"1.2.3", "--1", "0.00000000000000000000001", "9007199254740993"} {
		if canonicalDecimal(s) {
			t.Errorf("canonicalDecimal(%q) = true, want false", s)
		}
	}
	// Random decimals of every shape: whatever is taken round-trips.
	rnd := rand.New(rand.NewPCG(1, 2))
	taken := 0
	for range 200000 {
		var b []byte
		if rnd.IntN(2) == 0 {
			b = append(b, '-')
		}
		for range 1 + rnd.IntN(10) {
			b = append(b, byte('0'+rnd.IntN(10)))
		}
		if rnd.IntN(4) != 0 {
			b = append(b, '.')
			for range rnd.IntN(14) {
				b = append(b, byte('0'+rnd.IntN(10)))
			}
		}
		s := string(b)
		if canonicalDecimal(s) {
			taken++
			if !roundTrips(s) {
				t.Fatalf("canonicalDecimal(%q) = true, but strconv writes %s", s, appendFloat(nil, must(strconv.ParseFloat(s, 64))))
			}
		}
	}
	if taken < 50000 {
		t.Fatalf("only %d of 200000 random decimals taken: the check is too strict to be worth it", taken)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
