package natsconn_test

import (
	"bytes"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"trm-live/contract"
	"trm-live/contract/natsconn"
	"trm-live/testkit"
)

// syncBuffer is a log sink the client's callback goroutine and the test
// may use at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestOptions: the connection carries the name and the worker's inbox,
// reconnects for ever every wait, and on a server restart runs both hooks
// and logs the disconnect and the reconnect.
func TestOptions(t *testing.T) {
	srv := testkit.StartNATS(t)
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	down, up := make(chan struct{}, 4), make(chan struct{}, 4)
	nc, err := nats.Connect(srv.URL, natsconn.Options("trm-test", "bridge", 20*time.Millisecond, log, natsconn.Hooks{
		Disconnected: func() { down <- struct{}{} },
		Reconnected:  func() { up <- struct{}{} },
	})...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if nc.Opts.Name != "trm-test" || nc.Opts.MaxReconnect != -1 || !nc.Opts.RetryOnFailedConnect || nc.Opts.ReconnectWait != 20*time.Millisecond {
		t.Errorf("name %q, max reconnects %d, retry on failed connect %v, reconnect wait %s",
			nc.Opts.Name, nc.Opts.MaxReconnect, nc.Opts.RetryOnFailedConnect, nc.Opts.ReconnectWait)
	}
	if inbox := nc.NewRespInbox(); !strings.HasPrefix(inbox, contract.InboxPrefix("bridge")+".") {
		t.Errorf("reply inbox %q, want under %s", inbox, contract.InboxPrefix("bridge"))
	}

	srv.Restart()
	for name, ch := range map[string]chan struct{}{"Disconnected": down, "Reconnected": up} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("hook %s did not run within 10 s", name)
		}
	}
	out := logs.String()
	for _, want := range []string{`msg="nats disconnected"`, `msg="nats reconnected" url=` + srv.URL} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
}

// TestOptionsFirstConnectRetries: with no server yet the connect succeeds
// and keeps retrying, so a worker can start before NATS.
func TestOptionsFirstConnectRetries(t *testing.T) {
	port := testkit.FreePorts(t, 1)[0]
	nc, err := nats.Connect("nats://127.0.0.1:"+strconv.Itoa(port), natsconn.Options("trm-test", "persister", time.Second, slog.New(slog.DiscardHandler), natsconn.Hooks{})...)
	if err != nil {
		t.Fatalf("connect without a server: %v", err)
	}
	defer nc.Close()
	if nc.IsConnected() {
		t.Error("connected without a server")
	}
}
