package bridge_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"trm-live/contract/streams"
	"trm-live/testkit"
)

// POSITIONS full (its MaxBytes reached; DiscardNew): publishes are
// refused, nothing is dead-lettered, dropped or acknowledged without being
// stored, the entries stay pending in Redis, the bridge says so (gauge,
// /readyz). Once there is room (here the limit raised by an operator),
// every entry is stored and the bridge is ready again.
func TestFullPositionsStreamKeepsEntriesPending(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n = 8000 // ~5,000 fit in 1 MiB
	e.add(0, n, 100)
	cfg, reg := e.config("a")
	cfg.Stream.MaxBytes = streams.MinMaxBytes
	cfg.VerifyInterval = time.Hour // the loss check has nothing to do with this
	run := e.start(cfg)
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + run.addr + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testkit.Eventually(t, 60*time.Second, func() error {
		if full := metric(t, reg, "bridge_jetstream_stream_full", "stream", streams.Positions); full != 1 {
			return fmt.Errorf("bridge_jetstream_stream_full{stream=POSITIONS} = %v", full)
		}
		if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "POSITIONS full") {
			return fmt.Errorf("/readyz %d %s", code, body)
		}
		stored, acked := e.msgs(streams.Positions), metric(t, reg, "bridge_entries_acked_total")
		if stored == 0 || stored >= n || uint64(acked) != stored || e.pending() == 0 {
			return fmt.Errorf("%d stored, %v acked, %d pending", stored, acked, e.pending())
		}
		return nil
	})
	stored := e.msgs(streams.Positions)
	t.Logf("POSITIONS full at %d of %d positions; %d pending", stored, n, e.pending())
	if d, dropped := e.msgs(streams.DLQ), metric(t, reg, "bridge_dead_letters_dropped_total"); d != 0 || dropped != 0 {
		t.Fatalf("%d dead letters, %v dropped: a full stream is no reason to give up an entry", d, dropped)
	}

	// Room again: the operator raises the limit.
	ctx := context.Background()
	s, err := e.js.Stream(ctx, streams.Positions)
	if err != nil {
		t.Fatal(err)
	}
	c := s.CachedInfo().Config
	c.MaxBytes = 64 << 20
	if _, err := e.js.UpdateStream(ctx, c); err != nil {
		t.Fatal(err)
	}
	e.waitAll(n, 60*time.Second)
	testkit.Eventually(t, 20*time.Second, func() error {
		if full := metric(t, reg, "bridge_jetstream_stream_full", "stream", streams.Positions); full != 0 {
			return fmt.Errorf("bridge_jetstream_stream_full{stream=POSITIONS} = %v", full)
		}
		if code, body := readyz(); code != http.StatusOK {
			return fmt.Errorf("/readyz %d %s", code, body)
		}
		return nil
	})
	if got := len(e.msgIDs()); got != n {
		t.Fatalf("%d distinct Msg-Ids, want %d", got, n)
	}
}
