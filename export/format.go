package export

import (
	"bufio"
	"encoding/csv"
	"encoding/xml"
	"fmt"
	"strconv"
	"time"

	"trm-live/contract"
)

// Format is an output format.
type Format string

// Formats.
const (
	// NDJSON is one contract.Position.Encode() object per line: the same
	// bytes as the JetStream payload.
	NDJSON Format = "ndjson"
	// CSV has a header line and one row per position; absent optional
	// fields are empty cells, attrs is its compact JSON.
	CSV Format = "csv"
	// GPX is GPX 1.1 with one <trk> per device, devices in id order, points
	// in stream order.
	GPX Format = "gpx"
)

// ParseFormat returns the format named s.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case NDJSON, CSV, GPX:
		return f, nil
	}
	return "", fmt.Errorf("format %q: must be ndjson, csv or gpx", s)
}

// CSVHeader is the header line of the CSV format.
var CSVHeader = []string{"device_id", "event_id", "ts", "lat", "lon", "alt", "speed", "heading", "sats", "attrs"}

func writeNDJSON(w *bufio.Writer, buf []byte, p *contract.Position) ([]byte, error) {
	buf = p.AppendJSON(buf[:0])
	buf = append(buf, '\n')
	_, err := w.Write(buf)
	return buf, err
}

func csvRecord(rec []string, p *contract.Position) []string {
	f := func(v *float64) string {
		if v == nil {
			return ""
		}
		return strconv.FormatFloat(*v, 'f', -1, 64)
	}
	rec = append(rec[:0], p.DeviceID, p.EventID, p.TS.UTC().Format(contract.TimeLayout),
		strconv.FormatFloat(p.Lat, 'f', -1, 64), strconv.FormatFloat(p.Lon, 'f', -1, 64),
		f(p.Alt), f(p.Speed), f(p.Heading), "", string(p.Attrs))
	if p.Sats != nil {
		rec[8] = strconv.Itoa(*p.Sats)
	}
	return rec
}

func newCSV(w *bufio.Writer) (*csv.Writer, error) {
	cw := csv.NewWriter(w)
	return cw, cw.Write(CSVHeader)
}

// GPX namespaces. Speed and course are not in GPX 1.1's core (they were
// dropped after 1.0), so they go in Garmin's TrackPointExtension v2, which
// most tools read: speed in m/s, course in degrees.
const (
	GPXNamespace     = "http://www.topografix.com/GPX/1/1"
	GPXTPXNamespace  = "http://www.garmin.com/xmlschemas/TrackPointExtension/v2"
	gpxSchemaLocaton = "http://www.topografix.com/GPX/1/1 http://www.topografix.com/GPX/1/1/gpx.xsd " +
		"http://www.garmin.com/xmlschemas/TrackPointExtension/v2 http://www8.garmin.com/xmlschemas/TrackPointExtensionv2.xsd"
)

// gpxWriter writes GPX 1.1 by hand, one element at a time, so nothing is
// held in memory but the current point. Element order follows the schema's
// sequences (gpx: metadata, trk; trk: name, trkseg; wpt: ele, time, sat,
// extensions).
type gpxWriter struct {
	w       *bufio.Writer
	buf     []byte
	inTrack bool
}

func (g *gpxWriter) begin(eventID string, from, to time.Time, now time.Time) error {
	g.buf = append(g.buf[:0], `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<gpx version="1.1" creator="trm-live" xmlns="`+GPXNamespace+`" xmlns:gpxtpx="`+GPXTPXNamespace+
		`" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="`+gpxSchemaLocaton+`">`+"\n"...)
	g.buf = append(g.buf, "<metadata><name>"...)
	g.buf = appendEscaped(g.buf, "event "+eventID)
	g.buf = append(g.buf, "</name><desc>"...)
	desc := "positions from " + from.UTC().Format(contract.TimeLayout)
	if !to.IsZero() {
		desc += " to " + to.UTC().Format(contract.TimeLayout)
	}
	g.buf = appendEscaped(g.buf, desc)
	g.buf = append(g.buf, "</desc><time>"...)
	g.buf = now.UTC().AppendFormat(g.buf, contract.TimeLayout)
	g.buf = append(g.buf, "</time></metadata>\n"...)
	_, err := g.w.Write(g.buf)
	return err
}

// startTrack opens the track of a device.
func (g *gpxWriter) startTrack(device string) error {
	b := append(g.buf[:0], "<trk><name>"...)
	b = appendEscaped(b, device)
	b = append(b, "</name><trkseg>\n"...)
	g.buf = b
	g.inTrack = true
	_, err := g.w.Write(b)
	return err
}

// appendTrkpt appends one <trkpt> element and a newline.
func appendTrkpt(b []byte, p *contract.Position) []byte {
	b = append(b, `<trkpt lat="`...)
	b = strconv.AppendFloat(b, p.Lat, 'f', -1, 64)
	b = append(b, `" lon="`...)
	b = strconv.AppendFloat(b, p.Lon, 'f', -1, 64)
	b = append(b, `">`...)
	if p.Alt != nil {
		b = append(b, "<ele>"...)
		b = strconv.AppendFloat(b, *p.Alt, 'f', -1, 64)
		b = append(b, "</ele>"...)
	}
	b = append(b, "<time>"...)
	b = p.TS.UTC().AppendFormat(b, contract.TimeLayout)
	b = append(b, "</time>"...)
	if p.Sats != nil {
		b = append(b, "<sat>"...)
		b = strconv.AppendInt(b, int64(*p.Sats), 10)
		b = append(b, "</sat>"...)
	}
	if p.Speed != nil || p.Heading != nil {
		b = append(b, "<extensions><gpxtpx:TrackPointExtension>"...)
		if p.Speed != nil {
			b = append(b, "<gpxtpx:speed>"...)
			b = strconv.AppendFloat(b, *p.Speed/3.6, 'f', 3, 64)
			b = append(b, "</gpxtpx:speed>"...)
		}
		if p.Heading != nil {
			b = append(b, "<gpxtpx:course>"...)
			b = strconv.AppendFloat(b, *p.Heading, 'f', -1, 64)
			b = append(b, "</gpxtpx:course>"...)
		}
		b = append(b, "</gpxtpx:TrackPointExtension></extensions>"...)
	}
	return append(b, "</trkpt>\n"...)
}

func (g *gpxWriter) endTrack() error {
	if !g.inTrack {
		return nil
	}
	g.inTrack = false
	_, err := g.w.WriteString("</trkseg></trk>\n")
	return err
}

func (g *gpxWriter) end() error {
	if err := g.endTrack(); err != nil {
		return err
	}
	_, err := g.w.WriteString("</gpx>\n")
	return err
}

func appendEscaped(b []byte, s string) []byte {
	w := byteWriter{b}
	_ = xml.EscapeText(&w, []byte(s))
	return w.b
}

type byteWriter struct{ b []byte }

func (w *byteWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}
