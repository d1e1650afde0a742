package bridge_test

import (
	"io"
	"net/http"
	"regexp"
	"testing"
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
	resp, err := http.Get("http://" + run.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{`(?m)^trm_build_info\{revision="[^"]+",version="1\.2\.3-test"\} 1$`, `(?m)^go_goroutines \d+$`, `(?m)^process_start_time_seconds `} {
		if !regexp.MustCompile(re).Match(body) {
			t.Errorf("/metrics lacks %s", re)
		}
	}
}
