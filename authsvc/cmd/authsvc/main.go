// Command authsvc runs the authsvc worker: Directus session validation and
// event authorization as a NATS micro service. Settings: docs/authsvc.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"trm-live/authsvc"
	"trm-live/contract/config"
)

var version, revision string // stamped with -ldflags -X by deploy/docker/build.sh

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg, err := authsvc.LoadConfig(os.Args[1:], os.Getenv)
	if err != nil {
		stop()
		os.Exit(config.Exit(os.Stdout, os.Stderr, "authsvc", version, revision, err))
	}
	cfg.Version, cfg.Revision = version, revision
	cfg.Logger = cfg.NewLogger(os.Stderr)
	if err := authsvc.Run(ctx, cfg); err != nil {
		cfg.Logger.Error("authsvc stopped", "err", err)
		stop()
		os.Exit(1)
	}
}
