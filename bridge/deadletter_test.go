package bridge_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/redis/go-redis/v9"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/testkit"
)

// hugeEntry is a position whose attrs field is 2 MiB, twice the NATS
// default max payload: the parser rejects it (bad_attrs), and a dead
// letter copying it whole could never be published.
func (e *env) hugeEntry() (map[string]any, string) {
	attrs := `{"k":"` + strings.Repeat("x", 2<<20) + `"}`
	return map[string]any{
		"device_id": "huge", "ts": e.base.Format(time.RFC3339), "lat": "45.1", "lon": "9.2", "attrs": attrs,
	}, attrs
}

// checkHugeDeadLetter finds the one dead letter of POSITIONS_DLQ and checks
// that attrs was replaced by its length and SHA-256, and said so.
func (e *env) checkHugeDeadLetter(id, attrs string) {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), streams.DLQ)
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := s.GetMsg(context.Background(), 1)
	if err != nil {
		e.t.Fatal(err)
	}
	if got := m.Header.Get(contract.HeaderSourceID); got != id {
		e.t.Fatalf("dead letter of %q, want %q", got, id)
	}
	if got := contract.Reason(m.Header.Get(contract.HeaderReason)); got != contract.ReasonBadAttrs {
		e.t.Errorf("reason %q, want %q", got, contract.ReasonBadAttrs)
	}
	if got := m.Header.Get(contract.HeaderTruncated); got != "attrs" {
		e.t.Errorf("%s %q, want attrs", contract.HeaderTruncated, got)
	}
	var fields map[string]string
	if err := json.Unmarshal(m.Data, &fields); err != nil {
		e.t.Fatalf("payload: %v", err)
	}
	sum := sha256.Sum256([]byte(attrs))
	want := fmt.Sprintf("sha256:%s len:%d", hex.EncodeToString(sum[:]), len(attrs))
	if fields["attrs"] != want || fields["device_id"] != "huge" || fields["lat"] != "45.1" {
		e.t.Errorf("payload %v, want attrs %q and the other fields as they were", fields, want)
	}
}

// An entry with a 2 MiB attrs field, then 50 valid ones: the dead letter is
// cut to fit the max payload, and the 50 positions are stored behind it.
// A stop afterwards returns at once (nothing is left in flight).
func TestOversizedDeadLetterDoesNotStall(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fields, attrs := e.hugeEntry()
	id := e.xadd(fields)
	e.add(0, 50, 5)
	cfg, reg := e.config("a")
	cfg.ShutdownTimeout = time.Hour // a stop that waits for it fails the test
	run := e.start(cfg)
	e.waitAll(50, 30*time.Second)
	if got := e.msgs(streams.DLQ); got != 1 {
		t.Fatalf("DLQ has %d, want 1", got)
	}
	e.checkHugeDeadLetter(id, attrs)
	if got := metric(t, reg, "bridge_dead_letters_total", "reason", string(contract.ReasonBadAttrs)); got != 1 {
		t.Errorf("bridge_dead_letters_total{reason=bad_attrs} = %v, want 1", got)
	}
	if err := run.stop(t); err != nil { // within the helper's 30 s, far below ShutdownTimeout
		t.Fatalf("Run returned %v", err)
	}
}

// The same entries pending under a consumer that crashed after reading
// them: a second bridge claims them, dead-letters the huge one and stores
// the 50 positions.
func TestOversizedDeadLetterThroughClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fields, attrs := e.hugeEntry()
	id := e.xadd(fields)
	e.add(0, 50, 5)
	ctx := context.Background()
	if err := e.rdb.XGroupCreateMkStream(ctx, e.stream, e.group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	// The crashed consumer read all 51 and acknowledged none.
	if err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: e.group, Consumer: "crashed", Streams: []string{e.stream, ">"}, Count: 100,
	}).Err(); err != nil {
		t.Fatal(err)
	}
	if p := e.pending(); p != 51 {
		t.Fatalf("%d pending, want 51", p)
	}
	cfg, reg := e.config("alive")
	cfg.ClaimInterval = 100 * time.Millisecond
	cfg.ClaimMinIdle = 200 * time.Millisecond
	cfg.ShutdownTimeout = time.Hour
	run := e.start(cfg)
	e.waitAll(50, 30*time.Second)
	if got := e.msgs(streams.DLQ); got != 1 {
		t.Fatalf("DLQ has %d, want 1", got)
	}
	e.checkHugeDeadLetter(id, attrs)
	if c := metric(t, reg, "bridge_entries_claimed_total"); c != 51 {
		t.Errorf("claimed %v, want 51", c)
	}
	if err := run.stop(t); err != nil {
		t.Fatalf("Run returned %v", err)
	}
}

// A NATS server with a small max payload (4 KiB): a valid position with
// 8,000 bytes of attrs cannot be published. It is dead-lettered as
// unpublishable (its attrs cut to fit), and the positions behind it flow.
func TestPositionOverMaxPayloadIsDeadLettered(t *testing.T) {
	t.Parallel()
	e := newEnvWithNATS(t, func(o *natsOptions) { o.MaxPayload = 4096 })
	attrs := `{"k":"` + strings.Repeat("y", 8000) + `"}`
	id := e.xadd(map[string]any{"device_id": "big", "ts": e.base.Format(time.RFC3339), "lat": "45.1", "lon": "9.2", "attrs": attrs})
	e.add(0, 20, 5)
	cfg, reg := e.config("a")
	run := e.start(cfg)
	e.waitAll(20, 30*time.Second)
	testkit.Eventually(t, 10*time.Second, func() error {
		if got := e.msgs(streams.DLQ); got != 1 {
			return fmt.Errorf("DLQ has %d, want 1", got)
		}
		return nil
	})
	s, err := e.js.Stream(context.Background(), streams.DLQ)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(contract.HeaderSourceID) != id || contract.Reason(m.Header.Get(contract.HeaderReason)) != contract.ReasonUnpublishable {
		t.Fatalf("dead letter headers %v", m.Header)
	}
	if !strings.Contains(m.Header.Get(contract.HeaderDetail), "maximum payload") {
		t.Errorf("detail %q does not name the max payload", m.Header.Get(contract.HeaderDetail))
	}
	if m.Header.Get(contract.HeaderTruncated) != "attrs" {
		t.Errorf("%s %q, want attrs", contract.HeaderTruncated, m.Header.Get(contract.HeaderTruncated))
	}
	if got := metric(t, reg, "bridge_dead_letters_total", "reason", string(contract.ReasonUnpublishable)); got != 1 {
		t.Errorf("bridge_dead_letters_total{reason=unpublishable} = %v, want 1", got)
	}
	if err := run.stop(t); err != nil {
		t.Fatalf("Run returned %v", err)
	}
}

// A dead letter whose headers alone exceed the max payload (a Redis stream
// key of 5,000 bytes on a 4 KiB server) cannot be published at all: it is
// counted, logged and acknowledged, and never blocks the entries behind it.
func TestUnpublishableDeadLetterIsCountedAndAcked(t *testing.T) {
	t.Parallel()
	e := newEnvWithNATS(t, func(o *natsOptions) { o.MaxPayload = 4096 })
	e.stream = testkit.Unique(strings.Repeat("s", 5000))
	e.xadd(map[string]any{"device_id": "d1", "ts": "yesterday", "lat": "45.1", "lon": "9.2"})
	e.add(0, 20, 5)
	cfg, reg := e.config("a")
	run := e.start(cfg)
	e.waitAll(20, 30*time.Second)
	if got := metric(t, reg, "bridge_dead_letters_dropped_total"); got != 1 {
		t.Errorf("bridge_dead_letters_dropped_total = %v, want 1", got)
	}
	if got := e.msgs(streams.DLQ); got != 0 {
		t.Errorf("DLQ has %d, want 0", got)
	}
	if err := run.stop(t); err != nil {
		t.Fatalf("Run returned %v", err)
	}
}

// The server refuses publishes to one device's subject (permissions): the
// position is dead-lettered as unpublishable once its publish times out,
// and the positions behind it flow. When the dead-letter subject is refused
// too, the entry is counted as dropped and acknowledged.
func TestPermissionRefusalIsPermanent(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		deny    []string
		dlq     uint64
		dropped float64
	}{
		{"dead-lettered", []string{"pos.unassigned.denied"}, 1, 0},
		{"dead letter refused too", []string{"pos.unassigned.denied", contract.DLQSubject}, 0, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnvWithNATS(t, func(o *natsOptions) {
				o.Users = []*server.User{
					{Username: "admin", Password: "admin"},
					{Username: "bridge", Password: "pw", Permissions: &server.Permissions{
						Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: c.deny},
					}},
				}
				o.NoAuthUser = "admin" // the test's own connections
			})
			id := e.xadd(map[string]any{"device_id": "denied", "ts": e.base.Format(time.RFC3339), "lat": "45.1", "lon": "9.2"})
			e.add(0, 20, 5)
			cfg, reg := e.config("a")
			cfg.NATSURL = strings.Replace(e.nats.URL, "nats://", "nats://bridge:pw@", 1)
			cfg.PublishTimeout = 500 * time.Millisecond
			run := e.start(cfg)
			e.waitAll(20, 30*time.Second)
			testkit.Eventually(t, 10*time.Second, func() error {
				if got := e.msgs(streams.DLQ); got != c.dlq {
					return fmt.Errorf("DLQ has %d, want %d", got, c.dlq)
				}
				if got := metric(t, reg, "bridge_dead_letters_dropped_total"); got != c.dropped {
					return fmt.Errorf("bridge_dead_letters_dropped_total = %v, want %v", got, c.dropped)
				}
				return nil
			})
			if c.dlq == 1 {
				s, err := e.js.Stream(context.Background(), streams.DLQ)
				if err != nil {
					t.Fatal(err)
				}
				m, err := s.GetMsg(context.Background(), 1)
				if err != nil {
					t.Fatal(err)
				}
				if m.Header.Get(contract.HeaderSourceID) != id || contract.Reason(m.Header.Get(contract.HeaderReason)) != contract.ReasonUnpublishable ||
					!strings.Contains(m.Header.Get(contract.HeaderDetail), "permissions violation") {
					t.Fatalf("dead letter headers %v", m.Header)
				}
			}
			if err := run.stop(t); err != nil {
				t.Fatalf("Run returned %v", err)
			}
		})
	}
}
