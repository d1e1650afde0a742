package bridge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/bridge"
	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/testkit"
)

// N entries in, exactly N messages in JetStream; re-delivering every entry
// (group cursor moved back to 0) adds none, and the bridge saw them all as
// duplicates.
func TestExactlyOnceWithRedelivery(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, devices = 3000, 50
	ev := e.seedEvent("Monza")
	for d := 0; d < devices/2; d++ {
		e.assign(ev, fmt.Sprintf("dev-%03d", d), nil, nil)
	}
	e.add(0, n, devices)
	cfg, reg := e.config("a")
	run := e.start(cfg)
	e.waitAll(n, 60*time.Second)

	// Half the devices are assigned, half are not.
	assigned := e.subjects("pos." + ev + ".>")
	unassigned := e.subjects("pos.unassigned.>")
	if len(assigned) != devices/2 || len(unassigned) != devices/2 {
		t.Fatalf("subjects: %d assigned, %d unassigned, want %d each", len(assigned), len(unassigned), devices/2)
	}
	s, err := e.js.Stream(context.Background(), streams.Positions)
	if err != nil {
		t.Fatal(err)
	}
	last, err := s.GetLastMsgForSubject(context.Background(), contract.PositionSubject(ev, "dev-001"))
	if err != nil {
		t.Fatal(err)
	}
	pos, err := contract.DecodePosition(last.Data)
	if err != nil {
		t.Fatalf("payload %s: %v", last.Data, err)
	}
	if pos.EventID != ev || last.Header.Get(jetstream.MsgIDHeader) != pos.MsgID() {
		t.Fatalf("event %q msg id %q, want %q and %q", pos.EventID, last.Header.Get(jetstream.MsgIDHeader), ev, pos.MsgID())
	}

	// Re-deliver everything.
	if err := e.rdb.XGroupSetID(context.Background(), e.stream, e.group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 60*time.Second, func() error {
		if d := metric(t, reg, "bridge_publish_duplicates_total"); d != n || e.pending() != 0 {
			return fmt.Errorf("%v duplicates, want %d; %d pending", d, n, e.pending())
		}
		return nil
	})
	if got := e.msgs(streams.Positions); got != n {
		t.Fatalf("after re-delivery POSITIONS has %d messages, want %d", got, n)
	}
	if got := metric(t, reg, "bridge_entries_acked_total"); got != 2*n {
		t.Fatalf("acked %v, want %d", got, 2*n)
	}
	if err := run.stop(t); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
}

// A crash after JetStream acked but before XACK leaves entries pending;
// the restarted bridge re-reads its own pending entries and re-publishes
// them, and dedup keeps exactly one copy of each.
func TestCrashBetweenPublishAndAck(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, devices = 5000, 100
	e.add(0, n, devices)
	cfg, _ := e.config("a")
	run := e.start(bridge.WithCrashBeforeAck(cfg, func(int) bool { return true }))
	if err := run.wait(t); !errors.Is(err, bridge.ErrCrash) {
		t.Fatalf("Run returned %v, want the simulated crash", err)
	}
	published, pending := e.msgs(streams.Positions), e.pending()
	if published == 0 || pending == 0 {
		t.Fatalf("crash left %d published and %d pending; want both > 0", published, pending)
	}

	cfg2, reg2 := e.config("a") // same consumer: its own pending list
	run2 := e.start(cfg2)
	e.waitAll(n, 60*time.Second)
	if d := metric(t, reg2, "bridge_publish_duplicates_total"); d == 0 {
		t.Fatal("the restarted bridge re-published nothing: the crash test did not exercise dedup")
	}
	if err := run2.stop(t); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	if got := e.msgs(streams.Positions); got != n {
		t.Fatalf("POSITIONS has %d, want %d", got, n)
	}
}

// A second bridge claims the pending entries of a dead one, and acks the
// entries deleted from the stream while pending without publishing them.
func TestSecondBridgeClaimsDeadOnesPending(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n, devices, gone = 600, 20, 10
	ids := e.add(0, n, devices)
	cfgA, _ := e.config("dead")
	cfgA.Batch = n // one read takes every entry
	runA := e.start(bridge.WithCrashBeforeAck(cfgA, func(int) bool { return true }))
	if err := runA.wait(t); !errors.Is(err, bridge.ErrCrash) {
		t.Fatalf("Run A returned %v, want the simulated crash", err)
	}
	if p := e.pending(); p != n {
		t.Fatalf("dead bridge left %d pending, want %d", p, n)
	}
	// Delete some pending entries: the design's "deleted while pending".
	deleted := map[string]bool{}
	for _, id := range ids[:gone] {
		deleted[id] = true
	}
	if err := e.rdb.XDel(context.Background(), e.stream, ids[:gone]...).Err(); err != nil {
		t.Fatal(err)
	}

	cfgB, regB := e.config("alive")
	cfgB.ClaimInterval = 100 * time.Millisecond
	cfgB.ClaimMinIdle = 200 * time.Millisecond
	e.start(cfgB)
	testkit.Eventually(t, 60*time.Second, func() error {
		if p := e.pending(); p != 0 {
			return fmt.Errorf("%d pending", p)
		}
		return nil
	})
	if c := metric(t, regB, "bridge_entries_claimed_total"); c != n-gone {
		t.Fatalf("claimed %v, want %d", c, n-gone)
	}
	if d := metric(t, regB, "bridge_deleted_pending_total"); d != gone {
		t.Fatalf("deleted-pending %v, want %d", d, gone)
	}
	// Every surviving entry is in JetStream exactly once. (The dead bridge
	// may have published some of the deleted ones before dying: at most once.)
	seen := e.msgIDs()
	var total int
	for _, c := range seen {
		total += c
	}
	for i := 0; i < n; i++ {
		id := msgIDOf(t, e.entry(i, devices))
		switch c := seen[id]; {
		case i >= gone && c != 1:
			t.Fatalf("entry %d (%s) stored %d times, want 1", i, id, c)
		case i < gone && c > 1:
			t.Fatalf("deleted entry %d (%s) stored %d times", i, id, c)
		}
		delete(seen, id)
	}
	if len(seen) != 0 || total < n-gone {
		t.Fatalf("%d unexpected messages; %d stored in all", len(seen), total)
	}
}

// Bad entries go to the DLQ with reason, source and original fields, are
// acknowledged, and the valid entries around them flow.
func TestMalformedEntriesGoToDLQ(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ts := e.base.Format(time.RFC3339)
	bad := map[contract.Reason]map[string]any{
		contract.ReasonMissingField: {"device_id": "d1", "ts": ts, "lat": "45.1"},
		contract.ReasonBadDeviceID:  {"device_id": "bad.dev*", "ts": ts, "lat": "45.1", "lon": "9.2"},
		contract.ReasonBadTS:        {"device_id": "d1", "ts": "yesterday", "lat": "45.1", "lon": "9.2"},
		contract.ReasonFutureTS:     {"device_id": "d1", "ts": time.Now().Add(time.Hour).Format(time.RFC3339), "lat": "45.1", "lon": "9.2"},
		contract.ReasonBadNumber:    {"device_id": "d1", "ts": ts, "lat": "north", "lon": "9.2"},
		contract.ReasonOutOfRange:   {"device_id": "d1", "ts": ts, "lat": "95", "lon": "9.2"},
		contract.ReasonBadAttrs:     {"device_id": "d1", "ts": ts, "lat": "45.1", "lon": "9.2", "attrs": "[1,2]"},
	}
	const good = 200
	e.add(0, good/2, 10)
	ids := map[string]contract.Reason{}
	for r, f := range bad {
		ids[e.xadd(f)] = r
	}
	e.add(good/2, good, 10)
	cfg, reg := e.config("a")
	e.start(cfg)
	e.waitAll(good, 60*time.Second)
	testkit.Eventually(t, 10*time.Second, func() error {
		if got := e.msgs(streams.DLQ); got != uint64(len(bad)) {
			return fmt.Errorf("DLQ has %d, want %d", got, len(bad))
		}
		return nil
	})
	s, err := e.js.Stream(context.Background(), streams.DLQ)
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= uint64(len(bad)); seq++ {
		m, err := s.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		id := m.Header.Get(contract.HeaderSourceID)
		want, ok := ids[id]
		if !ok {
			t.Fatalf("dead letter %d has source id %q, not one of the bad entries", seq, id)
		}
		if got := contract.Reason(m.Header.Get(contract.HeaderReason)); got != want {
			t.Errorf("entry %s: reason %q, want %q (detail %q)", id, got, want, m.Header.Get(contract.HeaderDetail))
		}
		if m.Header.Get(contract.HeaderSourceStream) != e.stream || m.Header.Get(contract.HeaderWorker) == "" || m.Header.Get(contract.HeaderDetail) == "" {
			t.Errorf("entry %s: headers %v", id, m.Header)
		}
		var fields map[string]string
		if err := json.Unmarshal(m.Data, &fields); err != nil {
			t.Fatalf("payload %s: %v", m.Data, err)
		}
		for k, v := range bad[want] {
			if fields[k] != v {
				t.Errorf("entry %s: payload field %s = %q, want %q", id, k, fields[k], v)
			}
		}
		if m.Subject != contract.DLQSubject {
			t.Errorf("subject %q", m.Subject)
		}
	}
	for r := range bad {
		if got := metric(t, reg, "bridge_dead_letters_total", "reason", string(r)); got != 1 {
			t.Errorf("bridge_dead_letters_total{reason=%s} = %v, want 1", r, got)
		}
	}
}

// SIGTERM-like cancel mid-flow: Run returns nil, and every entry it read
// was published and acknowledged (nothing left pending).
func TestGracefulShutdownAcksInFlight(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n = 30000
	e.add(0, n, 100)
	cfg, reg := e.config("a")
	cfg.Batch = 500
	run := e.start(cfg)
	testkit.Eventually(t, 60*time.Second, func() error {
		if got := e.msgs(streams.Positions); got < 1000 {
			return fmt.Errorf("%d published", got)
		}
		return nil
	})
	if err := run.stop(t); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	if p := e.pending(); p != 0 {
		t.Fatalf("%d entries left pending after a graceful stop", p)
	}
	read, acked := metric(t, reg, "bridge_entries_read_total"), metric(t, reg, "bridge_entries_acked_total")
	if read != acked || uint64(acked) != e.msgs(streams.Positions) {
		t.Fatalf("read %v, acked %v, stored %d", read, acked, e.msgs(streams.Positions))
	}
}

// /healthz, /readyz and /metrics answer; readiness needs every dependency.
func TestHTTPEndpoints(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg, _ := e.config("a")
	run := e.start(cfg)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + run.addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	testkit.CheckHeaderLimit(t, "http://"+run.addr+"/healthz")
	testkit.Eventually(t, 20*time.Second, func() error {
		if code, body := get("/readyz"); code != 200 {
			return fmt.Errorf("/readyz %d %s", code, body)
		}
		return nil
	})
	e.nats.Shutdown()
	testkit.Eventually(t, 20*time.Second, func() error {
		if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "nats") {
			return fmt.Errorf("/readyz %d %s with NATS down", code, body)
		}
		return nil
	})
	code, body := get("/metrics")
	if code != 200 || !strings.Contains(body, "bridge_entries_read_total") || !strings.Contains(body, "bridge_publish_latency_seconds") {
		t.Fatalf("/metrics %d:\n%s", code, body)
	}
}

// Raw reads (the default) and go-redis's typed reads (BRIDGE_TYPED_READS)
// make the same messages of the same entries: after a raw run, a typed
// bridge re-reading every entry publishes nothing new, only duplicates of
// each position and of the dead letter (same Msg-Ids, same reason).
func TestTypedAndRawReadsAgree(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n = 1000
	e.add(0, n, 20)
	e.xadd(map[string]any{"device_id": "dev-x", "ts": "not a time", "lat": "1", "lon": "2"})
	for _, typed := range []bool{false, true} {
		cfg, reg := e.config("a")
		cfg.TypedReads = typed
		run := e.start(cfg)
		e.waitAll(n, 60*time.Second)
		testkit.Eventually(t, 30*time.Second, func() error {
			if got := metric(t, reg, "bridge_dead_letters_total", "reason", string(contract.ReasonBadTS)); got != 1 {
				return fmt.Errorf("typed %v: %v bad_ts dead letters, want 1", typed, got)
			}
			if got, want := metric(t, reg, "bridge_publish_duplicates_total"), map[bool]float64{false: 0, true: n + 1}[typed]; got != want {
				return fmt.Errorf("typed %v: %v duplicates, want %v", typed, got, want)
			}
			return nil
		})
		if err := run.stop(t); err != nil {
			t.Fatal(err)
		}
		if err := e.rdb.XGroupSetID(context.Background(), e.stream, e.group, "0").Err(); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.msgs(streams.DLQ); got != 1 {
		t.Fatalf("POSITIONS_DLQ has %d messages, want 1", got)
	}
}
