package probe_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract/probe"
	"trm-live/testkit"
)

// TestServerLimits: the probe server bounds header size, header time and
// idle keep-alive connections (net/http's zero values bound none but the
// size, at 1 MiB).
func TestServerLimits(t *testing.T) {
	testkit.CheckHTTPServerLimits(t, probe.Server(http.NewServeMux()))
}

func get(t *testing.T, h http.Handler, method, path string) (int, string, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	body, err := io.ReadAll(rec.Result().Body)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Code, rec.Header().Get("Content-Type"), string(body)
}

// TestMux: /healthz answers ok as plain text, /readyz is the worker's
// handler, /metrics serves the gatherer, and only GET is routed.
func TestMux(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "probe_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Inc()
	mux := probe.Mux(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not ready: test", http.StatusServiceUnavailable)
	}, reg)

	if code, ct, body := get(t, mux, "GET", "/healthz"); code != 200 || ct != "text/plain; charset=utf-8" || body != "ok\n" {
		t.Errorf("/healthz: %d %q %q", code, ct, body)
	}
	if code, _, body := get(t, mux, "GET", "/readyz"); code != 503 || body != "not ready: test\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	if code, _, body := get(t, mux, "GET", "/metrics"); code != 200 || !strings.Contains(body, "probe_test_total 1") {
		t.Errorf("/metrics: %d %q", code, body)
	}
	if code, _, _ := get(t, mux, "POST", "/healthz"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz: %d, want 405", code)
	}
}

// TestMuxWithoutMetrics: a nil gatherer leaves /metrics unrouted.
func TestMuxWithoutMetrics(t *testing.T) {
	mux := probe.Mux(func(http.ResponseWriter, *http.Request) {}, nil)
	if code, _, _ := get(t, mux, "GET", "/metrics"); code != http.StatusNotFound {
		t.Errorf("/metrics without a gatherer: %d, want 404", code)
	}
}
