// Package export writes the positions an event left in the POSITIONS stream,
// for a range of fix times, as NDJSON, CSV or GPX 1.1. It streams: memory is
// constant in the number of positions.
//
// Ranges are fix times (the position's ts), inclusive at both ends, because
// that is what "the race from 10:00 to 12:00" means. The stream can only be
// seeked by storage time; streams.Reader (contract/streams), the one reader
// of a range of fix times, bridges the two.
//
// Every format has each device's positions in fix-time order, late-stored
// ones included (a publish re-sent after a failure lands in the stream
// behind newer positions of its device): a first read of the range finds
// them, the second writes (streams.PlaceLate). NDJSON and CSV are in stream order but
// for those. GPX needs one <trk> per device while positions arrive
// interleaved by device: its writing pass is one pass too,
// each point appended to a temporary file of its device (spool.go, at most
// 128 files open at once), then the files are copied into the document in
// device order. Memory is bounded by the number of devices, never by
// positions; disk holds the points once more while the export runs.
//
// One ordered consumer per device (filtered on pos.<event>.<device>) was
// the first design: no disk, but positions are stored interleaved, so each
// pass read the whole range again on the server: 500 devices × 2 h took
// more than 6 minutes where the NDJSON pass took 92 seconds.
package export

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/contract/streams"
)

// Options select what to export and how.
type Options struct {
	// EventID is the event, a canonical lowercase UUID. Required.
	EventID string
	// From is the first fix time included. Required.
	From time.Time
	// To is the last fix time included. Zero means everything stored when
	// the export starts.
	To time.Time
	// Format is the output format. Required.
	Format Format
	// Lateness is how far out of fix-time order a position may arrive in
	// the stream (trackers that buffered while offline, jitter between
	// devices) and still be exported: the read stops at the first fix time
	// after To + Lateness. Zero means streams.DefaultLateness.
	Lateness time.Duration
	// Progress, when set, is called about every ProgressEvery and once at
	// the end, on the exporting goroutine.
	Progress func(Stats)
	// ProgressEvery is the progress period. Zero means one second.
	ProgressEvery time.Duration
	// TempDir is where GPX export spools one file per device. Empty means
	// os.TempDir().
	TempDir string
	// Now is the clock (GPX metadata time, progress rate). Nil means
	// time.Now.
	Now func() time.Time
}

// Stats describe an export so far.
type Stats struct {
	// Written is the number of positions written.
	Written int64
	// Scanned is the number of stream messages read by the writing pass
	// (the first read, which finds the late positions, reads as many).
	Scanned int64
	// Malformed is the number of messages that were not valid positions,
	// skipped.
	Malformed int64
	// Late is the number of positions written out of stream order: stored
	// after a newer position of their device, written before it.
	Late int64
	// Tracks is the number of GPX tracks written so far.
	Tracks int
	// Elapsed is the time since the export started.
	Elapsed time.Duration
	// Done is true on the last call.
	Done bool
}

// Rate is Written per second of Elapsed.
func (s Stats) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Written) / s.Elapsed.Seconds()
}

// ErrBadOptions is wrapped by every error of Validate.
var ErrBadOptions = errors.New("bad export options")

// Validate names the first bad option.
func (o Options) Validate() error {
	if err := o.rng().Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrBadOptions, err)
	}
	if _, err := ParseFormat(string(o.Format)); err != nil {
		return fmt.Errorf("%w: %v", ErrBadOptions, err)
	}
	return nil
}

// rng is the range of fix times o selects.
func (o Options) rng() streams.Range {
	return streams.Range{EventID: o.EventID, From: o.From, To: o.To, Lateness: o.Lateness}
}

// ParseTime reads a range bound: RFC 3339 (with an offset), or integer Unix
// milliseconds, the two forms of ts the design accepts.
func ParseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	var ms int64
	if _, err := fmt.Sscanf(s, "%d", &ms); err == nil && fmt.Sprint(ms) == s {
		return time.UnixMilli(ms).UTC(), nil
	}
	return time.Time{}, fmt.Errorf("time %q: want RFC 3339 (2026-05-03T10:00:00Z) or Unix milliseconds", s)
}

// Export writes the positions selected by o to w. It returns the final
// stats; on error, what was written so far stays written.
func Export(ctx context.Context, js jetstream.JetStream, w io.Writer, o Options) (Stats, error) {
	if err := o.Validate(); err != nil {
		return Stats{}, err
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	stream, err := js.Stream(ctx, streams.Positions)
	if err != nil {
		return Stats{}, fmt.Errorf("stream %s: %w", streams.Positions, err)
	}
	e := &exporter{
		js: js, o: o, bw: bufio.NewWriterSize(w, 64<<10),
		start: o.Now(), lastReport: o.Now(),
		lastSeq: stream.CachedInfo().State.LastSeq,
	}
	switch o.Format {
	case GPX:
		err = e.gpx(ctx)
	default:
		err = e.flat(ctx)
	}
	if ferr := e.bw.Flush(); err == nil && ferr != nil {
		err = fmt.Errorf("write: %w", ferr)
	}
	st := e.stats()
	st.Done = true
	if o.Progress != nil {
		o.Progress(st)
	}
	return st, err
}

type exporter struct {
	js         jetstream.JetStream
	o          Options
	bw         *bufio.Writer
	lastSeq    uint64
	start      time.Time
	lastReport time.Time
	done       streams.ReadStats // of finished passes
	cur        streams.ReadStats // of the pass under way
	tracks     int
}

func (e *exporter) stats() Stats {
	return Stats{
		Written:   e.done.Yielded + e.cur.Yielded,
		Scanned:   e.done.Read + e.cur.Read,
		Malformed: e.done.Malformed + e.cur.Malformed,
		Late:      e.done.Late + e.cur.Late,
		Tracks:    e.tracks,
		Elapsed:   e.o.Now().Sub(e.start),
	}
}

func (e *exporter) tick(st streams.ReadStats) {
	if e.o.Progress == nil || st.Read%1024 != 0 {
		return
	}
	e.cur = st
	if now := e.o.Now(); now.Sub(e.lastReport) >= e.o.ProgressEvery {
		e.lastReport = now
		e.o.Progress(e.stats())
	}
}

// pass is one read of the range (streams.Reader, PlaceLate: every
// late-stored position in its fix-time place), fn called per position.
func (e *exporter) pass(ctx context.Context, fn func(contract.Position) error) error {
	rd := streams.Reader{
		Range: e.o.rng(), Late: streams.PlaceLate, LastSeq: e.lastSeq, Tick: e.tick,
		Open: func(ctx context.Context) (jetstream.Consumer, error) {
			start := e.o.rng().Start()
			cons, err := e.js.OrderedConsumer(ctx, streams.Positions, jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{contract.EventSubject(e.o.EventID)},
				DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
				OptStartTime:   &start,
			})
			if err != nil {
				return nil, fmt.Errorf("ordered consumer on %s: %w", contract.EventSubject(e.o.EventID), err)
			}
			return cons, nil
		},
	}
	st, err := rd.Read(ctx, func(p streams.Pos) error { return fn(p.Position) })
	e.cur = streams.ReadStats{}
	e.done.Read += st.Read
	e.done.Yielded += st.Yielded
	e.done.Malformed += st.Malformed
	e.done.Late += st.Late
	return err
}

// flat writes NDJSON or CSV in one writing pass.
func (e *exporter) flat(ctx context.Context) error {
	if e.o.Format == NDJSON {
		var buf []byte
		return e.pass(ctx, func(p contract.Position) (err error) {
			buf, err = writeNDJSON(e.bw, buf, &p)
			return err
		})
	}
	cw, err := newCSV(e.bw)
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	rec := make([]string, 0, len(CSVHeader))
	err = e.pass(ctx, func(p contract.Position) error {
		rec = csvRecord(rec, &p)
		return cw.Write(rec)
	})
	cw.Flush()
	if err == nil {
		err = cw.Error()
	}
	return err
}

// gpx writes one track per device: one pass over the event's positions,
// each point appended to its device's temporary file (spool), then the
// files copied into the document in device order.
func (e *exporter) gpx(ctx context.Context) error {
	dir, err := os.MkdirTemp(e.o.TempDir, "trm-gpx-")
	if err != nil {
		return fmt.Errorf("temporary folder: %w", err)
	}
	defer os.RemoveAll(dir)
	sp := newSpool(dir)
	var buf []byte
	err = e.pass(ctx, func(p contract.Position) error {
		buf = appendTrkpt(buf[:0], &p)
		return sp.write(p.DeviceID, buf)
	})
	if err != nil {
		return err
	}
	devices, err := sp.devices()
	if err != nil {
		return err
	}
	g := &gpxWriter{w: e.bw}
	if err := g.begin(e.o.EventID, e.o.From, e.o.To, e.start); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	for _, dev := range devices {
		if err := g.startTrack(dev); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if err := sp.copyTo(e.bw, dev); err != nil {
			return err
		}
		if err := g.endTrack(); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		e.tracks++
	}
	if err := g.end(); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}
