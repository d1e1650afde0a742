package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"trm-live/broadcaster"
	"trm-live/testkit/benchenv"
)

// runServer is the -role server process: broadcaster.Run, plus /mem (heap
// in use and goroutines, no collection forced) and pprof on cfg.DebugAddr.
func runServer(ctx context.Context, cfg Config) error {
	go func() {
		mux := http.NewServeMux()
		mux.HandleFunc("/mem", func(w http.ResponseWriter, _ *http.Request) {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Fprintf(w, "%d %d\n", ms.HeapInuse, runtime.NumGoroutine())
		})
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.Handle("/debug/pprof/heap", pprof.Handler("heap"))
		_ = http.ListenAndServe(cfg.DebugAddr, mux)
	}()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// BROADCASTER_* variables of the bench's environment apply, so settings
	// can be compared: BROADCASTER_FRAME_MAX_BYTES=32768 scripts/bench broadcaster
	bcfg, err := broadcaster.LoadConfig(nil, os.Getenv)
	if err != nil {
		return err
	}
	bcfg.NATSURL, bcfg.HTTPAddr, bcfg.Registerer = cfg.NATSURL, cfg.Addr, reg
	if os.Getenv("BROADCASTER_MAX_CONNS_PER_USER") == "" {
		bcfg.MaxConnsPerUser = 100000
	}
	if os.Getenv("BENCH_PRINT_CONFIG") != "" {
		fmt.Fprintln(os.Stderr, bcfg.String())
	}
	return broadcaster.Run(ctx, bcfg)
}

// runNATS is the -role nats process: nats-server with JetStream on a free
// loopback port; it prints its client URL and stops at stdin EOF.
func runNATS(store string) error {
	return benchenv.ServeNATS(server.Options{ServerName: "bench", JetStream: true,
		StoreDir: store, JetStreamMaxMemory: 1 << 30, JetStreamMaxStore: 20 << 30, MaxPending: 256 << 20}, os.Stdin, os.Stdout)
}
