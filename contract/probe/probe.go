// Package probe is the probe HTTP side the workers share: the server that
// serves /healthz, /readyz and /metrics, which only probes and scrapers
// call, and its /healthz. Each worker keeps its own /readyz.
package probe

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Limits of Server: a header block over MaxHeaderBytes (plus net/http's
// 4 KiB slack) is answered 431, a client gets ReadHeaderTimeout to send its
// headers, and a keep-alive connection idle for IdleTimeout is closed
// (longer than a scrape interval).
const (
	ReadHeaderTimeout = 5 * time.Second
	IdleTimeout       = 90 * time.Second
	MaxHeaderBytes    = 16 << 10
)

// Server is the HTTP server of h with those limits.
func Server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}

// Healthz answers "ok": the process serves HTTP.
func Healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// Mux is a private mux serving GET /healthz (Healthz), GET /readyz
// (readyz) and, unless g is nil, GET /metrics from g. A worker may add its
// own routes.
func Mux(readyz http.HandlerFunc, g prometheus.Gatherer) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", Healthz)
	mux.HandleFunc("GET /readyz", readyz)
	if g != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	}
	return mux
}
