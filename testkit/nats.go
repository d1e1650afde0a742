package testkit

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATS is an embedded nats-server with JetStream, private to one test.
type NATS struct {
	tb     testing.TB
	Server *server.Server
	// URL is the server's client URL (nats://127.0.0.1:<port>). The port is
	// kept across Restart.
	URL string
	// Dir is the JetStream store directory, kept across Restart.
	Dir  string
	opts server.Options
}

// StartNATS starts an embedded nats-server with JetStream on a random
// loopback port and a store under t.TempDir(), and shuts it down at cleanup.
// The optional configure functions may change the options before start.
func StartNATS(tb testing.TB, configure ...func(*server.Options)) *NATS {
	tb.Helper()
	dir := tb.TempDir() // before Cleanup, so the server stops first
	opts := server.Options{
		ServerName:         "testkit",
		Host:               "127.0.0.1",
		Port:               -1,
		JetStream:          true,
		StoreDir:           dir,
		JetStreamMaxMemory: 256 << 20,
		JetStreamMaxStore:  4 << 30,
		NoLog:              true,
		NoSigs:             true,
	}
	for _, f := range configure {
		f(&opts)
	}
	n := &NATS{tb: tb, Dir: dir, opts: opts}
	n.start()
	tb.Cleanup(n.Shutdown)
	return n
}

func (n *NATS) start() {
	n.tb.Helper()
	opts := n.opts
	s, err := server.NewServer(&opts)
	if err != nil {
		n.tb.Fatalf("testkit: nats-server: %v", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		n.tb.Fatal("testkit: nats-server not ready after 10s")
	}
	if opts.JetStream && !s.JetStreamEnabled() {
		n.tb.Fatal("testkit: nats-server started without JetStream")
	}
	n.Server = s
	n.URL = s.ClientURL()
	// Keep the port for restarts, so clients reconnect to the same URL.
	if a, ok := s.Addr().(*net.TCPAddr); ok {
		n.opts.Port = a.Port
	}
}

// Shutdown stops the server and waits for it. Safe to call twice.
func (n *NATS) Shutdown() {
	if n.Server == nil {
		return
	}
	n.Server.Shutdown()
	n.Server.WaitForShutdown()
	n.Server = nil
}

// Restart stops the server and starts it again on the same port and store.
func (n *NATS) Restart() {
	n.tb.Helper()
	n.Shutdown()
	n.start()
}

// Connect returns a client connection that reconnects forever, closed at
// cleanup.
func (n *NATS) Connect(tb testing.TB) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(n.URL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		tb.Fatalf("testkit: connect %s: %v", n.URL, err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream handle on a fresh connection.
func (n *NATS) JetStream(tb testing.TB) jetstream.JetStream {
	tb.Helper()
	js, err := jetstream.New(n.Connect(tb))
	if err != nil {
		tb.Fatal(err)
	}
	return js
}
