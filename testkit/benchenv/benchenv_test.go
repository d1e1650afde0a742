package benchenv

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"trm-live/testkit"
)

type cfg struct{ n int }

func load(args []string, getenv func(string) string) (cfg, error) {
	var c cfg
	fs := flag.NewFlagSet("bench x", flag.ContinueOnError)
	fs.SetOutput(new(bytes.Buffer))
	fs.IntVar(&c.n, "n", 1, "")
	if err := fs.Parse(args); err != nil {
		return cfg{}, err
	}
	if getenv("NEED") == "" {
		return cfg{}, errors.New("NEED is not set")
	}
	return c, nil
}

// runMain loads the flags, runs with them and the caller's context, and
// turns -h into 0, any error into 1 with the benchmark's name.
func TestRunMain(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	type key struct{}
	ctx := context.WithValue(context.Background(), key{}, "caller")
	var got cfg
	run := func(ctx context.Context, c cfg) error {
		if ctx.Value(key{}) != "caller" {
			return errors.New("not the caller's context")
		}
		got = c
		if c.n == 13 {
			return errors.New("unlucky")
		}
		return nil
	}
	for _, tc := range []struct {
		args   []string
		env    map[string]string
		code   int
		stderr string
		n      int
	}{
		{[]string{"-n", "7"}, map[string]string{"NEED": "x"}, 0, "", 7},
		{[]string{"-h"}, nil, 0, "", 0},
		{nil, nil, 1, "bench x: NEED is not set\n", 0},
		{[]string{"-n", "13"}, map[string]string{"NEED": "x"}, 1, "bench x: unlucky\n", 13},
		{[]string{"-nope"}, map[string]string{"NEED": "x"}, 1, "bench x: flag provided but not defined: -nope\n", 0},
	} {
		got = cfg{}
		var stderr bytes.Buffer
		code := runMain(ctx, &stderr, "x", tc.args, env(tc.env), load, run)
		if code != tc.code || stderr.String() != tc.stderr || got.n != tc.n {
			t.Errorf("%v: code %d, stderr %q, n %d; want %d, %q, %d", tc.args, code, stderr.String(), got.n, tc.code, tc.stderr, tc.n)
		}
	}
}

func TestLoadServers(t *testing.T) {
	env := map[string]string{EnvRedisURL: "redis://r", EnvDatabaseURL: "postgres://p"}
	getenv := func(k string) string { return env[k] }
	s, err := LoadServers(getenv, "x", EnvRedisURL, EnvDatabaseURL)
	if err != nil || s != (Servers{RedisURL: "redis://r", DatabaseURL: "postgres://p", DataDir: os.TempDir()}) {
		t.Fatalf("got %+v, %v", s, err)
	}
	env[EnvDataDir] = "/data/x"
	if s, _ := LoadServers(getenv, "x"); s.DataDir != "/data/x" {
		t.Errorf("DataDir %q, want /data/x", s.DataDir)
	}
	delete(env, EnvDatabaseURL)
	_, err = LoadServers(getenv, "cluster", EnvRedisURL, EnvDatabaseURL)
	if err == nil || err.Error() != "BENCH_DATABASE_URL is not set: run through scripts/bench cluster" {
		t.Errorf("missing database: %v", err)
	}
	if _, err := LoadServers(getenv, "x", EnvRedisURL); err != nil {
		t.Errorf("database not needed: %v", err)
	}
}

// FreshDatabase gives an empty database however often it runs, on a DSN
// that keeps the admin DSN's settings, and the stand-in tables seed into it.
func TestFreshDatabase(t *testing.T) {
	admin := os.Getenv(testkit.EnvDatabaseURL)
	if admin == "" {
		t.Fatalf("%s is not set: run through scripts/test", testkit.EnvDatabaseURL)
	}
	ctx := context.Background()
	name := strings.ToLower(testkit.Unique("benchenv"))
	t.Cleanup(func() {
		if c, err := pgx.Connect(ctx, admin); err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			c.Close(ctx)
		}
	})
	dsn, err := FreshDatabase(ctx, admin, name)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(strings.SplitN(dsn, "?", 2)[0], "/"+name) || strings.Contains(admin, "?") != strings.Contains(dsn, "?") {
		t.Fatalf("dsn %q from admin %q", dsn, admin)
	}
	if err := SeedDirectusTables(ctx, dsn, testkit.RepoRoot(t)); err != nil {
		t.Fatal(err)
	}
	tables := func(dsn string) int {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var db string
		var n int
		if err := c.QueryRow(ctx, `SELECT current_database(), (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')`).Scan(&db, &n); err != nil {
			t.Fatal(err)
		}
		if db != name {
			t.Fatalf("connected to %s, want %s", db, name)
		}
		return n
	}
	if n := tables(dsn); n == 0 {
		t.Fatal("no table after the seed")
	}
	// An open connection does not stop the drop.
	held, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(ctx)
	if dsn, err = FreshDatabase(ctx, admin, name); err != nil {
		t.Fatal(err)
	}
	if n := tables(dsn); n != 0 {
		t.Fatalf("%d tables in the fresh database", n)
	}
}

// ConnectJetStream's client keeps more than the default 4,000 publishes in
// flight; AwaitAcks returns once every publish is stored, and the error of
// one that no stream takes.
func TestAwaitAcks(t *testing.T) {
	ns, stop, err := StartNATS(server.Options{JetStream: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	nc, js, err := ConnectJetStream(ns.ClientURL(), 8192)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx := context.Background()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}})
	if err != nil {
		t.Fatal(err)
	}
	var fs []jetstream.PubAckFuture
	const n = 6000
	for range n {
		f, err := js.PublishAsync("s.x", []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	if err := AwaitAcks(fs, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != n {
		t.Fatalf("stream holds %d messages after AwaitAcks, want %d", info.State.Msgs, n)
	}
	f, err := js.PublishAsync("nostream.x", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := AwaitAcks([]jetstream.PubAckFuture{f}, 10*time.Second); !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("publish to no stream: %v", err)
	}
}
