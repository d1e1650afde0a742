package authsvc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract/auth"
	"trm-live/testkit"
	"trm-live/testkit/directus"
)

// clock is the injected cache clock: tests move time instead of sleeping.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer collects log output from concurrent goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// harness is one authsvc instance with its own NATS, Directus stand-in and
// database (seeded with the Directus tables).
type harness struct {
	t      *testing.T
	nats   *testkit.NATS
	nc     *nats.Conn
	client *auth.Client
	dir    *directus.Server
	dsn    string
	clock  *clock
	reg    *prometheus.Registry
	logs   *syncBuffer
	http   string // base URL of /healthz, /readyz, /metrics
	cfg    Config
	pool   *pgxpool.Pool
	stop   func() // stops the first instance and checks Run returned nil
}

type option func(*harness, *Config)

// withDSN uses a given database instead of a fresh one on the shared server.
func withDSN(dsn string) option { return func(h *harness, _ *Config) { h.dsn = dsn } }

func withConfig(f func(*Config)) option { return func(_ *harness, c *Config) { f(c) } }

func newHarness(t *testing.T, opts ...option) *harness {
	t.Helper()
	h := &harness{t: t, clock: &clock{t: time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)}, logs: &syncBuffer{}}
	h.nats = testkit.StartNATS(t)
	h.nc = h.nats.Connect(t)
	h.client = auth.NewClient(h.nc, 5*time.Second)
	h.dir = directus.Start(t)
	cfg := Config{}
	for _, o := range opts {
		o(h, &cfg)
	}
	if h.dsn == "" {
		h.dsn = testkit.Postgres(t)
		testkit.SeedDirectusTables(t, h.dsn)
	}
	h.cfg = cfg
	_, h.stop = h.start()
	return h
}

// start runs one authsvc instance on the harness's servers and waits until
// both endpoints answer. It is stopped at cleanup, and Run must return nil.
func (h *harness) start() (reg *prometheus.Registry, stop func()) {
	h.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	reg = prometheus.NewRegistry()
	cfg := h.cfg
	cfg.NATSURL = h.nats.URL
	cfg.DatabaseURL = h.dsn
	cfg.DirectusURL = h.dir.URL
	cfg.Listener = ln
	cfg.Registerer = reg
	cfg.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.Now == nil {
		cfg.Now = h.clock.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					h.t.Errorf("Run returned %v, want nil after a clean shutdown", err)
				}
			case <-time.After(30 * time.Second):
				h.t.Error("Run did not return 30 s after cancel")
			}
		})
	}
	h.t.Cleanup(stop)
	if h.reg == nil {
		h.reg = reg
		h.http = "http://" + ln.Addr().String()
	}
	h.waitReady()
	return reg, stop
}

// waitReady polls until both endpoints answer (a bad request is an answer).
func (h *harness) waitReady() {
	h.t.Helper()
	testkit.Eventually(h.t, 10*time.Second, func() error {
		for _, subj := range []string{auth.SessionSubject, auth.EventSubject} {
			msg, err := h.nc.Request(subj, []byte("x"), time.Second)
			if err != nil {
				return fmt.Errorf("%s: %v", subj, err)
			}
			if msg.Header.Get(micro.ErrorCodeHeader) != auth.CodeBadRequest {
				return fmt.Errorf("%s: unexpected answer %q", subj, msg.Data)
			}
		}
		return nil
	})
}

// raw sends payload to subject and returns the error code ("" on success),
// the description and the body.
func (h *harness) raw(subject string, payload []byte) (code, desc string, body []byte) {
	h.t.Helper()
	msg, err := h.nc.Request(subject, payload, 5*time.Second)
	if err != nil {
		h.t.Fatalf("request %s: %v", subject, err)
	}
	return msg.Header.Get(micro.ErrorCodeHeader), msg.Header.Get(micro.ErrorHeader), msg.Data
}

func (h *harness) session(req auth.SessionRequest) (auth.User, error) {
	h.t.Helper()
	return h.client.Session(context.Background(), req)
}

func (h *harness) mustSession(req auth.SessionRequest) auth.User {
	h.t.Helper()
	u, err := h.session(req)
	if err != nil {
		h.t.Fatalf("Session: %v", err)
	}
	return u
}

func (h *harness) authorize(u auth.User, event string) (auth.Decision, error) {
	h.t.Helper()
	return h.client.Authorize(context.Background(), u, event)
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}

// counter reads one labelled counter of the harness's first instance.
func (h *harness) counter(name string, labels ...string) float64 {
	h.t.Helper()
	return metricValue(h.t, h.reg, name, labels...)
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// sql runs statements on the harness's database.
func (h *harness) sql(stmt string, args ...any) {
	h.t.Helper()
	if h.pool == nil {
		h.pool = testkit.Pool(h.t, h.dsn)
	}
	if _, err := h.pool.Exec(context.Background(), stmt, args...); err != nil {
		h.t.Fatalf("%s: %v", strings.TrimSpace(stmt), err)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
