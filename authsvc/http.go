package authsvc

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
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

// mux serves /healthz (the process answers), /readyz (NATS, PostgreSQL and
// Directus each answer within a second) and /metrics, on a private mux.
func (s *service) mux(pool *pgxpool.Pool, gatherer prometheus.Gatherer) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		checks := map[string]func(context.Context) error{
			"nats": func(context.Context) error {
				if !s.nc.IsConnected() {
					return errors.New("not connected (" + s.nc.Status().String() + ")")
				}
				return nil
			},
			"database": func(ctx context.Context) error { return pool.Ping(ctx) },
			"directus": s.directus.ping,
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		out := map[string]string{}
		ready := true
		for name, check := range checks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res := "ok"
				if err := check(ctx); err != nil {
					res = err.Error()
				}
				mu.Lock()
				out[name] = res
				ready = ready && res == "ok"
				mu.Unlock()
			}()
		}
		wg.Wait()
		w.Header().Set("Content-Type", "application/json")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"ready": ready, "checks": out})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	return mux
}
