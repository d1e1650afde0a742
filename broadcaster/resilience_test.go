package broadcaster

import (
	"testing"
	"time"

	"trm-live/contract/ws"
)

// TestHeartbeat: a client that never reads (so never answers pings) is
// dropped after the pong wait; a client that reads stays connected.
func TestHeartbeat(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) {
		c.PingPeriod = 100 * time.Millisecond
		c.PongWait = 400 * time.Millisecond
	}})
	e.auth.user("reader", "reader", false)
	e.auth.user("mute", "mute", false)
	reader := collect(e.connect("reader")) // gorilla answers pings while reading
	e.connect("mute")                      // never reads: pings go unanswered
	waitFor(t, "two connections", func() bool { return e.metric("broadcaster_connections") == 2 })
	waitFor(t, "the mute client dropped", func() bool { return e.metric("broadcaster_connections") == 1 })
	// The reader outlived several pong waits and still talks.
	reader.c.send(`{}`)
	if f := reader.waitControl(t, 1)[0]; f.Code != ws.CodeBadRequest {
		t.Fatalf("reader got %+v", f)
	}
	e.srv.mu.Lock()
	defer e.srv.mu.Unlock()
	for c := range e.srv.clients {
		if c.user.ID != "reader" {
			t.Fatalf("client %s still connected", c.user.ID)
		}
	}
}

// TestNATSRestart: live delivery resumes after the NATS server restarts,
// and the topic re-reads its snapshot.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ev := newEventID()
	e.auth.addEvent(ev)
	e.auth.user("k", "k", true)
	k := collect(e.connect("k"))
	k.c.send(subscribe(topicOf(ev), ""))
	k.waitControl(t, 1)
	base := time.Now().Add(-time.Hour).UnixMilli()
	e.publish(ev, "r1", base)
	k.waitLatest(t, topicOf(ev), map[string]int64{"r1": base})

	e.nats.Restart()
	waitFor(t, "broadcaster reconnected", func() bool { return e.srv.nc.IsConnected() })
	waitFor(t, "publisher reconnected", func() bool { return e.nc.IsConnected() })
	// JetStream may need a moment after the restart; dedup absorbs retries.
	waitFor(t, "publish after restart", func() bool {
		return e.tryPublish(ev, "r1", base+1) == nil && e.tryPublish(ev, "r2", base+1) == nil
	})
	k.waitLatest(t, topicOf(ev), map[string]int64{"r1": base + 1, "r2": base + 1})
}
