package persister_test

import (
	"regexp"
	"testing"
)

// TestBuildInfo: /metrics carries trm_build_info with the configured
// version (the revision falls back to the toolchain's or "unknown") and
// the Go and process collectors.
func TestBuildInfo(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	cfg := e.config(t)
	cfg.Version = "1.2.3-test"
	in := start(t, cfg)
	code, body, err := in.get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	for _, re := range []string{`(?m)^trm_build_info\{revision="[^"]+",version="1\.2\.3-test"\} 1$`, `(?m)^go_goroutines \d+$`, `(?m)^process_start_time_seconds `} {
		if !regexp.MustCompile(re).MatchString(body) {
			t.Errorf("/metrics lacks %s", re)
		}
	}
}
