package authsvc

import (
	"regexp"
	"testing"
)

// TestBuildInfo: /metrics carries trm_build_info with the configured
// version (the revision falls back to the toolchain's or "unknown") and
// the Go and process collectors.
func TestBuildInfo(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.Version = "1.2.3-test" }))
	code, body := httpGet(t, h.http+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, re := range []string{`(?m)^trm_build_info\{revision="[^"]+",version="1\.2\.3-test"\} 1$`, `(?m)^go_goroutines \d+$`, `(?m)^process_start_time_seconds `} {
		if !regexp.MustCompile(re).MatchString(body) {
			t.Errorf("/metrics lacks %s", re)
		}
	}
}
