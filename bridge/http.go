package bridge

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

var httpErrServerClosed = http.ErrServerClosed

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

// httpServer serves /healthz (the process answers), /readyz (Redis answers
// a PING within 1 s, NATS is connected, the streams exist, the routing
// table was loaded at least once, no stream refuses publishes for a full
// store, and the bridge is not stopping) and
// /metrics, on a private mux.
func (b *bridge) httpServer(gat prometheus.Gatherer) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		problems := b.notReady(r.Context())
		if len(problems) > 0 {
			http.Error(w, "not ready: "+strings.Join(problems, "; "), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(gat, promhttp.HandlerOpts{}))
	return newHTTPServer(mux)
}

func (b *bridge) notReady(ctx context.Context) []string {
	var problems []string
	if b.stopping.Load() {
		problems = append(problems, "stopping")
	}
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := b.rdb.Ping(pctx).Err(); err != nil {
		problems = append(problems, "redis: "+err.Error())
	}
	if n := b.readersFailing.Load(); n > 0 {
		problems = append(problems, fmt.Sprintf("redis: %d of %d stream readers failing", n, len(b.readGroups)))
	}
	if !b.nc.IsConnected() {
		problems = append(problems, "nats: "+b.nc.Status().String())
	}
	select {
	case <-b.ensured:
	default:
		problems = append(problems, "jetstream streams not ensured yet")
	}
	for _, s := range b.full.list() {
		problems = append(problems, "jetstream stream "+s+" full: publishes refused, entries stay pending in redis")
	}
	if !b.router.ready() {
		problems = append(problems, "routing table never loaded (postgres)")
	}
	return problems
}
