package bridge

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract/probe"
)

var httpErrServerClosed = http.ErrServerClosed

// httpServer serves /healthz (the process answers), /readyz (Redis answers
// a PING within 1 s, NATS is connected, the streams exist, the routing
// table was loaded at least once, no stream refuses publishes for a full
// store, and the bridge is not stopping) and
// /metrics, on a private mux.
func (b *bridge) httpServer(gat prometheus.Gatherer) *http.Server {
	return probe.Server(probe.Mux(func(w http.ResponseWriter, r *http.Request) {
		problems := b.notReady(r.Context())
		if len(problems) > 0 {
			http.Error(w, "not ready: "+strings.Join(problems, "; "), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	}, gat))
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
