package verify

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/persister"
	"trm-live/testkit"
)

type action int

const (
	pub action = iota
	sub
	req
)

// permCase is one thing a user does, and whether the server refuses it.
type permCase struct {
	user    string
	act     action
	subject string
	refused bool
}

// TestClusterPermissions: with deploy/nats/stage.conf, each worker's user
// is refused what it has no business doing, and allowed what it needs (the
// pipeline test proves the rest of "allowed" end to end).
func TestClusterPermissions(t *testing.T) {
	t.Parallel()
	c := startTestCluster(t, "stage.conf")
	cases := []permCase{
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
		// Its replay consumers: created only with an event filter in the
		// subject, never the persister's durable (TestBroadcasterConsumerRights
		// drives the JetStream API).
		{"broadcaster", req, "$JS.API.CONSUMER.CREATE.POSITIONS.replay_x.pos.ev1.*", false},
		{"broadcaster", req, "$JS.API.CONSUMER.INFO.POSITIONS.replay_x", false},
		{"broadcaster", req, "$JS.API.CONSUMER.DELETE.POSITIONS.replay_x", false},
		{"broadcaster", req, "$JS.API.CONSUMER.CREATE.POSITIONS", true},
		{"broadcaster", req, "$JS.API.CONSUMER.CREATE.POSITIONS.replay_x", true},
		{"broadcaster", req, "$JS.API.CONSUMER.CREATE.POSITIONS.replay_x.pos.>", true},
		{"broadcaster", req, "$JS.API.CONSUMER.DURABLE.CREATE.POSITIONS.replay_x", true},
		{"broadcaster", req, "$JS.API.CONSUMER.CREATE.POSITIONS.persister", true},
		{"broadcaster", req, "$JS.API.CONSUMER.CREATE.POSITIONS.persister.pos.nothing.*", true},
		{"broadcaster", req, "$JS.API.CONSUMER.DURABLE.CREATE.POSITIONS.persister", true},
		{"broadcaster", req, "$JS.API.CONSUMER.INFO.POSITIONS.persister", true},
		{"broadcaster", req, "$JS.API.CONSUMER.DELETE.POSITIONS.persister", true},
		{"broadcaster", req, "$JS.API.CONSUMER.MSG.NEXT.POSITIONS.persister", true},
		{"broadcaster", req, "$JS.API.CONSUMER.LIST.POSITIONS", true},
		{"broadcaster", req, "$JS.API.CONSUMER.NAMES.POSITIONS", true},
		// authsvc serves its subjects and answers; nothing else.
		{"authsvc", sub, "authsvc.session", false},
		{"authsvc", sub, "$SRV.PING", false},
		{"authsvc", pub, "pos.unassigned.dev-1", true},
		{"authsvc", pub, "authsvc.event", true},
		{"authsvc", sub, "pos.>", true},
		{"authsvc", req, "$JS.API.INFO", true},
	}
	// Each worker reads replies on its own inbox prefix only.
	for _, u := range []string{"bridge", "persister", "broadcaster", "authsvc"} {
		cases = append(cases,
			permCase{u, sub, contract.InboxPrefix(u) + ".>", false},
			permCase{u, sub, "_INBOX.>", true},
			permCase{u, sub, ">", true})
		for _, other := range []string{"bridge", "persister", "broadcaster", "authsvc"} {
			if other != u {
				cases = append(cases, permCase{u, sub, contract.InboxPrefix(other) + ".>", true})
			}
		}
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

// startTestServer starts one node from a deploy/nats configuration: the
// users and permissions of the cluster without its cost.
func startTestServer(t *testing.T, conf string) *Cluster {
	t.Helper()
	dir := t.TempDir() // before Cleanup: the node stops before it is removed
	c, err := StartCluster(ClusterConfig{Nodes: 1, Dir: dir, ConfigFile: filepath.Join(deployDir(t), "nats", conf)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	return c
}

// refusals records the permission violations a connection is told of.
type refusals struct {
	mu   sync.Mutex
	errs []string
}

func (r *refusals) option() nats.Option {
	return nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			r.mu.Lock()
			r.errs = append(r.errs, err.Error())
			r.mu.Unlock()
		}
	})
}

// await waits until a violation naming subject was reported.
func (r *refusals) await(t *testing.T, subject string) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, e := range r.errs {
			if strings.Contains(e, `"`+subject+`"`) {
				return nil
			}
		}
		return fmt.Errorf("no permission violation for %s yet (got %v)", subject, r.errs)
	})
}

// TestBroadcasterConsumerRights: the internet-facing broadcaster can
// create, read, pull and delete its own replay consumers and read
// snapshots by direct get, but cannot update, read, pull from or delete
// the persister's durable consumer, nor create one in its name.
func TestBroadcasterConsumerRights(t *testing.T) {
	t.Parallel()
	c := startTestServer(t, "stage.conf")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The stream, a few positions and the persister's durable, each made
	// by the user that makes them in production.
	bjs, err := jetstream.New(connect(t, c, "bridge"))
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() error { return streams.Ensure(ctx, bjs, streams.Options{}) })
	eventID := "ev1"
	for i, dev := range []string{"dev-1", "dev-2", "dev-1"} {
		p := contract.Position{EventID: eventID, DeviceID: dev, TS: time.Now().Add(time.Duration(i-5) * time.Second).UTC().Truncate(time.Millisecond), Lat: 47.1, Lon: 8.5}
		if _, err := bjs.Publish(ctx, contract.PositionSubject(eventID, dev), p.Encode()); err != nil {
			t.Fatal(err)
		}
	}
	pjs, err := jetstream.New(connect(t, c, "persister"))
	if err != nil {
		t.Fatal(err)
	}
	durable := jetstream.ConsumerConfig{
		Durable:       persister.DefaultConsumer,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1,
		MaxAckPending: 1000,
	}
	if _, err := pjs.CreateOrUpdateConsumer(ctx, streams.Positions, durable); err != nil {
		t.Fatal(err)
	}

	var refused refusals
	nc := connect(t, c, "broadcaster", refused.option())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 300*time.Millisecond) }

	// What the issue saw: the durable's filter changed, then deleted.
	attack := durable
	attack.FilterSubject = "pos.nothing.*"
	for name, try := range map[string]func(context.Context) error{
		"update the durable's filter": func(ctx context.Context) error {
			_, err := js.UpdateConsumer(ctx, streams.Positions, attack)
			return err
		},
		"update the durable without a filter": func(ctx context.Context) error {
			d := durable
			d.MaxAckPending = 1
			_, err := js.CreateOrUpdateConsumer(ctx, streams.Positions, d)
			return err
		},
		"read the durable": func(ctx context.Context) error {
			_, err := js.Consumer(ctx, streams.Positions, persister.DefaultConsumer)
			return err
		},
		"delete the durable": func(ctx context.Context) error {
			return js.DeleteConsumer(ctx, streams.Positions, persister.DefaultConsumer)
		},
		"pull from the durable": func(ctx context.Context) error {
			_, err := nc.RequestWithContext(ctx, "$JS.API.CONSUMER.MSG.NEXT.POSITIONS."+persister.DefaultConsumer, []byte(`{"batch":1}`))
			return err
		},
		"create an unfiltered consumer": func(ctx context.Context) error {
			_, err := js.CreateConsumer(ctx, streams.Positions, jetstream.ConsumerConfig{Name: "replay_all", AckPolicy: jetstream.AckNonePolicy})
			return err
		},
	} {
		tctx, tcancel := short()
		if err := try(tctx); err == nil {
			t.Errorf("broadcaster could %s", name)
		}
		tcancel()
	}
	for _, subj := range []string{
		"$JS.API.CONSUMER.CREATE.POSITIONS." + persister.DefaultConsumer + ".pos.nothing.*",
		"$JS.API.CONSUMER.CREATE.POSITIONS." + persister.DefaultConsumer,
		"$JS.API.CONSUMER.INFO.POSITIONS." + persister.DefaultConsumer,
		"$JS.API.CONSUMER.DELETE.POSITIONS." + persister.DefaultConsumer,
		"$JS.API.CONSUMER.MSG.NEXT.POSITIONS." + persister.DefaultConsumer,
		"$JS.API.CONSUMER.CREATE.POSITIONS.replay_all",
	} {
		refused.await(t, subj)
	}
	// The durable is as the persister made it.
	info, err := pjs.Consumer(ctx, streams.Positions, persister.DefaultConsumer)
	if err != nil {
		t.Fatalf("the persister's durable is gone: %v", err)
	}
	if ci := info.CachedInfo(); ci.Config.FilterSubject != "" || ci.Config.MaxAckPending != durable.MaxAckPending || ci.NumPending != 3 {
		t.Errorf("the persister's durable changed: filter %q max ack pending %d pending %d",
			ci.Config.FilterSubject, ci.Config.MaxAckPending, ci.NumPending)
	}

	// Its own replay consumer, as replay_source.go makes it.
	name := "replay_verify"
	cons, err := js.CreateConsumer(ctx, streams.Positions, jetstream.ConsumerConfig{
		Name:              name,
		FilterSubject:     contract.EventSubject(eventID),
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: time.Minute,
		MemoryStorage:     true,
		Replicas:          1,
	})
	if err != nil {
		t.Fatalf("create replay consumer: %v", err)
	}
	batch, err := cons.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for range batch.Messages() {
		n++
	}
	if batch.Error() != nil || n != 3 {
		t.Errorf("replay consumer read %d of 3 (%v)", n, batch.Error())
	}
	if _, err := cons.Info(ctx); err != nil {
		t.Errorf("replay consumer info: %v", err)
	}
	if err := js.DeleteConsumer(ctx, streams.Positions, name); err != nil {
		t.Errorf("delete replay consumer: %v", err)
	}
	// Snapshots: direct get, last by subject and the batch multi-last.
	stream, err := js.Stream(ctx, streams.Positions)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.GetLastMsgForSubject(ctx, contract.PositionSubject(eventID, "dev-2")); err != nil {
		t.Errorf("direct get last for subject: %v", err)
	}
	if _, err := stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(contract.EventSubject(eventID))); err != nil {
		t.Errorf("direct get first of the event: %v", err)
	}
	inbox := nc.NewRespInbox()
	s, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	req := `{"multi_last":["` + contract.EventSubject(eventID) + `"]}`
	if err := nc.PublishRequest("$JS.API.DIRECT.GET.POSITIONS", inbox, []byte(req)); err != nil {
		t.Fatal(err)
	}
	devices := 0
	for {
		m, err := s.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("batch direct get: %v after %d", err, devices)
		}
		if m.Header.Get("Status") != "" {
			break
		}
		devices++
	}
	if devices != 2 {
		t.Errorf("batch direct get: %d devices, want 2", devices)
	}
	// Nothing above tripped a refusal of what it needs.
	refused.mu.Lock()
	defer refused.mu.Unlock()
	for _, e := range refused.errs {
		if strings.Contains(e, "replay_") && !strings.Contains(e, "replay_all") || strings.Contains(e, "DIRECT") || strings.Contains(e, "_INBOX") {
			t.Errorf("refused what a replay or snapshot needs: %s", e)
		}
	}
}

// TestWorkerInboxesAreIsolated: authsvc's reply to the broadcaster reaches
// the broadcaster and no other worker; a worker's user cannot subscribe
// to another worker's inbox prefix, nor to every inbox.
func TestWorkerInboxesAreIsolated(t *testing.T) {
	t.Parallel()
	c := startTestServer(t, "stage.conf")
	authsvc := connect(t, c, "authsvc")
	if _, err := authsvc.Subscribe("authsvc.session", func(m *nats.Msg) { _ = m.Respond([]byte("secret answer")) }); err != nil {
		t.Fatal(err)
	}
	if err := authsvc.Flush(); err != nil {
		t.Fatal(err)
	}
	var refused refusals
	bridge := connect(t, c, "bridge", refused.option())
	var subs []*nats.Subscription
	for _, subj := range []string{contract.InboxPrefix("broadcaster") + ".>", "_INBOX.>", ">"} {
		s, err := bridge.SubscribeSync(subj)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	if err := bridge.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, subj := range []string{contract.InboxPrefix("broadcaster") + ".>", "_INBOX.>", ">"} {
		refused.await(t, subj)
	}
	bc := connect(t, c, "broadcaster")
	m, err := bc.Request("authsvc.session", []byte("{}"), 5*time.Second)
	if err != nil {
		t.Fatalf("the broadcaster's request to authsvc: %v", err)
	}
	if !strings.HasPrefix(m.Subject, contract.InboxPrefix("broadcaster")+".") || string(m.Data) != "secret answer" {
		t.Fatalf("reply on %s: %q", m.Subject, m.Data)
	}
	// One server: it queued the reply to every matching subscriber before
	// the broadcaster could read it, so a flush of the bridge's connection
	// now would bring whatever the bridge was sent.
	if err := bridge.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, s := range subs {
		if n, _, _ := s.Pending(); n != 0 {
			t.Errorf("the bridge read %d message(s) on %s", n, s.Subject)
		}
	}
}
