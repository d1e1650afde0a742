package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/testkit"
)

// The operator's command line: "persister rebuild --since 1h" applies the
// schema and replays the stream into the table.
func TestRebuildCommand(t *testing.T) {
	n := testkit.StartNATS(t)
	js := n.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, js, streams.Options{}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		p := contract.Position{DeviceID: "dev-1", TS: time.UnixMilli(1_777_000_000_000 + int64(i)*1000).UTC(), Lat: 1, Lon: 2}
		if _, err := js.Publish(ctx, p.Subject(), p.Encode(), jetstream.WithMsgID(p.MsgID())); err != nil {
			t.Fatal(err)
		}
	}
	dsn := testkit.Postgres(t)
	t.Setenv("DATABASE_URL", dsn)
	t.Setenv("NATS_URL", n.URL)
	t.Setenv("LOG_LEVEL", "warn")

	if err := run(ctx, []string{"rebuild"}); err == nil || !strings.Contains(err.Error(), "--since") {
		t.Fatalf("rebuild without --since: %v", err)
	}
	if err := run(ctx, []string{"-no-such-flag"}); err == nil {
		t.Fatal("an unknown flag must fail")
	}
	if err := run(ctx, []string{"rebuild", "--since", "1h"}); err != nil {
		t.Fatal(err)
	}
	var rows int
	if err := testkit.Pool(t, dsn).QueryRow(ctx, "SELECT count(*) FROM positions").Scan(&rows); err != nil || rows != 50 {
		t.Fatalf("%d rows (%v), want 50", rows, err)
	}
}
