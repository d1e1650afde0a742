package persister

import (
	"errors"
	"strings"
	"testing"
	"time"

	"trm-live/contract/config"
	"trm-live/testkit"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadConfigEnvAndFlags(t *testing.T) {
	t.Parallel()
	cfg, err := LoadConfig([]string{"-batch-size", "250", "-writers=3"}, env(map[string]string{
		"DATABASE_URL":                  "postgres://u:secret@db:5432/trm?sslmode=disable",
		"NATS_URL":                      "nats://nats:4222",
		"PERSISTER_BATCH_SIZE":          "999", // the flag wins
		"PERSISTER_ACK_WAIT":            "45s",
		"PERSISTER_REQUIRE_TIMESCALEDB": "true",
		"PERSISTER_CHUNK_INTERVAL":      "6h",
		"LOG_FORMAT":                    "json",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BatchSize != 250 || cfg.Writers != 3 || cfg.AckWait != 45*time.Second || !cfg.RequireTimescaleDB ||
		cfg.ChunkInterval != 6*time.Hour || cfg.HTTPAddr != DefaultHTTPAddr || cfg.Consumer != "persister" || cfg.Logger == nil {
		t.Fatalf("config %+v", cfg)
	}
	s := cfg.String()
	if strings.Contains(s, "secret") || !strings.Contains(s, "u:xxxxx@db") || !strings.Contains(s, "PERSISTER_BATCH_SIZE=250") {
		t.Fatalf("String() = %s", s)
	}
}

func TestValidateNamesTheSetting(t *testing.T) {
	t.Parallel()
	ok := Config{DatabaseURL: "postgres://localhost/x"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("a literal with only DATABASE_URL must be valid: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no database", func(c *Config) { c.DatabaseURL = "" }, "DATABASE_URL"},
		{"bad database", func(c *Config) { c.DatabaseURL = "mysql://x" }, "DATABASE_URL"},
		{"bad nats", func(c *Config) { c.NATSURL = "::" }, "NATS_URL"},
		{"consumer", func(c *Config) { c.Consumer = "a.b" }, "PERSISTER_CONSUMER"},
		{"batch", func(c *Config) { c.BatchSize = -1 }, "PERSISTER_BATCH_SIZE"},
		{"writers", func(c *Config) { c.Writers = 100 }, "PERSISTER_WRITERS"},
		{"write path", func(c *Config) { c.WritePath = "magic" }, "PERSISTER_WRITE_PATH"},
		{"ack pending", func(c *Config) { c.BatchSize, c.MaxAckPending = 1000, 500 }, "PERSISTER_MAX_ACK_PENDING"},
		{"ack wait", func(c *Config) { c.AckWait = time.Millisecond }, "PERSISTER_ACK_WAIT"},
		{"backoff", func(c *Config) { c.BackoffMin, c.BackoffMax = time.Second, time.Millisecond }, "PERSISTER_BACKOFF_MAX"},
		{"chunk", func(c *Config) { c.ChunkInterval = time.Second }, "PERSISTER_CHUNK_INTERVAL"},
		{"log level", func(c *Config) { c.LogLevel = "loud" }, "LOG_LEVEL"},
	} {
		c := ok
		tc.mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.want)
		}
	}
	if _, err := LoadConfig(nil, env(map[string]string{"DATABASE_URL": "postgres://x/y", "PERSISTER_ACK_WAIT": "soon"})); err == nil ||
		!strings.Contains(err.Error(), "PERSISTER_ACK_WAIT") {
		t.Errorf("unparsable env: %v", err)
	}
}

func TestRebuildConfig(t *testing.T) {
	t.Parallel()
	getenv := env(map[string]string{"DATABASE_URL": "postgres://x/y"})
	_, since, err := LoadRebuildConfig([]string{"--since", "2026-05-03T10:00:00+02:00"}, getenv)
	if err != nil || !since.Equal(time.Date(2026, 5, 3, 8, 0, 0, 0, time.UTC)) {
		t.Fatalf("since %v %v", since, err)
	}
	_, since, err = LoadRebuildConfig([]string{"--since=6h"}, getenv)
	if err != nil || time.Since(since) < 6*time.Hour-time.Minute || time.Since(since) > 6*time.Hour+time.Minute {
		t.Fatalf("since 6h ago: %v %v", since, err)
	}
	for _, args := range [][]string{nil, {"--since", "yesterday"}, {"--since", "-1h"}} {
		if _, _, err := LoadRebuildConfig(args, getenv); err == nil || !strings.Contains(err.Error(), "since") {
			t.Errorf("%v: %v, want an error about --since", args, err)
		}
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	for attempt, want := range map[int]time.Duration{0: 100 * time.Millisecond, 1: 100 * time.Millisecond, 2: 200 * time.Millisecond,
		4: 800 * time.Millisecond, 5: time.Second, 60: time.Second} {
		if got := backoff(100*time.Millisecond, time.Second, attempt); got != want {
			t.Errorf("backoff(%d) = %s, want %s", attempt, got, want)
		}
	}
}

// TestConfigErrorsHidePasswords: a URL setting with a password and a flaw
// (a trailing newline from a secret file, a space, a bad % escape, an
// unescaped / or # in the password) is refused with an error that names
// the setting and shows no password.
func TestConfigErrorsHidePasswords(t *testing.T) {
	for name, tmpl := range map[string]string{
		"NATS_URL":     "nats://persister:%s@nats:4222",
		"DATABASE_URL": "postgres://trm:%s@db:5432/trm?sslmode=disable",
	} {
		for _, v := range testkit.FlawedURLs(tmpl) {
			e := map[string]string{"DATABASE_URL": "postgres://db/trm", name: v}
			_, err := LoadConfig(nil, env(e))
			testkit.RefusedWithoutSecret(t, name, v, err)
		}
	}
}

// TestVersionFlag: -version is answered before any setting is read or
// validated (here DATABASE_URL is missing), also by "persister rebuild",
// so main prints the version and exits 0 without touching a server.
func TestVersionFlag(t *testing.T) {
	t.Parallel()
	if _, err := LoadConfig([]string{"-version"}, env(map[string]string{"LOG_LEVEL": "loud"})); !errors.Is(err, config.ErrVersion) {
		t.Fatalf("LoadConfig(-version) = %v, want config.ErrVersion", err)
	}
	if _, _, err := LoadRebuildConfig([]string{"-version"}, env(nil)); !errors.Is(err, config.ErrVersion) {
		t.Fatalf("LoadRebuildConfig(-version) = %v, want config.ErrVersion", err)
	}
}

// TestZeroHTTPAddr: a literal without HTTPAddr runs no HTTP server, while
// LoadConfig's default is :8080.
func TestZeroHTTPAddr(t *testing.T) {
	t.Parallel()
	if c := (Config{DatabaseURL: "postgres://x/y"}).withDefaults(); c.HTTPAddr != "" || c.BatchSize != DefaultBatchSize || c.LogLevel != "info" {
		t.Fatalf("withDefaults: %+v", c)
	}
}
