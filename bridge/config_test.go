package bridge_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"trm-live/bridge"
	"trm-live/contract/config"

	"trm-live/testkit"
)

func TestLoadConfig(t *testing.T) {
	env := map[string]string{
		"NATS_URL":                "nats://n:4222",
		"REDIS_URL":               "redis+cluster://:s3cret@r1:7000,r2:7001",
		"REDIS_SENTINEL_PASSWORD": "sentinelpass",
		"DATABASE_URL":            "postgres://u:pgpass@db:5432/x",
		"BRIDGE_STREAMS":          "a, b",
		"BRIDGE_BLOCK":            "2s",
		"BRIDGE_MAX_IN_FLIGHT":    "100",
		"BRIDGE_PARSE_WORKERS":    "3",
		"STREAM_DUPLICATES":       "3m",
		"STREAM_MAX_BYTES":        "40GB",
	}
	cfg, err := bridge.LoadConfig([]string{"-group", "g2", "-block", "3s"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Group != "g2" || cfg.Block != 3*time.Second || cfg.MaxInFlight != 100 || cfg.ParseWorkers != 3 ||
		len(cfg.Streams) != 2 || cfg.Streams[1] != "b" || cfg.Stream.Duplicates != 3*time.Minute ||
		cfg.Consumer == "" || cfg.RoutingRefresh != bridge.DefaultRoutingRefresh ||
		cfg.Stream.MaxBytes != 40<<30 || cfg.Stream.DLQMaxBytes != 1<<30 {
		t.Fatalf("unexpected config: %s", cfg)
	}
	s := cfg.String()
	if cfg.RedisSentinelPassword != "sentinelpass" || !strings.Contains(s, "REDIS_URL=redis+cluster://:xxxxx@r1:7000,r2:7001 ") {
		t.Fatalf("REDIS_URL or REDIS_SENTINEL_PASSWORD not as given: %s", s)
	}
	if strings.Contains(s, "s3cret") || strings.Contains(s, "pgpass") || strings.Contains(s, "sentinelpass") {
		t.Fatalf("String leaks a password: %s", s)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	for name, c := range map[string]struct {
		env  map[string]string
		args []string
	}{
		"BRIDGE_BLOCK":           {args: []string{"-block", "500us"}},
		"BRIDGE_BATCH":           {env: map[string]string{"BRIDGE_BATCH": "many"}},
		"BRIDGE_PUBLISH_TIMEOUT": {env: map[string]string{"BRIDGE_PUBLISH_TIMEOUT": "soon"}},
		"REDIS_URL":              {env: map[string]string{"REDIS_URL": "localhost"}},
		"REDIS_URL ":             {env: map[string]string{"REDIS_URL": "redis+sentinel://:pw@s1:26379,s2:26379"}}, // no master name
		"STREAM_":                {args: []string{"-stream-duplicates", "30s"}},
		"BRIDGE_STREAMS":         {env: map[string]string{"BRIDGE_STREAMS": "a,a"}},
		"BRIDGE_PARSE_WORKERS":   {args: []string{"-parse-workers", "-1"}},
		"LOG_FORMAT":             {env: map[string]string{"LOG_FORMAT": "xml"}},
		"STREAM_MAX_BYTES":       {env: map[string]string{"STREAM_MAX_BYTES": "lots"}},
		"STREAM_DLQ_MAX_BYTES":   {env: map[string]string{"STREAM_DLQ_MAX_BYTES": "1.5GB"}},
		"STREAM_*":               {args: []string{"-stream-dlq-max-bytes", "1000"}},
	} {
		_, err := bridge.LoadConfig(c.args, func(k string) string { return c.env[k] })
		name = strings.TrimSpace(name)
		if err == nil || !strings.Contains(err.Error(), name) || strings.Contains(err.Error(), "pw@") {
			t.Errorf("%s: error %v does not name the setting", name, err)
		}
	}
}

// TestConfigErrorsHidePasswords: a URL setting with a password and a flaw
// (a trailing newline from a secret file, a space, a bad % escape, an
// unescaped / or # in the password) is refused with an error that names
// the setting and shows no password.
func TestConfigErrorsHidePasswords(t *testing.T) {
	for name, tmpl := range map[string]string{
		"NATS_URL":     "nats://bridge:%s@nats:4222",
		"REDIS_URL":    "redis://:%s@redis:6379/0",
		"DATABASE_URL": "postgres://trm:%s@db:5432/trm?sslmode=disable",
	} {
		for _, v := range testkit.FlawedURLs(tmpl) {
			_, err := bridge.LoadConfig(nil, func(k string) string { return map[string]string{name: v}[k] })
			testkit.RefusedWithoutSecret(t, name, v, err)
		}
	}
}

// TestVersionFlag: -version is answered before any setting is read or
// validated, so main prints the version and exits 0 without touching a
// server.
func TestVersionFlag(t *testing.T) {
	_, err := bridge.LoadConfig([]string{"-version"}, func(k string) string { return map[string]string{"BRIDGE_BATCH": "many"}[k] })
	if !errors.Is(err, config.ErrVersion) {
		t.Fatalf("LoadConfig(-version) = %v, want config.ErrVersion", err)
	}
}

// TestSentinelPasswordHasNoFlag: REDIS_SENTINEL_PASSWORD is read from the
// environment only, so it never shows in the process list.
func TestSentinelPasswordHasNoFlag(t *testing.T) {
	if _, err := bridge.LoadConfig([]string{"-redis-sentinel-password", "pw"}, func(string) string { return "" }); err == nil {
		t.Fatal("-redis-sentinel-password was accepted")
	}
}
