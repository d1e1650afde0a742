package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"trm-live/testkit/benchenv"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-role=nats" || os.Args[1] == "-role=viewers") {
		if err := runChild(os.Args[1], os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench e2e:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(benchenv.Main("e2e", LoadConfig, Run))
}

// runChild runs a child process of the benchmark: nats-server
// (-role=nats STORE) or viewers (-role=viewers and their flags).
func runChild(role string, args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if role == "-role=nats" {
		if len(args) < 1 {
			return errors.New("-role=nats needs the store folder")
		}
		return natsMain(args[0])
	}
	vc, err := parseViewerFlags(args)
	if err != nil {
		return err
	}
	return vc.Run(ctx, os.Stdin, os.Stdout)
}

// LoadConfig reads the command line and the servers scripts/bench started
// into a Config.
func LoadConfig(args []string, getenv func(string) string) (Config, error) {
	var cfg Config
	fs := flag.NewFlagSet("e2e", flag.ContinueOnError)
	scen := fs.String("scenarios", "pilot,10x", "scenarios to run, in order: pilot (500 devices 1 Hz, 100 viewers), 10x (500 devices 10 Hz, 1,000 viewers)")
	fs.IntVar(&cfg.Devices, "devices", 500, "devices in every scenario")
	fs.IntVar(&cfg.PilotViewers, "pilot-viewers", 100, "viewers of the pilot scenario")
	fs.IntVar(&cfg.X10Viewers, "x10-viewers", 1000, "viewers of the 10x scenario")
	fs.DurationVar(&cfg.Duration, "duration", 30*time.Second, "measurement window of each scenario")
	fs.DurationVar(&cfg.Warmup, "warmup", 5*time.Second, "load before the window opens")
	fs.IntVar(&cfg.RcvBuf, "rcvbuf", 64<<10, "SO_RCVBUF of each viewer connection in bytes, 0 = system autotuning (docs/BENCHMARKS.md)")
	fs.BoolVar(&cfg.NATSProcess, "nats-process", true, "run nats-server in a process of its own (as in production); false embeds it in the bench process, beside the producer, and its CPU is then in the bench line")
	fs.BoolVar(&cfg.Probe, "probe", false, "also subscribe to the positions on core NATS in this process and print the XADD → NATS share of the latency (the bridge's); costs about 5 % of a core at 10x")
	fs.StringVar(&cfg.SVG, "svg", "", "write the latency plot here (default docs/bench/e2e-latency.svg in the repository)")
	if err := fs.Parse(args); err != nil {
		return cfg, err // -h included: it needs no servers
	}
	cfg.Scenarios = strings.Split(*scen, ",")
	var err error
	cfg.Servers, err = benchenv.LoadServers(getenv, "e2e", benchenv.EnvRedisURL, benchenv.EnvDatabaseURL)
	return cfg, err
}

// parseViewerFlags reads a viewer process's command line (startViewers).
func parseViewerFlags(args []string) (ViewerConfig, error) {
	var vc ViewerConfig
	fs := flag.NewFlagSet("viewers", flag.ContinueOnError)
	fs.StringVar(&vc.DirectusURL, "directus", "", "auth backend URL")
	fs.StringVar(&vc.WSURL, "ws", "", "ws://…/ws-live")
	fs.StringVar(&vc.EventID, "event", "", "event id")
	fs.IntVar(&vc.First, "first", 0, "first viewer index")
	fs.IntVar(&vc.N, "n", 1, "viewers")
	fs.IntVar(&vc.RcvBuf, "rcvbuf", 0, "SO_RCVBUF per connection, 0 = autotuning")
	fs.IntVar(&vc.Devices, "devices", 0, "devices of the event")
	fs.DurationVar(&vc.Period, "period", 0, "producer's period per device: a coalesced position's send time")
	err := fs.Parse(args)
	return vc, err
}
