package bridge

import (
	"math"
	"testing"
	"time"
)

func TestRoutesEvent(t *testing.T) {
	t0 := time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)
	ms := func(d time.Duration) int64 { return t0.Add(d).UnixMilli() }
	open := func(ev string) window { return window{event: ev, from: math.MinInt64, until: math.MaxInt64} }
	r := newRoutes(map[string][]window{
		"open":    {open("e1")},
		"win":     {{event: "e1", from: ms(0), until: ms(time.Hour)}},
		"overlap": {open("old"), {event: "new", from: ms(0), until: math.MaxInt64}, {event: "mid", from: ms(-time.Hour), until: math.MaxInt64}},
		"gap":     {{event: "a", from: ms(-2 * time.Hour), until: ms(-time.Hour)}, {event: "b", from: ms(time.Hour), until: math.MaxInt64}},
	})
	for _, c := range []struct {
		dev  string
		at   time.Duration
		want string
	}{
		{"open", 0, "e1"},
		{"unknown", 0, ""},
		{"win", -time.Millisecond, ""},
		{"win", 0, "e1"}, // from is inclusive
		{"win", time.Hour - time.Millisecond, "e1"},
		{"win", time.Hour, ""},          // until is exclusive
		{"overlap", time.Minute, "new"}, // latest assigned_from wins
		{"overlap", -time.Minute, "mid"},
		{"overlap", -2 * time.Hour, "old"}, // a null from is the earliest
		{"gap", 0, ""},
		{"gap", -90 * time.Minute, "a"},
		{"gap", 2 * time.Hour, "b"},
	} {
		if got := r.event(c.dev, t0.Add(c.at)); got != c.want {
			t.Errorf("%s at %s: %q, want %q", c.dev, c.at, got, c.want)
		}
	}
	if got := (*routes)(nil).event("open", t0); got != "" {
		t.Errorf("nil table routed to %q", got)
	}
}
