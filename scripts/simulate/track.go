// Package simulate is the race simulator of trm-live: devices driving a
// closed track, their fixes as Redis stream entries in the design's input
// format (with a chosen fraction of deliberately bad entries, one per
// bad-input class of the contract), the pipelined XADD that writes them,
// and the seeding of the Directus-side tables (organizations, events,
// event_devices, a demo user) that routes them. Everything is
// deterministic for a given seed.
package simulate

import (
	"math"
)

// LatLon is a point in decimal degrees.
type LatLon struct{ Lat, Lon float64 }

// Track is a closed loop of points with cumulative distances in metres.
type Track struct {
	Name   string
	Alt    float64 // mean altitude, metres
	pts    []LatLon
	cum    []float64 // cum[i] = distance from pts[0] to pts[i]
	Length float64   // metres, the loop closed back to pts[0]
}

// NewTrack builds a track from a closed loop of points (the last point
// joins the first).
func NewTrack(name string, alt float64, pts []LatLon) *Track {
	t := &Track{Name: name, Alt: alt, pts: pts, cum: make([]float64, len(pts))}
	for i := 1; i < len(pts); i++ {
		t.cum[i] = t.cum[i-1] + distance(pts[i-1], pts[i])
	}
	t.Length = t.cum[len(pts)-1] + distance(pts[len(pts)-1], pts[0])
	return t
}

// Monza is a 5.8 km loop laid like the Autodromo Nazionale Monza circuit in
// the park north of Milan: a long main straight, a chicane, the Lesmo
// bends, the back straight under the old banking and the Parabolica. The
// shape is drawn from a handful of control points smoothed into a curve,
// close enough to look right on a map, not a survey.
func Monza() *Track {
	// Control points (lat, lon), clockwise from the start line.
	ctrl := []LatLon{
		{45.6186, 9.2812}, // start/finish, main straight heading north
		{45.6244, 9.2836}, // end of the straight
		{45.6262, 9.2852}, // first chicane
		{45.6296, 9.2876}, // Curva Grande
		{45.6318, 9.2880},
		{45.6330, 9.2860}, // Roggia
		{45.6322, 9.2822}, // Lesmo 1
		{45.6296, 9.2804}, // Lesmo 2
		{45.6262, 9.2790}, // Serraglio
		{45.6222, 9.2776}, // under the banking
		{45.6172, 9.2750}, // Ascari
		{45.6136, 9.2740}, // back straight
		{45.6112, 9.2758}, // Parabolica entry
		{45.6120, 9.2790}, // Parabolica apex
		{45.6150, 9.2802}, // Parabolica exit onto the straight
	}
	return NewTrack("Monza", 165, smooth(ctrl, 24))
}

// smooth interpolates a closed Catmull-Rom spline through ctrl, n points
// per segment.
func smooth(ctrl []LatLon, n int) []LatLon {
	k := len(ctrl)
	out := make([]LatLon, 0, k*n)
	at := func(i int) LatLon { return ctrl[((i%k)+k)%k] }
	for i := 0; i < k; i++ {
		p0, p1, p2, p3 := at(i-1), at(i), at(i+1), at(i+2)
		for s := 0; s < n; s++ {
			u := float64(s) / float64(n)
			u2, u3 := u*u, u*u*u
			f := func(a, b, c, d float64) float64 {
				return 0.5 * (2*b + (-a+c)*u + (2*a-5*b+4*c-d)*u2 + (-a+3*b-3*c+d)*u3)
			}
			out = append(out, LatLon{f(p0.Lat, p1.Lat, p2.Lat, p3.Lat), f(p0.Lon, p1.Lon, p2.Lon, p3.Lon)})
		}
	}
	return out
}

// At returns the point at distance d (metres, any value: it wraps) along the
// track and the heading there in degrees clockwise from north, [0, 360).
func (t *Track) At(d float64) (LatLon, float64) {
	d = math.Mod(d, t.Length)
	if d < 0 {
		d += t.Length
	}
	// Binary search the segment.
	lo, hi := 0, len(t.cum)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if t.cum[mid] <= d {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	a := t.pts[lo]
	b := t.pts[(lo+1)%len(t.pts)]
	segEnd := t.Length
	if lo+1 < len(t.cum) {
		segEnd = t.cum[lo+1]
	}
	f := 0.0
	if seg := segEnd - t.cum[lo]; seg > 0 {
		f = (d - t.cum[lo]) / seg
	}
	p := LatLon{a.Lat + (b.Lat-a.Lat)*f, a.Lon + (b.Lon-a.Lon)*f}
	return p, bearing(a, b)
}

// Curvature returns a value in [0, 1] that is high in bends: the turn of
// the heading over the next ~100 m, for slowing down into corners.
func (t *Track) Curvature(d float64) float64 {
	_, h1 := t.At(d)
	_, h2 := t.At(d + 100)
	turn := math.Abs(math.Mod(h2-h1+540, 360) - 180)
	return math.Min(turn/90, 1)
}

const earthRadius = 6371000.0

func distance(a, b LatLon) float64 {
	la1, la2 := a.Lat*math.Pi/180, b.Lat*math.Pi/180
	dla := la2 - la1
	dlo := (b.Lon - a.Lon) * math.Pi / 180
	h := math.Sin(dla/2)*math.Sin(dla/2) + math.Cos(la1)*math.Cos(la2)*math.Sin(dlo/2)*math.Sin(dlo/2)
	return 2 * earthRadius * math.Asin(math.Sqrt(h))
}

func bearing(a, b LatLon) float64 {
	la1, la2 := a.Lat*math.Pi/180, b.Lat*math.Pi/180
	dlo := (b.Lon - a.Lon) * math.Pi / 180
	y := math.Sin(dlo) * math.Cos(la2)
	x := math.Cos(la1)*math.Sin(la2) - math.Sin(la1)*math.Cos(la2)*math.Cos(dlo)
	deg := math.Atan2(y, x) * 180 / math.Pi
	return math.Mod(deg+360, 360)
}
