// Command bridge republishes positions from Redis Streams onto JetStream.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"

	"trm-live/bridge"
)

var version, revision string // stamped with -ldflags -X by deploy/docker/build.sh

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg, err := bridge.LoadConfig(os.Args[1:], os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bridge: config:", err)
		os.Exit(1)
	}
	cfg.Version, cfg.Revision = version, revision
	cfg.Logger = cfg.NewLogger(os.Stderr).With("component", "bridge")
	cfg.Logger.Info("starting", "config", cfg.String())
	redis.SetLogger(&logging.VoidLogger{}) // the bridge logs each Redis outage once itself
	if err := bridge.Run(ctx, cfg); err != nil {
		cfg.Logger.Error("exit", "err", err)
		stop()
		os.Exit(1)
	}
}
