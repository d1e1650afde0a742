package broadcaster

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"trm-live/contract"
)

// TestPayload: the bridge's Encode bytes are forwarded as they are (no
// decode and re-encode); another valid layout is re-encoded once; anything
// invalid, or for another device or event, is refused.
func TestPayload(t *testing.T) {
	t.Parallel()
	const ev = "7c1e4a52-8b7e-4b8e-9a51-2f0c6f1d9e3a"
	ts := time.Date(2026, 5, 3, 10, 0, 0, 123e6, time.UTC)
	p := contract.Position{DeviceID: "dev-1", EventID: ev, TS: ts, Lat: 45, Lon: 7, Sats: new(11), Attrs: []byte(`{"a":1}`)}
	reordered := contract.Position{DeviceID: "dev-1", EventID: ev, TS: ts, Lat: 45, Lon: 7}
	for name, tc := range map[string]struct {
		data   string
		device string
		ok     bool
		item   []byte // what must be sent
	}{
		"encoded":             {string(p.Encode()), "dev-1", true, p.Encode()},
		"other field order":   {`{"ts":"2026-05-03T10:00:00.123Z","event_id":"` + ev + `","device_id":"dev-1","lat":45,"lon":7}`, "dev-1", true, reordered.Encode()},
		"with whitespace":     {string(reordered.Encode()) + "\n", "dev-1", true, reordered.Encode()},
		"other device":        {string(p.Encode()), "dev-2", false, nil},
		"broken after ts":     {strings.TrimSuffix(string(p.Encode()), "}"), "dev-1", false, nil},
		"bad ts":              {strings.Replace(string(p.Encode()), "10:00:00.123Z", "10:00:00.12xZ", 1), "dev-1", false, nil},
		"bad attrs":           {strings.Replace(string(p.Encode()), `{"a":1}`, `{"a":}`, 1), "dev-1", false, nil},
		"not a position":      {`{"not":"a position"}`, "dev-1", false, nil},
		"out of range (slow)": {`{"lat":95,"lon":7,"ts":"2026-05-03T10:00:00.123Z","device_id":"dev-1","event_id":"` + ev + `"}`, "dev-1", false, nil},
	} {
		data := []byte(tc.data)
		got, item, ok := payload(data, ev, tc.device)
		if ok != tc.ok || ok && got != ts.UnixMilli() {
			t.Errorf("%s: payload ts = %d, %v; want %v", name, got, ok, tc.ok)
			continue
		}
		if !bytes.Equal(item, tc.item) {
			t.Errorf("%s: item %s, want %s", name, item, tc.item)
		}
		if name == "encoded" && &item[0] != &data[0] {
			t.Errorf("%s: the payload was copied or re-encoded, not forwarded", name)
		}
	}
}
