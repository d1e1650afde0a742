package verify

import (
	"fmt"
	"strings"
	"testing"

	"trm-live/authsvc"
	"trm-live/bridge"
	"trm-live/broadcaster"
	"trm-live/persister"
)

// TestConfigStringMasksDeployURLs: deploy/compose.yml gives every worker a
// NATS_URL with the worker's password (one URL, on the nats alias), and
// database and Redis URLs with passwords. The effective configuration each
// worker logs at start must show none of them, and neither may the error
// of a value with a trailing newline (a secret file's).
func TestConfigStringMasksDeployURLs(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"NATS_URL":     "nats://w:natspw1@nats:4222", // as compose.yml sets it: one URL
		"REDIS_URL":    "redis://:redispw@redis:6379/0",
		"DATABASE_URL": "postgres://trm:dbpw@postgres:5432/trm?sslmode=disable",
		"DIRECTUS_URL": "http://directus:8055",
	}
	get := func(k string) string { return env[k] }
	strs := map[string]func() (fmt.Stringer, error){
		"bridge":      func() (fmt.Stringer, error) { return bridge.LoadConfig(nil, get) },
		"persister":   func() (fmt.Stringer, error) { return persister.LoadConfig(nil, get) },
		"authsvc":     func() (fmt.Stringer, error) { return authsvc.LoadConfig(nil, get) },
		"broadcaster": func() (fmt.Stringer, error) { return broadcaster.LoadConfig(nil, get) },
	}
	for w, load := range strs {
		cfg, err := load()
		if err != nil {
			t.Errorf("%s: %v", w, err)
			continue
		}
		s := cfg.String()
		for _, pw := range []string{"natspw1", "redispw", "dbpw"} {
			if strings.Contains(s, pw) {
				t.Errorf("%s logs a password (%s) in its effective configuration: %s", w, pw, s)
			}
		}
	}
	for k, v := range env {
		env[k] = v + "\n"
		for w, load := range strs {
			// A worker that does not read k accepts it; the workers'
			// own tests require the refusal.
			_, err := load()
			if err == nil {
				continue
			}
			for _, pw := range []string{"natspw1", "redispw", "dbpw"} {
				if strings.Contains(err.Error(), pw) {
					t.Errorf("%s: %s with a trailing newline: the error shows a password: %v", w, k, err)
				}
			}
		}
		env[k] = v
	}
}
