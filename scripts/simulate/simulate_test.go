package simulate_test

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"trm-live/contract"
	"trm-live/scripts/simulate"
	"trm-live/testkit"
)

func TestEntriesAreValidAndRealistic(t *testing.T) {
	t.Parallel()
	s := simulate.New(simulate.Options{Devices: 50, Seed: 7})
	start := time.Now().Add(-time.Hour).Truncate(time.Second)
	center := simulate.LatLon{Lat: 45.62, Lon: 9.281}
	lastDist := map[string]contract.Position{}
	for k := 0; k < 120; k++ {
		at := start.Add(time.Duration(k) * time.Second)
		for _, e := range s.Tick(at) {
			if e.Bad != "" {
				t.Fatalf("bad entry with BadFraction 0: %v", e)
			}
			fields := map[string]any{}
			for i := 0; i < len(e.Values); i += 2 {
				fields[e.Values[i]] = e.Values[i+1]
			}
			p, err := contract.ParseEntry(fields, time.Now())
			if err != nil {
				t.Fatalf("tick %d: %v: %v", k, e.Values, err)
			}
			if !p.TS.Equal(at) {
				t.Fatalf("ts %s, want %s", p.TS, at)
			}
			if math.Abs(p.Lat-center.Lat) > 0.02 || math.Abs(p.Lon-center.Lon) > 0.02 {
				t.Fatalf("position %v,%v is not at Monza", p.Lat, p.Lon)
			}
			if *p.Speed < 40 || *p.Speed > 300 {
				t.Fatalf("speed %v km/h", *p.Speed)
			}
			if prev, ok := lastDist[p.DeviceID]; ok {
				// Distance covered in 1 s matches the speeds (no teleporting).
				dlat := (p.Lat - prev.Lat) * 111320
				dlon := (p.Lon - prev.Lon) * 111320 * math.Cos(p.Lat*math.Pi/180)
				if d := math.Hypot(dlat, dlon); d > 300/3.6+15 {
					t.Fatalf("%s moved %.0f m in 1 s", p.DeviceID, d)
				}
			}
			lastDist[p.DeviceID] = p
		}
	}
	if tr := simulate.Monza(); tr.Length < 5000 || tr.Length > 6500 {
		t.Fatalf("Monza loop is %.0f m", tr.Length)
	}
}

func TestBadEntriesCoverEveryClass(t *testing.T) {
	t.Parallel()
	s := simulate.New(simulate.Options{Devices: 100, Seed: 3, BadFraction: 0.2})
	seen := map[contract.Reason]int{}
	at := time.Now().Add(-time.Minute)
	for k := 0; k < 10; k++ {
		for _, e := range s.Tick(at.Add(time.Duration(k) * time.Second)) {
			fields := map[string]any{}
			for i := 0; i < len(e.Values); i += 2 {
				fields[e.Values[i]] = e.Values[i+1]
			}
			_, err := contract.ParseEntry(fields, time.Now())
			if got := contract.ReasonOf(err); got != e.Bad {
				t.Fatalf("entry marked %q parsed as %q (%v)", e.Bad, got, err)
			}
			if e.Bad != "" {
				seen[e.Bad]++
			}
		}
	}
	for _, r := range simulate.BadReasons {
		if seen[r] == 0 {
			t.Errorf("no %s entry in 1000 at 20%%", r)
		}
	}
}

func TestDeterministicForASeed(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)
	run := func(seed uint64) [][]string {
		s := simulate.New(simulate.Options{Devices: 20, Seed: seed, BadFraction: 0.1})
		var out [][]string
		for k := 0; k < 5; k++ {
			for _, e := range s.Tick(at.Add(time.Duration(k) * time.Second)) {
				out = append(out, e.Values)
			}
		}
		return out
	}
	if !reflect.DeepEqual(run(5), run(5)) {
		t.Fatal("same seed, different entries")
	}
	if reflect.DeepEqual(run(5), run(6)) {
		t.Fatal("different seeds, same entries")
	}
}

func TestSeedIsIdempotent(t *testing.T) {
	t.Parallel()
	dsn := testkit.Postgres(t)
	sql, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), "deploy", "seed", "directus-standin.sql"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	devs := []string{simulate.DeviceID(0), simulate.DeviceID(1), simulate.DeviceID(2)}
	first, err := simulate.Seed(ctx, conn, string(sql), devs, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := simulate.Seed(ctx, conn, string(sql), devs, 2); err != nil {
		t.Fatalf("second seed: %v", err)
	}
	count := func(q string, args ...any) int {
		var n int
		if err := conn.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(`SELECT count(*) FROM event_devices`); n != 3 {
		t.Fatalf("%d assignments, want 3", n)
	}
	if n := count(`SELECT count(*) FROM event_devices WHERE event_id = $1`, first.EventIDs[1]); n != 1 {
		t.Fatalf("%d devices in the second event, want 1", n)
	}
	if n := count(`SELECT count(*) FROM organization_users ou JOIN directus_users u ON u.id = ou.user_id WHERE u.email = $1`, simulate.DemoUserEmail); n != 1 {
		t.Fatalf("demo user memberships: %d", n)
	}
	// Fewer events: assignments converge to the single event.
	if _, err := simulate.Seed(ctx, conn, string(sql), devs, 1); err != nil {
		t.Fatal(err)
	}
	if n := count(`SELECT count(*) FROM event_devices WHERE event_id = $1`, first.EventIDs[0]); n != 3 {
		t.Fatalf("after re-seeding with one event, %d of 3 devices in it", n)
	}
	if n := count(`SELECT count(*) FROM event_devices`); n != 3 {
		t.Fatalf("%d assignments after re-seed, want 3", n)
	}
}
