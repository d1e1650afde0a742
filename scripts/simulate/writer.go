package simulate

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Writer appends entries to one Redis stream with pipelined XADD.
type Writer struct {
	RDB    *redis.Client
	Stream string
	// MaxLen, when positive, trims the stream to about that many entries
	// on each XADD (MAXLEN ~), so a long dev run does not grow Redis
	// forever. Trimming can delete entries not yet read: the bridge then
	// counts them as deleted while pending.
	MaxLen int64
	// Pipeline is the number of XADDs per round trip (default 1000).
	Pipeline int
}

// Write XADDs every entry, Pipeline at a time.
func (w *Writer) Write(ctx context.Context, entries []Entry) error {
	n := w.Pipeline
	if n <= 0 {
		n = 1000
	}
	for lo := 0; lo < len(entries); lo += n {
		pipe := w.RDB.Pipeline()
		for _, e := range entries[lo:min(lo+n, len(entries))] {
			args := &redis.XAddArgs{Stream: w.Stream, Values: e.Values}
			if w.MaxLen > 0 {
				args.MaxLen, args.Approx = w.MaxLen, true
			}
			pipe.XAdd(ctx, args)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("xadd %s: %w", w.Stream, err)
		}
	}
	return nil
}
