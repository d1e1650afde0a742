package broadcaster

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"trm-live/contract/streams"
	"trm-live/contract/ws"
	"trm-live/testkit"
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
// and the positions stored while the broadcaster was not yet subscribed
// again reach the client. The test holds that window open on purpose: the
// broadcaster's path to NATS stays closed while positions are stored after
// the restart, and JetStream refuses the snapshot (direct get off) for
// longer than a short retry budget would wait after the broadcaster is
// back.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	var px *gateProxy
	e := newEnv(t, envOpt{cfg: func(c *Config) {
		px = startGateProxy(t, strings.TrimPrefix(c.NATSURL, "nats://"))
		c.NATSURL = "nats://" + px.addr
	}})
	ev := newEventID()
	e.auth.addEvent(ev)
	e.auth.user("k", "k", true)
	k := collect(e.connect("k"))
	k.c.send(subscribe(topicOf(ev), ""))
	k.waitControl(t, 1)
	base := time.Now().Add(-time.Hour).UnixMilli()
	e.publish(ev, "r1", base)
	k.waitLatest(t, topicOf(ev), map[string]int64{"r1": base})

	e.setAllowDirect(false) // snapshots refused until the end of the window
	px.setOpen(false)       // the broadcaster cannot reconnect
	e.nats.Restart()
	// Stored while the broadcaster has no subscription: no live delivery.
	waitFor(t, "publish after restart", func() bool {
		return e.tryPublish(ev, "r1", base+1) == nil && e.tryPublish(ev, "r2", base+1) == nil
	})
	px.setOpen(true)
	waitFor(t, "broadcaster reconnected", func() bool { return e.srv.nc.Stats().Reconnects >= 1 && e.srv.nc.IsConnected() })
	// JetStream stays unanswering past 8 attempts of the resync, or past
	// 25 s (a resync that gives up sooner has given up by then).
	back := time.Now()
	testkit.Eventually(t, 30*time.Second, func() error {
		if e.metric("broadcaster_resync_snapshots_total", "result", "unavailable") >= 9 || time.Since(back) > 25*time.Second {
			return nil
		}
		return errors.New("resync retrying past 8 attempts")
	})
	e.setAllowDirect(true)
	k.waitLatest(t, topicOf(ev), map[string]int64{"r1": base + 1, "r2": base + 1})
	// Live again.
	e.publish(ev, "r2", base+2)
	k.waitLatest(t, topicOf(ev), map[string]int64{"r1": base + 1, "r2": base + 2})
}

// setAllowDirect turns the POSITIONS stream's direct get (the snapshot's
// read) on or off.
func (e *env) setAllowDirect(on bool) {
	e.t.Helper()
	waitFor(e.t, "stream updated", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := e.js.Stream(ctx, streams.Positions)
		if err != nil {
			return false
		}
		cfg := s.CachedInfo().Config
		cfg.AllowDirect = on
		_, err = e.js.UpdateStream(ctx, cfg)
		return err == nil
	})
}

// gateProxy forwards TCP connections to target while open; closing it
// cuts the connections it carries and refuses new ones.
type gateProxy struct {
	addr, target string
	ln           net.Listener

	mu    sync.Mutex
	open  bool
	conns map[net.Conn]struct{}
}

func startGateProxy(t testing.TB, target string) *gateProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &gateProxy{addr: ln.Addr().String(), target: target, ln: ln, open: true, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { _ = ln.Close(); p.setOpen(false) })
	go p.accept()
	return p
}

func (p *gateProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		open := p.open
		p.mu.Unlock()
		if !open {
			_ = c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[u] = struct{}{}, struct{}{}
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(c, u)
		go pipe(u, c)
	}
}

func (p *gateProxy) setOpen(open bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = open
	if !open {
		for c := range p.conns {
			_ = c.Close()
		}
	}
}
