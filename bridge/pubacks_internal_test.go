package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"trm-live/testkit"
)

// jsonPubAck decodes a reply the slow way, as parsePubAck does when
// scanPubAck declines.
func jsonPubAck(b []byte) (pubAck, bool) {
	var r struct {
		Error     *jetstream.APIError `json:"error"`
		Stream    string              `json:"stream"`
		Sequence  uint64              `json:"seq"`
		Duplicate bool                `json:"duplicate"`
	}
	if json.Unmarshal(b, &r) != nil || r.Error != nil || r.Stream == "" {
		return pubAck{}, false
	}
	return pubAck{r.Stream, r.Sequence, r.Duplicate}, true
}

// scanPubAck reads what nats-server writes and declines what it cannot
// read exactly; whatever it accepts, encoding/json reads the same.
func TestScanPubAck(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want pubAck
		ok   bool
	}{
		{`{"stream":"POSITIONS","seq":1}`, pubAck{"POSITIONS", 1, false}, true},
		{`{"stream":"POSITIONS","seq":18446744073709551615}`, pubAck{"POSITIONS", 1<<64 - 1, false}, true},
		{`{"stream":"POSITIONS","seq":7,"duplicate": true}`, pubAck{"POSITIONS", 7, true}, true},
		{`{"stream":"POSITIONS","seq":7,"duplicate":false}`, pubAck{"POSITIONS", 7, false}, true},
		{`{"stream":"POSITIONS_DLQ","domain":"hub","seq":3}`, pubAck{"POSITIONS_DLQ", 3, false}, true},
		{` { "stream" : "S" , "seq" : 2 , "duplicate": true,"batch":"b1","count":4 } `, pubAck{"S", 2, true}, true},
		{`{"stream":"S","seq":9,"val":"12"}`, pubAck{"S", 9, false}, true},
		{`{"stream":"S","seq":9,"x":-1.5e3}`, pubAck{"S", 9, false}, true},
		// Declined: parsePubAck decodes these with encoding/json.
		{`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S","seq":0}`, pubAck{}, false},
		{`{"stream":"S\u0041","seq":1}`, pubAck{}, false},
		{`{"stream":"S","seq":1,"x":{"y":1}}`, pubAck{}, false},
		{`{"stream":"S","seq":1,"x":[1]}`, pubAck{}, false},
		{`{"stream":"S","seq":-1}`, pubAck{}, false},
		{`{"stream":"S","seq":1.5}`, pubAck{}, false},
		{`{"stream":"S","seq":1,"duplicate":truth}`, pubAck{}, false},
		{`{"stream":"S","seq":1}x`, pubAck{}, false},
		{`{"stream":"S","seq":1`, pubAck{}, false},
		{`{"seq":1}`, pubAck{}, false},
		{`{}`, pubAck{}, false},
		{`[]`, pubAck{}, false},
		{`+OK`, pubAck{}, false},
		{``, pubAck{}, false},
	} {
		got, ok := scanPubAck([]byte(tc.in))
		if ok != tc.ok || ok && got != tc.want {
			t.Errorf("scanPubAck(%s) = %+v, %v; want %+v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
		if ok {
			if slow, sok := jsonPubAck([]byte(tc.in)); !sok || slow != got {
				t.Errorf("scanPubAck(%s) = %+v, encoding/json reads %+v, %v", tc.in, got, slow, sok)
			}
		}
	}
}

// parsePubAck reads the real replies of a real nats-server, standalone and
// with a JetStream domain: a PubAck, a duplicate's, a refusal for a full
// stream or a message too large (API errors, as nats.go returns them), and
// no stream for the subject (no responders).
func TestParsePubAckRealReplies(t *testing.T) {
	for _, domain := range []string{"", "hub"} {
		t.Run("domain="+domain, func(t *testing.T) {
			srv := testkit.StartNATS(t, func(o *server.Options) { o.JetStreamDomain = domain })
			nc := srv.Connect(t)
			js := srv.JetStream(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
				Name: "S", Subjects: []string{"s.>"}, MaxMsgs: 2, Discard: jetstream.DiscardNew, MaxMsgSize: 100,
			}); err != nil {
				t.Fatal(err)
			}
			// The replies as the bridge's subscription gets them: the
			// published message names a reply subject of an inbox.
			inbox := nc.NewInbox()
			got := make(chan *nats.Msg, 1)
			if _, err := nc.Subscribe(inbox, func(m *nats.Msg) { got <- m }); err != nil {
				t.Fatal(err)
			}
			reply := func(subject, msgID string, data []byte) *nats.Msg {
				t.Helper()
				m := nats.NewMsg(subject)
				m.Data, m.Reply = data, inbox
				m.Header.Set(jetstream.MsgIDHeader, msgID)
				if err := nc.PublishMsg(m); err != nil {
					t.Fatal(err)
				}
				select {
				case r := <-got:
					return r
				case <-time.After(5 * time.Second):
					t.Fatalf("no reply to %s", subject)
					return nil
				}
			}

			check := func(r *nats.Msg, want pubAck) {
				t.Helper()
				got, err := parsePubAck(r)
				if err != nil || got != want {
					t.Fatalf("parsePubAck(%q) = %+v, %v; want %+v", r.Data, got, err, want)
				}
				if _, ok := scanPubAck(r.Data); !ok {
					t.Errorf("scanPubAck declined the server's PubAck %q", r.Data)
				}
			}
			check(reply("s.a", "m1", []byte("one")), pubAck{"S", 1, false})
			check(reply("s.a", "m1", []byte("one")), pubAck{"S", 1, true})
			check(reply("s.b", "m2", []byte("two")), pubAck{"S", 2, false})

			apiErr := func(r *nats.Msg, code jetstream.ErrorCode) {
				t.Helper()
				_, err := parsePubAck(r)
				var ae *jetstream.APIError
				if !errors.As(err, &ae) || ae.ErrorCode != code {
					t.Fatalf("parsePubAck(%q) = %v, want API error %d", r.Data, err, code)
				}
			}
			full := reply("s.c", "m3", []byte("three"))
			apiErr(full, errCodeStoreFailed)
			if _, err := parsePubAck(full); !storeFull(err) {
				t.Errorf("a full stream's refusal %v is not storeFull", err)
			}
			big := reply("s.d", "m4", make([]byte, 200))
			apiErr(big, jetstream.JSErrCodeStreamMessageExceedsMaximum)
			if _, err := parsePubAck(big); !permanent(err) {
				t.Errorf("a message too large %v is not permanent", err)
			}

			if _, err := parsePubAck(reply("nowhere.x", "m5", []byte("x"))); !errors.Is(err, jetstream.ErrNoStreamResponse) {
				t.Errorf("no stream: %v, want ErrNoStreamResponse", err)
			}
			if _, err := parsePubAck(&nats.Msg{Data: []byte("nonsense")}); !errors.Is(err, jetstream.ErrInvalidJSAck) {
				t.Errorf("nonsense: %v, want ErrInvalidJSAck", err)
			}
			if _, err := parsePubAck(&nats.Msg{}); !errors.Is(err, jetstream.ErrInvalidJSAck) {
				t.Errorf("empty reply: %v, want ErrInvalidJSAck", err)
			}
		})
	}
}

// A reply subject names its publish; others are not ours.
func TestPubAcksReplySubjects(t *testing.T) {
	p := newPubAcks("_INBOX_bridge.abc", 4)
	it := &item{msg: &nats.Msg{Subject: "pos.e.d"}}
	seq := p.register(it, time.Now())
	if got, ok := p.seqOf(it.msg.Reply); !ok || got != seq {
		t.Fatalf("seqOf(%q) = %d, %v; want %d", it.msg.Reply, got, ok, seq)
	}
	for _, s := range []string{"_INBOX_bridge.abc.", "_INBOX_bridge.abd.1", "_INBOX_bridge.abc.!", "x"} {
		if _, ok := p.seqOf(s); ok {
			t.Errorf("seqOf(%q) accepted", s)
		}
	}
	if p.take(seq) != it || p.take(seq) != nil {
		t.Fatal("take: want the item once")
	}
	old := &item{msg: &nats.Msg{}}
	p.register(old, time.Now().Add(-time.Minute))
	young := &item{msg: &nats.Msg{}}
	p.register(young, time.Now())
	if got := p.expired(time.Now().Add(-time.Second)); len(got) != 1 || got[0] != old {
		t.Fatalf("expired = %v, want the old publish only", got)
	}
	third := &item{msg: &nats.Msg{}}
	p.register(third, time.Now())
	if got := p.all(); len(got) != 2 || got[0] != young || got[1] != third {
		t.Fatalf("all = %v, want the two pending, oldest first", got)
	}
	if n := pendingCount(p); n != 0 {
		t.Fatalf("%d left pending", n)
	}
}

// A publish whose ring slot is still held by an older one waits in the
// overflow map, and each is found by its own sequence.
func TestPubAcksRingOverflow(t *testing.T) {
	p := newPubAcks("_INBOX_bridge.abc", 4) // a ring of 64
	size := uint64(len(p.ring))
	stuck := &item{msg: &nats.Msg{}}
	first := p.register(stuck, time.Now().Add(-time.Minute))
	var seqs []uint64
	var items []*item
	for range 3 * size {
		it := &item{msg: &nats.Msg{}}
		seqs = append(seqs, p.register(it, time.Now()))
		items = append(items, it)
	}
	if len(p.over) < 3 {
		t.Fatalf("%d in the overflow map, want the publishes on the stuck slot", len(p.over))
	}
	for i := len(seqs) - 1; i >= 0; i-- { // newest first: the ring's older slots stay held
		if got := p.take(seqs[i]); got != items[i] {
			t.Fatalf("take(%d) = %p, want %p", seqs[i], got, items[i])
		}
	}
	if got := p.take(first + size); got != nil {
		t.Fatal("a taken publish was found again")
	}
	if got := p.expired(time.Now().Add(-time.Second)); len(got) != 1 || got[0] != stuck {
		t.Fatalf("expired = %v, want the stuck publish", got)
	}
	if n := pendingCount(p); n != 0 {
		t.Fatalf("%d left pending", n)
	}
}

// pendingCount counts the publishes awaiting their reply.
func pendingCount(p *pubAcks) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.over)
	for _, it := range p.ring {
		if it != nil {
			n++
		}
	}
	return n
}
