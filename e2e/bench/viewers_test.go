package main

import (
	"fmt"
	"testing"
	"time"

	"trm-live/contract"
	"trm-live/contract/ws"
	"trm-live/testkit/benchenv"
)

// A viewer counts a delivered position in both histograms, and the
// positions the broadcaster coalesced before it (by fix time, one per
// period since the device's previous one) in the every-offered histogram
// only, at the successor's delivery; a position sent outside the window
// counts in neither, and a producer late by more than half a period (send
// times further apart than the fix times) adds no phantom.
func TestViewerCountsCoalesced(t *testing.T) {
	const period = int64(100 * time.Millisecond)
	v := &viewer{h: benchenv.NewHist(), all: benchenv.NewHist(), lastTS: make([]int64, 2)}
	ws0, we := int64(1_000_000_000_000_000_000), int64(1_000_000_001_000_000_000)
	fix0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	frame := func(dev, tick int, sent int64) []byte {
		item := fmt.Sprintf(`{"device_id":%q,"event_id":"e","ts":%q,"lat":1,"lon":2,"attrs":{"sent":%d}}`,
			deviceID(dev), fix0.Add(time.Duration(tick)*time.Duration(period)).Format(contract.TimeLayout), sent)
		return ws.AppendPositions(nil, "event:e", [][]byte{[]byte(item)})
	}
	v.apply(frame(0, 0, ws0-period), ws0, ws0, we, period)            // before the window: held, not counted
	v.apply(frame(0, 2, ws0+period), ws0+period+5e6, ws0, we, period) // tick 1 coalesced (sent at ws0), delivered 5 ms late
	v.apply(frame(1, 3, ws0+2*period), ws0+2*period, ws0, we, period) // first of device 1: nothing coalesced
	v.apply(frame(0, 5, ws0+4*period), ws0+4*period, ws0, we, period) // ticks 3 and 4 coalesced
	v.apply(frame(0, 6, ws0+6*period), ws0+6*period, ws0, we, period) // sent two periods later (late producer): no phantom
	if v.received != 4 || v.h.N != 4 {
		t.Fatalf("delivered: received %d, histogram %d, want 4", v.received, v.h.N)
	}
	if v.all.N != 7 {
		t.Fatalf("every offered: %d, want 7 (4 delivered + 3 coalesced)", v.all.N)
	}
	// The older of ticks 3 and 4 waited two periods.
	if got, want := v.all.Max, time.Duration(2*period); got != want {
		t.Fatalf("every offered max %s, want %s", got, want)
	}
	if v.h.Max != 5*time.Millisecond {
		t.Fatalf("delivered max %s, want 5ms", v.h.Max)
	}
}
