package persister_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/persister"
	"trm-live/testkit"
)

// Every position published ends as exactly one row with the values of the
// wire, including positions sent twice (without Msg-Id, so the stream keeps
// both copies) and a forced re-delivery of the whole stream.
func TestEveryPositionExactlyOneRow(t *testing.T) {
	t.Parallel()
	forPaths(t, testEveryPositionExactlyOneRow)
}

func testEveryPositionExactlyOneRow(t *testing.T, path string) {
	e := newEnv(t, true)
	ps := positions(1500, 25, 0)
	publish(t, e.js, ps)
	// 200 of them again, as new messages the dedup window does not absorb.
	for i := 0; i < 200; i++ {
		publishRaw(t, e.js, ps[i].Subject(), ps[i].Encode())
	}
	cfg := e.config(t)
	cfg.WritePath = path
	in := start(t, cfg)
	waitRows(t, e.pool, len(ps), 60*time.Second)
	consumerIdle(t, e.js, persister.DefaultConsumer)
	checkAllStored(t, e.pool, ps)
	if got := in.metric(t, "persister_rows_inserted_total"); got != float64(len(ps)) {
		t.Fatalf("rows inserted metric %v, want %d", got, len(ps))
	}
	if got := in.metric(t, "persister_duplicates_skipped_total"); got != 200 {
		t.Fatalf("duplicates metric %v, want 200", got)
	}
	in.waitReady(t, true)
	in.stop()

	// Forced re-delivery: a new consumer name replays the whole stream.
	cfg.Consumer = "persister_again"
	in2 := start(t, cfg)
	consumerIdle(t, e.js, cfg.Consumer)
	checkAllStored(t, e.pool, ps)
	if got := in2.metric(t, "persister_rows_inserted_total"); got != 0 {
		t.Fatalf("re-delivery inserted %v rows, want 0", got)
	}
	if got := in2.metric(t, "persister_duplicates_skipped_total"); got != float64(len(ps)+200) {
		t.Fatalf("re-delivery skipped %v, want %d", got, len(ps)+200)
	}
	if got := in2.metric(t, "persister_copy_fallbacks_total"); (path == persister.PathAuto) != (got >= 1) {
		t.Fatalf("path %s: %v COPY fallbacks", path, got)
	}
}

// An operator's faulty flag survives the same position re-delivered.
func TestFaultyFlagKept(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	ps := positions(300, 10, 0)
	publish(t, e.js, ps)
	in := start(t, e.config(t))
	waitRows(t, e.pool, len(ps), 30*time.Second)

	ctx := context.Background()
	tag, err := e.pool.Exec(ctx, `UPDATE positions SET faulty = true WHERE device_id IN ('dev-001', 'dev-002')`)
	if err != nil {
		t.Fatal(err)
	}
	flagged := tag.RowsAffected()
	if flagged != 60 {
		t.Fatalf("flagged %d rows, want 60", flagged)
	}
	var receivedBefore time.Time
	if err := e.pool.QueryRow(ctx, `SELECT max(received_at) FROM positions WHERE faulty`).Scan(&receivedBefore); err != nil {
		t.Fatal(err)
	}

	// The same positions again, as fresh messages, and a full replay.
	for i := range ps {
		publishRaw(t, e.js, ps[i].Subject(), ps[i].Encode())
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		if got := in.metric(t, "persister_duplicates_skipped_total"); got != float64(len(ps)) {
			return fmt.Errorf("duplicates %v, want %d", got, len(ps))
		}
		return nil
	})
	if _, err := persister.Rebuild(ctx, e.config(t), base.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}

	var stillFaulty int64
	var receivedAfter time.Time
	if err := e.pool.QueryRow(ctx, `SELECT count(*), max(received_at) FROM positions WHERE faulty`).Scan(&stillFaulty, &receivedAfter); err != nil {
		t.Fatal(err)
	}
	if stillFaulty != flagged || !receivedAfter.Equal(receivedBefore) {
		t.Fatalf("after re-delivery: %d faulty (want %d), received_at %v (want %v unchanged)", stillFaulty, flagged, receivedAfter, receivedBefore)
	}
	checkAllStored(t, e.pool, ps)
}

// A poison message in the middle of a batch is dead-lettered with its
// reason and origin; the rest of the batch is written.
func TestPoisonMessageInBatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	good := positions(40, 4, 0)
	publish(t, e.js, good[:20])
	garbageSeq := publishRaw(t, e.js, "pos.unassigned.dev-x", []byte("this is not json"))
	bad := contract.Position{DeviceID: "dev-y", TS: base, Lat: 200, Lon: 7} // lat out of range
	invalidSeq := publishRaw(t, e.js, bad.Subject(), bad.Encode())
	publish(t, e.js, good[20:])

	cfg := e.config(t)
	cfg.BatchSize = 100 // all 42 messages in one batch
	cfg.FetchMaxWait = 500 * time.Millisecond
	in := start(t, cfg)
	waitRows(t, e.pool, len(good), 30*time.Second)
	consumerIdle(t, e.js, persister.DefaultConsumer)
	checkAllStored(t, e.pool, good)

	dl := readDLQ(t, e.js, 2)
	for i, want := range []struct {
		seq     uint64
		subject string
	}{{garbageSeq, "pos.unassigned.dev-x"}, {invalidSeq, bad.Subject()}} {
		h := dl[i].Headers()
		if h.Get(contract.HeaderReason) != string(contract.ReasonUndecodable) ||
			h.Get(contract.HeaderSourceStream) != streams.Positions ||
			h.Get(contract.HeaderSourceID) != strconv.FormatUint(want.seq, 10) ||
			h.Get(contract.HeaderSourceSubject) != want.subject ||
			h.Get(contract.HeaderWorker) != "persister" ||
			h.Get(contract.HeaderDetail) == "" {
			t.Fatalf("dead letter %d headers %v, want seq %d subject %s", i, h, want.seq, want.subject)
		}
	}
	if string(dl[0].Data()) != "this is not json" {
		t.Fatalf("dead letter payload %q, want the original", dl[0].Data())
	}
	if got := in.metric(t, `persister_dead_letters_total{reason="undecodable"}`); got != 2 {
		t.Fatalf("dead letters metric %v, want 2", got)
	}
}

// A valid position the database refuses (jsonb has no \u0000) is isolated
// and dead-lettered as unstorable; its batch neighbours are written.
func TestUnstorablePositionDeadLettered(t *testing.T) {
	t.Parallel()
	forPaths(t, testUnstorablePositionDeadLettered)
}

func testUnstorablePositionDeadLettered(t *testing.T, path string) {
	e := newEnv(t, true)
	good := positions(30, 3, 0)
	publish(t, e.js, good[:15])
	nul := contract.Position{DeviceID: "dev-nul", TS: base, Lat: 1, Lon: 2, Attrs: []byte(`{"s":"a\u0000b"}`)}
	if _, err := contract.DecodePosition(nul.Encode()); err != nil {
		t.Fatalf("the wire accepts it: %v", err)
	}
	seq := publishRaw(t, e.js, nul.Subject(), nul.Encode())
	publish(t, e.js, good[15:])

	cfg := e.config(t)
	cfg.FetchMaxWait = 500 * time.Millisecond
	cfg.WritePath = path
	in := start(t, cfg)
	waitRows(t, e.pool, len(good), 30*time.Second)
	consumerIdle(t, e.js, persister.DefaultConsumer)
	checkAllStored(t, e.pool, good)
	dl := readDLQ(t, e.js, 1)
	h := dl[0].Headers()
	if h.Get(contract.HeaderReason) != string(contract.ReasonUnstorable) || h.Get(contract.HeaderSourceID) != strconv.FormatUint(seq, 10) {
		t.Fatalf("dead letter headers %v", h)
	}
	if got := in.metric(t, `persister_write_errors_total{kind="data"}`); got < 1 {
		t.Fatalf("data write errors %v, want ≥ 1", got)
	}
}

// readDLQ reads exactly n dead letters in order.
func readDLQ(t *testing.T, js jetstream.JetStream, n int) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []jetstream.Msg
	testkit.Eventually(t, 10*time.Second, func() error {
		s, err := js.Stream(ctx, streams.DLQ)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != uint64(n) {
			return fmt.Errorf("%d dead letters, want %d", info.State.Msgs, n)
		}
		return nil
	})
	c, err := js.OrderedConsumer(ctx, streams.DLQ, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for len(out) < n {
		m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// Two persisters share the durable consumer: every position once, both
// did work, and the rows each inserted add up.
func TestTwoPersistersSameConsumer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	cfg := e.config(t)
	cfg.BatchSize = 20
	a, b := start(t, cfg), start(t, cfg)
	ps := positions(4000, 40, 0)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Go(func() { publish(t, e.js, ps[i*1000:(i+1)*1000]) })
	}
	wg.Wait()
	waitRows(t, e.pool, len(ps), 60*time.Second)
	consumerIdle(t, e.js, persister.DefaultConsumer)
	checkAllStored(t, e.pool, ps)
	ia, ib := a.metric(t, "persister_rows_inserted_total"), b.metric(t, "persister_rows_inserted_total")
	if ia+ib != float64(len(ps)) {
		t.Fatalf("instances inserted %v + %v, want %d in total", ia, ib, len(ps))
	}
	if ia == 0 || ib == 0 {
		t.Logf("one instance did all the work (%v / %v): allowed, but unusual", ia, ib)
	}
}

// The stream does not exist yet when the persister starts: it waits, not
// ready, and consumes once the bridge created it.
func TestWaitsForStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	in := start(t, e.config(t))
	testkit.Eventually(t, 30*time.Second, func() error {
		code, body, err := in.get("/readyz")
		if err != nil {
			return err
		}
		if code != 503 || !strings.Contains(body, "consumer") {
			return fmt.Errorf("/readyz %d %q, want 503 naming the consumer", code, body)
		}
		return nil
	})
	if code, _, err := in.get("/healthz"); err != nil || code != 200 {
		t.Fatalf("/healthz %d %v", code, err)
	}
	testkit.CheckHeaderLimit(t, "http://"+in.addr+"/healthz")
	e.ensureStreams(t)
	ps := positions(100, 5, 0)
	publish(t, e.js, ps)
	waitRows(t, e.pool, len(ps), 30*time.Second)
	in.waitReady(t, true)
}

// forPaths runs a test once per write path.
func forPaths(t *testing.T, test func(*testing.T, string)) {
	for _, path := range []string{persister.PathAuto, persister.PathUnnest, persister.PathStaging} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			test(t, path)
		})
	}
}
