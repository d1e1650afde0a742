// Command trm-dev runs trm-live on one machine: an embedded nats-server
// with JetStream (loopback, so the nats CLI can connect) and every worker
// through its Run entry point, under one errgroup. Redis and PostgreSQL are
// external (scripts/dev starts them); each worker reads its usual
// environment variables, except NATS_URL and HTTP_ADDR, which trm-dev sets.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"
	"golang.org/x/sync/errgroup"
)

// version and revision are stamped with -ldflags -X by deploy/docker/build.sh;
// every worker exports them as trm_build_info.
var version, revision string

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fs := flag.NewFlagSet("trm-dev", flag.ExitOnError)
	dataDir := fs.String("data", ".data/dev", "data folder; the JetStream store goes in <data>/nats")
	natsHost := fs.String("nats-host", "127.0.0.1", "embedded NATS listen host")
	natsPort := fs.Int("nats-port", 4222, "embedded NATS client port")
	natsHTTP := fs.Int("nats-http-port", 8222, "embedded NATS monitoring port (0: off)")
	offset := fs.Int("http-port-offset", 0, "added to every worker's HTTP port")
	jsMem := fs.Int64("js-max-memory", 256<<20, "JetStream memory limit, bytes")
	jsStore := fs.Int64("js-max-store", 8<<30, "JetStream file store limit, bytes")
	list := fs.Bool("list", false, "print each worker's name and HTTP base URL, then exit")
	_ = fs.Parse(os.Args[1:])
	if *list {
		for _, w := range workers {
			fmt.Printf("%s http://127.0.0.1:%d\n", w.name, w.port+*offset)
		}
		return
	}

	log := newLogger()
	// go-redis logs every failed dial on its own global logger; the bridge
	// logs each Redis outage once itself.
	redis.SetLogger(&logging.VoidLogger{})
	if err := run(ctx, log, *dataDir, *natsHost, *natsPort, *natsHTTP, *offset, *jsMem, *jsStore); err != nil {
		log.Error("exit", "err", err)
		stop()
		os.Exit(1)
	}
}

func newLogger() *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(os.Getenv("LOG_LEVEL")))
	opts := &slog.HandlerOptions{Level: lvl}
	if os.Getenv("LOG_FORMAT") == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func run(ctx context.Context, log *slog.Logger, dataDir, host string, port, httpPort, offset int, jsMem, jsStore int64) error {
	store, err := filepath.Abs(filepath.Join(dataDir, "nats"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(store, 0o755); err != nil {
		return err
	}
	ns, err := server.NewServer(&server.Options{
		ServerName:         "trm-dev",
		Host:               host,
		Port:               port,
		HTTPHost:           host,
		HTTPPort:           httpPort,
		JetStream:          true,
		StoreDir:           store,
		JetStreamMaxMemory: jsMem,
		JetStreamMaxStore:  jsStore,
		NoLog:              true,
		NoSigs:             true, // signals are ours: a clean drain, then the server
	})
	if err != nil {
		return fmt.Errorf("nats-server: %w", err)
	}
	ns.Start()
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
		log.Info("nats-server stopped")
	}()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("nats-server not ready after 10s (is the port taken? see -nats-port)")
	}
	if !ns.JetStreamEnabled() {
		return errors.New("nats-server started without JetStream (store " + store + ")")
	}
	natsURL := ns.ClientURL()
	log.Info("nats-server ready", "url", natsURL, "store", store, "monitor_port", httpPort)

	g, gctx := errgroup.WithContext(ctx)
	for _, w := range workers {
		addr := fmt.Sprintf("127.0.0.1:%d", w.port+offset)
		env := func(k string) string {
			switch k {
			case "NATS_URL":
				return natsURL
			case "HTTP_ADDR":
				return addr
			case "DIRECTUS_URL": // the real Directus, or the dev origin's auth backend
				return directusURL(offset)
			}
			return os.Getenv(k)
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector())
		wlog := log.With("component", w.name)
		g.Go(func() error {
			if err := w.run(gctx, env, wlog, reg); err != nil {
				return fmt.Errorf("%s: %w", w.name, err)
			}
			wlog.Info("worker stopped")
			return nil
		})
		log.Info("worker started", "worker", w.name, "http", "http://"+addr)
	}
	// One browser origin: the viewer, /ws-live and Directus (origin.go).
	g.Go(func() error { return runOrigin(gctx, log.With("component", "origin"), offset) })
	return g.Wait()
}
