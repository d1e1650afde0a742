package broadcaster

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"time"
)

// ReplayConfig holds the settings of replays (docs/replay.md). Zero values
// are replaced by the defaults below.
type ReplayConfig struct {
	// MaxPerUser bounds the replays one user runs at once on this instance,
	// over all connections (BROADCASTER_REPLAY_MAX_PER_USER). Default 3.
	MaxPerUser int
	// MaxPerInstance bounds the replays of this instance
	// (BROADCASTER_REPLAY_MAX). Default 100.
	MaxPerInstance int
	// InactiveThreshold is the InactiveThreshold of every replay consumer:
	// the server deletes a consumer nobody pulled from for that long, so a
	// crashed broadcaster leaves no orphans
	// (BROADCASTER_REPLAY_INACTIVE_THRESHOLD). Default 30s. A running
	// replay pulls continuously, paused or not, and deletes its consumer
	// itself when it ends.
	InactiveThreshold time.Duration
	// Lateness is how far out of fix-time order a position may arrive in
	// the stream and still be replayed in a range with an end
	// (BROADCASTER_REPLAY_LATENESS). Default 1m. The replay stops reading
	// at the first fix time after to + Lateness, and replay_end waits for
	// that read: with 500 devices at 1 Hz a minute is 30,000 messages to
	// scan, ten minutes were 300,000 (seconds of silence before the end).
	Lateness time.Duration
	// MaxLag is how long, at a finite speed, a position may wait behind
	// its device's previous one that a slow client has not taken yet,
	// before it replaces it (drop-oldest, as live)
	// (BROADCASTER_REPLAY_MAX_LAG). Default 250ms. Other devices go on
	// meanwhile. At "max" the replay waits as long as the client needs.
	MaxLag time.Duration
	// Buffer is the number of stream messages a replay pulls ahead from
	// its consumer (BROADCASTER_REPLAY_BUFFER). Default 1024. A pull is a
	// round trip to the server, so Buffer / round trip bounds a replay's
	// rate: on a loaded machine a round trip can take 100 ms or more, and
	// 256 messages then fell short of 60× with 50 devices (3,000/s).
	Buffer int
}

func (r ReplayConfig) withDefaults() ReplayConfig {
	if r.MaxPerUser == 0 {
		r.MaxPerUser = 3
	}
	if r.MaxPerInstance == 0 {
		r.MaxPerInstance = 100
	}
	if r.InactiveThreshold == 0 {
		r.InactiveThreshold = 30 * time.Second
	}
	if r.Lateness == 0 {
		r.Lateness = time.Minute
	}
	if r.MaxLag == 0 {
		r.MaxLag = 250 * time.Millisecond
	}
	if r.Buffer == 0 {
		r.Buffer = 1024
	}
	return r
}

func (r ReplayConfig) validate() error {
	r = r.withDefaults()
	switch {
	case r.MaxPerUser < 1:
		return errors.New("BROADCASTER_REPLAY_MAX_PER_USER: must be at least 1")
	case r.MaxPerInstance < 1:
		return errors.New("BROADCASTER_REPLAY_MAX: must be at least 1")
	case r.InactiveThreshold < time.Second:
		return fmt.Errorf("BROADCASTER_REPLAY_INACTIVE_THRESHOLD %s: must be at least 1s", r.InactiveThreshold)
	case r.Lateness < 0:
		return errors.New("BROADCASTER_REPLAY_LATENESS: must not be negative")
	case r.MaxLag < 0:
		return errors.New("BROADCASTER_REPLAY_MAX_LAG: must not be negative")
	case r.Buffer < 1 || r.Buffer > 10000:
		return errors.New("BROADCASTER_REPLAY_BUFFER: must be 1..10000")
	}
	return nil
}

func (r ReplayConfig) String() string {
	r = r.withDefaults()
	return fmt.Sprintf("BROADCASTER_REPLAY_MAX_PER_USER=%d BROADCASTER_REPLAY_MAX=%d BROADCASTER_REPLAY_INACTIVE_THRESHOLD=%s"+
		" BROADCASTER_REPLAY_LATENESS=%s BROADCASTER_REPLAY_MAX_LAG=%s BROADCASTER_REPLAY_BUFFER=%d",
		r.MaxPerUser, r.MaxPerInstance, r.InactiveThreshold, r.Lateness, r.MaxLag, r.Buffer)
}

// register adds the replay flags to fs, each defaulting to its environment
// variable; bad variables are appended to errs.
func (r *ReplayConfig) register(fs *flag.FlagSet, getenv func(string) string, errs *[]error) {
	num := func(p *int, name, env, usage string) {
		var n int
		if v := getenv(env); v != "" {
			var err error
			if n, err = strconv.Atoi(v); err != nil {
				*errs = append(*errs, fmt.Errorf("%s %q: not an integer", env, v))
			}
		}
		fs.IntVar(p, name, n, usage+" ("+env+")")
	}
	dur := func(p *time.Duration, name, env, usage string) {
		var d time.Duration
		if v := getenv(env); v != "" {
			var err error
			if d, err = time.ParseDuration(v); err != nil {
				*errs = append(*errs, fmt.Errorf("%s %q: %v", env, v, err))
			}
		}
		fs.DurationVar(p, name, d, usage+" ("+env+")")
	}
	num(&r.MaxPerUser, "replay-max-per-user", "BROADCASTER_REPLAY_MAX_PER_USER", "concurrent replays per user")
	num(&r.MaxPerInstance, "replay-max", "BROADCASTER_REPLAY_MAX", "concurrent replays per instance")
	dur(&r.InactiveThreshold, "replay-inactive-threshold", "BROADCASTER_REPLAY_INACTIVE_THRESHOLD", "replay consumers unused this long are deleted by the server")
	dur(&r.Lateness, "replay-lateness", "BROADCASTER_REPLAY_LATENESS", "how late a position may be stored and still be replayed")
	dur(&r.MaxLag, "replay-max-lag", "BROADCASTER_REPLAY_MAX_LAG", "wait for a slow client this long before dropping its oldest replay position")
	num(&r.Buffer, "replay-buffer", "BROADCASTER_REPLAY_BUFFER", "stream messages read ahead per replay")
}
