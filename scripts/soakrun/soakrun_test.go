package soakrun

import (
	"bytes"
	"encoding/xml"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"trm-live/testkit/benchenv"
)

func testSchedule(seed uint64) ScheduleConfig {
	return ScheduleConfig{Seed: seed, Duration: 10 * time.Minute, Warmup: 30 * time.Second, Quiet: 30 * time.Second, Gap: 15 * time.Second,
		Workers: []string{"bridge-1", "bridge-2", "persister-1", "broadcaster-1"}, NATSNodes: 3, Viewers: 100, MaxLogouts: 5}
}

func TestScheduleDeterministic(t *testing.T) {
	a, b := Schedule(testSchedule(42)), Schedule(testSchedule(42))
	if len(a) < 8 {
		t.Fatalf("10 min gave only %d faults", len(a))
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("same seed, different schedules:\n%v\n%v", a, b)
	}
	if c := Schedule(testSchedule(43)); reflect.DeepEqual(a, c) {
		t.Fatal("seeds 42 and 43 gave the same schedule")
	}
}

func TestScheduleShape(t *testing.T) {
	cfg := testSchedule(7)
	fs := Schedule(cfg)
	seen := map[Kind]int{}
	logged := map[string]bool{}
	for i, f := range fs {
		seen[f.Kind]++
		if f.At < cfg.Warmup || f.At+f.Down > cfg.Duration-cfg.Quiet {
			t.Errorf("fault %d (%s) outside the fault window", i, f)
		}
		// Never two at once, so never two NATS nodes down.
		if i > 0 && f.At < fs[i-1].At+fs[i-1].Down+cfg.Gap {
			t.Errorf("fault %d (%s) starts before %s ended plus the gap", i, f, fs[i-1])
		}
		if f.Kind == Logout {
			if logged[f.Target] {
				t.Errorf("%s logged out twice", f.Target)
			}
			logged[f.Target] = true
		}
	}
	// Every kind dealt in each deck of len(Kinds).
	if len(fs) >= len(Kinds) {
		for _, k := range Kinds {
			if seen[k] == 0 {
				t.Errorf("no %s in %d faults", k, len(fs))
			}
		}
	}
	if len(logged) > cfg.MaxLogouts {
		t.Errorf("%d logouts, max %d", len(logged), cfg.MaxLogouts)
	}
}

func ledgerFixture() (*Ledger, []Key) {
	l := NewLedger([]string{"d1", "d2"})
	l.AddTick(1000)
	l.AddTick(2000)
	l.AddBad("d2", 2000, "2000-1", "bad_number")
	return l, []Key{{"d1", 1000}, {"d2", 1000}, {"d1", 2000}}
}

func TestCheckRows(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func([]Key) []Key
		pass bool
		want string
	}{
		{"exact", func(k []Key) []Key { return k }, true, "0 missing, 0 duplicated, 0 rows never written"},
		{"duplicate", func(k []Key) []Key { return append(k, Key{"d1", 1000}) }, false, "1 duplicated"},
		{"missing", func(k []Key) []Key { return k[1:] }, false, "1 missing"},
		{"bad one stored", func(k []Key) []Key { return append(k, Key{"d2", 2000}) }, false, "1 rows never written"},
		{"unknown", func(k []Key) []Key { return append(k, Key{"d9", 1000}) }, false, "1 rows never written"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, rows := ledgerFixture()
			l.ResetRows()
			for _, r := range tc.edit(rows) {
				l.AddRow(r.Device, r.TS)
			}
			c := l.CheckRows()
			if c.Pass != tc.pass || !strings.Contains(c.Detail, tc.want) {
				t.Fatalf("got %s, want pass=%v with %q", c, tc.pass, tc.want)
			}
		})
	}
}

func TestLedgerLatest(t *testing.T) {
	l, _ := ledgerFixture()
	if got, want := l.Latest(), map[string]int64{"d1": 2000, "d2": 1000}; !reflect.DeepEqual(got, want) {
		t.Fatalf("latest %v, want %v (d2's last entry was bad)", got, want)
	}
	if l.Valid() != 3 {
		t.Fatalf("valid %d, want 3", l.Valid())
	}
}

func TestCheckDLQ(t *testing.T) {
	bad := map[string]string{"1-0": "bad_ts", "2-0": "out_of_range"}
	for _, tc := range []struct {
		name string
		dlq  []DeadLetter
		pass bool
	}{
		{"all", []DeadLetter{{"1-0", "bad_ts", "bridge"}, {"2-0", "out_of_range", "bridge"}}, true},
		{"twice is at-least-once", []DeadLetter{{"1-0", "bad_ts", "bridge"}, {"1-0", "bad_ts", "bridge"}, {"2-0", "out_of_range", "bridge"}}, true},
		{"missing", []DeadLetter{{"1-0", "bad_ts", "bridge"}}, false},
		{"wrong reason", []DeadLetter{{"1-0", "bad_ts", "bridge"}, {"2-0", "bad_number", "bridge"}}, false},
		{"a valid one dead-lettered", []DeadLetter{{"1-0", "bad_ts", "bridge"}, {"2-0", "out_of_range", "bridge"}, {"3-0", "bad_ts", "bridge"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c := CheckDLQ(bad, tc.dlq); c.Pass != tc.pass {
				t.Fatalf("got %s, want pass=%v", c, tc.pass)
			}
		})
	}
}

func TestCheckViewers(t *testing.T) {
	latest := map[string]int64{"d1": 2000, "d2": 1000}
	good := func() ViewerResult {
		return ViewerResult{Name: "v", Connected: true, Held: map[string]int64{"d1": 2000, "d2": 1000}, Requests: 3}
	}
	byName := func(cs []Check) map[string]Check {
		m := map[string]Check{}
		for _, c := range cs {
			m[c.Name] = c
		}
		return m
	}
	for _, tc := range []struct {
		name   string
		edit   func(*ViewerResult)
		failed string // "" = all pass
	}{
		{"all good", func(*ViewerResult) {}, ""},
		{"stale device", func(v *ViewerResult) { v.Held["d1"] = 1000 }, "viewers end on the latest"},
		{"not connected", func(v *ViewerResult) { v.Connected = false }, "viewers end on the latest"},
		{"time travel", func(v *ViewerResult) { v.TimeTravel = []string{"d1 1000 after 2000"} }, "no time travel"},
		{"missing reply", func(v *ViewerResult) { v.MissingReplies = 1 }, "every control frame"},
		{"logged out not closed", func(v *ViewerResult) { v.LoggedOut, v.CloseCode = true, 1006 }, "logged out closed 4401"},
		{"logged out never closed", func(v *ViewerResult) { v.LoggedOut = true }, "logged out closed 4401"},
		{"logged out closed 4401", func(v *ViewerResult) { v.LoggedOut, v.CloseCode, v.Connected = true, 4401, false }, ""},
		{"4401 of a valid session", func(v *ViewerResult) { v.Unexpected4401 = 1 }, "logged out closed 4401"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := good()
			tc.edit(&v)
			for name, c := range byName(CheckViewers(latest, []ViewerResult{good(), v})) {
				if want := name != tc.failed; c.Pass != want {
					t.Errorf("%s", c)
				}
			}
		})
	}
}

func TestCheckPendingAndUsage(t *testing.T) {
	if !CheckPending(Pending{}).Pass || CheckPending(Pending{ConsumerAckPending: 1}).Pass || CheckPending(Pending{GroupLag: 3}).Pass {
		t.Fatal("pending check")
	}
	b := Bounds{RSSFactor: 1.5, RSSSlack: 10 << 20, GoroutineFactor: 1.5, GoroutineSlack: 10}
	warm := Usage{RSS: 100 << 20, Goroutines: 40}
	if c := CheckUsage(b, []WorkerUsage{{"w", warm, Usage{RSS: 160 << 20, Goroutines: 70}}}); !c.Pass {
		t.Fatalf("within bounds: %s", c)
	}
	if c := CheckUsage(b, []WorkerUsage{{"w", warm, Usage{RSS: 161 << 20, Goroutines: 40}}}); c.Pass {
		t.Fatalf("RSS leak passed: %s", c)
	}
	if c := CheckUsage(b, []WorkerUsage{{"w", warm, Usage{RSS: 100 << 20, Goroutines: 71}}}); c.Pass {
		t.Fatalf("goroutine leak passed: %s", c)
	}
	if c := CheckUsage(b, []WorkerUsage{{"w", warm, Usage{}}}); c.Pass {
		t.Fatalf("unmeasured passed: %s", c)
	}
}

func TestParseUsage(t *testing.T) {
	u, err := ParseUsage("# HELP go_goroutines x\ngo_goroutines 42\nprocess_resident_memory_bytes 1.2345e+07\n")
	if err != nil || u.Goroutines != 42 || u.RSS != 12345000 {
		t.Fatalf("%+v %v", u, err)
	}
	if _, err := ParseUsage("go_goroutines 1\n"); err == nil {
		t.Fatal("missing RSS accepted")
	}
}

func TestSVGWellFormed(t *testing.T) {
	secs := []SecondStat{{N: 10, P50: 5 * time.Millisecond, P99: 20 * time.Millisecond}, {}, {N: 3, P50: time.Second, P99: 30 * time.Second}}
	ev := []Event{{At: time.Second, End: 3 * time.Second, Label: `kill-worker <bridge-1> & "x"`}, {At: 2 * time.Second, Label: "drop-table"}}
	b := SVG("soak <seed 1>", secs, ev, 25*time.Millisecond)
	d := xml.NewDecoder(bytes.NewReader(b))
	elems := map[string]int{}
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, b)
		}
		if se, ok := tok.(xml.StartElement); ok {
			elems[se.Name.Local]++
		}
	}
	// Second 1 had no deliveries: p50 and p99 are two polylines each.
	if elems["svg"] != 1 || elems["polyline"] != 4 || elems["text"] < 5 {
		t.Fatalf("elements %v", elems)
	}
	if !bytes.Contains(b, []byte("kill-worker &lt;bridge-1&gt;")) {
		t.Fatal("label not escaped")
	}
}

// The timeline's histogram gives a quantile at most 1/128 above the
// sample's value (its buckets are under 0.8 % wide).
func TestHistAndLatencyBack(t *testing.T) {
	h := benchenv.NewHist()
	for i := 1; i <= 100; i++ {
		h.Add(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}} {
		if p := h.Quantile(c.q); p < c.want || p > c.want+c.want/128 {
			t.Fatalf("quantile %g: %s, want %s to 1/128 above", c.q, p, c.want)
		}
	}
	secs := []SecondStat{{N: 1, P99: time.Millisecond}, {N: 5, P99: time.Second}, {}, {N: 5, P99: 10 * time.Millisecond}}
	if b := LatencyBack(secs, time.Second, time.Hour, 25*time.Millisecond); b != 3*time.Second {
		t.Fatalf("back at %s, want 3s", b)
	}
	if b := LatencyBack(secs[:3], time.Second, time.Hour, 25*time.Millisecond); b != -1 {
		t.Fatalf("back at %s, want never", b)
	}
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	c, err := LoadConfig(nil, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if c.Duration != 10*time.Minute || c.Viewers != 100 || c.Devices != 500 || c.Rate != 1 || c.LatencyTarget != 25*time.Millisecond {
		t.Fatalf("defaults %+v", c)
	}
	c, err = LoadConfig([]string{"-seed", "9", "-duration", "2m"}, func(k string) string { return map[string]string{"SOAK_VIEWERS": "20"}[k] })
	if err != nil || c.Seed != 9 || c.Duration != 2*time.Minute || c.Viewers != 20 {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := LoadConfig([]string{"-gap", "0s"}, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "-gap") {
		t.Fatalf("gap 0 accepted: %v", err)
	}
}

func TestTimelineFolds(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tl := NewTimeline(t0)
	tl.WarmFrom, tl.WarmTo = time.Second, 3*time.Second
	for s := 0; s < 10; s++ {
		for i := 1; i <= 100; i++ {
			tl.Observe(t0.Add(time.Duration(s)*time.Second+time.Duration(i)*time.Millisecond), time.Duration(s+1)*time.Millisecond)
		}
	}
	if len(tl.open) > 3 {
		t.Fatalf("%d seconds still open", len(tl.open))
	}
	secs := tl.Seconds()
	if len(secs) != 10 || secs[4].N != 100 || secs[4].P99 < 4900*time.Microsecond || secs[4].P99 > 5*time.Millisecond {
		t.Fatalf("seconds %+v", secs)
	}
	if p := tl.WarmP99(); p < 2900*time.Microsecond || p > 3*time.Millisecond {
		t.Fatalf("warm-up p99 %s, want 3ms (seconds 1 and 2)", p)
	}
	if _, _, mx, n := tl.Total(); n != 1000 || mx != 10*time.Millisecond {
		t.Fatalf("total n %d max %s", n, mx)
	}
}

// A request left without a reply for replyWait counts as missing, with a
// line naming the viewer, its kind and the request; a younger one does
// not; the check's detail carries the lines and the slowest reply.
func TestMissingReplyDetails(t *testing.T) {
	now := time.Now()
	v := &viewer{name: "viewer-7", kind: kindSlow, pending: map[string]time.Time{
		"s3": now.Add(-replyWait - time.Second), "u4": now.Add(-time.Second)}}
	v.countMissing(now, "connection ended")
	if v.missing != 1 || len(v.missingEx) != 1 || len(v.pending) != 1 {
		t.Fatalf("missing %d, examples %q, pending %v", v.missing, v.missingEx, v.pending)
	}
	if ex := v.missingEx[0]; !strings.Contains(ex, "viewer-7 (slow) request s3") || !strings.Contains(ex, "connection ended") {
		t.Fatalf("example %q", ex)
	}
	v.pending["u5"] = now.Add(-4 * time.Second)
	v.handle(now, wsFrame{Type: "unsubscribed", ID: "u5"}, func(string) error { return nil })
	r := v.result()
	cs := CheckViewers(map[string]int64{}, []ViewerResult{r})
	if cs[2].Pass || !strings.Contains(cs[2].Detail, "request s3") || !strings.Contains(cs[2].Detail, "slowest reply 4.0 s (viewer-7 (slow) request u5") {
		t.Fatalf("check %+v", cs[2])
	}
}
