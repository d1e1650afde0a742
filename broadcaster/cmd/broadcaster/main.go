// Command broadcaster serves live positions over WebSocket at /ws-live.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"trm-live/broadcaster"
)

var version, revision string // stamped with -ldflags -X by deploy/docker/build.sh

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := broadcaster.LoadConfig(os.Args[1:], os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "broadcaster:", err)
		os.Exit(1)
	}
	cfg.Version, cfg.Revision = version, revision
	cfg.Logger = cfg.NewLogger(os.Stderr)
	if err := broadcaster.Run(ctx, cfg); err != nil {
		cfg.Logger.Error("broadcaster stopped", "err", err)
		stop()
		os.Exit(1)
	}
}
