// Package benchenv is what every benchmark program of trm-live
// sets up the same way: the repository root, and an embedded nats-server on
// loopback that the benchmark owns.
package benchenv

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// RepoRoot returns the nearest folder above the working directory that
// holds go.work.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.work above the working directory: run from the repository")
		}
		dir = parent
	}
}

// StartNATS starts an embedded nats-server with opts, forced onto a random
// loopback port with no logging and no signal handlers (NoSigs: an embedded
// server without it exits the process on a signal), and
// waits until it accepts connections and, when opts.JetStream is set, until
// JetStream runs. stop shuts the server down and waits for it.
func StartNATS(opts server.Options) (ns *server.Server, stop func(), err error) {
	opts.Host, opts.Port, opts.NoLog, opts.NoSigs = "127.0.0.1", -1, true, true
	ns, err = server.NewServer(&opts)
	if err != nil {
		return nil, nil, err
	}
	ns.Start()
	stop = func() { ns.Shutdown(); ns.WaitForShutdown() }
	if !ns.ReadyForConnections(30 * time.Second) {
		stop()
		return nil, nil, errors.New("embedded nats-server not ready after 30s")
	}
	if opts.JetStream && !ns.JetStreamEnabled() {
		stop()
		return nil, nil, errors.New("embedded nats-server started without JetStream")
	}
	return ns, stop, nil
}

// FreePorts returns n distinct loopback ports free a moment ago. The
// listeners stay open until all n are chosen: a port closed and asked for
// again can come back.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// FreeAddrs is FreePorts as 127.0.0.1:port addresses.
func FreeAddrs(n int) ([]string, error) {
	ports, err := FreePorts(n)
	if err != nil {
		return nil, err
	}
	addrs := make([]string, n)
	for i, p := range ports {
		addrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	return addrs, nil
}

// ConnectJetStream connects to the nats-server at url, reconnecting for
// ever, with a JetStream client that keeps up to maxPending asynchronous
// publishes in flight (the client's default of 4,000 stalls a fill that
// waits for its acknowledgements in larger windows).
func ConnectJetStream(url string, maxPending int) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPending))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// AwaitAcks waits for the acknowledgement of every publish in futures, at
// most timeout each, and returns the first error.
func AwaitAcks(futures []jetstream.PubAckFuture, timeout time.Duration) error {
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-time.After(timeout):
			return errors.New("publish ack timeout")
		}
	}
	return nil
}
