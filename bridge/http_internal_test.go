package bridge

import (
	"net/http"
	"testing"

	"trm-live/testkit"
)

// TestHTTPServerLimits: the health and metrics server bounds header size,
// header time and idle keep-alive connections (net/http's zero values
// bound none but the size, at 1 MiB).
func TestHTTPServerLimits(t *testing.T) {
	testkit.CheckHTTPServerLimits(t, newHTTPServer(http.NewServeMux()))
}
