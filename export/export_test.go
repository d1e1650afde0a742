package export_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/export"
	"trm-live/testkit"
)

const (
	event = "7c1e0f52-3a4b-4c5d-8e6f-0123456789ab"
	other = "00000000-0000-4000-8000-000000000001"
)

// race is what a test published: the event's positions in publish (=
// stream) order, and the range the test exports.
type race struct {
	js       jetstream.JetStream
	all      []contract.Position // of event, stream order
	from, to time.Time
}

// inRange returns the published positions with from <= ts <= to (to zero:
// no bound), in stream order, optionally of one device.
func (r *race) inRange(from, to time.Time, device string) []contract.Position {
	var out []contract.Position
	for _, p := range r.all {
		if p.TS.Before(from) || (!to.IsZero() && p.TS.After(to)) || (device != "" && p.DeviceID != device) {
			continue
		}
		out = append(out, p)
	}
	return out
}

func f64(v float64) *float64 { return &v }
func iptr(v int) *int        { return &v }

// publishRace starts a server and publishes `devices` devices × `seconds`
// fixes of the event (1 Hz, fix times ending a minute ago), the same for
// another event, and one malformed payload on the event's subjects.
func publishRace(t testing.TB, devices, seconds int) *race {
	t.Helper()
	n := testkit.StartNATS(t)
	js := n.JetStream(t)
	ctx := context.Background()
	if err := streams.Ensure(ctx, js, streams.Options{}); err != nil {
		t.Fatal(err)
	}
	base := time.Now().UTC().Add(-time.Duration(seconds)*time.Second - time.Minute).Truncate(time.Second)
	r := &race{js: js}
	var futures []jetstream.PubAckFuture
	pub := func(subj string, data []byte, id string) {
		f, err := js.PublishAsync(subj, data, jetstream.WithMsgID(id))
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}
	for s := range seconds {
		for d := range devices {
			p := contract.Position{
				DeviceID: fmt.Sprintf("dev-%03d", d), EventID: event,
				TS:  base.Add(time.Duration(s)*time.Second + time.Duration(d)*time.Millisecond),
				Lat: 45 + float64(s)*1e-4, Lon: 7 + float64(d)*1e-3,
			}
			if d%2 == 0 { // half the devices carry every optional field
				p.Alt, p.Speed, p.Heading, p.Sats = f64(231.5), f64(88.2), f64(121), iptr(11)
				p.Attrs = []byte(`{"io239":1,"note":"a,\"b\"<c>"}`)
			}
			pub(p.Subject(), p.Encode(), p.MsgID())
			r.all = append(r.all, p)
			q := p
			q.EventID = other
			pub(q.Subject(), q.Encode(), "other-"+q.MsgID())
		}
		if s == seconds/2 {
			pub(contract.PositionSubject(event, "dev-000"), []byte(`{"not":"a position"}`), "garbage")
		}
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		case <-time.After(10 * time.Second):
			t.Fatal("publish ack timeout")
		}
	}
	r.from = base.Add(time.Duration(seconds/4) * time.Second)
	r.to = base.Add(time.Duration(3*seconds/4) * time.Second)
	return r
}

func run(t *testing.T, js jetstream.JetStream, o export.Options) ([]byte, export.Stats) {
	t.Helper()
	var out bytes.Buffer
	st, err := export.Export(context.Background(), js, &out, o)
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	return out.Bytes(), st
}

func TestNDJSONRoundTrips(t *testing.T) {
	t.Parallel()
	r := publishRace(t, 5, 40)
	var calls int
	var last export.Stats
	out, st := run(t, r.js, export.Options{EventID: event, From: r.from, To: r.to, Format: export.NDJSON,
		Progress: func(s export.Stats) { calls++; last = s }})
	want := r.inRange(r.from, r.to, "")
	if len(want) == 0 || len(want) == len(r.all) {
		t.Fatalf("test range selects %d of %d positions: it must select a strict part", len(want), len(r.all))
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	i := 0
	for sc.Scan() {
		p, err := contract.DecodePosition(sc.Bytes())
		if err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if i >= len(want) {
			t.Fatalf("more lines than the %d positions in range", len(want))
		}
		if !bytes.Equal(p.Encode(), want[i].Encode()) || !bytes.Equal(sc.Bytes(), want[i].Encode()) {
			t.Fatalf("line %d:\n got %s\nwant %s", i+1, sc.Bytes(), want[i].Encode())
		}
		i++
	}
	if i != len(want) {
		t.Fatalf("got %d lines, want %d", i, len(want))
	}
	if st.Written != int64(len(want)) || st.Malformed != 1 || !st.Done {
		t.Fatalf("stats %+v: want written %d, malformed 1, done", st, len(want))
	}
	if calls == 0 || last != st {
		t.Fatalf("progress: %d calls, last %+v, want the final stats %+v", calls, last, st)
	}
}

func TestNoUpperBoundExportsToTheEnd(t *testing.T) {
	t.Parallel()
	r := publishRace(t, 3, 20)
	out, st := run(t, r.js, export.Options{EventID: event, From: r.from, Format: export.NDJSON})
	want := r.inRange(r.from, time.Time{}, "")
	if got := bytes.Count(out, []byte("\n")); got != len(want) || st.Written != int64(len(want)) {
		t.Fatalf("got %d lines (stats %d), want %d", got, st.Written, len(want))
	}
}

func TestCountsMatchTheStream(t *testing.T) {
	t.Parallel()
	r := publishRace(t, 4, 30)
	// Everything: the export must account for every message stored on the
	// event's subjects (positions written + the malformed one).
	stream, err := r.js.Stream(context.Background(), streams.Positions)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(context.Background(), jetstream.WithSubjectFilter(contract.EventSubject(event)))
	if err != nil {
		t.Fatal(err)
	}
	var stored uint64
	for _, n := range info.State.Subjects {
		stored += n
	}
	from := r.all[0].TS
	for _, f := range []export.Format{export.NDJSON, export.CSV, export.GPX} {
		_, st := run(t, r.js, export.Options{EventID: event, From: from, Format: f})
		if uint64(st.Written+st.Malformed) != stored || st.Written != int64(len(r.all)) {
			t.Fatalf("%s: written %d + malformed %d, stream holds %d on %s (%d positions published)",
				f, st.Written, st.Malformed, stored, contract.EventSubject(event), len(r.all))
		}
	}
}

func TestCSV(t *testing.T) {
	t.Parallel()
	r := publishRace(t, 4, 20)
	out, _ := run(t, r.js, export.Options{EventID: event, From: r.from, To: r.to, Format: export.CSV})
	rows, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	want := r.inRange(r.from, r.to, "")
	if len(rows) != len(want)+1 {
		t.Fatalf("got %d rows, want header + %d", len(rows), len(want))
	}
	if strings.Join(rows[0], ",") != strings.Join(export.CSVHeader, ",") {
		t.Fatalf("header %v", rows[0])
	}
	for i, row := range rows[1:] {
		p := want[i]
		if row[0] != p.DeviceID || row[1] != event || row[2] != p.TS.Format(contract.TimeLayout) ||
			row[3] != strconv.FormatFloat(p.Lat, 'f', -1, 64) || row[9] != string(p.Attrs) {
			t.Fatalf("row %d = %q, want %s", i+1, row, p.Encode())
		}
		if (p.Sats == nil) != (row[8] == "") || (p.Alt == nil) != (row[5] == "") {
			t.Fatalf("row %d = %q: optional cells do not match %s", i+1, row, p.Encode())
		}
	}
}

// GPX 1.1 structure, as far as the exporter uses it.
type gpxDoc struct {
	XMLName  xml.Name `xml:"http://www.topografix.com/GPX/1/1 gpx"`
	Version  string   `xml:"version,attr"`
	Creator  string   `xml:"creator,attr"`
	Metadata struct {
		Name string `xml:"http://www.topografix.com/GPX/1/1 name"`
		Time string `xml:"http://www.topografix.com/GPX/1/1 time"`
	} `xml:"http://www.topografix.com/GPX/1/1 metadata"`
	Tracks []struct {
		Name     string `xml:"http://www.topografix.com/GPX/1/1 name"`
		Segments []struct {
			Points []struct {
				Lat  string   `xml:"lat,attr"`
				Lon  string   `xml:"lon,attr"`
				Ele  *float64 `xml:"http://www.topografix.com/GPX/1/1 ele"`
				Time string   `xml:"http://www.topografix.com/GPX/1/1 time"`
				Sat  *int     `xml:"http://www.topografix.com/GPX/1/1 sat"`
				Ext  *struct {
					TPX struct {
						Speed  *float64 `xml:"http://www.garmin.com/xmlschemas/TrackPointExtension/v2 speed"`
						Course *float64 `xml:"http://www.garmin.com/xmlschemas/TrackPointExtension/v2 course"`
					} `xml:"http://www.garmin.com/xmlschemas/TrackPointExtension/v2 TrackPointExtension"`
				} `xml:"http://www.topografix.com/GPX/1/1 extensions"`
			} `xml:"http://www.topografix.com/GPX/1/1 trkpt"`
		} `xml:"http://www.topografix.com/GPX/1/1 trkseg"`
	} `xml:"http://www.topografix.com/GPX/1/1 trk"`
}

// gpxOrder is the GPX 1.1 schema's child sequence of each element we write
// (gpx.xsd: gpxType, metadataType, trkType, trksegType, wptType): a child
// must appear in this order, unknown children are refused.
var gpxOrder = map[string][]string{
	"gpx":      {"metadata", "wpt", "rte", "trk", "extensions"},
	"metadata": {"name", "desc", "author", "copyright", "link", "time", "keywords", "bounds", "extensions"},
	"trk":      {"name", "cmt", "desc", "src", "link", "number", "type", "extensions", "trkseg"},
	"trkseg":   {"trkpt", "extensions"},
	"trkpt": {"ele", "time", "magvar", "geoidheight", "name", "cmt", "desc", "src", "link", "sym", "type",
		"fix", "sat", "hdop", "vdop", "pdop", "ageofdgpsdata", "dgpsid", "extensions"},
}

// checkGPXStructure walks the document and checks the namespace, the child
// order of every GPX element against the schema sequences, and the lat/lon
// attribute ranges of every point.
func checkGPXStructure(t *testing.T, doc []byte) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(doc))
	type frame struct {
		name string
		pos  int // index in gpxOrder of the last child seen
	}
	var stack []frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("GPX is not well-formed XML: %v", err)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			if len(stack) > 0 && stack[len(stack)-1].name == "extensions" {
				stack = append(stack, frame{name: "ext:" + el.Name.Local})
				continue
			}
			if len(stack) > 0 && strings.HasPrefix(stack[len(stack)-1].name, "ext:") {
				stack = append(stack, frame{name: "ext:" + el.Name.Local})
				continue
			}
			if el.Name.Space != export.GPXNamespace {
				t.Fatalf("element %s in namespace %q, want %q", el.Name.Local, el.Name.Space, export.GPXNamespace)
			}
			if len(stack) == 0 {
				if el.Name.Local != "gpx" {
					t.Fatalf("root element %s, want gpx", el.Name.Local)
				}
			} else {
				parent := &stack[len(stack)-1]
				order, ok := gpxOrder[parent.name]
				if !ok {
					t.Fatalf("%s has a child %s; it should be a leaf", parent.name, el.Name.Local)
				}
				i := indexOf(order, el.Name.Local)
				if i < 0 || i < parent.pos {
					t.Fatalf("%s: child %s out of the schema's order %v", parent.name, el.Name.Local, order)
				}
				parent.pos = i
			}
			if el.Name.Local == "trkpt" {
				checkLatLon(t, el.Attr)
			}
			stack = append(stack, frame{name: el.Name.Local})
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		}
	}
	if len(stack) != 0 {
		t.Fatalf("unclosed elements %v", stack)
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func checkLatLon(t *testing.T, attrs []xml.Attr) {
	t.Helper()
	var n int
	for _, a := range attrs {
		v, err := strconv.ParseFloat(a.Value, 64)
		switch a.Name.Local {
		case "lat":
			n++
			if err != nil || v < -90 || v > 90 {
				t.Fatalf("trkpt lat %q", a.Value)
			}
		case "lon":
			n++
			if err != nil || v < -180 || v > 180 {
				t.Fatalf("trkpt lon %q", a.Value)
			}
		}
	}
	if n != 2 {
		t.Fatalf("trkpt attributes %v: want lat and lon", attrs)
	}
}

func TestGPX(t *testing.T) {
	t.Parallel()
	r := publishRace(t, 5, 20)
	out, st := run(t, r.js, export.Options{EventID: event, From: r.from, To: r.to, Format: export.GPX})
	checkGPXStructure(t, out)
	var doc gpxDoc
	if err := xml.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Version != "1.1" || doc.Creator == "" || doc.Metadata.Time == "" {
		t.Fatalf("gpx attributes/metadata: %+v", doc)
	}
	if len(doc.Tracks) != 5 || st.Tracks != 5 {
		t.Fatalf("%d tracks (stats %d), want one per device: 5", len(doc.Tracks), st.Tracks)
	}
	var points int
	for i, trk := range doc.Tracks {
		dev := fmt.Sprintf("dev-%03d", i)
		if trk.Name != dev || len(trk.Segments) != 1 {
			t.Fatalf("track %d: name %q, %d segments; want %s, 1", i, trk.Name, len(trk.Segments), dev)
		}
		want := r.inRange(r.from, r.to, dev)
		got := trk.Segments[0].Points
		if len(got) != len(want) {
			t.Fatalf("track %s: %d points, want %d", dev, len(got), len(want))
		}
		for j, pt := range got {
			p := want[j]
			ts, err := time.Parse(time.RFC3339Nano, pt.Time)
			if err != nil || !ts.Equal(p.TS) || pt.Lat != strconv.FormatFloat(p.Lat, 'f', -1, 64) ||
				pt.Lon != strconv.FormatFloat(p.Lon, 'f', -1, 64) {
				t.Fatalf("track %s point %d = %+v, want %s", dev, j, pt, p.Encode())
			}
			if p.Alt != nil && (pt.Ele == nil || *pt.Ele != *p.Alt || pt.Sat == nil || *pt.Sat != *p.Sats ||
				pt.Ext == nil || pt.Ext.TPX.Course == nil || *pt.Ext.TPX.Course != *p.Heading ||
				pt.Ext.TPX.Speed == nil || fmt.Sprintf("%.3f", *pt.Ext.TPX.Speed) != fmt.Sprintf("%.3f", *p.Speed/3.6)) {
				t.Fatalf("track %s point %d: optional fields %+v, want %s", dev, j, pt, p.Encode())
			}
			if p.Alt == nil && (pt.Ele != nil || pt.Sat != nil || pt.Ext != nil) {
				t.Fatalf("track %s point %d has fields the position lacks", dev, j)
			}
		}
		points += len(got)
	}
	if int64(points) != st.Written {
		t.Fatalf("%d points, stats say %d written", points, st.Written)
	}
}

func TestEmptyRangeGivesValidFiles(t *testing.T) {
	t.Parallel()
	r := publishRace(t, 2, 5)
	from := time.Now().Add(-48 * time.Hour)
	to := from.Add(time.Hour)
	out, st := run(t, r.js, export.Options{EventID: event, From: from, To: to, Format: export.GPX})
	checkGPXStructure(t, out)
	if st.Written != 0 || st.Tracks != 0 {
		t.Fatalf("stats %+v, want nothing written", st)
	}
	out, _ = run(t, r.js, export.Options{EventID: other[:35] + "2", From: r.from, Format: export.CSV})
	if string(out) != strings.Join(export.CSVHeader, ",")+"\n" {
		t.Fatalf("unknown event CSV = %q, want the header only", out)
	}
}

func TestBadOptions(t *testing.T) {
	t.Parallel()
	from := time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		o    export.Options
		want string
	}{
		{"no event", export.Options{From: from, Format: export.CSV}, "event is required"},
		{"bad event", export.Options{EventID: "7C1E", From: from, Format: export.CSV}, `event "7C1E" is not a lowercase UUID`},
		{"no from", export.Options{EventID: event, Format: export.CSV}, "from is required"},
		{"from after to", export.Options{EventID: event, From: from, To: from.Add(-time.Second), Format: export.CSV},
			"from 2026-05-03T10:00:00.000Z is after to 2026-05-03T09:59:59.000Z"},
		{"bad format", export.Options{EventID: event, From: from, Format: "kml"}, `format "kml": must be ndjson, csv or gpx`},
		{"negative lateness", export.Options{EventID: event, From: from, Format: export.GPX, Lateness: -time.Second}, "lateness -1s is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// No server: options are checked before anything is contacted.
			_, err := export.Export(context.Background(), nil, io.Discard, tc.o)
			if !errors.Is(err, export.ErrBadOptions) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrBadOptions saying %q", err, tc.want)
			}
		})
	}
}

func TestParseTime(t *testing.T) {
	t.Parallel()
	want := time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)
	for _, s := range []string{"2026-05-03T10:00:00Z", "2026-05-03T12:00:00+02:00", "1777802400000"} {
		got, err := export.ParseTime(s)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "yesterday", "2026-05-03 10:00", "12ab"} {
		if _, err := export.ParseTime(s); err == nil || !strings.Contains(err.Error(), "RFC 3339") {
			t.Errorf("ParseTime(%q) err = %v, want one naming the accepted forms", s, err)
		}
	}
}

// TestLatenessEndsTheRead: a position stored after positions more than
// Lateness newer than the range's end is not waited for; with a larger
// Lateness it is found. The race is stored a minute after its fix times
// (as a bridge catching up on a backlog would): storage time is no end.
func TestLatenessEndsTheRead(t *testing.T) {
	t.Parallel()
	r := publishRace(t, 2, 60)
	base := r.all[0].TS
	late := contract.Position{DeviceID: "late-dev", EventID: event, TS: base.Add(5500 * time.Millisecond), Lat: 1, Lon: 2}
	if _, err := r.js.Publish(context.Background(), late.Subject(), late.Encode()); err != nil {
		t.Fatal(err)
	}
	from, to := base, base.Add(10*time.Second)
	want := len(r.inRange(from, to, ""))
	for _, tc := range []struct {
		lateness time.Duration
		want     int
	}{{5 * time.Second, want}, {2 * time.Hour, want + 1}} {
		out, st := run(t, r.js, export.Options{EventID: event, From: from, To: to, Format: export.NDJSON, Lateness: tc.lateness})
		if got := bytes.Count(out, []byte("\n")); got != tc.want {
			t.Fatalf("lateness %s: %d positions, want %d", tc.lateness, got, tc.want)
		}
		// The short lateness stops reading at fix time to + 5 s: about
		// 15 s of the 60 s race were read, not all of it.
		if tc.lateness == 5*time.Second && st.Scanned > int64(2*20) {
			t.Fatalf("lateness %s: %d messages read, want the read to stop near to + lateness", tc.lateness, st.Scanned)
		}
	}
}

// TestLateStoredInFixTimeOrder: positions stored after newer ones of their
// device (a publish re-sent after a failure) are written in fix-time order
// per device, each once, in every format.
func TestLateStoredInFixTimeOrder(t *testing.T) {
	t.Parallel()
	n := testkit.StartNATS(t)
	js := n.JetStream(t)
	ctx := context.Background()
	if err := streams.Ensure(ctx, js, streams.Options{}); err != nil {
		t.Fatal(err)
	}
	base := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	at := func(sec float64) time.Time { return base.Add(time.Duration(sec * float64(time.Second))) }
	stored := []struct {
		dev string
		sec float64
	}{
		{"x", 1}, {"y", 1}, {"x", 3}, {"y", 2},
		{"x", 2}, // stored after x 3
		{"y", 3}, {"x", 4},
		{"x", 2.5}, // after x 4
		{"y", 1.5}, // after y 3
	}
	all := map[string]bool{}
	for _, s := range stored {
		p := contract.Position{DeviceID: s.dev, EventID: event, TS: at(s.sec), Lat: 45, Lon: 7}
		if _, err := js.Publish(ctx, p.Subject(), p.Encode(), jetstream.WithMsgID(p.MsgID())); err != nil {
			t.Fatal(err)
		}
		all[string(p.Encode())] = true
	}
	want := map[string][]time.Time{
		"x": {at(1), at(2), at(2.5), at(3), at(4)},
		"y": {at(1), at(1.5), at(2), at(3)},
	}
	check := func(format string, got map[string][]time.Time, st export.Stats) {
		t.Helper()
		for dev, w := range want {
			if fmt.Sprint(got[dev]) != fmt.Sprint(w) {
				t.Fatalf("%s: device %s written as %v, want %v", format, dev, got[dev], w)
			}
		}
		if st.Written != int64(len(stored)) || st.Late != 3 {
			t.Fatalf("%s: stats %+v, want %d written, 3 late", format, st, len(stored))
		}
	}
	o := export.Options{EventID: event, From: at(0), To: at(10), Lateness: time.Minute}

	o.Format = export.NDJSON
	out, st := run(t, js, o)
	got := map[string][]time.Time{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		p, err := contract.DecodePosition([]byte(line))
		if err != nil || !all[line] {
			t.Fatalf("line %q: %v (not one of the stored positions)", line, err)
		}
		delete(all, line) // each once
		got[p.DeviceID] = append(got[p.DeviceID], p.TS)
	}
	check("ndjson", got, st)

	o.Format = export.CSV
	out, st = run(t, js, o)
	recs, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	got = map[string][]time.Time{}
	for _, rec := range recs[1:] {
		ts, err := time.Parse(time.RFC3339Nano, rec[2])
		if err != nil {
			t.Fatal(err)
		}
		got[rec[0]] = append(got[rec[0]], ts)
	}
	check("csv", got, st)

	o.Format = export.GPX
	out, st = run(t, js, o)
	var doc struct {
		Trk []struct {
			Name string `xml:"name"`
			Pts  []struct {
				Time string `xml:"time"`
			} `xml:"trkseg>trkpt"`
		} `xml:"trk"`
	}
	if err := xml.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	got = map[string][]time.Time{}
	for _, trk := range doc.Trk {
		for _, pt := range trk.Pts {
			ts, err := time.Parse(time.RFC3339Nano, pt.Time)
			if err != nil {
				t.Fatal(err)
			}
			got[trk.Name] = append(got[trk.Name], ts)
		}
	}
	check("gpx", got, st)
}

// BenchmarkExportNDJSON: one NDJSON export of 50 devices × 10 min (30,000
// positions, none stored late): the cost of the two reads.
func BenchmarkExportNDJSON(b *testing.B) {
	r := publishRace(b, 50, 600)
	for b.Loop() {
		st, err := export.Export(context.Background(), r.js, io.Discard, export.Options{EventID: event, From: r.all[0].TS, Format: export.NDJSON})
		if err != nil || st.Written != int64(len(r.all)) {
			b.Fatalf("%+v %v", st, err)
		}
	}
	b.ReportMetric(float64(len(r.all))*float64(b.N)/b.Elapsed().Seconds(), "positions/s")
}
