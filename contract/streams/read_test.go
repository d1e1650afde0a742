package streams

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/testkit"
)

const (
	readEvent = "7c1e0f52-3a4b-4c5d-8e6f-0123456789ab"
	readOther = "00000000-0000-4000-8000-000000000001"
)

// readFixture is an embedded server with the streams and a base fix time
// a few minutes ago (the bridge never stores a fix more than
// MaxFutureSkew ahead of its clock, so the range's start is in the past).
type readFixture struct {
	js   jetstream.JetStream
	base time.Time
}

func newReadFixture(t *testing.T) *readFixture {
	t.Helper()
	n := testkit.StartNATS(t)
	js := n.JetStream(t)
	if err := Ensure(context.Background(), js, Options{}); err != nil {
		t.Fatal(err)
	}
	return &readFixture{js: js, base: time.Now().UTC().Add(-3 * time.Minute).Truncate(time.Second)}
}

// at is the base fix time plus s seconds.
func (f *readFixture) at(s float64) time.Time {
	return f.base.Add(time.Duration(s * float64(time.Second)))
}

// pub stores a position of event for device at fix time base + s seconds.
func (f *readFixture) pub(t *testing.T, event, device string, s float64) {
	t.Helper()
	p := contract.Position{DeviceID: device, EventID: event, TS: f.at(s), Lat: 45, Lon: 7}
	if _, err := f.js.Publish(context.Background(), p.Subject(), p.Encode()); err != nil {
		t.Fatal(err)
	}
}

func (f *readFixture) lastSeq(t *testing.T) uint64 {
	t.Helper()
	s, err := f.js.Stream(context.Background(), Positions)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.LastSeq
}

// reader is a Reader of [from, to] over ordered consumers of the fixture.
func (f *readFixture) reader(t *testing.T, from, to time.Time, lateness time.Duration, late Late) Reader {
	r := Range{EventID: readEvent, From: from, To: to, Lateness: lateness}
	return Reader{Range: r, Late: late, LastSeq: f.lastSeq(t),
		Open: func(ctx context.Context) (jetstream.Consumer, error) {
			start := r.Start()
			return f.js.OrderedConsumer(ctx, Positions, jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{r.Filter()},
				DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
				OptStartTime:   &start,
			})
		}}
}

// readAll reads rd and returns "device:second" per position, in order.
func (f *readFixture) readAll(t *testing.T, rd Reader) ([]string, ReadStats) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var got []string
	st, err := rd.Read(ctx, func(p Pos) error {
		if !strings.HasPrefix(string(p.Data), `{"device_id":"`+p.Position.DeviceID+`"`) {
			t.Errorf("data %s is not the position's encoding", p.Data)
		}
		got = append(got, fmt.Sprintf("%s:%g", p.Position.DeviceID, p.Position.TS.Sub(f.base).Seconds()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, st
}

// lateStored stores two devices at 1 Hz, with b's second 3.5 stored after
// its second 5.5 (2 s of fix time behind the newest read: within a 2 s
// lateness) and a's second 2 stored after second 9 (7.5 s behind: later
// than the lateness), plus another event's positions and a malformed
// payload on the event's subjects.
func lateStored(t *testing.T, f *readFixture) {
	t.Helper()
	for s := 0; s <= 10; s++ {
		if s != 2 {
			f.pub(t, readEvent, "a", float64(s))
		}
		if s != 3 {
			f.pub(t, readEvent, "b", float64(s)+0.5)
		}
		if s == 5 {
			f.pub(t, readEvent, "b", 3.5)
		}
		if s == 9 {
			f.pub(t, readEvent, "a", 2)
		}
		f.pub(t, readOther, "a", float64(s))
	}
	if _, err := f.js.Publish(context.Background(), contract.PositionSubject(readEvent, "a"), []byte(`{"device_id":"a"`)); err != nil {
		t.Fatal(err)
	}
	// A valid position of device c on device a's subject.
	p := contract.Position{DeviceID: "c", EventID: readEvent, TS: f.at(4), Lat: 1, Lon: 1}
	if _, err := f.js.Publish(context.Background(), contract.PositionSubject(readEvent, "a"), p.Encode()); err != nil {
		t.Fatal(err)
	}
}

// TestReadSkipLate: the replay's read hands positions on in fix-time
// order over all devices; one stored within the lateness behind newer ones
// of its device overtakes them, one stored later is skipped and counted;
// malformed payloads and payloads on another device's subject are counted
// and skipped; the range bounds are inclusive.
func TestReadSkipLate(t *testing.T) {
	t.Parallel()
	f := newReadFixture(t)
	lateStored(t, f)
	got, st := f.readAll(t, f.reader(t, f.at(1), f.at(8.5), 2*time.Second, SkipLate))
	want := "[a:1 b:1.5 b:2.5 a:3 b:3.5 a:4 b:4.5 a:5 b:5.5 a:6 b:6.5 a:7 b:7.5 a:8 b:8.5]"
	if fmt.Sprint(got) != want {
		t.Fatalf("read %v\nwant %s", got, want)
	}
	if st.Late != 1 || st.Malformed != 2 || st.Yielded != int64(len(got)) {
		t.Fatalf("stats %+v, want 1 late (a:2), 2 malformed, %d yielded", st, len(got))
	}
}

// TestReadPlaceLate: the export's read places every late-stored position
// before the first newer one of its device, however late, devices
// interleaved as stored.
func TestReadPlaceLate(t *testing.T) {
	t.Parallel()
	f := newReadFixture(t)
	lateStored(t, f)
	got, st := f.readAll(t, f.reader(t, f.at(1), f.at(8.5), 2*time.Second, PlaceLate))
	want := "[a:1 b:1.5 b:2.5 a:2 a:3 a:4 b:3.5 b:4.5 a:5 b:5.5 a:6 b:6.5 a:7 b:7.5 a:8 b:8.5]"
	if fmt.Sprint(got) != want {
		t.Fatalf("read %v\nwant %s", got, want)
	}
	if st.Late != 2 || st.Malformed != 2 {
		t.Fatalf("stats %+v, want 2 placed late (a:2, b:3.5), 2 malformed", st)
	}
}

// TestReadEnds: a read with an end stops at the first fix time after
// To + Lateness (storage time is no end) and never reads past LastSeq;
// Earlier adds the positions before From that it meets.
func TestReadEnds(t *testing.T) {
	t.Parallel()
	f := newReadFixture(t)
	for s := 0; s < 60; s++ {
		f.pub(t, readEvent, "a", float64(s))
	}
	rd := f.reader(t, f.at(10), f.at(20), 5*time.Second, SkipLate)
	got, st := f.readAll(t, rd)
	if len(got) != 11 || got[0] != "a:10" || got[10] != "a:20" {
		t.Fatalf("read %v, want seconds 10..20", got)
	}
	// Seconds 0..25 read (the consumer starts MaxFutureSkew before From),
	// the read stopped at second 26.
	if st.Read != 26 {
		t.Fatalf("%d messages read, want 26 (stop at to + lateness)", st.Read)
	}

	rd = f.reader(t, f.at(10), time.Time{}, 0, SkipLate)
	rd.LastSeq = 30 // seconds 0..29
	if got, _ := f.readAll(t, rd); len(got) != 20 || got[19] != "a:29" {
		t.Fatalf("read %v, want seconds 10..29 (LastSeq 30)", got)
	}

	rd = f.reader(t, f.at(10), f.at(12), 0, SkipLate)
	rd.Earlier = true
	if got, _ := f.readAll(t, rd); len(got) != 13 || got[0] != "a:0" {
		t.Fatalf("read %v, want seconds 0..12 (Earlier)", got)
	}
}

// TestReadNothing: an empty stream, an event without positions (other
// events stored) and a range with no position in it end at once, with
// nothing read, in both modes.
func TestReadNothing(t *testing.T) {
	t.Parallel()
	f := newReadFixture(t)
	for _, late := range []Late{SkipLate, PlaceLate} {
		if got, st := f.readAll(t, f.reader(t, f.at(0), f.at(10), 0, late)); len(got) != 0 || st != (ReadStats{}) {
			t.Fatalf("empty stream: %v %+v", got, st)
		}
	}
	for s := 0; s < 10; s++ {
		f.pub(t, readOther, "a", float64(s))
	}
	for _, late := range []Late{SkipLate, PlaceLate} {
		if got, st := f.readAll(t, f.reader(t, f.at(0), f.at(10), 0, late)); len(got) != 0 || st.Read != 0 {
			t.Fatalf("event without positions: %v %+v", got, st)
		}
	}
	f.pub(t, readEvent, "a", 1)
	f.pub(t, readEvent, "a", 2)
	for _, late := range []Late{SkipLate, PlaceLate} {
		if got, st := f.readAll(t, f.reader(t, f.at(1.5), f.at(1.8), 0, late)); len(got) != 0 || st.Read != 2 {
			t.Fatalf("range between positions: %v %+v", got, st)
		}
	}
}

// TestReadBadInput: a bad range is refused before anything is opened.
func TestReadBadInput(t *testing.T) {
	t.Parallel()
	from := time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		r    Reader
		want string
	}{
		{Reader{Range: Range{From: from}}, "event is required"},
		{Reader{Range: Range{EventID: "7C1E", From: from}}, `event "7C1E" is not a lowercase UUID`},
		{Reader{Range: Range{EventID: readEvent}}, "from is required"},
		{Reader{Range: Range{EventID: readEvent, From: from, To: from.Add(-time.Second)}}, "from 2026-05-03T10:00:00.000Z is after to 2026-05-03T09:59:59.000Z"},
		{Reader{Range: Range{EventID: readEvent, From: from, Lateness: -time.Second}}, "lateness -1s is negative"},
		{Reader{Range: Range{EventID: readEvent, From: from}, Late: PlaceLate, Follow: true}, "a followed read skips late positions"},
	} {
		tc.r.LastSeq = 1
		tc.r.Open = func(context.Context) (jetstream.Consumer, error) {
			t.Fatalf("%s: opened a consumer", tc.want)
			return nil, nil
		}
		_, err := tc.r.Read(context.Background(), func(Pos) error { return nil })
		if err == nil || err.Error() != tc.want {
			t.Errorf("err = %v, want %q", err, tc.want)
		}
	}
}

// TestReadFollow: a followed read reads on as positions arrive, reports
// Idle when caught up, and ends with its context; an error of fn ends it
// with that error.
func TestReadFollow(t *testing.T) {
	t.Parallel()
	f := newReadFixture(t)
	f.pub(t, readEvent, "a", 1)
	rd := f.reader(t, f.at(0), time.Time{}, time.Second, SkipLate)
	rd.Follow = true
	idle := make(chan uint64, 100)
	rd.Tick = func(st ReadStats) {
		if st.Idle {
			idle <- st.Seq
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		_, err := rd.Read(ctx, func(p Pos) error {
			got <- fmt.Sprint(p.Position.TS.Sub(f.base).Seconds())
			return nil
		})
		done <- err
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case s := <-got:
			if s != want {
				t.Fatalf("got second %s, want %s", s, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("second %s never came", want)
		}
	}
	expect("1")
	if seq := <-idle; seq != 1 {
		t.Fatalf("idle at seq %d, want 1", seq)
	}
	f.pub(t, readEvent, "a", 2)
	expect("2")
	if seq := <-idle; seq != 2 {
		t.Fatalf("idle at seq %d, want 2", seq)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}

	// fn's error ends the read.
	stop := errors.New("stop")
	rd.Tick = nil
	if _, err := rd.Read(context.Background(), func(Pos) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("err = %v, want fn's", err)
	}
}

// TestReorderHeap: the reorder hands positions on by fix time, then
// stream order, and refuses one older than what its device handed on.
func TestReorderHeap(t *testing.T) {
	ro := newReorder(10 * time.Millisecond)
	seq := uint64(0)
	push := func(dev string, ts int64) bool {
		seq++
		return ro.push(&Pos{Position: contract.Position{DeviceID: dev}, ts: ts, Seq: seq})
	}
	for _, ts := range []int64{50, 20, 40, 10, 30, 20, 60} {
		push(fmt.Sprint("d", ts%3), ts)
	}
	var got []int64
	for p, ok := ro.next(false); ok; p, ok = ro.next(false) {
		got = append(got, p.ts)
	}
	// Held until a fix time 10 ms later was read: up to 50; device d2's
	// second 20 is the same fix time again (the first stored goes).
	if fmt.Sprint(got) != "[10 20 30 40 50]" {
		t.Fatalf("released %v", got)
	}
	if push("d2", 50) || push("d1", 40) {
		t.Fatal("a position not newer than its device's last one handed on was taken")
	}
	if !push("d1", 55) {
		t.Fatal("a newer position was refused")
	}
	got = got[:0]
	for p, ok := ro.next(true); ok; p, ok = ro.next(true) {
		got = append(got, p.ts)
	}
	if fmt.Sprint(got) != "[55 60]" || ro.len() != 0 {
		t.Fatalf("flushed %v, %d left", got, ro.len())
	}
}
