package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"trm-live/authsvc"
	"trm-live/bridge"
	"trm-live/broadcaster"
	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/contract/ws"
	"trm-live/persister"
	"trm-live/testkit"
	"trm-live/testkit/directus"
)

// startTestCluster starts three nodes from a deploy/nats configuration.
func startTestCluster(t *testing.T, conf string) *Cluster {
	t.Helper()
	dir := t.TempDir() // before Cleanup: the nodes stop before it is removed
	c, err := StartCluster(ClusterConfig{Nodes: 3, Dir: dir, ConfigFile: filepath.Join(deployDir(t), "nats", conf)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	return c
}

// connect opens a client connection as user, reconnecting forever. A
// worker's user gets the worker's inbox prefix, the only one its
// permissions let it read.
func connect(t *testing.T, c *Cluster, user string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	base := []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}
	if user != "ops" {
		base = append(base, nats.CustomInboxPrefix(contract.InboxPrefix(user)))
	}
	nc, err := nats.Connect(c.URL(user), append(base, opts...)...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// logBuffer collects every worker's log; it is printed when the test fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func newLogs(t *testing.T) *logBuffer {
	b := &logBuffer{}
	t.Cleanup(func() {
		// VERIFY_WORKER_LOGS=1 prints them on success too.
		if t.Failed() || os.Getenv("VERIFY_WORKER_LOGS") != "" {
			b.mu.Lock()
			s := b.buf.String()
			b.mu.Unlock()
			if len(s) > 64<<10 {
				s = "…" + s[len(s)-64<<10:]
			}
			t.Logf("worker logs:\n%s", s)
		}
	})
	return b
}

func (b *logBuffer) logger(worker string) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelInfo})).With("worker", worker)
}

// runWorker runs a worker's Run until the test ends, then requires that it
// returned nil (a clean shutdown).
func runWorker(t *testing.T, name string, run func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: Run returned %v after cancel, want nil", name, err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("%s: Run did not return within 60s of cancel", name)
		}
	})
	// A worker that fails at start fails the test at once.
	select {
	case err := <-done:
		t.Fatalf("%s: Run returned at start: %v", name, err)
	case <-time.After(50 * time.Millisecond):
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// liveClient is a browser-like /ws-live client that records every position
// it receives (snapshot or live) by device and fix time.
type liveClient struct {
	conn *websocket.Conn
	mu   sync.Mutex
	got  map[string]bool // device:ts ms
	last map[string]int64
	errs []string
	subs int
}

func dialLive(t *testing.T, addr, cookie, eventID string) *liveClient {
	t.Helper()
	h := http.Header{}
	h.Set("Cookie", directus.CookieName+"="+cookie)
	conn, resp, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws-live", h)
	if err != nil {
		t.Fatalf("dial /ws-live on %s: %v", addr, err)
	}
	resp.Body.Close()
	lc := &liveClient{conn: conn, got: map[string]bool{}, last: map[string]int64{}}
	t.Cleanup(func() { conn.Close() })
	go lc.read()
	req := ws.Request{Type: ws.TypeSubscribe, Topic: ws.EventTopic(eventID), ID: "c1"}
	if err := conn.WriteMessage(websocket.TextMessage, req.Encode()); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, func() error {
		lc.mu.Lock()
		defer lc.mu.Unlock()
		if len(lc.errs) > 0 {
			return fmt.Errorf("client errors: %v", lc.errs)
		}
		if lc.subs == 0 {
			return errors.New("not subscribed yet")
		}
		return nil
	})
	return lc
}

func (lc *liveClient) read() {
	for {
		_, data, err := lc.conn.ReadMessage()
		if err != nil {
			return
		}
		f, err := ws.DecodeFrame(data)
		lc.mu.Lock()
		switch {
		case err != nil:
			lc.errs = append(lc.errs, err.Error())
		case f.Type == ws.TypeError:
			lc.errs = append(lc.errs, string(f.Code)+": "+f.Message)
		case f.Type == ws.TypeSubscribed || f.Type == ws.TypePositions:
			if f.Type == ws.TypeSubscribed {
				lc.subs++
			}
			items, err := f.Items()
			if err != nil {
				lc.errs = append(lc.errs, err.Error())
			}
			for _, p := range items {
				ms := p.TS.UnixMilli()
				lc.got[p.DeviceID+":"+strconv.FormatInt(ms, 10)] = true
				if ms > lc.last[p.DeviceID] {
					lc.last[p.DeviceID] = ms
				}
			}
		}
		lc.mu.Unlock()
	}
}

// missing returns how many of keys the client has not received.
func (lc *liveClient) missing(keys []string) int {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	n := 0
	for _, k := range keys {
		if !lc.got[k] {
			n++
		}
	}
	return n
}

// pipeline is the whole system on one cluster.
type pipeline struct {
	cluster  *Cluster
	rdb      *redis.Client
	pool     *pgxpool.Pool
	stream   string // Redis stream key
	eventID  string
	devices  []string
	cookie   string
	liveAddr []string          // one per broadcaster
	http     map[string]string // worker -> address of /healthz, /readyz
	base     time.Time
	next     int // positions produced so far
}

// devices is how many devices the event has.
const devices = 200

func startPipeline(t *testing.T, c *Cluster, broadcasters int) *pipeline {
	t.Helper()
	logs := newLogs(t)
	dsn := testkit.Postgres(t)
	testkit.SeedDirectusTables(t, dsn)
	pool := testkit.Pool(t, dsn)
	rdb := testkit.Redis(t)
	dx := directus.Start(t)

	p := &pipeline{cluster: c, rdb: rdb, pool: pool, stream: testkit.Unique("telemetry"), http: map[string]string{},
		eventID: directus.NewID(), base: time.Now().Add(-time.Hour).Truncate(time.Second)}
	user := dx.AddUser(directus.User{Email: "viewer@example.com", Password: "viewer-password"})
	directus.InsertUsers(t, dsn, user)
	org := directus.NewID()
	ctx := context.Background()
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO organizations (id, name) VALUES ($1, 'org')`, org)
	exec(`INSERT INTO events (id, organization_id, name) VALUES ($1, $2, 'race')`, p.eventID, org)
	exec(`INSERT INTO organization_users (id, organization_id, user_id) VALUES ($1, $2, $3)`, directus.NewID(), org, user.ID)
	for i := range devices {
		p.devices = append(p.devices, fmt.Sprintf("dev-%03d", i))
	}
	exec(`INSERT INTO event_devices (id, event_id, device_id)
		SELECT gen_random_uuid(), $1, d FROM unnest($2::text[]) AS d`, p.eventID, p.devices)
	p.cookie = dx.Login(t, user)

	common := map[string]string{"DATABASE_URL": dsn, "LOG_LEVEL": "info"}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range common {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}

	// The bridge creates the streams at three replicas through its normal
	// start-up, as on the cluster of deploy/compose.yml.
	bcfg, err := bridge.LoadConfig(nil, envOf(with(map[string]string{
		"NATS_URL": c.URL("bridge"), "REDIS_URL": redisURL(t), "BRIDGE_STREAMS": p.stream,
		"BRIDGE_GROUP": testkit.Unique("bridge"), "STREAM_REPLICAS": "3",
		// The lazy-fsync loss check every second, so it surely runs (under
		// the bridge's permissions) across the failover.
		"BRIDGE_VERIFY_INTERVAL": "1s",
	})))
	if err != nil {
		t.Fatal(err)
	}
	bcfg.Logger, bcfg.Listener = logs.logger("bridge"), listen(t)
	p.http["bridge"] = bcfg.Listener.Addr().String()
	runWorker(t, "bridge", func(ctx context.Context) error { return bridge.Run(ctx, bcfg) })

	pcfg, err := persister.LoadConfig(nil, envOf(with(map[string]string{"NATS_URL": c.URL("persister")})))
	if err != nil {
		t.Fatal(err)
	}
	pcfg.Logger, pcfg.Listener = logs.logger("persister"), listen(t)
	p.http["persister"] = pcfg.Listener.Addr().String()
	runWorker(t, "persister", func(ctx context.Context) error { return persister.Run(ctx, pcfg) })

	acfg, err := authsvc.LoadConfig(nil, envOf(with(map[string]string{"NATS_URL": c.URL("authsvc"), "DIRECTUS_URL": dx.URL})))
	if err != nil {
		t.Fatal(err)
	}
	acfg.Logger, acfg.Listener = logs.logger("authsvc"), listen(t)
	p.http["authsvc"] = acfg.Listener.Addr().String()
	runWorker(t, "authsvc", func(ctx context.Context) error { return authsvc.Run(ctx, acfg) })

	for i := range broadcasters {
		cfg, err := broadcaster.LoadConfig(nil, envOf(map[string]string{"NATS_URL": c.URL("broadcaster")}))
		if err != nil {
			t.Fatal(err)
		}
		l := listen(t)
		cfg.Logger, cfg.Listener = logs.logger(fmt.Sprintf("broadcaster-%d", i+1)), l
		p.liveAddr = append(p.liveAddr, l.Addr().String())
		p.http[fmt.Sprintf("broadcaster-%d", i+1)] = l.Addr().String()
		runWorker(t, fmt.Sprintf("broadcaster-%d", i+1), func(ctx context.Context) error { return broadcaster.Run(ctx, cfg) })
	}

	// Streams at R3, every replica current.
	js, err := jetstream.New(connect(t, c, "ops"))
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 60*time.Second, func() error {
		for _, name := range []string{streams.Positions, streams.DLQ} {
			s, err := js.Stream(ctx, name)
			if err != nil {
				return fmt.Errorf("stream %s: %w", name, err)
			}
			info := s.CachedInfo()
			if info.Config.Replicas != 3 {
				return fmt.Errorf("stream %s: %d replicas, want 3", name, info.Config.Replicas)
			}
			if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
				return fmt.Errorf("stream %s: cluster %+v", name, info.Cluster)
			}
		}
		return nil
	})
	// Every worker ready with its own NATS user: the permissions of
	// deploy/nats/accounts.conf cover what each one's /readyz checks.
	testkit.Eventually(t, 60*time.Second, func() error {
		for w, addr := range p.http {
			resp, err := http.Get("http://" + addr + "/readyz")
			if err != nil {
				return fmt.Errorf("%s /readyz: %w", w, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s /readyz: %s %s", w, resp.Status, strings.TrimSpace(string(body)))
			}
		}
		return nil
	})
	return p
}

// redisURL is the shared test Redis's URL.
func redisURL(t *testing.T) string {
	t.Helper()
	testkit.Redis(t) // fails with the actionable message when unset
	return os.Getenv(testkit.EnvRedisURL)
}

// produce appends n positions to Redis, round-robin over the devices, fix
// times one millisecond apart per step, and returns their device:ts keys.
func (p *pipeline) produce(t *testing.T, n int) []string {
	t.Helper()
	ctx := context.Background()
	keys := make([]string, 0, n)
	for range n {
		k := p.next
		p.next++
		dev := p.devices[k%len(p.devices)]
		ms := p.base.Add(time.Duration(k) * time.Millisecond).UnixMilli()
		err := p.rdb.XAdd(ctx, &redis.XAddArgs{Stream: p.stream, Values: map[string]any{
			"device_id": dev, "ts": strconv.FormatInt(ms, 10),
			"lat": fmt.Sprintf("%.5f", 45+float64(k%1000)/1e4), "lon": "7.68612",
		}}).Err()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, dev+":"+strconv.FormatInt(ms, 10))
	}
	return keys
}

// stored counts the event's positions in the database.
func (p *pipeline) stored() (int, error) {
	var n int
	err := p.pool.QueryRow(context.Background(),
		`SELECT count(*) FROM positions WHERE event_id = $1`, p.eventID).Scan(&n)
	return n, err
}

func (p *pipeline) waitStored(t *testing.T, want int, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, func() error {
		n, err := p.stored()
		if err != nil {
			return err
		}
		if n != want {
			return fmt.Errorf("%d positions in the database, want %d", n, want)
		}
		return nil
	})
}

func waitReceived(t *testing.T, clients []*liveClient, keys []string, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, func() error {
		for i, c := range clients {
			if m := c.missing(keys); m > 0 {
				return fmt.Errorf("client %d misses %d of %d positions", i+1, m, len(keys))
			}
		}
		return nil
	})
}

// TestClusterPipelineSurvivesNodeLoss runs every worker, with its own NATS
// user and permissions from deploy/nats, on three nodes with the streams at
// three replicas, kills the POSITIONS leader while positions flow, restarts
// it, and proves that nothing is lost: every position reaches the database,
// and the clients of two broadcasters receive every position in steady
// state and the newest of every device across the failure.
//
// The steady phases send one position per device: the contract lets the
// broadcaster coalesce a device's pending positions to its newest (a busy
// machine makes the bridge publish in bursts), so "every position at the
// client" is exact only when no device has two in flight; the newest of
// every device is always delivered.
func TestClusterPipelineSurvivesNodeLoss(t *testing.T) {
	t.Parallel()
	c := startTestCluster(t, "prod.conf")
	p := startPipeline(t, c, 2)
	var clients []*liveClient
	for _, addr := range p.liveAddr {
		clients = append(clients, dialLive(t, addr, p.cookie, p.eventID))
	}

	// Steady state: every position at the database and at both clients.
	before := p.produce(t, devices)
	p.waitStored(t, len(before), 60*time.Second)
	waitReceived(t, clients, before, 30*time.Second)

	// Kill the node leading POSITIONS while positions flow.
	js, err := jetstream.New(connect(t, c, "ops"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(context.Background(), streams.Positions)
	if err != nil {
		t.Fatal(err)
	}
	leader := s.CachedInfo().Cluster.Leader
	victim := -1
	for i := range c.Size() {
		if c.Server(i).Name() == leader {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("leader %q is none of the nodes", leader)
	}
	var during []string
	during = append(during, p.produce(t, 400)...)
	c.Stop(victim)
	t.Logf("stopped %s, the POSITIONS leader", leader)
	// Positions keep flowing through the two remaining nodes.
	during = append(during, p.produce(t, 1000)...)
	testkit.Eventually(t, 60*time.Second, func() error {
		n, err := p.stored()
		if err != nil {
			return err
		}
		if n <= len(before)+400 {
			return fmt.Errorf("no progress while %s is down: %d stored", leader, n)
		}
		return nil
	})
	if err := c.Restart(victim); err != nil {
		t.Fatal(err)
	}
	t.Logf("restarted %s", leader)
	during = append(during, p.produce(t, 400)...)
	p.waitStored(t, len(before)+len(during), 90*time.Second)

	// The restarted node caught up: every replica current again.
	testkit.Eventually(t, 60*time.Second, func() error {
		s, err := js.Stream(context.Background(), streams.Positions)
		if err != nil {
			return err
		}
		info := s.CachedInfo()
		if info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			return fmt.Errorf("cluster %+v", info.Cluster)
		}
		for _, r := range info.Cluster.Replicas {
			if !r.Current || r.Offline {
				return fmt.Errorf("replica %s not current", r.Name)
			}
		}
		return nil
	})

	// Across the failure each client got at least the newest position of
	// every device (the contract: latest per device is never dropped).
	latest := map[string]int64{}
	for _, k := range append(before, during...) {
		dev, ms, _ := strings.Cut(k, ":")
		v, _ := strconv.ParseInt(ms, 10, 64)
		latest[dev] = max(latest[dev], v)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		for i, cl := range clients {
			cl.mu.Lock()
			for dev, ms := range latest {
				if cl.last[dev] != ms {
					cl.mu.Unlock()
					return fmt.Errorf("client %d: device %s last %d, want %d", i+1, dev, cl.last[dev], ms)
				}
			}
			cl.mu.Unlock()
		}
		return nil
	})

	// Steady state again: every position at both clients and the database.
	after := p.produce(t, devices)
	p.waitStored(t, len(before)+len(during)+len(after), 60*time.Second)
	waitReceived(t, clients, after, 30*time.Second)

	// The bridge's lazy-fsync loss check ran with the bridge's NATS user and
	// found nothing lost: on three nodes with sync always, an acknowledged
	// position survives the loss of the stream leader.
	testkit.Eventually(t, 30*time.Second, func() error {
		checks, err := metric(p.http["bridge"], "bridge_jetstream_loss_checks_total")
		if err != nil {
			return err
		}
		if checks < 3 {
			return fmt.Errorf("%v loss checks so far", checks)
		}
		return nil
	})
	if lost, err := metric(p.http["bridge"], "bridge_jetstream_loss_detected_total"); err != nil || lost != 0 {
		t.Errorf("bridge_jetstream_loss_detected_total = %v (%v), want 0", lost, err)
	}

	// A replay of the whole event at max speed, through a broadcaster's
	// own consumer on the R3 stream, under the broadcaster's permissions.
	// It plays each device forward in fix time, so a position stored after
	// a newer one of its device (a publish re-sent across the failover) is
	// skipped as stale; every other position must come.
	want := inOrderPositions(t, js, p.eventID)
	got := replayAll(t, p.liveAddr[0], p.cookie, p.eventID, p.base.Add(-time.Second))
	var missing []string
	for _, k := range want {
		if !got[k] {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		t.Errorf("replay: %d of %d in-order positions missing, e.g. %v", len(missing), len(want), missing[:min(len(missing), 10)])
	}
	t.Logf("replay: %d positions, %d of them stored in fix-time order per device", len(got), len(want))

	var dups int
	if err := p.pool.QueryRow(context.Background(),
		`SELECT count(*) - count(DISTINCT (device_id, ts)) FROM positions`).Scan(&dups); err != nil || dups != 0 {
		t.Fatalf("duplicate rows: %d (%v)", dups, err)
	}
	for i, cl := range clients {
		if m := cl.missing(during); m > 0 {
			t.Logf("client %d: %d of %d positions published during the failure were not delivered one by one (resync gives the newest per device)", i+1, m, len(during))
		}
	}
}

// replayAll replays an event from `from` at max speed on a fresh /ws-live
// connection and returns the device:ts keys of every position received,
// once replay_end arrived.
func replayAll(t *testing.T, addr, cookie, eventID string, from time.Time) map[string]bool {
	t.Helper()
	h := http.Header{}
	h.Set("Cookie", directus.CookieName+"="+cookie)
	conn, resp, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws-live", h)
	if err != nil {
		t.Fatalf("dial /ws-live: %v", err)
	}
	resp.Body.Close()
	defer conn.Close()
	req := fmt.Sprintf(`{"type":"subscribe","topic":%q,"id":"r1","replay":{"from":%q,"speed":"max"}}`,
		ws.EventTopic(eventID), from.UTC().Format(time.RFC3339Nano))
	if err := conn.WriteMessage(websocket.TextMessage, []byte(req)); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	deadline := time.Now().Add(90 * time.Second)
	for {
		_ = conn.SetReadDeadline(deadline)
		_, data, err := conn.ReadMessage()
		if err != nil {
			t.Fatalf("replay: no replay_end (%d positions so far): %v", len(got), err)
		}
		var f struct {
			Type      string            `json:"type"`
			Replay    bool              `json:"replay"`
			Code      string            `json:"code"`
			Message   string            `json:"message"`
			Snapshot  []json.RawMessage `json:"snapshot"`
			Positions []json.RawMessage `json:"positions"`
		}
		if err := json.Unmarshal(data, &f); err != nil {
			t.Fatalf("replay frame %q: %v", data, err)
		}
		switch {
		case f.Type == ws.TypeError:
			t.Fatalf("replay: error %s: %s", f.Code, f.Message)
		case f.Type == "replay_end":
			return got
		case !f.Replay:
			continue // live frames of the same connection, if any
		}
		for _, raw := range append(f.Snapshot, f.Positions...) {
			p, err := contract.DecodePosition(raw)
			if err != nil {
				t.Fatalf("replay position %s: %v", raw, err)
			}
			got[p.DeviceID+":"+strconv.FormatInt(p.TS.UnixMilli(), 10)] = true
		}
	}
}

// inOrderPositions reads the event's positions from POSITIONS in stream
// order and returns the keys of those stored after every older position of
// their device (none of the device's newer positions came first).
func inOrderPositions(t *testing.T, js jetstream.JetStream, eventID string) []string {
	t.Helper()
	var keys []string
	// The JetStream API may be briefly unavailable after the restart.
	testkit.Eventually(t, 60*time.Second, func() error {
		var err error
		keys, err = readInOrder(js, eventID)
		return err
	})
	return keys
}

func readInOrder(js jetstream.JetStream, eventID string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, streams.Positions, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{contract.EventSubject(eventID)},
	})
	if err != nil {
		return nil, err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, err
	}
	n := int(info.NumPending)
	newest := map[string]int64{}
	var keys []string
	for read := 0; read < n; {
		batch, err := cons.Fetch(min(n-read, 500), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, err
		}
		for m := range batch.Messages() {
			read++
			p, err := contract.DecodePosition(m.Data())
			if err != nil {
				return nil, err
			}
			ms := p.TS.UnixMilli()
			if ms > newest[p.DeviceID] {
				newest[p.DeviceID] = ms
				keys = append(keys, p.DeviceID+":"+strconv.FormatInt(ms, 10))
			}
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
	}
	return keys, nil
}

// metric reads one unlabelled counter or gauge from a worker's /metrics.
func metric(addr, name string) (float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s not in /metrics of %s", name, addr)
}
