package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"trm-live/scripts/export"
)

// exportArgs are the flags of the export subcommand.
type exportArgs struct {
	opts    export.Options
	natsURL string
	out     string
	quiet   bool
}

func parseExportArgs(args []string, getenv func(string) string, stderr io.Writer) (exportArgs, error) {
	fs := flag.NewFlagSet("replay export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var a exportArgs
	var from, to, format string
	natsDefault := getenv("NATS_URL")
	if natsDefault == "" {
		natsDefault = nats.DefaultURL
	}
	fs.StringVar(&a.opts.EventID, "event", "", "event id (lowercase UUID), required")
	fs.StringVar(&from, "from", "", "first fix time included: RFC 3339 or Unix ms, required")
	fs.StringVar(&to, "to", "", "last fix time included: RFC 3339 or Unix ms (default: everything stored now)")
	fs.StringVar(&format, "format", "", "ndjson, csv or gpx, required")
	fs.StringVar(&a.natsURL, "nats", natsDefault, "NATS server URL (env NATS_URL)")
	fs.StringVar(&a.out, "o", "", "output file (default stdout)")
	fs.DurationVar(&a.opts.Lateness, "lateness", export.DefaultLateness, "how far out of fix-time order a position may arrive and still count (the read stops at a fix time after --to + this)")
	fs.BoolVar(&a.quiet, "q", false, "no progress on stderr")
	if err := fs.Parse(args); err != nil {
		return a, err
	}
	if fs.NArg() > 0 {
		return a, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if from == "" {
		return a, errors.New("--from is required")
	}
	if a.opts.From, err = export.ParseTime(from); err != nil {
		return a, fmt.Errorf("--from: %w", err)
	}
	if to != "" {
		if a.opts.To, err = export.ParseTime(to); err != nil {
			return a, fmt.Errorf("--to: %w", err)
		}
	}
	if format == "" {
		return a, errors.New("--format is required (ndjson, csv or gpx)")
	}
	a.opts.Format = export.Format(format)
	return a, a.opts.Validate()
}

func runExport(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	a, err := parseExportArgs(args, getenv, stderr)
	if err != nil {
		return err
	}
	if !a.quiet {
		a.opts.Progress = func(s export.Stats) {
			state := "exporting"
			if s.Done {
				state = "done"
			}
			fmt.Fprintf(stderr, "%s: %d positions written (%.0f/s), %d messages read, %d malformed, %d stored late, %d tracks, %s\n",
				state, s.Written, s.Rate(), s.Scanned, s.Malformed, s.Late, s.Tracks, s.Elapsed.Round(time.Millisecond))
		}
	}
	nc, err := nats.Connect(a.natsURL, nats.Name("trm-live replay export"))
	if err != nil {
		return fmt.Errorf("connect %s: %w", a.natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if a.out == "" {
		_, err = export.Export(ctx, js, stdout, a.opts)
		return err
	}
	// Write beside the target and rename at the end: a failed or
	// interrupted export leaves no partial file behind. GPX spools there
	// too (same disk as the result).
	a.opts.TempDir = filepath.Dir(a.out)
	f, err := os.CreateTemp(filepath.Dir(a.out), "."+filepath.Base(a.out)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op after the rename
	if _, err := export.Export(ctx, js, f, a.opts); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), a.out)
}
