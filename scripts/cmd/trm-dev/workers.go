package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"trm-live/authsvc"
	"trm-live/bridge"
	"trm-live/broadcaster"
	"trm-live/persister"
)

// worker is one trm-live worker run in the dev process. run gets the
// worker's environment (the process environment with NATS_URL pointing at
// the embedded server and HTTP_ADDR at 127.0.0.1:port), its own logger
// (component=<name>) and its own Prometheus registry, and must block until
// ctx ends, as every worker's Run does.
type worker struct {
	name string
	port int // HTTP port of /healthz, /readyz, /metrics (plus -http-port-offset)
	run  func(ctx context.Context, env func(string) string, log *slog.Logger, reg *prometheus.Registry) error
}

// workers is every worker of the dev binary, started in this order.
// To add one, append an entry with the next free port.
var workers = []worker{
	{name: "bridge", port: 8081, run: func(ctx context.Context, env func(string) string, log *slog.Logger, reg *prometheus.Registry) error {
		cfg, err := bridge.LoadConfig(nil, env)
		if err != nil {
			return err
		}
		cfg.Logger, cfg.Registerer = log, reg
		cfg.Version, cfg.Revision = version, revision
		return bridge.Run(ctx, cfg)
	}},
	{name: "persister", port: 8082, run: func(ctx context.Context, env func(string) string, log *slog.Logger, reg *prometheus.Registry) error {
		cfg, err := persister.LoadConfig(nil, env)
		if err != nil {
			return err
		}
		cfg.Logger, cfg.Registerer = log, reg
		cfg.Version, cfg.Revision = version, revision
		return persister.Run(ctx, cfg)
	}},
	{name: "authsvc", port: 8083, run: func(ctx context.Context, env func(string) string, log *slog.Logger, reg *prometheus.Registry) error {
		cfg, err := authsvc.LoadConfig(nil, env)
		if err != nil {
			return err
		}
		cfg.Logger, cfg.Registerer = log, reg
		cfg.Version, cfg.Revision = version, revision
		return authsvc.Run(ctx, cfg)
	}},
	{name: "broadcaster", port: 8084, run: func(ctx context.Context, env func(string) string, log *slog.Logger, reg *prometheus.Registry) error {
		cfg, err := broadcaster.LoadConfig(nil, env)
		if err != nil {
			return err
		}
		cfg.Logger, cfg.Registerer = log, reg
		cfg.Version, cfg.Revision = version, revision
		return broadcaster.Run(ctx, cfg)
	}},
}
