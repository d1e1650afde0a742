package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"trm-live/bridge"
	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/testkit"
)

// env is one test's world: its own embedded NATS, a unique Redis stream on
// the shared Redis (or a private one), and a fresh database with the
// Directus stand-in tables.
type env struct {
	t        *testing.T
	nats     *testkit.NATS
	js       jetstream.JetStream
	rdb      *redis.Client
	redisURL string
	stream   string
	group    string
	dsn      string
	pool     *pgxpool.Pool
	base     time.Time // fix time of generated entries
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWithRedis(t, nil)
}

// natsOptions are the embedded NATS server's options.
type natsOptions = server.Options

// newEnvWithNATS starts the NATS server with configure applied.
func newEnvWithNATS(t *testing.T, configure func(*natsOptions)) *env {
	t.Helper()
	return newEnvWith(t, nil, configure)
}

// newEnvWithRedis uses the private server r when given.
func newEnvWithRedis(t *testing.T, r *testkit.RedisServer) *env {
	t.Helper()
	return newEnvWith(t, r, nil)
}

func newEnvWith(t *testing.T, r *testkit.RedisServer, configure func(*natsOptions)) *env {
	t.Helper()
	e := &env{t: t, stream: testkit.Unique("positions"), group: testkit.Unique("bridge")}
	if configure != nil {
		e.nats = testkit.StartNATS(t, configure)
	} else {
		e.nats = testkit.StartNATS(t)
	}
	e.js = e.nats.JetStream(t)
	if r == nil {
		e.rdb = testkit.Redis(t)
		e.redisURL = os.Getenv(testkit.EnvRedisURL)
	} else {
		e.redisURL = r.URL
		opts, err := redis.ParseURL(r.URL)
		if err != nil {
			t.Fatal(err)
		}
		e.rdb = redis.NewClient(opts)
		t.Cleanup(func() { _ = e.rdb.Close() })
	}
	e.dsn = testkit.Postgres(t)
	testkit.SeedDirectusTables(t, e.dsn)
	e.pool = testkit.Pool(t, e.dsn)
	e.base = time.Now().Add(-time.Hour).Truncate(time.Second).UTC()
	return e
}

func (e *env) config(consumer string) (bridge.Config, *prometheus.Registry) {
	e.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	return bridge.Config{
		NATSURL:     e.nats.URL,
		RedisURL:    e.redisURL,
		DatabaseURL: e.dsn,
		Streams:     []string{e.stream},
		Group:       e.group,
		Consumer:    consumer,
		Block:       200 * time.Millisecond,
		// TRM_TEST_BRIDGE_PUBLISH_MODE=batch runs every test in batch mode.
		PublishMode: os.Getenv("TRM_TEST_BRIDGE_PUBLISH_MODE"),
		Listener:    ln,
		Registerer:  reg,
		Logger:      slog.New(slog.NewTextHandler(e.t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})),
	}, reg
}

// running is a bridge started in the background.
type running struct {
	cancel context.CancelFunc
	done   chan error
	addr   string
}

func (e *env) start(cfg bridge.Config) *running {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1), addr: cfg.Listener.Addr().String()}
	go func() { r.done <- bridge.Run(ctx, cfg) }()
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			e.t.Error("bridge did not stop within 30s")
		}
	})
	return r
}

// stop cancels the bridge and returns what Run returned.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	return r.wait(t)
}

func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("bridge did not return within 30s")
		return nil
	}
}

// entry is the fields of the i-th generated position: devices dev-000 to
// dev-<devices-1>, one fix per second each, so every entry has its own
// Nats-Msg-Id.
func (e *env) entry(i, devices int) map[string]any {
	ts := e.base.Add(time.Duration(i/devices) * time.Second)
	f := map[string]any{
		"device_id": fmt.Sprintf("dev-%03d", i%devices),
		"lat":       strconv.FormatFloat(45.6+float64(i%1000)/1e5, 'f', 6, 64),
		"lon":       strconv.FormatFloat(9.28+float64(i%777)/1e5, 'f', 6, 64),
		"speed":     "123.4",
		"sats":      "9",
	}
	if i%2 == 0 {
		f["ts"] = strconv.FormatInt(ts.UnixMilli(), 10)
	} else {
		f["ts"] = ts.Format(time.RFC3339Nano)
	}
	return f
}

// add XADDs entries from..to-1 (pipelined) and returns their ids.
func (e *env) add(from, to, devices int) []string {
	e.t.Helper()
	return e.addTo(e.rdb, from, to, devices)
}

func (e *env) addTo(rdb *redis.Client, from, to, devices int) []string {
	e.t.Helper()
	ctx := context.Background()
	var ids []string
	for lo := from; lo < to; lo += 1000 {
		pipe := rdb.Pipeline()
		var cmds []*redis.StringCmd
		for i := lo; i < min(lo+1000, to); i++ {
			cmds = append(cmds, pipe.XAdd(ctx, &redis.XAddArgs{Stream: e.stream, Values: e.entry(i, devices)}))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			e.t.Fatalf("xadd: %v", err)
		}
		for _, c := range cmds {
			ids = append(ids, c.Val())
		}
	}
	return ids
}

func (e *env) xadd(fields map[string]any) string {
	e.t.Helper()
	id, err := e.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: e.stream, Values: fields}).Result()
	if err != nil {
		e.t.Fatalf("xadd: %v", err)
	}
	return id
}

// msgs is the number of messages in a JetStream stream (0 when missing).
// recreateStream deletes POSITIONS and creates it again, empty: what an
// operator's mistake or a lost volume leaves behind.
func (e *env) recreateStream() {
	e.t.Helper()
	ctx := context.Background()
	if err := e.js.DeleteStream(ctx, streams.Positions); err != nil {
		e.t.Fatal(err)
	}
	if err := streams.Ensure(ctx, e.js, streams.Options{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) msgs(name string) uint64 {
	e.t.Helper()
	n, err := e.msgsErr(name)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) msgsErr(name string) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream info %s: %w", name, err)
	}
	return info.State.Msgs, nil
}

// subjects counts the POSITIONS messages per subject matching filter.
func (e *env) subjects(filter string) map[string]uint64 {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), streams.Positions)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(filter))
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.Subjects
}

// pending is the group's count of delivered, unacknowledged entries.
func (e *env) pending() int64 {
	e.t.Helper()
	p, err := e.rdb.XPending(context.Background(), e.stream, e.group).Result()
	if err != nil {
		if redis.HasErrorPrefix(err, "NOGROUP") {
			return 0
		}
		e.t.Fatalf("xpending: %v", err)
	}
	return p.Count
}

// waitAll waits until POSITIONS holds want messages and nothing is pending.
func (e *env) waitAll(want uint64, timeout time.Duration) {
	e.t.Helper()
	testkit.Eventually(e.t, timeout, func() error {
		got, err := e.msgsErr(streams.Positions)
		if err != nil {
			return err
		}
		p := e.pending()
		if got != want || p != 0 {
			return fmt.Errorf("POSITIONS has %d messages (want %d), %d entries pending", got, want, p)
		}
		return nil
	})
}

// seedEvent creates an organization and an event and returns the event id.
func (e *env) seedEvent(name string) string {
	e.t.Helper()
	ctx := context.Background()
	var org, ev string
	if err := e.pool.QueryRow(ctx, `INSERT INTO organizations (id, name) VALUES (gen_random_uuid(), $1) RETURNING id::text`, name+" org").Scan(&org); err != nil {
		e.t.Fatal(err)
	}
	if err := e.pool.QueryRow(ctx, `INSERT INTO events (id, organization_id, name) VALUES (gen_random_uuid(), $1, $2) RETURNING id::text`, org, name).Scan(&ev); err != nil {
		e.t.Fatal(err)
	}
	return ev
}

// assign adds an event_devices row; nil bounds are open.
func (e *env) assign(event, device string, from, until *time.Time) {
	e.t.Helper()
	if _, err := e.pool.Exec(context.Background(),
		`INSERT INTO event_devices (id, event_id, device_id, assigned_from, assigned_until) VALUES (gen_random_uuid(), $1, $2, $3, $4)`,
		event, device, from, until); err != nil {
		e.t.Fatal(err)
	}
}

// metric sums every series of the named metric whose labels include want.
func metric(t *testing.T, reg *prometheus.Registry, name string, want ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(want); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == want[i] && l.GetValue() == want[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// msgIDs counts the POSITIONS messages per Nats-Msg-Id.
func (e *env) msgIDs() map[string]int {
	e.t.Helper()
	ctx := context.Background()
	total := e.msgs(streams.Positions)
	c, err := e.js.OrderedConsumer(ctx, streams.Positions, jetstream.OrderedConsumerConfig{})
	if err != nil {
		e.t.Fatal(err)
	}
	seen := map[string]int{}
	for got := uint64(0); got < total; {
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			e.t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			seen[m.Headers().Get(jetstream.MsgIDHeader)]++
			n++
		}
		if n == 0 {
			e.t.Fatalf("read %d of %d messages: %v", got, total, batch.Error())
		}
		got += uint64(n)
	}
	return seen
}

// msgIDOf is the Nats-Msg-Id the bridge gives an entry.
func msgIDOf(t *testing.T, fields map[string]any) string {
	t.Helper()
	p, err := contract.ParseEntry(fields, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return p.MsgID()
}
