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

	"trm-live/contract/streams"
	"trm-live/export"
)

// Config is one export: what to take out of the stream and where to put it.
type Config struct {
	// Options select the event, the range of fix times and the format.
	Options export.Options
	// NATSURL is the server holding the POSITIONS stream.
	NATSURL string
	// Out is the output file; empty means stdout.
	Out string
	// Quiet leaves out the progress lines on stderr.
	Quiet bool
}

// ParseFlags reads a Config from the command line (name is the command's
// name in the usage text) and validates it before anything connects.
func ParseFlags(name string, args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var a Config
	var from, to, format string
	natsDefault := getenv("NATS_URL")
	if natsDefault == "" {
		natsDefault = nats.DefaultURL
	}
	fs.StringVar(&a.Options.EventID, "event", "", "event id (lowercase UUID), required")
	fs.StringVar(&from, "from", "", "first fix time included: RFC 3339 or Unix ms, required")
	fs.StringVar(&to, "to", "", "last fix time included: RFC 3339 or Unix ms (default: everything stored now)")
	fs.StringVar(&format, "format", "", "ndjson, csv or gpx, required")
	fs.StringVar(&a.NATSURL, "nats", natsDefault, "NATS server URL (env NATS_URL)")
	fs.StringVar(&a.Out, "o", "", "output file (default stdout)")
	fs.DurationVar(&a.Options.Lateness, "lateness", streams.DefaultLateness, "how far out of fix-time order a position may arrive and still count (the read stops at a fix time after --to + this)")
	fs.BoolVar(&a.Quiet, "q", false, "no progress on stderr")
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
	if a.Options.From, err = export.ParseTime(from); err != nil {
		return a, fmt.Errorf("--from: %w", err)
	}
	if to != "" {
		if a.Options.To, err = export.ParseTime(to); err != nil {
			return a, fmt.Errorf("--to: %w", err)
		}
	}
	if format == "" {
		return a, errors.New("--format is required (ndjson, csv or gpx)")
	}
	a.Options.Format = export.Format(format)
	return a, a.Options.Validate()
}

// Run exports cfg: to cfg.Out, else to stdout, progress on stderr.
func Run(ctx context.Context, cfg Config, stdout, stderr io.Writer) error {
	if !cfg.Quiet {
		cfg.Options.Progress = func(s export.Stats) {
			state := "exporting"
			if s.Done {
				state = "done"
			}
			fmt.Fprintf(stderr, "%s: %d positions written (%.0f/s), %d messages read, %d malformed, %d stored late, %d tracks, %s\n",
				state, s.Written, s.Rate(), s.Scanned, s.Malformed, s.Late, s.Tracks, s.Elapsed.Round(time.Millisecond))
		}
	}
	nc, err := nats.Connect(cfg.NATSURL, nats.Name("trm-export"))
	if err != nil {
		return fmt.Errorf("connect %s: %w", cfg.NATSURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if cfg.Out == "" {
		_, err = export.Export(ctx, js, stdout, cfg.Options)
		return err
	}
	// Write beside the target and rename at the end: a failed or
	// interrupted export leaves no partial file behind. GPX spools there
	// too (same disk as the result).
	cfg.Options.TempDir = filepath.Dir(cfg.Out)
	f, err := os.CreateTemp(filepath.Dir(cfg.Out), "."+filepath.Base(cfg.Out)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op after the rename
	if _, err := export.Export(ctx, js, f, cfg.Options); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), cfg.Out)
}
