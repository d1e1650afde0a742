package broadcaster

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"trm-live/contract/auth"
	"trm-live/contract/probe"
	"trm-live/contract/streams"
	"trm-live/contract/ws"
)

// mux serves /ws-live, /healthz, /readyz and /metrics on a private mux.
func (srv *server) mux() *http.ServeMux {
	mux := probe.Mux(srv.readyz, srv.gatherer)
	mux.HandleFunc("GET "+ws.Path, srv.serveWS)
	return mux
}

// readyz pings each dependency with a 1 s timeout: NATS connected, the
// POSITIONS stream present, an authsvc instance answering.
func (srv *server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	var problems []string
	if srv.nc.Status() != nats.CONNECTED {
		problems = append(problems, "nats: "+srv.nc.Status().String())
	} else {
		if _, err := srv.js.Stream(ctx, streams.Positions); err != nil {
			problems = append(problems, "stream "+streams.Positions+": "+err.Error())
		}
		if _, err := srv.nc.RequestWithContext(ctx, "$SRV.PING."+auth.ServiceName, nil); err != nil {
			problems = append(problems, "authsvc: "+err.Error())
		}
	}
	srv.mu.Lock()
	if srv.shutting {
		problems = append(problems, "shutting down")
	}
	srv.mu.Unlock()
	if len(problems) > 0 {
		http.Error(w, "not ready: "+strings.Join(problems, "; "), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}
