package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"time"

	"trm-live/testkit/benchenv"
)

// plotSVG draws, per scenario plus the Redis floor, the share of
// deliveries slower than a latency (the complementary cumulative
// distribution), both axes logarithmic: the median sits at 0.5, p99 at
// 0.01, p99.9 at 0.001, so the tail is as readable as the body.
func plotSVG(results []result, floor *benchenv.Hist, note string) []byte {
	curves := 2*len(results) + 1
	const w, left, right, top, plotH = 940, 100, 40, 40, 360
	h := top + plotH + 70 + 20*curves
	pw, ph := float64(w-left-right), float64(plotH)
	lo, hi := 0.1, 1000.0 // ms
	for _, r := range results {
		hi = math.Max(hi, msf(max(r.lat.Max, r.all.Max))*1.2)
	}
	hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	const qmin = 1e-5
	x := func(v float64) float64 {
		v = math.Max(lo, math.Min(hi, v))
		return left + pw*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))
	}
	y := func(q float64) float64 {
		q = math.Max(qmin, math.Min(1, q))
		return top + ph*(-math.Log10(q))/(-math.Log10(qmin))
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14" font-weight="bold">trm-live end to end: latency XADD → WebSocket receive, share of deliveries slower than x</text>`+"\n", left-40)
	for d := lo; d <= hi*1.0001; d *= 10 {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`, x(d), top, x(d), top+plotH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%g ms</text>`+"\n", x(d), top+plotH+18, d)
	}
	for _, t := range []struct {
		q     float64
		label string
	}{{1, "all"}, {0.5, "0.5 (p50)"}, {0.1, "0.1 (p90)"}, {0.01, "0.01 (p99)"}, {0.001, "0.001 (p99.9)"}, {1e-4, "1e-4"}, {1e-5, "1e-5"}} {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`, left, y(t.q), w-right, y(t.q))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(t.q)+4, t.label)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">latency (log scale)</text>`+"\n", left+int(pw/2), top+plotH+36)
	colors := []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd"}
	curve := func(hs *benchenv.Hist, color, label string, row int, dash string) {
		ly := top + plotH + 58 + 20*row
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2" %s/>`, left, ly-4, left+24, ly-4, color, dash)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", left+30, ly, label)
		if hs.N == 0 {
			return
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" %s points="`, color, dash)
		var acc uint64
		first := true
		for i, c := range hs.Counts {
			if c == 0 {
				continue
			}
			edge := float64(benchenv.HistLower(i)) / 1000 // ms, lower edge of the bucket
			above := 1 - float64(acc)/float64(hs.N)
			if first {
				fmt.Fprintf(&b, "%.1f,%.1f ", x(edge), y(1))
				first = false
			}
			fmt.Fprintf(&b, "%.1f,%.1f ", x(edge), y(above))
			acc += c
			if acc == hs.N {
				fmt.Fprintf(&b, "%.1f,%.1f ", x(msf(hs.Max)), y(1/float64(hs.N)))
				break
			}
		}
		b.WriteString("\"/>\n")
	}
	for i, r := range results {
		mean, _ := r.share()
		label := fmt.Sprintf("%s (%d × %g Hz, %d viewers), delivered (%.1f %% of offered): p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms, max %.0f ms",
			r.s.Name, r.s.Devices, r.s.Hz, r.s.Viewers, 100*mean, msf(r.lat.Quantile(0.5)), msf(r.lat.Quantile(0.99)), msf(r.lat.Quantile(0.999)), msf(r.lat.Max))
		curve(r.lat, colors[i%len(colors)], label, 2*i, "")
		label = fmt.Sprintf("%s, every offered position (coalesced at its successor's delivery): p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms",
			r.s.Name, msf(r.all.Quantile(0.5)), msf(r.all.Quantile(0.99)), msf(r.all.Quantile(0.999)))
		curve(r.all, colors[i%len(colors)], label, 2*i+1, `stroke-dasharray="2,3"`)
	}
	curve(floor, "#777", fmt.Sprintf("floor: one Redis XADD → XREADGROUP round trip, p50 %.2f ms, p99 %.2f ms", msf(floor.Quantile(0.5)), msf(floor.Quantile(0.99))), 2*len(results), `stroke-dasharray="5,4"`)
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#555">%s</text>`+"\n", left, top+plotH+58+20*(2*len(results)+1), html.EscapeString(note))
	b.WriteString("</svg>\n")
	return b.Bytes()
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
