package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// fleet generates the entries the ingestion service would XADD: devices
// driving a 5.8 km loop, one fix each per tick, with the field shapes of
// real trackers (half the devices send RFC 3339 times with an offset, the
// other half Unix milliseconds; a small attrs object). The bridge module
// builds alone, so this is a few lines of its own rather than the dev
// simulator of the scripts module.
type fleet struct {
	ids   []string
	dist  []float64 // metres along the loop
	speed []float64 // km/h
	rnd   *rand.Rand
	bad   float64
	last  time.Time
}

func newFleet(devices int, bad float64) *fleet {
	f := &fleet{rnd: rand.New(rand.NewPCG(1, 0x7e11)), bad: bad}
	for i := range devices {
		f.ids = append(f.ids, fmt.Sprintf("35693803%07d", i+1))
		f.dist = append(f.dist, f.rnd.Float64()*loopLength)
		f.speed = append(f.speed, 150+f.rnd.Float64()*100)
	}
	return f
}

const loopLength = 5793.0 // metres

var cet = time.FixedZone("CET", 3600)

// tick appends one entry per device with fix time at (flat field/value
// pairs in XADD order); a bad entry (bad_number) replaces a share bad of them.
func (f *fleet) tick(out [][]string, at time.Time) [][]string {
	dt := 0.0
	if !f.last.IsZero() {
		dt = at.Sub(f.last).Seconds()
	}
	f.last = at
	for i, id := range f.ids {
		f.speed[i] = math.Max(60, f.speed[i]+f.rnd.NormFloat64()*2)
		f.dist[i] = math.Mod(f.dist[i]+f.speed[i]/3.6*dt, loopLength)
		a := 2 * math.Pi * f.dist[i] / loopLength
		lat := 45.6156 + 0.008*math.Sin(a) + f.rnd.NormFloat64()*0.000018
		lon := 9.2811 + 0.011*math.Cos(a) + f.rnd.NormFloat64()*0.000025
		ts := strconv.FormatInt(at.UnixMilli(), 10)
		if i%2 == 1 {
			ts = at.In(cet).Format("2006-01-02T15:04:05.000-07:00")
		}
		latS := strconv.FormatFloat(lat, 'f', 6, 64)
		if f.bad > 0 && f.rnd.Float64() < f.bad {
			latS = "north"
		}
		out = append(out, []string{
			"device_id", id,
			"ts", ts,
			"lat", latS,
			"lon", strconv.FormatFloat(lon, 'f', 6, 64),
			"alt", strconv.FormatFloat(162+6*math.Sin(a), 'f', 1, 64),
			"speed", strconv.FormatFloat(f.speed[i], 'f', 1, 64),
			"heading", strconv.Itoa(int(math.Mod(a*180/math.Pi+90, 360))),
			"sats", strconv.Itoa(8 + f.rnd.IntN(6)),
			"attrs", `{"io239":1,"io240":1,"fuel":` + strconv.FormatFloat(60+f.rnd.Float64()*40, 'f', 1, 64) + `}`,
		})
	}
	return out
}

// xadd appends entries to stream, 1000 per pipelined round trip.
func xadd(ctx context.Context, rdb *redis.Client, stream string, entries [][]string) error {
	for lo := 0; lo < len(entries); lo += 1000 {
		pipe := rdb.Pipeline()
		for _, e := range entries[lo:min(lo+1000, len(entries))] {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: e})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("xadd %s: %w", stream, err)
		}
	}
	return nil
}

// seed creates the Directus stand-in tables (deploy/seed) and assigns every
// device to one event, open-ended; it returns the event id.
func seed(ctx context.Context, dsn, root string, devices []string) (string, error) {
	schema, err := os.ReadFile(filepath.Join(root, "deploy", "seed", "directus-standin.sql"))
	if err != nil {
		return "", err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	const org, event = "6a0c1f1e-0000-4000-8000-000000000001", "6a0c1f1e-0000-4000-8000-000000000002"
	for _, q := range []string{
		string(schema),
		`INSERT INTO organizations (id, name) VALUES ('` + org + `', 'Bench') ON CONFLICT DO NOTHING`,
		`INSERT INTO events (id, organization_id, name) VALUES ('` + event + `', '` + org + `', 'Bench race') ON CONFLICT DO NOTHING`,
		`DELETE FROM event_devices WHERE event_id = '` + event + `'`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return "", fmt.Errorf("seed: %w", err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO event_devices (id, event_id, device_id)
		SELECT gen_random_uuid(), $1, d FROM unnest($2::text[]) AS d`, event, devices); err != nil {
		return "", fmt.Errorf("seed event_devices: %w", err)
	}
	return event, nil
}
