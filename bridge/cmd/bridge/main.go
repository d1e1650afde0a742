// Command bridge republishes positions from Redis Streams onto JetStream.
// Settings: docs/bridge.md.
package main

import (
	"context"
	"os"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"

	"trm-live/bridge"
	"trm-live/contract/config"
)

var version, revision string // stamped with -ldflags -X by deploy/docker/build.sh

func main() {
	os.Exit(config.Main("bridge", version, revision, run))
}

// run loads the settings from args and the environment and runs the bridge
// until ctx ends.
func run(ctx context.Context, args []string) error {
	cfg, err := bridge.LoadConfig(args, os.Getenv)
	if err != nil {
		return err
	}
	cfg.Version, cfg.Revision = version, revision
	cfg.Logger = cfg.NewLogger(os.Stderr)
	redis.SetLogger(&logging.VoidLogger{}) // the bridge logs each Redis outage once itself
	return bridge.Run(ctx, cfg)
}
