// Command replay takes a race back out of the POSITIONS stream.
//
//	replay export --event <uuid> --from T1 [--to T2] --format ndjson|csv|gpx [--nats URL] [-o file]
//
// T1 and T2 are fix times, RFC 3339 or Unix milliseconds, inclusive. The
// file is written to -o (through a temporary file renamed at the end, so a
// failed export leaves no partial file) or to stdout; progress goes to
// stderr. See docs/replay.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 || os.Args[1] != "export" {
		fmt.Fprintln(os.Stderr, "usage: replay export --event <uuid> --from T1 [--to T2] --format ndjson|csv|gpx [--nats URL] [-o file]")
		os.Exit(2)
	}
	if err := runExport(ctx, os.Args[2:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "replay export:", err)
		os.Exit(1)
	}
}
