package testkit

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// CheckHTTPServerLimits fails tb unless srv bounds the time to send
// headers, closes idle keep-alive connections and caps the header size at
// 64 KiB at most (net/http's zero values bound none but the size, at
// 1 MiB).
func CheckHTTPServerLimits(tb testing.TB, srv *http.Server) {
	tb.Helper()
	if srv.ReadHeaderTimeout <= 0 || srv.IdleTimeout <= 0 || srv.MaxHeaderBytes <= 0 || srv.MaxHeaderBytes > 64<<10 {
		tb.Errorf("ReadHeaderTimeout %s IdleTimeout %s MaxHeaderBytes %d: want all set, headers at most 64 KiB",
			srv.ReadHeaderTimeout, srv.IdleTimeout, srv.MaxHeaderBytes)
	}
}

// CheckBuildInfo fails tb unless the /metrics page at url carries
// trm_build_info with version, and the Go and process collectors.
func CheckBuildInfo(tb testing.TB, url, version string) {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	for _, re := range []string{`(?m)^trm_build_info\{revision="[^"]+",version="` + regexp.QuoteMeta(version) + `"\} 1$`,
		`(?m)^go_goroutines \d+$`, `(?m)^process_start_time_seconds `} {
		if !regexp.MustCompile(re).Match(body) {
			tb.Errorf("%s lacks %s", url, re)
		}
	}
}

// CheckHeaderLimit fails tb unless a GET of url with a 64 KiB header block
// (net/http's default limit is 1 MiB) is answered 431.
func CheckHeaderLimit(tb testing.TB, url string) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("%s with a 64 KiB header: %v", url, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		tb.Fatalf("%s with a 64 KiB header: %d, want 431", url, resp.StatusCode)
	}
}
