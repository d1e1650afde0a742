// Command trm-export takes a race back out of the POSITIONS stream.
//
//	trm-export --event <uuid> --from T1 [--to T2] --format ndjson|csv|gpx [--nats URL] [-o file]
//
// T1 and T2 are fix times, RFC 3339 or Unix milliseconds, inclusive. The
// file is written to -o (through a temporary file renamed at the end, so a
// failed export leaves no partial file) or to stdout; progress goes to
// stderr. The command names itself in its messages by its argv[0], so the
// dev wrapper `scripts/replay export` prints what it always printed. See
// docs/replay.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	name := filepath.Base(os.Args[0])
	cfg, err := ParseFlags(name, os.Args[1:], os.Getenv, os.Stderr)
	if err == nil {
		err = Run(ctx, cfg, os.Stdout, os.Stderr)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		stop()
		os.Exit(1)
	}
}
