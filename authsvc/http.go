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

	"trm-live/contract/probe"
)

// mux serves /healthz (the process answers), /readyz (NATS, PostgreSQL and
// Directus each answer within a second) and /metrics, on a private mux.
func (s *service) mux(pool *pgxpool.Pool, gatherer prometheus.Gatherer) *http.ServeMux {
	return probe.Mux(func(w http.ResponseWriter, r *http.Request) {
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
	}, gatherer)
}
