// Command authsvc runs the authsvc worker: Directus session validation and
// event authorization as a NATS micro service. Settings: docs/authsvc.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"trm-live/authsvc"
)

var version, revision string // stamped with -ldflags -X by deploy/docker/build.sh

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg, err := authsvc.LoadConfig(os.Args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "authsvc:", err)
		os.Exit(1)
	}
	cfg.Version, cfg.Revision = version, revision
	cfg.Logger = cfg.NewLogger(os.Stderr)
	cfg.Logger.Info("effective configuration", "config", cfg.String())
	if err := authsvc.Run(ctx, cfg); err != nil {
		cfg.Logger.Error("authsvc failed", "err", err)
		stop()
		os.Exit(1)
	}
}
