// Command broadcaster benchmarks the broadcaster's /ws-live fan-out
// (scripts/bench broadcaster).
//
// Five processes, so their CPU and memory stay apart: this coordinator
// (the publisher and an authsvc stand-in that admits every bench cookie),
// nats-server with the POSITIONS stream (-role nats), the broadcaster
// (-role server, running broadcaster.Run), the WebSocket clients (-role
// load, one process per run) and a bare WebSocket server (-role raw), all
// this binary re-executed.
//
// Each run publishes devices × rate to the event for a window while the
// clients count what they receive. Its ceiling is a bare fan-out of the
// broadcaster's own frames: the load process records one client's frames
// and the frame count of every client, and the raw server then writes
// those frames, as fast as the sockets take them, to the same number of
// clients of the same load process, each as many frames as the broadcaster
// sent it. It is measured before the window (with the frames of a short
// pass just before it) and after (with the window's own frames), and the
// run's ratio is its delivered rate against the mean of the two.
//
// Usage: scripts/bench broadcaster [-c 100,1000] [-devices 500] [-rates 1,10]
// [-duration 10s] [-sweep 100,200,300,400,700,1000] [-repeat 3] [-idle 2000]
//
// With -flood N it measures instead real users' handshake latency while N
// bogus handshakes per second arrive from one address, against the same
// without the flood in the same run (flood.go).
//
// With -options it runs the subscription-options scenario instead: at the
// largest -c and -devices × 10 Hz, the same number of clients unlimited,
// then all at max_hz=1 (-options-hz), then each following 5 devices
// (-options-follow), one after the other in the same run.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"trm-live/testkit/benchenv"
)

func main() { os.Exit(benchenv.Main("broadcaster", LoadConfig, Run)) }

// LoadConfig reads the command line, and the data folder scripts/bench
// gives, into a Config.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	var cfg Config
	var err error
	if cfg.Servers, err = benchenv.LoadServers(getenv, "broadcaster"); err != nil {
		return cfg, err
	}
	fs := flag.NewFlagSet("broadcaster", flag.ContinueOnError)
	var clients, rates, sweep string
	fs.StringVar(&cfg.Role, "role", "coord", "coord, or internal: server, nats, raw, load")
	fs.StringVar(&clients, "c", "100,1000", "client counts")
	fs.IntVar(&cfg.Devices, "devices", 500, "devices of the event")
	fs.StringVar(&rates, "rates", "1,10", "positions per second per device")
	fs.DurationVar(&cfg.Duration, "duration", defaultDuration, "measurement window of each run")
	fs.StringVar(&sweep, "sweep", "100,200,300,400,700,1000", "device counts at 10 Hz and the largest client count, ascending, for the highest rate with staleness p99 < 250 ms (the -devices run is added); empty skips")
	fs.IntVar(&cfg.Repeat, "repeat", 3, "runs of each sweep point; a point passes when every run does")
	fs.IntVar(&cfg.Burst, "burst", 10, "positions published back to back; bursts are spread evenly over the period")
	fs.IntVar(&cfg.RcvBuf, "rcvbuf", 64<<10, "SO_RCVBUF of each load client in bytes, 0 = system autotuning (see the docs)")
	fs.IntVar(&cfg.Idle, "idle", 2000, "idle subscribed connections for the per-connection memory; 0 skips")
	fs.BoolVar(&cfg.Options, "options", false, "subscription options scenario (max_hz, devices) instead of the default runs")
	fs.Float64Var(&cfg.OptionsHz, "options-hz", 1, "max_hz of the rated run of -options")
	fs.IntVar(&cfg.OptionsFollow, "options-follow", 5, "devices each client follows in the filtered run of -options")
	fs.IntVar(&cfg.Flood, "flood", 0, "bogus handshakes per second from one address (127.0.0.2) for the handshake-flood run; 0 = the fan-out benchmark instead")
	fs.IntVar(&cfg.FloodReal, "flood-real", 50, "real users' handshakes per second (from 127.0.0.1) in the handshake-flood run")
	fs.DurationVar(&cfg.FloodDuration, "flood-duration", defaultFloodDuration, "length of each phase of the handshake-flood run")
	fs.DurationVar(&cfg.FloodLatency, "flood-directus-latency", defaultFloodLatency, "how long the authsvc stand-in takes to refuse a bogus credential (a Directus look-up)")
	// Internal: the child processes' settings, set by the coordinator.
	fs.StringVar(&cfg.NATSURL, "nats", "", "internal: NATS URL")
	fs.StringVar(&cfg.DebugAddr, "debug", "", "internal: address of the server role's /mem endpoint")
	fs.StringVar(&cfg.Addr, "addr", "", "internal: listen address")
	fs.StringVar(&cfg.Store, "store", "", "internal: JetStream store of -role nats")
	fs.StringVar(&cfg.Load.URL, "url", "", "internal: WebSocket URL for -role load")
	fs.StringVar(&cfg.Load.RawURL, "raw-url", "", "internal: raw server URL whose fan-out of the recorded frames is the ceiling")
	fs.IntVar(&cfg.Load.N, "n", 0, "internal: clients for -role load")
	fs.StringVar(&cfg.Load.Topic, "topic", "", "internal: topic for -role load; empty = connected, not subscribed; raw = the synthetic ceiling")
	fs.DurationVar(&cfg.Load.Period, "period", 0, "internal: publishing period per device, for the latency of coalesced positions")
	fs.Float64Var(&cfg.Load.MaxHz, "max-hz", 0, "internal: max_hz of each load client's subscribe; 0 = none")
	fs.IntVar(&cfg.Load.Follow, "follow", 0, "internal: devices each load client follows, 0 = all")
	fs.IntVar(&cfg.Load.DevTotal, "devtotal", 0, "internal: devices of the event, for -follow")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if cfg.Clients, err = ints(clients); err != nil {
		return cfg, fmt.Errorf("-c: %w", err)
	}
	if cfg.Rates, err = ints(rates); err != nil {
		return cfg, fmt.Errorf("-rates: %w", err)
	}
	if cfg.Sweep, err = ints(sweep); err != nil {
		return cfg, fmt.Errorf("-sweep: %w", err)
	}
	cfg.Load.RcvBuf = cfg.RcvBuf
	return cfg, nil
}

// ints parses a comma-separated list of integers; "" is an empty list.
func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			n, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("bad number %q", f)
			}
			out = append(out, n)
		}
	}
	return out, nil
}
