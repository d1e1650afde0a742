package authsvc

import (
	"errors"
	"strings"
	"testing"
	"time"

	"trm-live/contract/config"
	"trm-live/testkit"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadConfigDefaultsEnvAndFlags(t *testing.T) {
	cfg, err := LoadConfig(nil, env(map[string]string{
		"DATABASE_URL": "postgres://u:pw@db/x", "DIRECTUS_URL": "http://directus:8055",
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		NATSURL: "nats://127.0.0.1:4222", DatabaseURL: "postgres://u:pw@db/x", DirectusURL: "http://directus:8055",
		HTTPAddr: ":8080", LogLevel: "info", LogFormat: "text", CookieName: "directus_session_token",
		DirectusTimeout: 2 * time.Second, DirectusConcurrency: 64, DBTimeout: 2 * time.Second,
		SessionTTL: 30 * time.Second, FailureTTL: 5 * time.Second, EventTTL: 30 * time.Second, EventDenyTTL: 5 * time.Second,
		CacheSize: 100000, Concurrency: 512, ShutdownTimeout: 10 * time.Second,
	}
	if cfg.String() != want.String() {
		t.Fatalf("defaults:\n got %s\nwant %s", cfg, want)
	}

	cfg, err = LoadConfig([]string{"-session-ttl", "1m", "-cookie-name", "flag_cookie", "-nats-url", "nats://flag:4222"}, env(map[string]string{
		"DATABASE_URL": "postgres://db/x", "DIRECTUS_URL": "http://d", "AUTHSVC_SESSION_TTL": "10s",
		"AUTHSVC_COOKIE_NAME": "env_cookie", "AUTHSVC_CACHE_SIZE": "7", "LOG_FORMAT": "json",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SessionTTL != time.Minute || cfg.CookieName != "flag_cookie" || cfg.NATSURL != "nats://flag:4222" || cfg.CacheSize != 7 || cfg.LogFormat != "json" {
		t.Fatalf("flags must win over env, env over defaults: %+v", cfg)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	base := map[string]string{"DATABASE_URL": "postgres://db/x", "DIRECTUS_URL": "http://d"}
	cases := []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"DATABASE_URL": ""}, nil, "DATABASE_URL"},
		{map[string]string{"DIRECTUS_URL": ""}, nil, "DIRECTUS_URL"},
		{map[string]string{"DIRECTUS_URL": "directus:8055"}, nil, "DIRECTUS_URL"},
		{map[string]string{"AUTHSVC_SESSION_TTL": "soon"}, nil, "AUTHSVC_SESSION_TTL"},
		{map[string]string{"AUTHSVC_CACHE_SIZE": "many"}, nil, "AUTHSVC_CACHE_SIZE"},
		{nil, []string{"-failure-ttl", "-1s"}, "AUTHSVC_FAILURE_TTL"},
		{nil, []string{"-concurrency", "-5"}, "AUTHSVC_CONCURRENCY"},
		{map[string]string{"LOG_LEVEL": "loud"}, nil, "LOG_LEVEL"},
		{map[string]string{"LOG_FORMAT": "xml"}, nil, "LOG_FORMAT"},
		{map[string]string{"AUTHSVC_COOKIE_NAME": "a b"}, nil, "AUTHSVC_COOKIE_NAME"},
		{nil, []string{"-no-such-flag"}, "no-such-flag"},
		{nil, []string{"extra"}, "unexpected argument"},
	}
	for _, c := range cases {
		e := map[string]string{}
		for k, v := range base {
			e[k] = v
		}
		for k, v := range c.env {
			e[k] = v
		}
		_, err := LoadConfig(c.args, env(e))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("env %v args %v: error %v, want one naming %s", c.env, c.args, err, c.want)
		}
	}
}

func TestConfigStringMasksSecrets(t *testing.T) {
	for _, c := range []Config{
		{DatabaseURL: "postgres://trm:s3cret@db:5432/trm?sslmode=disable", DirectusURL: "http://d", NATSURL: "nats://natsuser:s3cret@nats:4222"},
		{DatabaseURL: "host=db user=trm password=s3cret dbname=trm", DirectusURL: "https://d/?access_token=s3cret"},
		{DatabaseURL: "host=db password='s3cret with space' dbname=trm", DirectusURL: "http://d"},
	} {
		s := c.String()
		if strings.Contains(s, "s3cret") {
			t.Errorf("String() leaks a secret: %s", s)
		}
		if !strings.Contains(s, "xxxxx") {
			t.Errorf("String() shows no mask: %s", s)
		}
	}
}

// TestZeroConfigGetsDefaults: a Config literal with only the URLs is
// enough (the dev binary builds one).
func TestZeroConfigGetsDefaults(t *testing.T) {
	c := Config{DatabaseURL: "postgres://db/x", DirectusURL: "http://d"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	d := c.withDefaults()
	if d.SessionTTL != 30*time.Second || d.Concurrency != 512 || d.Now == nil || d.CookieName != "directus_session_token" || d.HTTPAddr != ":8080" {
		t.Fatalf("defaults not applied: %+v", d)
	}
}

// TestConfigErrorsHidePasswords: a URL setting with a password and a flaw
// (a trailing newline from a secret file, a space, a bad % escape, an
// unescaped / or # in the password) is refused with an error that names
// the setting and shows no password.
func TestConfigErrorsHidePasswords(t *testing.T) {
	for name, tmpl := range map[string]string{
		"NATS_URL":     "nats://authsvc:%s@nats:4222",
		"DATABASE_URL": "postgres://trm:%s@db:5432/trm?sslmode=disable",
		"DIRECTUS_URL": "https://admin:%s@directus:8055",
	} {
		for _, v := range append(testkit.FlawedURLs(tmpl), "nats://a:b@n1:4222,"+strings.Replace(tmpl, "%s", testkit.Password, 1)+"\n") {
			e := map[string]string{"DATABASE_URL": "postgres://db/trm", "DIRECTUS_URL": "http://directus:8055", name: v}
			_, err := LoadConfig(nil, env(e))
			testkit.RefusedWithoutSecret(t, name, v, err)
		}
	}
}

// TestVersionFlag: -version is answered before any setting is read or
// validated (here DATABASE_URL is missing), so main prints the version
// and exits 0 without touching a server.
func TestVersionFlag(t *testing.T) {
	if _, err := LoadConfig([]string{"-version"}, env(map[string]string{"LOG_LEVEL": "loud"})); !errors.Is(err, config.ErrVersion) {
		t.Fatalf("LoadConfig(-version) = %v, want config.ErrVersion", err)
	}
}
