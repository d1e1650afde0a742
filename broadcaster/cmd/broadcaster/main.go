// Command broadcaster serves live positions over WebSocket at /ws-live.
// Settings: docs/broadcaster.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"trm-live/broadcaster"
	"trm-live/contract/config"
)

var version, revision string // stamped with -ldflags -X by deploy/docker/build.sh

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		os.Exit(config.Exit(os.Stdout, os.Stderr, "broadcaster", version, revision, err))
	}
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
