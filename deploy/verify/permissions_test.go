package verify

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"trm-live/testkit"
)

// TestClusterPermissions: with deploy/nats/stage.conf, each worker's user
// is refused what it has no business doing, and allowed what it needs (the
// pipeline test proves the rest of "allowed" end to end).
func TestClusterPermissions(t *testing.T) {
	t.Parallel()
	c := startTestCluster(t, "stage.conf")
	type action int
	const (
		pub action = iota
		sub
		req
	)
	cases := []struct {
		user    string
		act     action
		subject string
		refused bool
	}{
		// Only the bridge writes positions and manages streams.
		{"bridge", pub, "pos.unassigned.dev-1", false},
		{"bridge", req, "$JS.API.INFO", false},
		{"bridge", req, "$JS.API.STREAM.DELETE.POSITIONS", true},
		{"bridge", req, "$JS.API.STREAM.PURGE.POSITIONS", true},
		{"bridge", req, "$JS.API.CONSUMER.CREATE.POSITIONS.x", true},
		{"bridge", sub, "pos.>", true},
		{"bridge", sub, "authsvc.>", true},
		{"persister", req, "$JS.API.INFO", false},
		{"persister", pub, "dlq.positions", false},
		{"persister", pub, "pos.unassigned.dev-1", true},
		{"persister", req, "$JS.API.STREAM.UPDATE.POSITIONS", true},
		{"persister", req, "$JS.API.STREAM.DELETE.POSITIONS", true},
		{"persister", sub, "pos.>", true},
		// The broadcaster reads; it never writes positions or streams.
		{"broadcaster", sub, "pos.>", false},
		{"broadcaster", req, "$JS.API.DIRECT.GET.POSITIONS", false},
		{"broadcaster", req, "$SRV.PING.authsvc", false},
		{"broadcaster", req, "$SRV.STATS.authsvc", true},
		{"broadcaster", pub, "pos.unassigned.dev-1", true},
		{"broadcaster", pub, "dlq.positions", true},
		{"broadcaster", req, "$JS.API.STREAM.DELETE.POSITIONS", true},
		{"broadcaster", req, "$JS.API.STREAM.PURGE.POSITIONS", true},
		{"broadcaster", pub, "$JS.ACK.POSITIONS.persister.1.1.1.1.1", true},
		// authsvc serves its subjects and answers; nothing else.
		{"authsvc", sub, "authsvc.session", false},
		{"authsvc", sub, "$SRV.PING", false},
		{"authsvc", pub, "pos.unassigned.dev-1", true},
		{"authsvc", pub, "authsvc.event", true},
		{"authsvc", sub, "pos.>", true},
		{"authsvc", req, "$JS.API.INFO", true},
	}
	// JetStream answers once the cluster elected its meta leader.
	ops := connect(t, c, "ops")
	testkit.Eventually(t, 30*time.Second, func() error {
		m, err := ops.Request("$JS.API.INFO", nil, time.Second)
		if err != nil {
			return err
		}
		if strings.Contains(string(m.Data), `"error"`) {
			return errors.New(string(m.Data))
		}
		return nil
	})
	quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})
	conns := map[string]*nats.Conn{}
	for _, u := range []string{"bridge", "persister", "broadcaster", "authsvc"} {
		conns[u] = connect(t, c, u, quiet)
	}
	for _, tc := range cases {
		nc := conns[tc.user]
		switch tc.act {
		case pub:
			if err := nc.Publish(tc.subject, []byte("x")); err != nil {
				t.Fatal(err)
			}
		case sub:
			s, err := nc.SubscribeSync(tc.subject)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Unsubscribe()
		case req:
			timeout := 2 * time.Second
			if tc.refused {
				timeout = 200 * time.Millisecond // no answer will come
			}
			_, err := nc.Request(tc.subject, nil, timeout)
			if !tc.refused && err != nil && !strings.Contains(err.Error(), "no responders") {
				t.Errorf("%s request %s: %v", tc.user, tc.subject, err)
			}
		}
		// The server answers -ERR before the PONG of this flush, and the
		// client records it as its last error before Flush returns.
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		last := nc.LastError()
		refused := errors.Is(last, nats.ErrPermissionViolation) && strings.Contains(last.Error(), `"`+tc.subject+`"`)
		if refused != tc.refused {
			t.Errorf("%s %v %s: refused=%v, want %v (last error: %v)", tc.user, tc.act, tc.subject, refused, tc.refused, last)
		}
		// Fresh connection for the next case, so LastError is its own.
		nc.Close()
		conns[tc.user] = connect(t, c, tc.user, quiet)
	}

	// A wrong password is refused.
	if nc, err := nats.Connect(strings.Replace(c.URL("bridge"), TestPassword("bridge"), "wrong", -1)); err == nil {
		nc.Close()
		t.Error("a wrong password was accepted")
	}
}
