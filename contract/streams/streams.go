// Package streams holds the JetStream stream configurations of the wire
// contract and the idempotent create-or-update every worker runs at start.
package streams

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
)

// Stream names.
const (
	Positions = "POSITIONS"
	DLQ       = "POSITIONS_DLQ"
)

// Options are the deployment-dependent settings of both streams.
type Options struct {
	// MaxAge is how long positions are retained (replay, snapshots,
	// persister refill). Zero means DefaultMaxAge.
	MaxAge time.Duration
	// DLQMaxAge is how long dead letters are retained. Zero means 30 days.
	DLQMaxAge time.Duration
	// Replicas is 1 in dev and 3 on a cluster. Zero means 1.
	Replicas int
	// Duplicates is the dedup window of Nats-Msg-Id. Zero means
	// DefaultDuplicates; values under two minutes are refused by Validate.
	Duplicates time.Duration
}

// Defaults.
const (
	DefaultMaxAge     = 7 * 24 * time.Hour // a race weekend with room to spare
	DefaultDuplicates = 5 * time.Minute
	MinDuplicates     = 2 * time.Minute
)

func (o Options) withDefaults() Options {
	if o.MaxAge == 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.DLQMaxAge == 0 {
		o.DLQMaxAge = 30 * 24 * time.Hour
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Duplicates == 0 {
		o.Duplicates = DefaultDuplicates
	}
	return o
}

// Validate names the bad setting, in the words of its configuration name
// prefix given by the caller (for example "BRIDGE_").
func (o Options) Validate() error {
	o = o.withDefaults()
	switch {
	case o.MaxAge < time.Hour:
		return fmt.Errorf("stream max age %s: must be at least 1h", o.MaxAge)
	case o.Duplicates < MinDuplicates:
		return fmt.Errorf("stream duplicate window %s: must be at least %s", o.Duplicates, MinDuplicates)
	case o.Duplicates > o.MaxAge:
		return fmt.Errorf("stream duplicate window %s: must not exceed max age %s", o.Duplicates, o.MaxAge)
	case o.Replicas < 1 || o.Replicas > 5:
		return fmt.Errorf("stream replicas %d: must be 1..5", o.Replicas)
	}
	return nil
}

// PositionsConfig is the POSITIONS stream: every position, file storage,
// direct get allowed for snapshots.
func PositionsConfig(o Options) jetstream.StreamConfig {
	o = o.withDefaults()
	return jetstream.StreamConfig{
		Name:        Positions,
		Description: "trm-live GPS positions, one message per fix on pos.<event>.<device>",
		Subjects:    []string{contract.PositionsWildcard},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		MaxAge:      o.MaxAge,
		Replicas:    o.Replicas,
		Duplicates:  o.Duplicates,
		AllowDirect: true,
	}
}

// DLQConfig is the POSITIONS_DLQ stream.
func DLQConfig(o Options) jetstream.StreamConfig {
	o = o.withDefaults()
	return jetstream.StreamConfig{
		Name:        DLQ,
		Description: "trm-live dead letters: rejected entries and messages, reason in headers",
		Subjects:    []string{contract.DLQSubject},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		MaxAge:      o.DLQMaxAge,
		Replicas:    o.Replicas,
		Duplicates:  o.Duplicates,
		AllowDirect: true,
	}
}

// Ensure creates both streams, or updates them to the given settings. It is
// idempotent and safe to run from several workers at once.
func Ensure(ctx context.Context, js jetstream.JetStream, o Options) error {
	for _, cfg := range []jetstream.StreamConfig{PositionsConfig(o), DLQConfig(o)} {
		if err := ensure(ctx, js, cfg); err != nil {
			return err
		}
	}
	return nil
}

func ensure(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	_, err := js.CreateOrUpdateStream(ctx, cfg)
	if err == nil {
		return nil
	}
	// Two workers starting together: the loser of the create race sees
	// "already in use"; an update then settles it.
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		if _, err2 := js.UpdateStream(ctx, cfg); err2 == nil {
			return nil
		}
	}
	return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
}
