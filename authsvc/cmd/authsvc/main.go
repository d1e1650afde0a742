// Command authsvc runs the authsvc worker: Directus session validation and
// event authorization as a NATS micro service. Settings: docs/authsvc.md.
package main

import (
	"context"
	"os"

	"trm-live/authsvc"
	"trm-live/contract/config"
)

var version, revision string // stamped with -ldflags -X by deploy/docker/build.sh

func main() {
	os.Exit(config.Main("authsvc", version, revision, run))
}

// run loads the settings from args and the environment and runs the authsvc
// until ctx ends.
func run(ctx context.Context, args []string) error {
	cfg, err := authsvc.LoadConfig(args, os.Getenv)
	if err != nil {
		return err
	}
	cfg.Version, cfg.Revision = version, revision
	cfg.Logger = cfg.NewLogger(os.Stderr)
	return authsvc.Run(ctx, cfg)
}
