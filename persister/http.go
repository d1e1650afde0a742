package persister

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Limits of the HTTP server of /healthz, /readyz and /metrics, which only
// probes and scrapers call: a header block over httpMaxHeaderBytes (plus
// net/http's 4 KiB slack) is answered 431, a client gets
// httpReadHeaderTimeout to send its headers, and a keep-alive connection
// idle for httpIdleTimeout is closed (longer than a scrape interval).
const (
	httpReadHeaderTimeout = 5 * time.Second
	httpIdleTimeout       = 90 * time.Second
	httpMaxHeaderBytes    = 16 << 10
)

// newHTTPServer is the HTTP server of h with those limits.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: httpReadHeaderTimeout,
		IdleTimeout:       httpIdleTimeout,
		MaxHeaderBytes:    httpMaxHeaderBytes,
	}
}

// handler is the private mux: /healthz (the process answers), /readyz
// (every dependency usable) and /metrics.
func (p *persister) handler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", p.readyz)
	if g != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	}
	return mux
}

func (p *persister) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	var problems []string
	if !p.nc.IsConnected() {
		problems = append(problems, "nats: not connected")
	}
	if err := p.pool.Ping(ctx); err != nil {
		problems = append(problems, "database: "+err.Error())
	} else if !p.dbOK.Load() {
		problems = append(problems, "database: last verification failed")
	}
	if p.writeFailing.Load() {
		problems = append(problems, "database: writes failing, batches handed back")
	}
	if why := p.heldBack.Load(); why != nil {
		problems = append(problems, "schema: writes held back: "+*why)
	} else if !p.schemaOK.Load() {
		problems = append(problems, "schema: not verified or not repairable")
	}
	if !p.consumerOK.Load() {
		problems = append(problems, "consumer: stream POSITIONS or consumer "+p.cfg.Consumer+" not available")
	}
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, strings.Join(problems, "\n"))
		return
	}
	fmt.Fprintln(w, "ready")
}
