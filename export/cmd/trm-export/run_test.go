package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/testkit"
)

func TestExportCommandWritesFileAndProgress(t *testing.T) {
	t.Parallel()
	n := testkit.StartNATS(t)
	js := n.JetStream(t)
	ctx := context.Background()
	if err := streams.Ensure(ctx, js, streams.Options{}); err != nil {
		t.Fatal(err)
	}
	const ev = "7c1e0f52-3a4b-4c5d-8e6f-0123456789ab"
	base := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	for i := range 10 {
		p := contract.Position{DeviceID: "d1", EventID: ev, TS: base.Add(time.Duration(i) * time.Second), Lat: 45, Lon: 7}
		if _, err := js.Publish(ctx, p.Subject(), p.Encode()); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "race.ndjson")
	var stderr bytes.Buffer
	cfg, err := ParseFlags("trm-export", []string{"--event", ev, "--from", base.Add(2 * time.Second).Format(time.RFC3339),
		"--to", base.Add(5 * time.Second).Format(time.RFC3339), "--format", "ndjson", "-o", out},
		func(k string) string { return map[string]string{"NATS_URL": n.URL}[k] }, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if err := Run(ctx, cfg, os.Stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(string(data), "\n"); got != 4 {
		t.Fatalf("%d lines, want 4 (fix times 2..5 s inclusive):\n%s", got, data)
	}
	if !strings.Contains(stderr.String(), "done: 4 positions written") {
		t.Fatalf("progress on stderr = %q", stderr.String())
	}
	entries, _ := os.ReadDir(filepath.Dir(out))
	if len(entries) != 1 {
		t.Fatalf("temporary files left beside the output: %v", entries)
	}
}

func TestExportCommandBadArguments(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--event", "e", "--format", "csv"}, "--from is required"},
		{[]string{"--from", "2026-05-03T10:00:00Z", "--format", "csv"}, "event is required"},
		{[]string{"--event", "7c1e0f52-3a4b-4c5d-8e6f-0123456789ab", "--from", "noon", "--format", "csv"}, `--from: time "noon"`},
		{[]string{"--event", "7c1e0f52-3a4b-4c5d-8e6f-0123456789ab", "--from", "2026-05-03T10:00:00Z"}, "--format is required"},
		{[]string{"--event", "7c1e0f52-3a4b-4c5d-8e6f-0123456789ab", "--from", "2026-05-03T10:00:00Z", "--format", "kml"}, `format "kml"`},
		{[]string{"--event", "7c1e0f52-3a4b-4c5d-8e6f-0123456789ab", "--from", "2026-05-03T10:00:00Z", "--to", "2026-05-03T09:00:00Z", "--format", "gpx"}, "is after to"},
		{[]string{"--bogus"}, "flag provided but not defined"},
		{[]string{"--event", "7c1e0f52-3a4b-4c5d-8e6f-0123456789ab", "--from", "2026-05-03T10:00:00Z", "--format", "gpx", "extra"}, `unexpected argument "extra"`},
	} {
		var stderr bytes.Buffer
		_, err := ParseFlags("trm-export", tc.args, func(string) string { return "" }, &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
	}
}
