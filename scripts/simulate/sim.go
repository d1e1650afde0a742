package simulate

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"trm-live/contract"
)

// Options shape a simulation. Zero values mean the defaults.
type Options struct {
	// Devices is the number of vehicles (default 500).
	Devices int
	// Seed makes everything reproducible (default 1).
	Seed uint64
	// BadFraction is the share of entries replaced by a deliberately bad
	// one, cycling through BadReasons (0 = none).
	BadFraction float64
	// Track is the loop driven (default Monza).
	Track *Track
}

// BadReasons are the bad-input classes the simulator produces: every
// contract reason an XADD can cause (not_an_entry cannot come from Redis,
// and the persister's own reasons are not about entries).
var BadReasons = []contract.Reason{
	contract.ReasonMissingField, contract.ReasonBadDeviceID, contract.ReasonBadTS,
	contract.ReasonFutureTS, contract.ReasonBadNumber, contract.ReasonOutOfRange,
	contract.ReasonBadAttrs,
}

// Device is one simulated vehicle.
type Device struct {
	ID    string
	dist  float64 // metres driven since the start line
	vmax  float64 // top speed on straights, km/h
	speed float64 // current, km/h
	sats  int
	fuel  float64
}

// Sim is a running simulation. It is not safe for concurrent use.
type Sim struct {
	Track   *Track
	Devices []Device
	opts    Options
	rnd     *rand.Rand
	last    time.Time
	entries uint64
	badNext int // index in BadReasons of the next bad entry
}

// DeviceID is the IMEI-like identity of device i (15 digits).
func DeviceID(i int) string { return fmt.Sprintf("35693803%07d", i+1) }

// New starts a simulation: devices spread around the track, each with its
// own pace.
func New(o Options) *Sim {
	if o.Devices <= 0 {
		o.Devices = 500
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Track == nil {
		o.Track = Monza()
	}
	s := &Sim{Track: o.Track, opts: o, rnd: rand.New(rand.NewPCG(o.Seed, 0x7e11))}
	s.Devices = make([]Device, o.Devices)
	for i := range s.Devices {
		s.Devices[i] = Device{
			ID:   DeviceID(i),
			dist: s.rnd.Float64() * o.Track.Length,
			vmax: 190 + s.rnd.Float64()*90, // 190-280 km/h on the straights
			sats: 8 + s.rnd.IntN(6),
			fuel: 60 + s.rnd.Float64()*40,
		}
		s.Devices[i].speed = s.Devices[i].vmax * 0.7
	}
	return s
}

// Entry is one Redis stream entry: flat field/value pairs in XADD order.
type Entry struct {
	Values []string
	// Bad is the reason the bridge will reject it for, "" when valid.
	Bad contract.Reason
}

// Field returns the value of name, or "".
func (e Entry) Field(name string) string {
	for i := 0; i+1 < len(e.Values); i += 2 {
		if e.Values[i] == name {
			return e.Values[i+1]
		}
	}
	return ""
}

// Tick advances every device to time at and returns one entry per device
// with fix time at. The first tick only places the devices.
func (s *Sim) Tick(at time.Time) []Entry {
	out := make([]Entry, 0, len(s.Devices))
	return s.AppendTick(out, at)
}

// AppendTick is Tick appending to out.
func (s *Sim) AppendTick(out []Entry, at time.Time) []Entry {
	dt := 0.0
	if !s.last.IsZero() {
		dt = at.Sub(s.last).Seconds()
	}
	s.last = at
	for i := range s.Devices {
		d := &s.Devices[i]
		// Brake into bends, accelerate on straights, a little noise.
		target := d.vmax * (1 - 0.55*s.Track.Curvature(d.dist))
		d.speed += (target - d.speed) * math.Min(1, 0.6*math.Max(dt, 0.2))
		d.speed = math.Max(40, d.speed+s.rnd.NormFloat64()*2)
		d.dist += d.speed / 3.6 * dt
		d.fuel = math.Max(0, d.fuel-dt*0.002)
		out = append(out, s.entry(d, i, at))
	}
	return out
}

// entry is the fields of device d at fix time at, or a bad entry instead.
func (s *Sim) entry(d *Device, i int, at time.Time) Entry {
	p, heading := s.Track.At(d.dist)
	// GNSS noise of about 2 m.
	lat := p.Lat + s.rnd.NormFloat64()*0.000018
	lon := p.Lon + s.rnd.NormFloat64()*0.000025
	alt := s.Track.Alt + 6*math.Sin(2*math.Pi*d.dist/s.Track.Length) + s.rnd.NormFloat64()
	sats := d.sats + s.rnd.IntN(3) - 1
	ts := strconv.FormatInt(at.UnixMilli(), 10)
	if i%2 == 1 { // half the devices send RFC 3339 with an offset
		ts = at.In(cet).Format("2006-01-02T15:04:05.000-07:00")
	}
	e := Entry{Values: []string{
		"device_id", d.ID,
		"ts", ts,
		"lat", strconv.FormatFloat(lat, 'f', 6, 64),
		"lon", strconv.FormatFloat(lon, 'f', 6, 64),
		"alt", strconv.FormatFloat(alt, 'f', 1, 64),
		"speed", strconv.FormatFloat(d.speed, 'f', 1, 64),
		"heading", strconv.FormatFloat(math.Round(heading), 'f', 0, 64),
		"sats", strconv.Itoa(sats),
		"attrs", `{"io239":1,"io240":1,"fuel":` + strconv.FormatFloat(d.fuel, 'f', 1, 64) + `}`,
	}}
	s.entries++
	if s.opts.BadFraction > 0 && s.rnd.Float64() < s.opts.BadFraction {
		r := BadReasons[s.badNext%len(BadReasons)]
		s.badNext++
		e = spoil(e, r, at)
	}
	return e
}

var cet = time.FixedZone("CET", 3600)

// spoil turns a valid entry into one rejected for reason r.
func spoil(e Entry, r contract.Reason, at time.Time) Entry {
	v := append([]string(nil), e.Values...)
	set := func(name, val string) {
		for i := 0; i+1 < len(v); i += 2 {
			if v[i] == name {
				v[i+1] = val
				return
			}
		}
		v = append(v, name, val)
	}
	switch r {
	case contract.ReasonMissingField:
		for i := 0; i+1 < len(v); i += 2 {
			if v[i] == "lon" {
				v = append(v[:i], v[i+2:]...)
				break
			}
		}
	case contract.ReasonBadDeviceID:
		set("device_id", "bad id/"+e.Field("device_id"))
	case contract.ReasonBadTS:
		set("ts", "03/05/2026 10:00")
	case contract.ReasonFutureTS:
		set("ts", strconv.FormatInt(at.Add(time.Hour).UnixMilli(), 10))
	case contract.ReasonBadNumber:
		set("lat", "45,61N")
	case contract.ReasonOutOfRange:
		set("lat", "123.456")
	case contract.ReasonBadAttrs:
		set("attrs", `{"io239":1`)
	}
	return Entry{Values: v, Bad: r}
}

// Entries is how many entries the simulation produced so far.
func (s *Sim) Entries() uint64 { return s.entries }
