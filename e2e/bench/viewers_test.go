package main

import (
	"fmt"
	"testing"
	"time"

	"trm-live/contract/ws"
)

// A viewer counts a delivered position in both histograms, and the
// positions the broadcaster coalesced before it (one per period since the
// device's previous one) in the every-offered histogram only, at the
// successor's delivery; a position sent outside the window counts in
// neither.
func TestViewerCountsCoalesced(t *testing.T) {
	const period = int64(100 * time.Millisecond)
	v := &viewer{h: newHist(), all: newHist(), lastSent: make([]int64, 2)}
	ws0, we := int64(1_000_000_000), int64(2_000_000_000)
	frame := func(dev int, sent int64) []byte {
		item := fmt.Sprintf(`{"device_id":%q,"event_id":"e","ts":"2026-01-01T00:00:00.000Z","lat":1,"lon":2,"attrs":{"sent":%d}}`, deviceID(dev), sent)
		return ws.AppendPositions(nil, "event:e", [][]byte{[]byte(item)})
	}
	v.apply(frame(0, ws0-period), ws0, ws0, we, period)            // before the window: held, not counted
	v.apply(frame(0, ws0+period), ws0+period+5e6, ws0, we, period) // one coalesced (at ws0), delivered 5 ms late
	v.apply(frame(1, ws0+2*period), ws0+2*period, ws0, we, period) // first of device 1: nothing coalesced
	v.apply(frame(0, ws0+4*period), ws0+4*period, ws0, we, period) // two coalesced
	if v.received != 3 || v.h.n != 3 {
		t.Fatalf("delivered: received %d, histogram %d, want 3", v.received, v.h.n)
	}
	if v.all.n != 6 {
		t.Fatalf("every offered: %d, want 6 (3 delivered + 3 coalesced)", v.all.n)
	}
	// The oldest of the last two coalesced waited two periods.
	if got, want := v.all.max, time.Duration(2*period); got != want {
		t.Fatalf("every offered max %s, want %s", got, want)
	}
	if v.h.max != 5*time.Millisecond {
		t.Fatalf("delivered max %s, want 5ms", v.h.max)
	}
}
