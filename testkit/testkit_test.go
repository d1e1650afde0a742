package testkit

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestNATSRestartKeepsStreamAndPort(t *testing.T) {
	n := StartNATS(t)
	js := n.JetStream(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jsCfg()); err != nil {
		t.Fatal(err)
	}
	url := n.URL
	n.Restart()
	if n.URL != url {
		t.Fatalf("url changed across restart: %s -> %s", url, n.URL)
	}
	js2 := n.JetStream(t)
	if _, err := js2.Stream(ctx, "T"); err != nil {
		t.Fatalf("stream lost across restart: %v", err)
	}
}

func TestSharedRedisAndPostgres(t *testing.T) {
	rdb := Redis(t)
	key := Unique("k")
	ctx := context.Background()
	if err := rdb.Set(ctx, key, "v", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	dsn := Postgres(t)
	SeedDirectusTables(t, dsn)
	SeedDirectusTables(t, dsn) // idempotent
	pool := Pool(t, dsn)
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM event_devices").Scan(&n); err != nil {
		t.Fatal(err)
	}
}

func TestPrivateServersRestart(t *testing.T) {
	r := StartRedis(t)
	r.Stop()
	r.Start()
	p := StartPostgres(t)
	dsn := p.NewDatabase(t)
	p.Stop()
	p.Start()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
}
