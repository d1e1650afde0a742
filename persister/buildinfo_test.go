package persister_test

import (
	"testing"

	"trm-live/testkit"
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
	testkit.CheckBuildInfo(t, "http://"+in.addr+"/metrics", "1.2.3-test")
}
