package broadcaster

import (
	"testing"

	"trm-live/testkit"
)

// TestBuildInfo: /metrics carries trm_build_info with the configured
// version (the revision falls back to the toolchain's or "unknown") and
// the Go and process collectors.
func TestBuildInfo(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.Version = "1.2.3-test" }})
	testkit.CheckBuildInfo(t, "http://"+e.addr+"/metrics", "1.2.3-test")
}
