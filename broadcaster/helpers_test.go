package broadcaster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"trm-live/contract"
	"trm-live/contract/auth"
	"trm-live/contract/streams"
	"trm-live/contract/ws"
	"trm-live/testkit"
)

// fakeAuth answers authsvc's contract subjects (auth.SessionSubject,
// auth.EventSubject) from tables the test controls. It is a test double of
// our own service's contract on a real NATS server, not a mock of NATS.
type fakeAuth struct {
	nc  *nats.Conn
	svc micro.Service

	mu       sync.Mutex
	sessions map[string]auth.User       // cookie or bearer → user
	members  map[string]map[string]bool // event → member user ids
	events   map[string]bool            // existing events
	calls    map[string]*atomic.Int64   // by subject
	held     chan struct{}              // non-nil: session requests wait for it
}

// hold makes session requests wait until release is called.
func (a *fakeAuth) hold() (release func()) {
	ch := make(chan struct{})
	a.mu.Lock()
	a.held = ch
	a.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			a.held = nil
			a.mu.Unlock()
			close(ch)
		})
	}
}

func startFakeAuth(t testing.TB, nc *nats.Conn) *fakeAuth {
	t.Helper()
	a := &fakeAuth{nc: nc, sessions: map[string]auth.User{}, members: map[string]map[string]bool{}, events: map[string]bool{},
		calls: map[string]*atomic.Int64{auth.SessionSubject: {}, auth.EventSubject: {}}}
	a.start(t)
	t.Cleanup(a.stop)
	return a
}

func (a *fakeAuth) start(t testing.TB) {
	t.Helper()
	svc, err := micro.AddService(a.nc, micro.Config{Name: auth.ServiceName, Version: auth.ServiceVersion, QueueGroup: auth.QueueGroup})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.AddEndpoint("session", micro.HandlerFunc(a.session), micro.WithEndpointSubject(auth.SessionSubject)); err != nil {
		t.Fatal(err)
	}
	if err := svc.AddEndpoint("event", micro.HandlerFunc(a.event), micro.WithEndpointSubject(auth.EventSubject)); err != nil {
		t.Fatal(err)
	}
	// AddService subscribes asynchronously: a round trip makes sure the
	// server routes requests to the endpoints before the test goes on.
	if err := a.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.svc = svc
	a.mu.Unlock()
}

// stop makes authsvc unavailable (no responders).
func (a *fakeAuth) stop() {
	a.mu.Lock()
	svc := a.svc
	a.svc = nil
	a.mu.Unlock()
	if svc != nil {
		_ = svc.Stop()
		// Stop drains asynchronously: a round trip makes sure the server
		// has dropped the endpoints' interest before the test goes on.
		_ = a.nc.Flush()
	}
}

func (a *fakeAuth) session(r micro.Request) {
	a.calls[auth.SessionSubject].Add(1)
	var req auth.SessionRequest
	if err := json.Unmarshal(r.Data(), &req); err != nil {
		_ = r.Error(auth.CodeBadRequest, "bad request", nil)
		return
	}
	a.mu.Lock()
	held := a.held
	a.mu.Unlock()
	if held != nil {
		<-held
	}
	a.mu.Lock()
	u, ok := a.sessions["c:"+req.Cookie]
	if req.Cookie == "" {
		u, ok = a.sessions["b:"+req.Bearer]
	}
	a.mu.Unlock()
	if !ok {
		_ = r.Error(auth.CodeUnauthorized, "invalid session", nil)
		return
	}
	_ = r.RespondJSON(u)
}

func (a *fakeAuth) event(r micro.Request) {
	a.calls[auth.EventSubject].Add(1)
	var req auth.EventRequest
	if err := json.Unmarshal(r.Data(), &req); err != nil || !contract.ValidUUID(req.EventID) {
		_ = r.Error(auth.CodeBadRequest, "bad request", nil)
		return
	}
	a.mu.Lock()
	d := auth.NotFound
	if a.events[req.EventID] {
		d = auth.Forbidden
		if req.Admin || a.members[req.EventID][req.UserID] {
			d = auth.Allowed
		}
	}
	a.mu.Unlock()
	_ = r.RespondJSON(auth.EventResponse{Decision: d})
}

// user registers a session cookie named cookie (and the same value as
// bearer token); the value on the wire is token(cookie).
func (a *fakeAuth) user(cookie, id string, admin bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	u := auth.User{ID: id, Role: "viewer", Admin: admin}
	a.sessions["c:"+token(cookie)] = u
	a.sessions["b:"+token(cookie)] = u
}

// logout revokes the session of cookie: authsvc now refuses it.
func (a *fakeAuth) logout(cookie string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.sessions, "c:"+token(cookie))
	delete(a.sessions, "b:"+token(cookie))
}

// token is the credential value of a test cookie name: shaped like a
// Directus session JWT (auth.SessionRequest.Plausible), so it reaches
// authsvc.
func token(name string) string {
	b64 := base64.RawURLEncoding
	return b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." +
		b64.EncodeToString([]byte(`{"id":"`+name+`"}`)) + ".c2lnbmF0dXJl"
}

// event creates an event with its members.
func (a *fakeAuth) addEvent(eventID string, members ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events[eventID] = true
	if a.members[eventID] == nil {
		a.members[eventID] = map[string]bool{}
	}
	for _, m := range members {
		a.members[eventID][m] = true
	}
}

func (a *fakeAuth) removeMember(eventID, user string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.members[eventID], user)
}

// testLogger writes the broadcaster's log to the test log until the test
// ends.
func testLogger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// env is one test's NATS server, stream, authsvc double and broadcaster.
type env struct {
	t    testing.TB
	nats *testkit.NATS
	nc   *nats.Conn
	js   jetstream.JetStream
	auth *fakeAuth
	srv  *server
	reg  *prometheus.Registry
	addr string // host:port of the broadcaster
	stop func() error
}

type envOpt struct {
	noStream bool
	cfg      func(*Config)
}

func newEnv(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	var o envOpt
	for _, x := range opts {
		if x.noStream {
			o.noStream = true
		}
		if x.cfg != nil {
			o.cfg = x.cfg
		}
	}
	e := &env{t: t, nats: testkit.StartNATS(t)}
	e.nc = e.nats.Connect(t)
	var err error
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
	if !o.noStream {
		e.ensureStream()
	}
	e.auth = startFakeAuth(t, e.nats.Connect(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	e.reg = prometheus.NewRegistry()
	cfg := Config{NATSURL: e.nats.URL, Listener: ln, Registerer: e.reg, Logger: testLogger(t)}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	srv, err := newServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.run(ctx) }()
	var once sync.Once
	var runErr error
	e.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = errors.New("Run did not return 30s after cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := e.stop(); err != nil {
			t.Error(err)
		}
	})
	return e
}

func (e *env) ensureStream() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, e.js, streams.Options{}); err != nil {
		e.t.Fatal(err)
	}
}

// publish stores a position of device in event with fix time ts (Unix ms)
// and returns its bytes.
func (e *env) publish(eventID, device string, ts int64) []byte {
	e.t.Helper()
	p := contract.Position{DeviceID: device, EventID: eventID, TS: time.UnixMilli(ts).UTC(), Lat: 45, Lon: 7}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.js.Publish(ctx, p.Subject(), p.Encode(), jetstream.WithMsgID(p.MsgID())); err != nil {
		e.t.Fatalf("publish: %v", err)
	}
	return p.Encode()
}

// tryPublish is publish that returns the error.
func (e *env) tryPublish(eventID, device string, ts int64) error {
	p := contract.Position{DeviceID: device, EventID: eventID, TS: time.UnixMilli(ts).UTC(), Lat: 45, Lon: 7}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := e.js.Publish(ctx, p.Subject(), p.Encode(), jetstream.WithMsgID(p.MsgID()))
	return err
}

// publishAsync stores many positions quickly and waits for every ack.
func (e *env) publishAsync(ps []contract.Position) {
	e.t.Helper()
	var futures []jetstream.PubAckFuture
	for _, p := range ps {
		f, err := e.js.PublishAsync(p.Subject(), p.Encode(), jetstream.WithMsgID(p.MsgID()))
		if err != nil {
			e.t.Fatalf("publish async: %v", err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			e.t.Fatalf("publish ack: %v", err)
		case <-time.After(30 * time.Second):
			e.t.Fatal("publish ack timeout")
		}
	}
}

func (e *env) url() string { return "ws://" + e.addr + ws.Path }

// wsClient is a real WebSocket client over loopback.
type wsClient struct {
	t    testing.TB
	conn *websocket.Conn
}

type dialOpt struct {
	// cookie and bearer name a test credential (sent as token(name));
	// rawCookie is sent as is.
	cookie, bearer, origin string
	rawCookie              string
	header                 http.Header // added to the request
	local                  string      // source IP (any 127.0.0.0/8 address)
	rcvbuf                 int         // SO_RCVBUF, for slow clients
}

func (e *env) dial(o dialOpt) (*wsClient, *http.Response, error) {
	h := http.Header{}
	for k, vs := range o.header {
		h[k] = vs
	}
	if o.cookie != "" {
		h.Set("Cookie", "directus_session_token="+token(o.cookie))
	}
	if o.rawCookie != "" {
		h.Set("Cookie", "directus_session_token="+o.rawCookie)
	}
	if o.bearer != "" {
		h.Set("Authorization", "Bearer "+token(o.bearer))
	}
	if o.origin != "" {
		h.Set("Origin", o.origin)
	}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	if o.rcvbuf > 0 || o.local != "" {
		d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			nd := &net.Dialer{}
			if o.local != "" {
				nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(o.local)}
			}
			c, err := nd.DialContext(ctx, network, addr)
			if err == nil && o.rcvbuf > 0 {
				err = c.(*net.TCPConn).SetReadBuffer(o.rcvbuf)
			}
			return c, err
		}
	}
	conn, resp, err := d.Dial(e.url(), h)
	if err != nil {
		return nil, resp, err
	}
	c := &wsClient{t: e.t, conn: conn}
	e.t.Cleanup(func() { _ = conn.Close() })
	return c, resp, nil
}

// connect dials with a cookie of a registered user and fails the test on
// error.
func (e *env) connect(cookie string) *wsClient {
	e.t.Helper()
	c, _, err := e.dial(dialOpt{cookie: cookie})
	if err != nil {
		e.t.Fatalf("dial: %v", err)
	}
	return c
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	var data []byte
	switch v := v.(type) {
	case string:
		data = []byte(v)
	case []byte:
		data = v
	case ws.Request:
		data = v.Encode()
	default:
		c.t.Fatalf("send %T", v)
	}
	if err := c.conn.WriteMessage(websocket.TextMessage, data); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next reads one frame; it fails the test after 20 s.
func (c *wsClient) next() ws.Frame {
	c.t.Helper()
	f, err := c.read(20 * time.Second)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return f
}

func (c *wsClient) read(timeout time.Duration) (ws.Frame, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	_, data, err := c.conn.ReadMessage()
	if err != nil {
		return ws.Frame{}, err
	}
	return ws.DecodeFrame(data)
}

// expect reads the next frame and checks its type (and code for errors).
func (c *wsClient) expect(typ string, code ws.Code) ws.Frame {
	c.t.Helper()
	f := c.next()
	if f.Type != typ || f.Code != code {
		c.t.Fatalf("got %+v, want type %q code %q", f, typ, code)
	}
	return f
}

// closeCode reads until the connection ends and returns the close code.
func (c *wsClient) closeCode() int {
	c.t.Helper()
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, _, err := c.conn.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		c.t.Fatalf("connection ended without a close frame: %v", err)
	}
}

func subscribe(topic, id string) ws.Request {
	return ws.Request{Type: ws.TypeSubscribe, Topic: topic, ID: id}
}

func unsubscribe(topic, id string) ws.Request {
	return ws.Request{Type: ws.TypeUnsubscribe, Topic: topic, ID: id}
}

// items decodes the positions of a frame.
func items(t testing.TB, f ws.Frame) []contract.Position {
	t.Helper()
	ps, err := f.Items()
	if err != nil {
		t.Fatalf("frame items: %v", err)
	}
	return ps
}

// counter reads a counter or gauge of the test registry.
func (e *env) metric(name string, labels ...string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			if !labelsMatch(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
		return sum
	}
	return 0
}

func labelsMatch(m *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == kv[i] && lp.GetValue() == kv[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

var uuidSeq atomic.Int64

// newEventID returns a fresh canonical event id.
func newEventID() string {
	n := uuidSeq.Add(1)
	return fmt.Sprintf("%08x-0000-4000-8000-%012x", time.Now().UnixNano()&0xffffffff, n)
}

func topicOf(eventID string) string { return ws.EventTopic(eventID) }

// natsSubs counts the server's subscriptions on an event's topic subject.
func (e *env) natsSubs(eventID string) int {
	e.t.Helper()
	sz, err := e.nats.Server.Subsz(&natsserver.SubszOptions{Subscriptions: true, Test: contract.PositionSubject(eventID, "probe")})
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, s := range sz.Subs {
		if s.Subject == contract.EventSubject(eventID) {
			n++
		}
	}
	return n
}
