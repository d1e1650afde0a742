// Command broadcaster serves live positions over WebSocket at /ws-live.
// Settings: docs/broadcaster.md.
package main

import (
	"context"
	"os"

	"trm-live/broadcaster"
	"trm-live/contract/config"
)

var version, revision string // stamped with -ldflags -X by deploy/docker/build.sh

func main() {
	os.Exit(config.Main("broadcaster", version, revision, run))
}

// run loads the settings from args and the environment and runs the broadcaster
// until ctx ends.
func run(ctx context.Context, args []string) error {
	cfg, err := broadcaster.LoadConfig(args, os.Getenv)
	if err != nil {
		return err
	}
	cfg.Version, cfg.Revision = version, revision
	cfg.Logger = cfg.NewLogger(os.Stderr)
	return broadcaster.Run(ctx, cfg)
}
