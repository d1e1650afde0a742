package broadcaster

import (
	"net/http"
	"testing"
)

// TestHTTPServerLimits: the broadcaster's HTTP server closes idle
// keep-alive connections, bounds the time to send headers and their size
// (431 over it: TestMaxHeaderBytes).
func TestHTTPServerLimits(t *testing.T) {
	srv := newHTTPServer(http.NewServeMux())
	if srv.ReadHeaderTimeout <= 0 || srv.IdleTimeout != httpIdleTimeout || srv.MaxHeaderBytes != httpMaxHeaderBytes {
		t.Errorf("ReadHeaderTimeout %s IdleTimeout %s MaxHeaderBytes %d: want all set (idle %s, headers %d)",
			srv.ReadHeaderTimeout, srv.IdleTimeout, srv.MaxHeaderBytes, httpIdleTimeout, httpMaxHeaderBytes)
	}
	if httpIdleTimeout <= 0 || httpMaxHeaderBytes <= 0 || httpMaxHeaderBytes > 64<<10 {
		t.Errorf("idle %s, header cap %d: want both set, headers at most 64 KiB", httpIdleTimeout, httpMaxHeaderBytes)
	}
}
