package broadcaster

import (
	"errors"
	"fmt"
	"time"

	"trm-live/contract/config"
	"trm-live/contract/streams"
)

// ReplayConfig holds the settings of replays (docs/replay.md). Zero values
// are replaced by the defaults named on each field (replaySettings).
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
	// (BROADCASTER_REPLAY_LATENESS). Default streams.DefaultLateness (1m),
	// shared with the export. The replay stops reading
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

// replaySettings are the replay rows of the broadcaster's settings.
func replaySettings() []config.Setting[Config] {
	return []config.Setting[Config]{
		config.Int("BROADCASTER_REPLAY_MAX_PER_USER", 3, "concurrent replays per user", func(c *Config) *int { return &c.Replay.MaxPerUser }),
		config.Int("BROADCASTER_REPLAY_MAX", 100, "concurrent replays per instance", func(c *Config) *int { return &c.Replay.MaxPerInstance }),
		config.Duration("BROADCASTER_REPLAY_INACTIVE_THRESHOLD", 30*time.Second, "replay consumers unused this long are deleted by the server", func(c *Config) *time.Duration { return &c.Replay.InactiveThreshold }),
		config.Duration("BROADCASTER_REPLAY_LATENESS", streams.DefaultLateness, "how late a position may be stored and still be replayed", func(c *Config) *time.Duration { return &c.Replay.Lateness }),
		config.Duration("BROADCASTER_REPLAY_MAX_LAG", 250*time.Millisecond, "wait for a slow client this long before dropping its oldest replay position", func(c *Config) *time.Duration { return &c.Replay.MaxLag }),
		config.Int("BROADCASTER_REPLAY_BUFFER", 1024, "stream messages read ahead per replay", func(c *Config) *int { return &c.Replay.Buffer }),
	}
}

// validate checks r as Config.withDefaults leaves it.
func (r ReplayConfig) validate() error {
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

// String is the replay part of Config.String.
func (r ReplayConfig) String() string {
	return fmt.Sprintf("BROADCASTER_REPLAY_MAX_PER_USER=%d BROADCASTER_REPLAY_MAX=%d BROADCASTER_REPLAY_INACTIVE_THRESHOLD=%s"+
		" BROADCASTER_REPLAY_LATENESS=%s BROADCASTER_REPLAY_MAX_LAG=%s BROADCASTER_REPLAY_BUFFER=%d",
		r.MaxPerUser, r.MaxPerInstance, r.InactiveThreshold, r.Lateness, r.MaxLag, r.Buffer)
}
