package main

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// The sweep runs points in ascending order, each point repeat times, and
// stops at the first point with a failing run: a higher point that would
// pass is not run, so a lucky run above a failure cannot count.
func TestSweepStopsAtFirstFailure(t *testing.T) {
	var ran []int
	calls := map[int]int{}
	run := func(d int) (result, error) {
		ran = append(ran, d)
		calls[d]++
		r := result{Clients: 10, Complete: 10, StaleP99: 100, PositionsPerSec: float64(d)}
		if d == 200 && calls[d] == 2 { // one of three runs at 200 misses
			r.StaleP99 = 300
		}
		return r, nil
	}
	var reported []string
	best, rs, err := sweepPoints([]int{400, 100, 200, 300, 100}, 3, run, func(d int, rs []result, ok bool) {
		reported = append(reported, fmt.Sprint(d, len(rs), ok))
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{100, 100, 100, 200, 200, 200}; !slices.Equal(ran, want) {
		t.Fatalf("ran %v, want %v", ran, want)
	}
	if best != 100 || len(rs) != 3 {
		t.Fatalf("best %d with %d runs, want 100 with 3", best, len(rs))
	}
	if want := []string{"100 3 true", "200 3 false"}; !slices.Equal(reported, want) {
		t.Fatalf("reported %v, want %v", reported, want)
	}
}

// A client counts a delivered position in both latency histograms and the
// positions coalesced before it (one per publishing period since the
// device's previous one) in the every-offered one only, at the
// successor's delivery; the first position of a device has no
// predecessor to count from.
func TestClientCountsCoalesced(t *testing.T) {
	const period = int64(100)
	base := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC).UnixMilli()
	item := func(dev int, ts int64) string {
		return fmt.Sprintf(`{"device_id":"d%05d","event_id":"0b5e7c1e-0000-4000-8000-00000000beef","ts":%q,"lat":45.1,"lon":7.6}`,
			dev, time.UnixMilli(ts).UTC().Format("2006-01-02T15:04:05.000Z"))
	}
	frame := func(items ...string) []byte {
		b := []byte(`{"type":"positions","topic":"event:0b5e7c1e-0000-4000-8000-00000000beef","positions":[`)
		for i, it := range items {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, it...)
		}
		return append(b, "]}"...)
	}
	lc := &lclient{}
	if n := lc.apply(frame(item(0, base), item(1, base)), base+5, period, true); n != 2 {
		t.Fatalf("apply read %d positions, want 2", n)
	}
	// Device 0 three periods later: two coalesced, waiting 100 and 200 ms
	// more than the delivered one (10 ms).
	lc.apply(frame(item(0, base+3*period)), base+3*period+10, period, true)
	if lc.delivered != 3 || lc.offered != 5 {
		t.Fatalf("delivered %d offered %d, want 3 and 5", lc.delivered, lc.offered)
	}
	sum := func(h []int32) (n int32) {
		for _, c := range h {
			n += c
		}
		return n
	}
	if sum(lc.lat) != 3 || sum(lc.all) != 5 {
		t.Fatalf("histograms: delivered %d, every offered %d, want 3 and 5", sum(lc.lat), sum(lc.all))
	}
	if lc.all[110] != 1 || lc.all[210] != 1 || lc.lat[10] != 1 {
		t.Fatalf("coalesced at the successor's delivery: all[110]=%d all[210]=%d lat[10]=%d, want 1 each", lc.all[110], lc.all[210], lc.lat[10])
	}
	if r := (result{Delivered: lc.delivered, Offered: lc.offered}); r.Share() != 0.6 {
		t.Fatalf("share %g, want 0.6", r.Share())
	}
}
