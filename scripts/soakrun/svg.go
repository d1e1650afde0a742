package soakrun

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"time"
)

// SVG draws the timeline: per-second p50 and p99 of the end-to-end latency
// on a logarithmic axis, the pilot target as a dashed line, and every
// fault as a shaded band (its down time) with its label.
func SVG(title string, secs []SecondStat, events []Event, target time.Duration) []byte {
	const (
		w, h                 = 1200.0, 520.0
		left, right, top, bt = 70.0, 20.0, 40.0, 150.0
	)
	pw, ph := w-left-right, h-top-bt
	n := max(len(secs), 1)
	for _, e := range events {
		n = max(n, int(e.End/time.Second)+1, int(e.At/time.Second)+1)
	}
	x := func(s float64) float64 { return left + pw*s/float64(n) }
	lo, hi := math.Log10(1), math.Log10(10000) // 1 ms .. 10 s
	y := func(d time.Duration) float64 {
		ms := math.Max(float64(d)/float64(time.Millisecond), 1)
		v := (math.Min(math.Log10(ms), hi) - lo) / (hi - lo)
		return top + ph*(1-v)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="20" font-size="14">%s</text>`+"\n", left, html.EscapeString(title))
	for i, e := range events {
		x0 := x(e.At.Seconds())
		x1 := max(x(e.End.Seconds()), x0+2)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="#f4a261" fill-opacity="0.35"/>`+"\n", x0, top, x1-x0, ph)
		ly := top + ph + 60 + float64(i%6)*13
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#e76f51" stroke-width="0.5"/>`+"\n", x0, top+ph, x0, ly-9)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" fill="#9c3d1e">%s</text>`+"\n", x0+2, ly, html.EscapeString(e.Label))
	}
	// Axes and grid.
	for _, ms := range []float64{1, 10, 100, 1000, 10000} {
		yy := y(time.Duration(ms * float64(time.Millisecond)))
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#ddd"/>`+"\n", left, yy, left+pw, yy)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-5, yy+4, fmtMS(ms))
	}
	step := max(1, n/12)
	for s := 0; s <= n; s += step {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", x(float64(s)), top+ph+15, (time.Duration(s) * time.Second).String())
	}
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", left, top, pw, ph)
	ty := y(target)
	fmt.Fprintf(&b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#2a9d8f" stroke-dasharray="6 4"/>`+"\n", left, ty, left+pw, ty)
	fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" fill="#2a9d8f">target p99 %s</text>`+"\n", left+pw-120, ty-4, target)
	// One polyline per run of seconds with deliveries: a second without
	// any (nothing reached a viewer) breaks the line.
	line := func(color string, v func(SecondStat) time.Duration) {
		var pts bytes.Buffer
		flush := func() {
			if pts.Len() > 0 {
				fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.2" points="%s"/>`+"\n", color, bytes.TrimSpace(pts.Bytes()))
				pts.Reset()
			}
		}
		for s, st := range secs {
			if st.N == 0 {
				flush()
				continue
			}
			fmt.Fprintf(&pts, "%.1f,%.1f ", x(float64(s)+0.5), y(v(st)))
		}
		flush()
	}
	line("#264653", func(s SecondStat) time.Duration { return s.P50 })
	line("#e63946", func(s SecondStat) time.Duration { return s.P99 })
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" fill="#264653">p50</text><text x="%.0f" y="%.0f" fill="#e63946">p99</text>`+"\n", left+10, top+ph+35, left+40, top+ph+35)
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">end-to-end latency per second (XADD schedule → WebSocket receive); shaded: fault down time; a gap: no delivery in that second</text>`+"\n", left+80, top+ph+35)
	b.WriteString("</svg>\n")
	return b.Bytes()
}

func fmtMS(ms float64) string {
	if ms >= 1000 {
		return fmt.Sprintf("%.0f s", ms/1000)
	}
	return fmt.Sprintf("%.0f ms", ms)
}
