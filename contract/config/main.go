package config

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"trm-live/contract/buildinfo"
)

// Main is the body of every worker's main: it calls run with the command
// line's arguments and a context that ends at SIGINT or SIGTERM, and
// returns the exit code Exit gives for run's error (0 for nil). Only a
// main calls it: signals are the process's.
func Main(name, version, revision string, run func(ctx context.Context, args []string) error) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		return Exit(os.Stdout, os.Stderr, name, version, revision, err)
	}
	return 0
}

// Exit prints what main prints for err and returns the exit code: for
// ErrVersion the version line on stdout and 0 ("bridge 1.2.3 (revision
// abc)", see buildinfo.Line), for -h the usage on stderr and 0, else
// "name: err" on stderr and 1.
func Exit(stdout, stderr io.Writer, name, version, revision string, err error) int {
	switch {
	case errors.Is(err, ErrVersion):
		fmt.Fprintln(stdout, buildinfo.Line(name, version, revision))
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stderr, err.Error())
		return 0
	default:
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
}
