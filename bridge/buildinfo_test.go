package bridge_test

import (
	"testing"

	"trm-live/testkit"
)

// TestBuildInfo: /metrics carries trm_build_info with the configured
// version (the revision falls back to the toolchain's or "unknown") and
// the Go and process collectors.
func TestBuildInfo(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cfg, _ := e.config("a")
	cfg.Version = "1.2.3-test"
	run := e.start(cfg)
	testkit.CheckBuildInfo(t, "http://"+run.addr+"/metrics", "1.2.3-test")
}
