// Package streams holds the JetStream stream configurations of the wire
// contract and the idempotent create-or-update every worker runs at start,
// and Reader, the one reader of an event's positions between two fix times
// (replay and export).
package streams

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
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
	// MaxBytes bounds POSITIONS (DiscardNew: when full, publishes are
	// refused and the bridge keeps the entries pending in Redis; nothing
	// stored is deleted before MaxAge). Zero means DefaultMaxBytes: no
	// limit of its own, the server's store (max_file_store, less what
	// other streams reserve) is the bound. At least MinMaxBytes otherwise.
	MaxBytes int64
	// DLQMaxBytes bounds POSITIONS_DLQ (DiscardOld: a flood of bad entries
	// deletes the oldest dead letters and never stops ingest, and the
	// reservation keeps it out of the store positions need). Zero means
	// DefaultDLQMaxBytes; at least MinMaxBytes, never unlimited.
	DLQMaxBytes int64
}

// Defaults.
const (
	DefaultMaxAge     = 7 * 24 * time.Hour // a race weekend with room to spare
	DefaultDuplicates = 5 * time.Minute
	MinDuplicates     = 2 * time.Minute
	// DefaultMaxBytes (-1) leaves POSITIONS without a byte limit of its
	// own: any fixed figure would either exceed a small server's store
	// (JetStream then refuses to create the stream) or cut a large one
	// short. Set STREAM_MAX_BYTES per deployment.
	DefaultMaxBytes = -1
	// DefaultDLQMaxBytes is 1 GiB: millions of ordinary dead letters, a
	// thousand of the largest.
	DefaultDLQMaxBytes = 1 << 30
	// MinMaxBytes is the smallest byte limit accepted: one message of the
	// default max payload (1 MiB) must fit.
	MinMaxBytes = 1 << 20
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
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.DLQMaxBytes == 0 {
		o.DLQMaxBytes = DefaultDLQMaxBytes
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
	case o.MaxBytes != -1 && o.MaxBytes < MinMaxBytes:
		return fmt.Errorf("stream max bytes %d: must be -1 (no limit) or at least %d (1 MiB)", o.MaxBytes, MinMaxBytes)
	case o.DLQMaxBytes < MinMaxBytes:
		return fmt.Errorf("dead-letter stream max bytes %d: must be at least %d (1 MiB)", o.DLQMaxBytes, MinMaxBytes)
	}
	return nil
}

// PositionsConfig is the POSITIONS stream: every position, file storage,
// direct get allowed for snapshots. Full (MaxBytes) it refuses new
// messages rather than delete old ones: a deleted position may not have
// reached the persister yet, while a refused one stays pending in Redis
// and is re-sent by the bridge once there is room (MaxAge keeps freeing
// it).
func PositionsConfig(o Options) jetstream.StreamConfig {
	o = o.withDefaults()
	return jetstream.StreamConfig{
		Name:        Positions,
		Description: "trm-live GPS positions, one message per fix on pos.<event>.<device>",
		Subjects:    []string{contract.PositionsWildcard},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    o.MaxBytes,
		MaxAge:      o.MaxAge,
		Replicas:    o.Replicas,
		Duplicates:  o.Duplicates,
		AllowDirect: true,
		// Fast-ingest batch publishing (nats-server 2.14+): the bridge
		// publishes a read batch with one ack per flow of messages.
		AllowBatchPublish: true,
	}
}

// DLQConfig is the POSITIONS_DLQ stream, bounded by DLQMaxBytes. Full, it
// deletes its oldest dead letters: a flood of bad entries must never stop
// ingest, and its byte limit is reserved on the server, so it cannot
// take the store POSITIONS needs.
func DLQConfig(o Options) jetstream.StreamConfig {
	o = o.withDefaults()
	return jetstream.StreamConfig{
		Name:        DLQ,
		Description: "trm-live dead letters: rejected entries and messages, reason in headers",
		Subjects:    []string{contract.DLQSubject},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		MaxBytes:    o.DLQMaxBytes,
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

// ParseBytes reads a byte size: an integer with an optional unit K, M, G
// or T (also KB/KiB, MB/MiB, …; every unit binary, as in nats-server
// configuration files), or -1 for no limit.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "-1" {
		return -1, nil
	}
	i := strings.IndexFunc(t, func(r rune) bool { return r < '0' || r > '9' })
	if i == 0 || t == "" {
		return 0, fmt.Errorf("%q: not a byte size (e.g. 1073741824, 512MiB, 40GB, -1)", s)
	}
	num, unit := t, ""
	if i > 0 {
		num, unit = t[:i], strings.ToUpper(strings.TrimSpace(t[i:]))
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: not a byte size (e.g. 1073741824, 512MiB, 40GB, -1)", s)
	}
	shift := map[string]uint{"": 0, "B": 0, "K": 10, "KB": 10, "KIB": 10, "M": 20, "MB": 20, "MIB": 20,
		"G": 30, "GB": 30, "GIB": 30, "T": 40, "TB": 40, "TIB": 40}
	sh, ok := shift[unit]
	if !ok {
		return 0, fmt.Errorf("%q: unknown unit %q (K, M, G or T)", s, unit)
	}
	if n > math.MaxInt64>>sh {
		return 0, fmt.Errorf("%q: too large", s)
	}
	return n << sh, nil
}
