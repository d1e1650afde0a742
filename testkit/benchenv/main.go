package benchenv

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Main is the whole main of a benchmark program, which calls
// os.Exit(benchenv.Main(name, LoadConfig, Run)): load reads the flags in
// os.Args[1:] and the servers from os.Getenv into a Config, run runs it
// under a context that SIGINT or SIGTERM cancels. It returns 0 when run
// returns nil or the flags asked for -h (the FlagSet printed them), and 1
// after printing any other error to stderr after "bench name:".
func Main[C any](name string, load func(args []string, getenv func(string) string) (C, error), run func(context.Context, C) error) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return runMain(ctx, os.Stderr, name, os.Args[1:], os.Getenv, load, run)
}

func runMain[C any](ctx context.Context, stderr io.Writer, name string, args []string, getenv func(string) string,
	load func([]string, func(string) string) (C, error), run func(context.Context, C) error) int {
	cfg, err := load(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == nil {
		err = run(ctx, cfg)
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench %s: %v\n", name, err)
		return 1
	}
	return 0
}
