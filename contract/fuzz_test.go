package contract

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// FuzzParseEntry checks that the parser never panics and never accepts an
// invalid position: whatever it accepts validates, encodes to JSON that
// decodes back to the same bytes, and respects the future-time rule.
func FuzzParseEntry(f *testing.F) {
	f.Add("356938035643809", "2026-05-03T10:00:00.000Z", "45.07312", "7.68612", "231.5", "88.2", "121", "11", `{"io239":1}`)
	f.Add("d", "1777802400000", "0", "0", "", "", "", "", "")
	f.Add("a.b", "x", "NaN", "Inf", "-", "1e309", "361", "-1", "[]")
	f.Add("d", "2026-05-03T10:04:59.999+00:00", "-90", "180", "-1e5", "2000", "360", "255", `{}`)
	f.Add("d", "0x10", "1_0", "0x1p-2", " 1", "1 ", "+5", "007", `{"a":"\u0000"}`)
	f.Add("d", "1777802400000", "-0", "-0.0", "0.000001", "123456789012345", "1.50", "359.99999999999999", "")
	f.Add("d", "1777802400000", "89.99999999999999", "-179.1234567890123", "8848.86", "0.1", "0", "3", "")
	f.Fuzz(func(t *testing.T, dev, ts, lat, lon, alt, speed, heading, sats, attrs string) {
		fields := map[string]any{"device_id": dev, "ts": ts, "lat": lat, "lon": lon,
			"alt": alt, "speed": speed, "heading": heading, "sats": sats, "attrs": attrs}
		p, err := ParseEntry(fields, now)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("accepted an invalid position: %v (fields %q)", err, fields)
		}
		if p.TS.Sub(now) > MaxFutureSkew {
			t.Fatalf("accepted a future fix: %v", p.TS)
		}
		if strings.ContainsAny(p.DeviceID, ".*> \t\r\n") {
			t.Fatalf("device id unsafe as a subject token: %q", p.DeviceID)
		}
		if attrs != "" {
			var buf bytes.Buffer
			if json.Compact(&buf, []byte(attrs)) != nil || !bytes.Equal(buf.Bytes(), p.Attrs) {
				t.Fatalf("attrs %q kept as %q, json.Compact gives %q", attrs, p.Attrs, buf.Bytes())
			}
		}
		enc := p.Encode()
		pairs := []string{"device_id", dev, "ts", ts, "lat", lat, "lon", lon, "alt", alt,
			"speed", speed, "heading", heading, "sats", sats, "attrs", attrs}
		var d Decimals
		pd, err := ParseFieldsDecimals(pairs, now, &d)
		if err != nil {
			t.Fatalf("ParseFieldsDecimals refused what ParseEntry took: %v", err)
		}
		if fast := pd.AppendJSONDecimals(nil, &d); !bytes.Equal(fast, enc) {
			t.Fatalf("the entry's own decimals changed the bytes:\n%s\n%s", fast, enc)
		}
		back, err := DecodePosition(enc)
		if err != nil {
			t.Fatalf("encoded position does not decode: %v: %s", err, enc)
		}
		if !bytes.Equal(back.Encode(), enc) {
			t.Fatalf("round trip changed bytes:\n%s\n%s", enc, back.Encode())
		}
		if !back.TS.Equal(p.TS.Truncate(time.Millisecond)) {
			t.Fatalf("ts changed: %v -> %v", p.TS, back.TS)
		}
	})
}

// FuzzDecodePosition: the persister's decoder never panics, and whatever it
// accepts validates and re-encodes stably.
func FuzzDecodePosition(f *testing.F) {
	f.Add([]byte(`{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2}`))
	f.Add([]byte(`{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2,"attrs":{"a":1},"sats":3}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodePosition(data)
		if err != nil {
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("accepted invalid: %v", err)
		}
		enc := p.Encode()
		back, err := DecodePosition(enc)
		if err != nil || !bytes.Equal(back.Encode(), enc) {
			t.Fatalf("unstable: %v\n%s\n%s", err, enc, back.Encode())
		}
	})
}
