package contract

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"testing"
	"time"
)

func samples() [][]byte {
	alt, speed, heading, sats := -12.5, 0.0, 360.0, 0
	full := Position{DeviceID: "356938035643809", EventID: "7c1e4b2a-9d3f-4e1a-8b7c-0a1b2c3d4e5f",
		TS: time.Date(2026, 5, 3, 10, 0, 0, 123e6, time.UTC), Lat: -45.07312, Lon: 179.99999,
		Alt: &alt, Speed: &speed, Heading: &heading, Sats: &sats, Attrs: []byte(`{"io239":1,"s":"}{\"","a":[1,{"b":null}]}`)}
	bare := Position{DeviceID: "d", TS: time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC), Lat: 0, Lon: 0}
	attrsOnly := Position{DeviceID: "d", TS: time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC), Lat: 1, Lon: 2, Attrs: []byte(`{"a":1}`)}
	out := [][]byte{full.Encode(), bare.Encode(), attrsOnly.Encode()}
	for _, s := range []string{
		`{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2}` + "\n",                  // trailing newline
		`{"device_id":"d","ts":"2026-05-03T12:00:00.5+02:00","lat":1e1,"lon":-0.0}`,                 // offset, exponent
		`{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2,"sats":1.0}`,              // sats not an integer
		`{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2,"attrs":{]}`,              // bad attrs
		`{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2,"attrs":null}`,            // null attrs
		`{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":01,"lon":2}`,                        // bad number
		`{"device_id":"d\u0041","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2}`,                   // escape
		`{"lat":1,"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lon":2}`,                         // other order
		`{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":91,"lon":2}`,                        // out of range
		`{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2,"speed":-1}`,              // invalid speed
		`{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2}{}`,                       // trailing data
		`{"device_id":"d","event_id":"NOT-A-UUID","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2}`, // bad event
		`{"device_id":"d","ts":"yesterday","lat":1,"lon":2}`,                                        // bad ts
		`not json`, ``, `{}`, `{"device_id":"d"`,
	} {
		out = append(out, []byte(s))
	}
	return out
}

// DecodePosition must agree with decodeJSON, the reference, on every input:
// same verdict, same position; and a payload it calls exact must be one
// that can be forwarded as it is (compact valid JSON).
func checkSame(t *testing.T, data []byte) {
	t.Helper()
	want, wantErr := decodeJSON(data)
	got, exact, gotErr := DecodePayload(data)
	if exact && (gotErr != nil || !json.Valid(data) || bytes.ContainsAny(data, " \n\t\r")) {
		t.Fatalf("%q: called exact (err %v), but is not compact valid JSON", data, gotErr)
	}
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("%q: DecodePosition error %v, decodeJSON error %v", data, gotErr, wantErr)
	}
	if gotErr != nil {
		if !errors.Is(gotErr, ErrInvalidPosition) {
			t.Fatalf("%q: error %v does not wrap ErrInvalidPosition", data, gotErr)
		}
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\nDecodePosition %+v\ndecodeJSON     %+v", data, got, want)
	}
}

func TestDecodeMatchesJSON(t *testing.T) {
	t.Parallel()
	fast := 0
	for _, data := range samples() {
		checkSame(t, data)
		if _, ok := decodeFast(data); ok {
			fast++
		}
	}
	for _, data := range samples()[:3] {
		if _, ok := decodeFast(data); !ok {
			t.Fatalf("fast path refused Encode output %s", data)
		}
	}
	if fast < 3 {
		t.Fatalf("the fast path took only %d samples: it must take what Encode writes", fast)
	}
	for i := 0; i < 2000; i++ {
		p := Position{DeviceID: "dev-" + strconv.Itoa(i), TS: time.UnixMilli(1_700_000_000_000 + int64(i)*997).UTC(),
			Lat: float64(i%180) - 89.123456789, Lon: float64(i%360) - 179.987654321}
		if i%2 == 0 {
			v, n := float64(i)/7, i%256
			p.Alt, p.Speed, p.Heading, p.Sats, p.EventID = &v, &v, nil, &n, "00000000-0000-4000-8000-000000000000"
		}
		data := p.Encode()
		if _, ok := decodeFast(data); !ok {
			t.Fatalf("fast path refused Encode output %s", data)
		}
		checkSame(t, data)
	}
}

func FuzzDecodeMatchesJSON(f *testing.F) {
	for _, s := range samples() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkSame(t, data) })
}

func BenchmarkDecode(b *testing.B) {
	data := samples()[0]
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodePosition(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeJSON(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
