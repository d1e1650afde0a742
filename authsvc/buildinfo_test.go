package authsvc

import (
	"testing"

	"trm-live/testkit"
)

// TestBuildInfo: /metrics carries trm_build_info with the configured
// version (the revision falls back to the toolchain's or "unknown") and
// the Go and process collectors.
func TestBuildInfo(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.Version = "1.2.3-test" }))
	testkit.CheckBuildInfo(t, h.http+"/metrics", "1.2.3-test")
}
