package contract

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

func ptr[T any](v T) *T { return &v }

func goldenPositions() map[string]Position {
	ts := time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)
	return map[string]Position{
		"position_full": {
			DeviceID: "356938035643809", EventID: "7c1e4a52-8b7e-4b8e-9a51-2f0c6f1d9e3a", TS: ts,
			Lat: 45.07312, Lon: 7.68612, Alt: ptr(231.5), Speed: ptr(88.2), Heading: ptr(121.0), Sats: ptr(11),
			Attrs: json.RawMessage(`{"io239":1}`),
		},
		"position_minimal":    {DeviceID: "dev-1", EventID: "7c1e4a52-8b7e-4b8e-9a51-2f0c6f1d9e3a", TS: ts.Add(123 * time.Millisecond), Lat: -33.5, Lon: -70.25},
		"position_unassigned": {DeviceID: "dev_2", TS: ts, Lat: 0, Lon: 0, Speed: ptr(0.0)},
	}
}

func TestPositionGolden(t *testing.T) {
	for name, p := range goldenPositions() {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata", name+".json")
			got := append(p.Encode(), '\n')
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update once to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("encode:\n got %s\nwant %s", got, want)
			}
			// The golden bytes are compact JSON.
			var buf bytes.Buffer
			if err := json.Compact(&buf, want); err != nil || !bytes.Equal(buf.Bytes(), bytes.TrimSpace(want)) {
				t.Fatalf("golden is not compact JSON: %v", err)
			}
			// Round trip: decode gives back the same position and the same bytes.
			back, err := DecodePosition(want)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(append(back.Encode(), '\n'), want) {
				t.Fatalf("round trip changed bytes: %s", back.Encode())
			}
			// encoding/json agrees with the hand-written encoder.
			std, err := json.Marshal(p)
			if err != nil || !bytes.Equal(std, p.Encode()) {
				t.Fatalf("json.Marshal = %s, %v", std, err)
			}
		})
	}
}

func TestDecodePositionRejects(t *testing.T) {
	for name, data := range map[string]string{
		"not json":         `nope`,
		"array":            `[1]`,
		"trailing":         `{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2} {}`,
		"missing lat":      `{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lon":2}`,
		"bad device":       `{"device_id":"a.b","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2}`,
		"bad event":        `{"device_id":"d","event_id":"X","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2}`,
		"bad ts":           `{"device_id":"d","ts":"yesterday","lat":1,"lon":2}`,
		"missing ts":       `{"device_id":"d","lat":1,"lon":2}`,
		"lat out of range": `{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":91,"lon":2}`,
		"attrs not object": `{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2,"attrs":[1]}`,
		"sats negative":    `{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2,"sats":-1}`,
		"speed negative":   `{"device_id":"d","ts":"2026-05-03T10:00:00.000Z","lat":1,"lon":2,"speed":-1}`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodePosition([]byte(data)); !errors.Is(err, ErrInvalidPosition) {
				t.Fatalf("got %v, want ErrInvalidPosition", err)
			}
		})
	}
}

func TestSubjects(t *testing.T) {
	ev := "7c1e4a52-8b7e-4b8e-9a51-2f0c6f1d9e3a"
	if got := PositionSubject(ev, "d1"); got != "pos."+ev+".d1" {
		t.Fatal(got)
	}
	if got := PositionSubject("", "d1"); got != "pos.unassigned.d1" {
		t.Fatal(got)
	}
	if got := EventSubject(ev); got != "pos."+ev+".*" {
		t.Fatal(got)
	}
	for subj, want := range map[string][3]string{
		"pos." + ev + ".d1":  {ev, "d1", "ok"},
		"pos.unassigned.d1":  {"", "d1", "ok"},
		"pos." + ev + ".a.b": {"", "", ""},
		"pos.NOTUUID.d1":     {"", "", ""},
		"dlq.positions":      {"", "", ""},
		"pos." + ev:          {"", "", ""},
		"pos." + ev + ".":    {"", "", ""},
	} {
		e, d, ok := ParseSubject(subj)
		if e != want[0] || d != want[1] || ok != (want[2] == "ok") {
			t.Errorf("ParseSubject(%q) = %q %q %v", subj, e, d, ok)
		}
	}
	if got := MsgID("d1", time.UnixMilli(1777802400123)); got != "d1:1777802400123" {
		t.Fatal(got)
	}
	if ValidUUID("7C1E4A52-8B7E-4B8E-9A51-2F0C6F1D9E3A") {
		t.Fatal("uppercase uuid accepted: ids must be canonical lowercase")
	}
}

// TestAppendTime compares the hand-written formatter with the standard
// one: every field's extremes, sub-millisecond parts (truncated, not
// rounded), other zones, years past the four digits, and random instants.
func TestAppendTime(t *testing.T) {
	zone := time.FixedZone("UTC-3", -3*3600)
	times := []time.Time{
		{},
		time.Unix(0, 0),
		time.Date(1970, 1, 1, 0, 0, 0, 999_999_999, time.UTC),
		time.Date(2026, 12, 31, 23, 59, 59, 999_999_999, time.UTC),
		time.Date(2026, 5, 3, 10, 0, 0, 500_000, time.UTC),
		time.Date(2026, 5, 3, 1, 2, 3, 4_000_000, zone),
		time.Date(2028, 2, 29, 12, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999_000_000, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Now(),
	}
	seed := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	for i := range 10000 {
		seed = seed*6364136223846793005 + 1442695040888963407
		times = append(times, time.Unix(0, seed&(1<<62-1)).Add(time.Duration(i)))
	}
	for _, tm := range times {
		want := tm.UTC().AppendFormat([]byte("x"), TimeLayout)
		if got := appendTime([]byte("x"), tm); !bytes.Equal(got, want) {
			t.Fatalf("appendTime(%v) = %q, want %q", tm, got, want)
		}
	}
}

// BenchmarkAppendTime measures the wire timestamp's formatter against the
// standard library's, in the same run.
func BenchmarkAppendTime(b *testing.B) {
	tm := time.Date(2026, 5, 3, 10, 0, 0, 123_000_000, time.UTC)
	buf := make([]byte, 0, 64)
	b.Run("AppendFormat", func(b *testing.B) {
		for b.Loop() {
			buf = tm.UTC().AppendFormat(buf[:0], TimeLayout)
		}
	})
	b.Run("appendTime", func(b *testing.B) {
		for b.Loop() {
			buf = appendTime(buf[:0], tm)
		}
	})
}
