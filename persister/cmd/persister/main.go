// Command persister writes JetStream stream POSITIONS into PostgreSQL;
// "persister rebuild --since T" replays the stream into the table and exits.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"trm-live/persister"
)

var version, revision string // stamped with -ldflags -X by deploy/docker/build.sh

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "persister:", err)
		os.Exit(1) //nolint:gocritic // nothing deferred matters once we fail
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "rebuild" {
		cfg, since, err := persister.LoadRebuildConfig(args[1:], os.Getenv)
		if err != nil {
			return err
		}
		n, err := persister.Rebuild(ctx, cfg, since)
		cfg.Logger.Info("rebuild finished", "rows_inserted", n)
		return err
	}
	cfg, err := persister.LoadConfig(args, os.Getenv)
	if err != nil {
		return err
	}
	cfg.Version, cfg.Revision = version, revision
	return persister.Run(ctx, cfg)
}
