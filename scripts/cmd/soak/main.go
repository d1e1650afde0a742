// Command soak is the race-day soak of trm-live (scripts/soak; docs/soak.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"

	"trm-live/scripts/soakrun"
	"trm-live/testkit/benchenv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg, err := soakrun.LoadConfig(os.Args[1:], os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if cfg.Root, err = benchenv.RepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	// go-redis logs every failed dial while Redis is down on purpose.
	redis.SetLogger(quietRedis{})
	cfg.Out = os.Stdout
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := soakrun.Run(ctx, cfg); err != nil {
		if !errors.Is(err, soakrun.ErrViolation) {
			fmt.Fprintln(os.Stderr, "soak:", err)
		}
		os.Exit(1)
	}
}

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}
