package broadcaster

import (
	"bytes"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"trm-live/contract/ws"
	"trm-live/testkit"
)

// TestContract walks every message and error of contract v1 on one
// connection, which stays open through every error frame.
func TestContract(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.MaxSubscriptions = 2 }})
	ev, other, third := newEventID(), newEventID(), newEventID()
	e.auth.user("alice-cookie", "alice", false)
	e.auth.addEvent(ev, "alice")
	e.auth.addEvent(other, "alice")
	e.auth.addEvent(third, "alice")
	e.auth.addEvent(newEventID()) // exists, alice is no member
	forbidden := newEventID()
	e.auth.addEvent(forbidden, "bob")
	base := time.Now().Add(-time.Hour).UnixMilli()
	e.publish(ev, "d1", base-1000) // superseded: not in the snapshot
	stored := map[string][]byte{
		"d1": e.publish(ev, "d1", base),
		"d2": e.publish(ev, "d2", base+5),
	}

	c := e.connect("alice-cookie")

	t.Run("subscribe with id: subscribed with snapshot", func(t *testing.T) {
		c.send(subscribe(topicOf(ev), "c1"))
		f := c.expect(ws.TypeSubscribed, "")
		if f.Topic != topicOf(ev) || f.ID != "c1" || len(f.Snapshot) != 2 {
			t.Fatalf("subscribed = %+v", f)
		}
		for _, raw := range f.Snapshot {
			found := false
			for _, want := range stored {
				if bytes.Equal(raw, want) {
					found = true
				}
			}
			if !found {
				t.Fatalf("snapshot item %s is not a stored latest position", raw)
			}
		}
	})
	t.Run("live positions frame", func(t *testing.T) {
		want := e.publish(ev, "d3", base+10)
		f := c.expect(ws.TypePositions, "")
		if f.Topic != topicOf(ev) || len(f.Positions) != 1 || !bytes.Equal(f.Positions[0], want) {
			t.Fatalf("positions = %+v, want one item %s", f, want)
		}
	})
	t.Run("subscribe without id", func(t *testing.T) {
		c.send(subscribe(topicOf(other), ""))
		f := c.expect(ws.TypeSubscribed, "")
		if f.Topic != topicOf(other) || f.ID != "" || len(f.Snapshot) != 0 {
			t.Fatalf("subscribed = %+v", f)
		}
	})
	t.Run("too many subscriptions", func(t *testing.T) {
		c.send(subscribe(topicOf(third), "c9"))
		f := c.expect(ws.TypeError, ws.CodeTooManySubscriptions)
		if f.Topic != topicOf(third) || f.ID != "c9" || f.Message == "" {
			t.Fatalf("error = %+v", f)
		}
	})
	t.Run("unsubscribe without id", func(t *testing.T) {
		c.send(unsubscribe(topicOf(other), ""))
		f := c.expect(ws.TypeUnsubscribed, "")
		if f.Topic != topicOf(other) || f.ID != "" {
			t.Fatalf("unsubscribed = %+v", f)
		}
	})
	t.Run("subscribe twice", func(t *testing.T) {
		c.send(subscribe(topicOf(ev), "again"))
		f := c.expect(ws.TypeError, ws.CodeBadRequest)
		if f.Topic != topicOf(ev) || f.ID != "again" {
			t.Fatalf("error = %+v", f)
		}
	})
	t.Run("unsubscribe unknown topic", func(t *testing.T) {
		c.send(unsubscribe(topicOf(third), "u1"))
		f := c.expect(ws.TypeError, ws.CodeBadRequest)
		if f.Topic != topicOf(third) || f.ID != "u1" {
			t.Fatalf("error = %+v", f)
		}
	})
	t.Run("forbidden", func(t *testing.T) {
		c.send(subscribe(topicOf(forbidden), "f1"))
		f := c.expect(ws.TypeError, ws.CodeForbidden)
		if f.Topic != topicOf(forbidden) || f.ID != "f1" {
			t.Fatalf("error = %+v", f)
		}
		c.send(subscribe(topicOf(forbidden), ""))
		if f := c.expect(ws.TypeError, ws.CodeForbidden); f.ID != "" {
			t.Fatalf("error = %+v", f)
		}
	})
	t.Run("not found", func(t *testing.T) {
		missing := newEventID()
		c.send(subscribe(topicOf(missing), "n1"))
		f := c.expect(ws.TypeError, ws.CodeNotFound)
		if f.Topic != topicOf(missing) || f.ID != "n1" {
			t.Fatalf("error = %+v", f)
		}
	})
	t.Run("malformed JSON", func(t *testing.T) {
		c.send(`{"type":"subscribe",`)
		f := c.expect(ws.TypeError, ws.CodeBadRequest)
		if f.Topic != "" || f.ID != "" || !strings.Contains(f.Message, "JSON") {
			t.Fatalf("error = %+v", f)
		}
	})
	t.Run("unknown type", func(t *testing.T) {
		c.send(`{"type":"publish","topic":"` + topicOf(ev) + `","id":"x1"}`)
		f := c.expect(ws.TypeError, ws.CodeBadRequest)
		if f.ID != "x1" || f.Topic != topicOf(ev) {
			t.Fatalf("error = %+v", f)
		}
	})
	t.Run("bad topic", func(t *testing.T) {
		c.send(`{"type":"subscribe","topic":"event:not-a-uuid","id":"b1"}`)
		if f := c.expect(ws.TypeError, ws.CodeBadRequest); f.ID != "b1" {
			t.Fatalf("error = %+v", f)
		}
	})
	t.Run("binary frame", func(t *testing.T) {
		if err := c.conn.WriteMessage(websocket.BinaryMessage, []byte{1, 2}); err != nil {
			t.Fatal(err)
		}
		c.expect(ws.TypeError, ws.CodeBadRequest)
	})
	t.Run("unsubscribe with id", func(t *testing.T) {
		c.send(unsubscribe(topicOf(ev), "c2"))
		f := c.expect(ws.TypeUnsubscribed, "")
		if f.Topic != topicOf(ev) || f.ID != "c2" {
			t.Fatalf("unsubscribed = %+v", f)
		}
	})
	t.Run("unavailable", func(t *testing.T) {
		e.auth.stop()
		c.send(subscribe(topicOf(third), "u9"))
		f := c.expect(ws.TypeError, ws.CodeUnavailable)
		if f.Topic != topicOf(third) || f.ID != "u9" {
			t.Fatalf("error = %+v", f)
		}
	})
	t.Run("oversized frame closes 1009", func(t *testing.T) {
		big := `{"type":"subscribe","topic":"` + topicOf(ev) + `","id":"` + strings.Repeat("x", ws.MaxClientMessage) + `"}`
		c.send(big)
		if code := c.closeCode(); code != websocket.CloseMessageTooBig {
			t.Fatalf("close code %d, want 1009", code)
		}
	})
	waitFor(t, "no connections", func() bool { return e.metric("broadcaster_connections") == 0 })
	if got := e.metric("broadcaster_server_closes_total", "code", "1009"); got != 1 {
		t.Fatalf("closes{1009} = %v", got)
	}
}

// TestMessageAtLimit: a message of exactly ws.MaxClientMessage bytes is
// accepted.
func TestMessageAtLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.auth.user("k", "u", true)
	c := e.connect("k")
	msg := `{"type":"nope","id":"` // padded to exactly the limit
	msg += strings.Repeat("y", ws.MaxClientMessage-len(msg)-2) + `"}`
	if len(msg) != ws.MaxClientMessage {
		t.Fatalf("len %d", len(msg))
	}
	c.send(msg)
	c.expect(ws.TypeError, ws.CodeBadRequest)
}

func TestHandshake(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.MaxConnsPerUser = 2 }})
	e.auth.user("good", "carol", false)

	t.Run("missing cookie closes 4401", func(t *testing.T) {
		c, _, err := e.dial(dialOpt{})
		if err != nil {
			t.Fatal(err)
		}
		if code := c.closeCode(); code != ws.CloseUnauthorized {
			t.Fatalf("close %d, want 4401", code)
		}
	})
	t.Run("bogus cookie closes 4401", func(t *testing.T) {
		c, _, err := e.dial(dialOpt{cookie: "bogus"})
		if err != nil {
			t.Fatal(err)
		}
		if code := c.closeCode(); code != ws.CloseUnauthorized {
			t.Fatalf("close %d, want 4401", code)
		}
	})
	t.Run("bearer accepted", func(t *testing.T) {
		c, _, err := e.dial(dialOpt{bearer: "good"})
		if err != nil {
			t.Fatal(err)
		}
		c.send(`{}`)
		c.expect(ws.TypeError, ws.CodeBadRequest)
		_ = c.conn.Close()
	})
	t.Run("foreign origin refused before upgrade", func(t *testing.T) {
		before := e.auth.calls["authsvc.session"].Load()
		_, resp, err := e.dial(dialOpt{cookie: "good", origin: "https://evil.example"})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("err %v resp %v, want 403", err, resp)
		}
		if e.auth.calls["authsvc.session"].Load() != before {
			t.Fatal("authsvc was asked for a refused origin")
		}
	})
	t.Run("same origin accepted", func(t *testing.T) {
		c, _, err := e.dial(dialOpt{cookie: "good", origin: "http://" + e.addr})
		if err != nil {
			t.Fatal(err)
		}
		c.send(`{}`)
		c.expect(ws.TypeError, ws.CodeBadRequest)
		_ = c.conn.Close()
	})
	t.Run("connections per user", func(t *testing.T) {
		waitFor(t, "no connections", func() bool { return e.metric("broadcaster_connections") == 0 })
		a, b := e.connect("good"), e.connect("good")
		c, _, err := e.dial(dialOpt{cookie: "good"})
		if err != nil {
			t.Fatal(err)
		}
		if code := c.closeCode(); code != ws.ClosePolicyViolation {
			t.Fatalf("third connection closed %d, want 1008", code)
		}
		_ = a.conn.Close()
		_ = b.conn.Close()
	})
	t.Run("authsvc down closes 1013", func(t *testing.T) {
		e.auth.stop()
		c, _, err := e.dial(dialOpt{cookie: "good"})
		if err != nil {
			t.Fatal(err)
		}
		if code := c.closeCode(); code != ws.CloseTryAgainLater {
			t.Fatalf("close %d, want 1013", code)
		}
	})
}

func TestAllowedOrigins(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.AllowedOrigins = []string{"https://live.example.com"} }})
	e.auth.user("k", "u", false)
	if _, resp, err := e.dial(dialOpt{cookie: "k", origin: "http://" + e.addr}); err == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("same origin not in the list: err %v", err)
	}
	c, _, err := e.dial(dialOpt{cookie: "k", origin: "https://live.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	c.send(`{}`)
	c.expect(ws.TypeError, ws.CodeBadRequest)
}

func TestMessageRateLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.MsgRate = 1; c.MsgBurst = 3 }})
	e.auth.user("k", "u", false)
	c := e.connect("k")
	for range 10 {
		if err := c.conn.WriteMessage(websocket.TextMessage, []byte(`{}`)); err != nil {
			break
		}
	}
	for range 3 {
		c.expect(ws.TypeError, ws.CodeBadRequest)
	}
	if code := c.closeCode(); code != ws.ClosePolicyViolation {
		t.Fatalf("close %d, want 1008", code)
	}
}

// waitFor polls cond until it holds, at most 20 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, 20*time.Second, func() error {
		if cond() {
			return nil
		}
		return errors.New(what)
	})
}
