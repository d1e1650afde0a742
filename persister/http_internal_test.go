package persister

import (
	"net/http"
	"testing"
)

// TestHTTPServerLimits: the health and metrics server bounds header size,
// header time and idle keep-alive connections (net/http's zero values
// bound none but the size, at 1 MiB).
func TestHTTPServerLimits(t *testing.T) {
	srv := newHTTPServer(http.NewServeMux())
	if srv.ReadHeaderTimeout <= 0 || srv.IdleTimeout <= 0 || srv.MaxHeaderBytes <= 0 || srv.MaxHeaderBytes > 64<<10 {
		t.Errorf("ReadHeaderTimeout %s IdleTimeout %s MaxHeaderBytes %d: want all set, headers at most 64 KiB",
			srv.ReadHeaderTimeout, srv.IdleTimeout, srv.MaxHeaderBytes)
	}
}
