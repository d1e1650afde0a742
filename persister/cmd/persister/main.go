// Command persister writes JetStream stream POSITIONS into PostgreSQL;
// "persister rebuild --since T" replays the stream into the table and exits.
// Settings: docs/persister.md.
package main

import (
	"context"
	"os"

	"trm-live/contract/config"
	"trm-live/persister"
)

var version, revision string // stamped with -ldflags -X by deploy/docker/build.sh

func main() {
	os.Exit(config.Main("persister", version, revision, run))
}

// run loads the settings from args and the environment and runs the persister
// until ctx ends. "rebuild" first runs the rebuild instead.
func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "rebuild" {
		return rebuild(ctx, args[1:])
	}
	cfg, err := persister.LoadConfig(args, os.Getenv)
	if err != nil {
		return err
	}
	cfg.Version, cfg.Revision = version, revision
	cfg.Logger = cfg.NewLogger(os.Stderr)
	return persister.Run(ctx, cfg)
}

// rebuild is "persister rebuild --since T": it replays the stream into the
// table and returns.
func rebuild(ctx context.Context, args []string) error {
	cfg, since, err := persister.LoadRebuildConfig(args, os.Getenv)
	if err != nil {
		return err
	}
	n, err := persister.Rebuild(ctx, cfg, since)
	cfg.Logger.Info("rebuild finished", "rows_inserted", n)
	return err
}
