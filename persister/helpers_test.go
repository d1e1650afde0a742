package persister_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/persister"
	"trm-live/testkit"
)

// env is one test's servers: a private nats-server and a fresh database.
type env struct {
	nats *testkit.NATS
	js   jetstream.JetStream
	dsn  string
	pool *pgxpool.Pool
}

func newEnv(t *testing.T, withStreams bool) *env {
	t.Helper()
	return newEnvDSN(t, testkit.Postgres(t), withStreams)
}

func newEnvDSN(t *testing.T, dsn string, withStreams bool) *env {
	t.Helper()
	n := testkit.StartNATS(t)
	e := &env{nats: n, js: n.JetStream(t), dsn: dsn, pool: testkit.Pool(t, dsn)}
	if withStreams {
		e.ensureStreams(t)
	}
	return e
}

func (e *env) ensureStreams(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, e.js, streams.Options{}); err != nil {
		t.Fatal(err)
	}
}

// config is a Config literal tuned for tests: small batches, short waits.
func (e *env) config(t *testing.T) persister.Config {
	return persister.Config{
		NATSURL:        e.nats.URL,
		DatabaseURL:    e.dsn,
		BatchSize:      100,
		FetchMaxWait:   20 * time.Millisecond,
		MaxAckPending:  1000,
		AckWait:        5 * time.Second,
		BackoffMin:     50 * time.Millisecond,
		BackoffMax:     time.Second,
		VerifyInterval: 250 * time.Millisecond,
		Logger:         slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// instance is one running persister with its HTTP address.
type instance struct {
	addr string
	stop func()
}

// start runs the persister until the test ends (or stop), and checks that
// Run returns nil on a clean shutdown.
func start(t *testing.T, cfg persister.Config) *instance {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener = ln
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- persister.Run(ctx, cfg) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v on shutdown, want nil", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return within 30s of cancel")
		}
	}
	t.Cleanup(stop)
	return &instance{addr: ln.Addr().String(), stop: stop}
}

func (in *instance) get(path string) (int, string, error) {
	resp, err := http.Get("http://" + in.addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metric returns the value of one series from /metrics ("name" or
// `name{label="v"}`), 0 when absent.
func (in *instance) metric(t *testing.T, series string) float64 {
	t.Helper()
	code, body, err := in.get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if ok && name == series {
			f, err := strconv.ParseFloat(val, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

func (in *instance) waitReady(t *testing.T, want bool) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, func() error {
		code, body, err := in.get("/readyz")
		if err != nil {
			return err
		}
		if (code == 200) != want {
			return fmt.Errorf("/readyz %d %q, want ready=%v", code, body, want)
		}
		return nil
	})
}

var base = time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)

const eventA = "7c1e0000-0000-4000-8000-000000000001"

// positions returns n distinct valid positions over devices devices,
// starting at offset (so calls with different offsets do not overlap).
// Every third is unassigned; optional fields vary.
func positions(n, devices, offset int) []contract.Position {
	out := make([]contract.Position, n)
	for i := range out {
		k := offset + i
		p := contract.Position{
			DeviceID: fmt.Sprintf("dev-%03d", k%devices),
			TS:       base.Add(time.Duration(k/devices) * time.Second).Add(time.Duration(k%devices) * time.Millisecond),
			Lat:      45 + float64(k%1000)/10000,
			Lon:      7 + float64(k%997)/10000,
		}
		if k%3 != 0 {
			p.EventID = eventA
		}
		if k%2 == 0 {
			alt, speed, heading, sats := 231.5, 88.25, float64(k%360), k%20
			p.Alt, p.Speed, p.Heading, p.Sats = &alt, &speed, &heading, &sats
			p.Attrs = []byte(`{"io239":1,"n":` + strconv.Itoa(k) + `}`)
		}
		out[i] = p
	}
	return out
}

// publish sends positions as the bridge does: Encode() bytes on their
// subject with Nats-Msg-Id.
func publish(t *testing.T, js jetstream.JetStream, ps []contract.Position) {
	t.Helper()
	var futures []jetstream.PubAckFuture
	for i := range ps {
		f, err := js.PublishAsync(ps[i].Subject(), ps[i].Encode(), jetstream.WithMsgID(ps[i].MsgID()))
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}
	waitAcks(t, futures)
}

func waitAcks(t *testing.T, futures []jetstream.PubAckFuture) {
	t.Helper()
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publish: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("publish ack not received in 30s")
		}
	}
}

// publishRaw sends arbitrary bytes on a position subject, without a
// Msg-Id (so the dedup window does not absorb re-sends).
func publishRaw(t *testing.T, js jetstream.JetStream, subject string, data []byte) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := js.Publish(ctx, subject, data)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func count(t *testing.T, pool *pgxpool.Pool) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var n int
	err := pool.QueryRow(ctx, "SELECT count(*) FROM positions").Scan(&n)
	return n, err
}

func waitRows(t *testing.T, pool *pgxpool.Pool, want int, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, func() error {
		n, err := count(t, pool)
		if err != nil {
			return err
		}
		if n != want {
			return fmt.Errorf("%d rows, want %d", n, want)
		}
		return nil
	})
}

// checkAllStored fails unless positions holds exactly ps (one row each,
// with the values of the wire).
func checkAllStored(t *testing.T, pool *pgxpool.Pool, ps []contract.Position) {
	t.Helper()
	ctx := context.Background()
	rows, err := pool.Query(ctx, `SELECT device_id, ts, coalesce(event_id::text, ''), lat, lon, alt, speed, heading, sats, attrs::text
		FROM positions`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var dev, event string
		var ts time.Time
		var lat, lon float64
		var alt, speed, heading *float32
		var sats *int16
		var attrs *string
		if err := rows.Scan(&dev, &ts, &event, &lat, &lon, &alt, &speed, &heading, &sats, &attrs); err != nil {
			t.Fatal(err)
		}
		key := contract.MsgID(dev, ts)
		if _, dup := got[key]; dup {
			t.Fatalf("duplicate row %s", key)
		}
		got[key] = fmt.Sprintf("%s %v %v %v %v %v %v %v", event, lat, lon, f(alt), f(speed), f(heading), i16(sats), normJSON(t, attrs))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ps) {
		t.Fatalf("%d rows, want %d", len(got), len(ps))
	}
	for _, p := range ps {
		var alt, speed, heading *float32
		conv := func(v *float64) *float32 {
			if v == nil {
				return nil
			}
			x := float32(*v)
			return &x
		}
		alt, speed, heading = conv(p.Alt), conv(p.Speed), conv(p.Heading)
		var sats *int16
		if p.Sats != nil {
			x := int16(*p.Sats)
			sats = &x
		}
		var attrs *string
		if len(p.Attrs) > 0 {
			x := string(p.Attrs)
			attrs = &x
		}
		want := fmt.Sprintf("%s %v %v %v %v %v %v %v", p.EventID, p.Lat, p.Lon, f(alt), f(speed), f(heading), i16(sats), normJSON(t, attrs))
		if g := got[p.MsgID()]; g != want {
			t.Fatalf("row %s = %q, want %q", p.MsgID(), g, want)
		}
	}
}

func f(v *float32) string {
	if v == nil {
		return "NULL"
	}
	return strconv.FormatFloat(float64(*v), 'g', -1, 32)
}

func i16(v *int16) string {
	if v == nil {
		return "NULL"
	}
	return strconv.Itoa(int(*v))
}

// normJSON re-encodes a JSON object with sorted keys: jsonb reorders keys.
func normJSON(t *testing.T, v *string) string {
	t.Helper()
	if v == nil {
		return "NULL"
	}
	var x any
	if err := json.Unmarshal([]byte(*v), &x); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(x)
	return string(b)
}

// consumerIdle waits until the named consumer has nothing pending and
// nothing unacknowledged: every message was handled.
func consumerIdle(t *testing.T, js jetstream.JetStream, name string) {
	t.Helper()
	testkit.Eventually(t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, streams.Positions, name)
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 || info.NumRedelivered != 0 {
			return fmt.Errorf("consumer %s: pending %d, ack pending %d, redelivered %d", name, info.NumPending, info.NumAckPending, info.NumRedelivered)
		}
		return nil
	})
}
