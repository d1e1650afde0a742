package persister

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract/probe"
)

// handler is the private mux: /healthz (the process answers), /readyz
// (every dependency usable) and /metrics.
func (p *persister) handler(g prometheus.Gatherer) http.Handler {
	return probe.Mux(p.readyz, g)
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
