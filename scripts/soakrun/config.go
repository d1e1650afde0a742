// Package soakrun is the race-day soak (scripts/soak): the production
// topology as separate processes (three NATS nodes from deploy/nats, two of
// every worker, Redis, PostgreSQL, the Directus stand-in), the simulator at
// pilot scale and a crowd of viewers, faults injected at random from a
// printed seed, and at the end a model check of what must be true
// (docs/soak.md).
package soakrun

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"time"
)

// Config is one soak run.
type Config struct {
	// Duration is how long the load runs (SOAK_DURATION, -duration).
	// Default 10m.
	Duration time.Duration
	// Seed draws the fault schedule (SOAK_SEED, -seed); 0 means one taken
	// from the clock, printed so the run can be replayed.
	Seed uint64
	// Devices and Rate are the simulator's devices and fixes per second
	// per device; Bad is the share of bad entries. Defaults 500, 1, 0.01.
	Devices int
	Rate    float64
	Bad     float64
	// Viewers follow the one event over /ws-live (SOAK_VIEWERS). Default
	// 100; one in ten is slow, one in ten reconnects every 20–40 s.
	Viewers int
	// Warmup is load without faults before the baseline is taken; Quiet
	// is the fault-free tail; Gap the least time between two faults
	// (each gap is drawn from [Gap, 2×Gap)). Defaults 30s, 30s, 15s.
	Warmup, Quiet, Gap time.Duration
	// MaxLogouts bounds the viewers logged out in a run. Default 5.
	MaxLogouts int
	// Drain bounds the wait for everything to settle after the load stops.
	// Default 3m.
	Drain time.Duration
	// LatencyTarget is the pilot's end-to-end p99 target (25 ms,
	// docs/BENCHMARKS.md "e2e pilot"), for the recovery times.
	LatencyTarget time.Duration
	// Bounds are the allowed growth from warm-up to the end.
	Bounds Bounds
	// DataDir holds the binaries, stores and logs of the run (emptied
	// first). Default .data/soak in the repository.
	DataDir string
	// SVG is the timeline written at the end. Default DataDir/timeline.svg.
	SVG string
	// Root is the repository root (where go.work is).
	Root string

	// Directus is the URL of a real Directus (-directus, SOAK_DIRECTUS_URL);
	// empty runs the stand-in. With it, DirectusAdminEmail and
	// DirectusAdminPassword are its admin's login, from the environment
	// only (SOAK_DIRECTUS_ADMIN_EMAIL, SOAK_DIRECTUS_ADMIN_PASSWORD), never
	// flags that show in ps; the password is never printed.
	Directus                                  string
	DirectusAdminEmail, DirectusAdminPassword string

	// Out receives the report; nil means io.Discard.
	Out io.Writer
	// Logger logs progress; nil discards.
	Logger *slog.Logger
}

// LoadConfig reads the settings from flags, then environment variables.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	var c Config
	var errs []error
	dur := func(p *time.Duration, flagName, envName, def, usage string) {
		d, err := time.ParseDuration(env(envName, def))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", envName, err))
		}
		fs.DurationVar(p, flagName, d, usage+" ("+envName+")")
	}
	integer := func(p *int, flagName, envName string, def int, usage string) {
		v, err := strconv.Atoi(env(envName, strconv.Itoa(def)))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", envName, err))
		}
		fs.IntVar(p, flagName, v, usage+" ("+envName+")")
	}
	float := func(p *float64, flagName, envName string, def float64, usage string) {
		v, err := strconv.ParseFloat(env(envName, strconv.FormatFloat(def, 'g', -1, 64)), 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", envName, err))
		}
		fs.Float64Var(p, flagName, v, usage+" ("+envName+")")
	}
	dur(&c.Duration, "duration", "SOAK_DURATION", "10m", "load time")
	seed, err := strconv.ParseUint(env("SOAK_SEED", "0"), 10, 64)
	if err != nil {
		errs = append(errs, fmt.Errorf("SOAK_SEED: %w", err))
	}
	fs.Uint64Var(&c.Seed, "seed", seed, "fault schedule seed, 0: from the clock (SOAK_SEED)")
	integer(&c.Devices, "devices", "SOAK_DEVICES", 500, "simulated devices")
	float(&c.Rate, "rate", "SOAK_RATE", 1, "fixes per second per device")
	float(&c.Bad, "bad", "SOAK_BAD", 0.01, "share of bad entries")
	integer(&c.Viewers, "viewers", "SOAK_VIEWERS", 100, "viewers following the event")
	dur(&c.Warmup, "warmup", "SOAK_WARMUP", "30s", "load before the first fault and the baseline")
	dur(&c.Quiet, "quiet", "SOAK_QUIET", "30s", "fault-free tail of the load")
	dur(&c.Gap, "gap", "SOAK_GAP", "15s", "least time between two faults")
	integer(&c.MaxLogouts, "max-logouts", "SOAK_MAX_LOGOUTS", 5, "viewers logged out at most")
	dur(&c.Drain, "drain", "SOAK_DRAIN", "3m", "longest wait for everything to settle")
	dur(&c.LatencyTarget, "latency-target", "SOAK_LATENCY_TARGET", "25ms", "pilot end-to-end p99 target")
	c.Bounds = DefaultBounds
	fs.Float64Var(&c.Bounds.RSSFactor, "rss-factor", c.Bounds.RSSFactor, "leak bound: end RSS ≤ warm-up × this + -rss-slack")
	rssSlackMiB := fs.Float64("rss-slack-mib", c.Bounds.RSSSlack/(1<<20), "leak bound: RSS slack in MiB")
	fs.Float64Var(&c.Bounds.GoroutineFactor, "goroutine-factor", c.Bounds.GoroutineFactor, "leak bound: end goroutines ≤ warm-up × this + -goroutine-slack")
	fs.Float64Var(&c.Bounds.GoroutineSlack, "goroutine-slack", c.Bounds.GoroutineSlack, "leak bound: goroutine slack")
	fs.StringVar(&c.DataDir, "data", env("SOAK_DATA_DIR", ""), "data folder, emptied first (SOAK_DATA_DIR; default .data/soak)")
	fs.StringVar(&c.Directus, "directus", env("SOAK_DIRECTUS_URL", ""), "URL of a real Directus instead of the stand-in; its admin login from SOAK_DIRECTUS_ADMIN_EMAIL and SOAK_DIRECTUS_ADMIN_PASSWORD (SOAK_DIRECTUS_URL)")
	c.DirectusAdminEmail, c.DirectusAdminPassword = getenv("SOAK_DIRECTUS_ADMIN_EMAIL"), getenv("SOAK_DIRECTUS_ADMIN_PASSWORD")
	fs.StringVar(&c.SVG, "svg", env("SOAK_SVG", ""), "timeline SVG path (SOAK_SVG; default in the data folder)")
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.Bounds.RSSSlack = *rssSlackMiB * (1 << 20)
	return c, c.Validate()
}

// Validate names the first bad setting.
func (c Config) Validate() error {
	switch {
	case c.Duration < time.Minute:
		return fmt.Errorf("-duration %s: at least 1m", c.Duration)
	case c.Devices < 1 || c.Devices > 10000:
		return fmt.Errorf("-devices %d: 1..10000", c.Devices)
	case c.Rate <= 0 || c.Rate > 10:
		return fmt.Errorf("-rate %v: in (0, 10]", c.Rate)
	case c.Bad < 0 || c.Bad > 0.5:
		return fmt.Errorf("-bad %v: 0..0.5", c.Bad)
	case c.Viewers < 2:
		return fmt.Errorf("-viewers %d: at least 2", c.Viewers)
	case c.Warmup < 5*time.Second || c.Quiet < 0 || c.Warmup+c.Quiet >= c.Duration:
		return fmt.Errorf("-warmup %s, -quiet %s: warm-up at least 5s, both within -duration %s", c.Warmup, c.Quiet, c.Duration)
	case c.Gap < time.Second:
		return fmt.Errorf("-gap %s: at least 1s", c.Gap)
	case c.MaxLogouts < 0 || c.MaxLogouts >= c.Viewers:
		return fmt.Errorf("-max-logouts %d: 0..viewers-1", c.MaxLogouts)
	case c.Drain < 10*time.Second:
		return fmt.Errorf("-drain %s: at least 10s", c.Drain)
	case c.LatencyTarget <= 0:
		return fmt.Errorf("-latency-target %s: positive", c.LatencyTarget)
	case c.Directus != "" && !httpURL(c.Directus):
		return fmt.Errorf("-directus %q: an http(s) URL with a host", c.Directus)
	case c.Directus != "" && c.DirectusAdminEmail == "":
		return errors.New("SOAK_DIRECTUS_ADMIN_EMAIL is not set: -directus needs the admin's email to seed the viewers")
	case c.Directus != "" && c.DirectusAdminPassword == "":
		return errors.New("SOAK_DIRECTUS_ADMIN_PASSWORD is not set: -directus needs the admin's password to seed the viewers")
	case c.Bounds.RSSFactor < 1 || c.Bounds.GoroutineFactor < 1 || c.Bounds.RSSSlack < 0 || c.Bounds.GoroutineSlack < 0:
		return errors.New("leak bounds: factors at least 1, slacks not negative")
	}
	return nil
}

func httpURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}
