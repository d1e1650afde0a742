package authsvc

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"trm-live/contract/auth"
	"trm-live/testkit"
	"trm-live/testkit/directus"
)

func TestMalformedAndOversizedRequests(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	big := `{"cookie":"` + strings.Repeat("a", auth.MaxRequestBytes) + `"}`
	cases := []struct {
		name, subject, payload, inDesc string
	}{
		{"session oversized", auth.SessionSubject, big, "exceeds"},
		{"session not JSON", auth.SessionSubject, "cookie=abc", "malformed JSON"},
		{"session empty", auth.SessionSubject, "", "empty request"},
		{"session wrong type", auth.SessionSubject, `{"cookie":42}`, "malformed JSON"},
		{"session array", auth.SessionSubject, `["abc"]`, "malformed JSON"},
		{"session trailing garbage", auth.SessionSubject, `{"cookie":"abc"} x`, "malformed JSON"},
		{"session two credentials", auth.SessionSubject, `{"cookie":"abc","bearer":"def"}`, "not both"},
		{"event oversized", auth.EventSubject, `{"event_id":"` + strings.Repeat("a", auth.MaxRequestBytes) + `"}`, "exceeds"},
		{"event not JSON", auth.EventSubject, "{", "malformed JSON"},
		{"event admin not bool", auth.EventSubject, `{"user_id":"` + directus.NewID() + `","admin":"yes","event_id":"` + directus.NewID() + `"}`, "malformed JSON"},
		{"event bad id", auth.EventSubject, `{"user_id":"` + directus.NewID() + `","event_id":"x"}`, "event_id"},
	}
	for _, c := range cases {
		code, desc, body := h.raw(c.subject, []byte(c.payload))
		if code != auth.CodeBadRequest || !strings.Contains(desc, c.inDesc) || len(body) != 0 {
			t.Errorf("%s: code %q desc %q body %q; want %s with %q", c.name, code, desc, body, auth.CodeBadRequest, c.inDesc)
		}
	}
	if n := h.dir.Calls(""); n != 0 {
		t.Fatalf("bad requests reached Directus %d times", n)
	}
	// The service is still fine.
	u := h.dir.AddUser(directus.User{})
	h.mustSession(auth.SessionRequest{Cookie: h.dir.Login(t, u)})
}

// TestCredentialNeverLoggedOrReturned drives every session path with debug
// logging on and checks that no credential appears in the logs or in any
// answer.
func TestCredentialNeverLoggedOrReturned(t *testing.T) {
	t.Parallel()
	h := newHarness(t, withConfig(func(c *Config) { c.DirectusTimeout = 300 * time.Millisecond }))
	u := h.dir.AddUser(directus.User{Role: directus.NewID(), StaticToken: "static-" + directus.NewID()})
	tok := h.dir.Login(t, u)
	secrets := []string{tok, directus.ForgedToken(tok), h.dir.ExpiredToken(u), u.StaticToken, "bogus-credential-value"}
	var answers []string
	ask := func(req auth.SessionRequest) {
		payload, _ := json.Marshal(req)
		msg, err := h.nc.Request(auth.SessionSubject, payload, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		answers = append(answers, string(msg.Data), msg.Header.Get(micro.ErrorHeader))
		_, err = h.session(req)
		if err != nil {
			answers = append(answers, err.Error())
		}
	}
	for _, s := range secrets {
		ask(auth.SessionRequest{Cookie: s})
		ask(auth.SessionRequest{Bearer: s})
	}
	h.dir.SetStatus(503)
	ask(auth.SessionRequest{Cookie: "other-" + tok})
	h.dir.SetStatus(0)
	h.dir.Stop()
	ask(auth.SessionRequest{Bearer: "down-" + tok})
	h.dir.Start()

	logs := h.logs.String()
	if !strings.Contains(logs, u.ID) {
		t.Fatalf("debug logs do not name the user id; logs:\n%s", logs)
	}
	_, metrics := httpGet(t, h.http+"/metrics")
	for _, s := range secrets {
		// A JWT's header part is shared by every token; look for the
		// distinctive tail.
		tail := s[len(s)-12:]
		for where, text := range map[string]string{"logs": logs, "answers": strings.Join(answers, "\n"), "metrics": metrics} {
			if strings.Contains(text, tail) {
				t.Fatalf("credential ending %q found in %s", tail, where)
			}
		}
	}
}

func TestHTTPEndpoints(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	if code, body := httpGet(t, h.http+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	testkit.CheckHeaderLimit(t, h.http+"/healthz")
	code, body := httpGet(t, h.http+"/readyz")
	if code != http.StatusOK || !strings.Contains(body, `"ready":true`) {
		t.Fatalf("/readyz: %d %s", code, body)
	}
	for _, dep := range []string{"nats", "database", "directus"} {
		if !strings.Contains(body, `"`+dep+`":"ok"`) {
			t.Fatalf("/readyz does not report %s: %s", dep, body)
		}
	}
	u := h.dir.AddUser(directus.User{})
	tok := h.dir.Login(t, u)
	h.mustSession(auth.SessionRequest{Cookie: tok})
	h.mustSession(auth.SessionRequest{Cookie: tok})
	_, _ = h.session(auth.SessionRequest{Cookie: bogusJWT})
	_, _ = h.authorize(auth.User{ID: u.ID}, directus.NewID())
	code, body = httpGet(t, h.http+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`authsvc_requests_total{endpoint="session",outcome="ok"} 2`,
		`authsvc_requests_total{endpoint="session",outcome="unauthorized"} 1`,
		`authsvc_requests_total{endpoint="event",outcome="not_found"} 1`,
		`authsvc_cache_hits_total{cache="session"} 1`,
		`authsvc_cache_misses_total{cache="session"} 2`,
		`authsvc_directus_request_duration_seconds_count{call="users_me",result="ok"} 1`,
		`authsvc_directus_request_duration_seconds_count{call="users_me",result="unauthorized"} 1`,
		`authsvc_db_query_duration_seconds_count{result="ok"} 1`,
		`authsvc_cache_entries{cache="session"} 1`,
		`authsvc_cache_entries{cache="refused"} 1`,
		`authsvc_directus_up 1`,
		`authsvc_request_duration_seconds_count{endpoint="session"}`,
		`authsvc_singleflight_collapsed_total`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestInstancesShareTheLoad runs two instances in the queue group: each
// request is answered once, and both instances answer some.
func TestInstancesShareTheLoad(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	reg2, _ := h.start()
	u := h.dir.AddUser(directus.User{})
	tok := h.dir.Login(t, u)
	// Requests go to one member of the queue group each; keep asking until
	// both instances have answered some (the second one's subscription may
	// reach the server a moment after it reports ready).
	sent := 0
	var a, b float64
	testkit.Eventually(t, 10*time.Second, func() error {
		for i := 0; i < 50; i++ {
			h.mustSession(auth.SessionRequest{Cookie: tok})
			sent++
		}
		a = h.counter("authsvc_requests_total", "endpoint", "session", "outcome", "ok")
		b = metricValue(t, reg2, "authsvc_requests_total", "endpoint", "session", "outcome", "ok")
		if a == 0 || b == 0 {
			return fmt.Errorf("answers per instance: %v and %v", a, b)
		}
		return nil
	})
	if int(a+b) != sent {
		t.Fatalf("instance answers %v + %v, want a total of %d", a, b, sent)
	}
	// Discovery sees two instances of the service.
	inbox := nats.NewInbox()
	sub, err := h.nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.nc.PublishRequest("$SRV.PING."+auth.ServiceName, inbox, nil); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for len(ids) < 2 {
		msg, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("discovery: %d instances answered: %v", len(ids), err)
		}
		var p micro.Ping
		if err := json.Unmarshal(msg.Data, &p); err != nil || p.Name != auth.ServiceName {
			t.Fatalf("ping reply %s: %v", msg.Data, err)
		}
		ids[p.ID] = true
	}
}

// TestShutdownAnswersRequestsInFlight: requests received before the
// shutdown are answered, and Run returns nil.
func TestShutdownAnswersRequestsInFlight(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	u := h.dir.AddUser(directus.User{})
	tok := h.dir.Login(t, u)
	h.dir.SetLatency(500 * time.Millisecond)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := h.client.Session(context.Background(), auth.SessionRequest{Cookie: tok + string(rune('a'+i))})
			errs <- err
		}()
	}
	// Wait until the look-ups are at Directus, then stop the instance.
	testkit.Eventually(t, 10*time.Second, func() error {
		if n := h.dir.Calls("/users/me"); n < 20 {
			return fmt.Errorf("%d look-ups at Directus so far", n)
		}
		return nil
	})
	go h.stop()
	wg.Wait()
	close(errs)
	for err := range errs {
		// The tokens are altered, so Directus refuses them: an answer.
		if err == nil || !strings.Contains(err.Error(), "unauthorized") {
			t.Fatalf("request in flight at shutdown: %v", err)
		}
	}
	if v := h.counter("authsvc_requests_total", "endpoint", "session", "outcome", "unauthorized"); v != 20 {
		t.Fatalf("%v unauthorized answers, want 20", v)
	}
}

// TestStartsWithDependenciesDown: NATS, Directus and PostgreSQL all down at
// start is not an error; authsvc serves once they are back.
func TestStartsWithDependenciesDown(t *testing.T) {
	t.Parallel()
	n := testkit.StartNATS(t)
	n.Shutdown()
	dir := directus.Start(t)
	dir.Stop()
	dsn := testkit.Postgres(t)
	testkit.SeedDirectusTables(t, dsn)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := Config{
		NATSURL: n.URL, DatabaseURL: dsn, DirectusURL: dir.URL, HTTPAddr: "127.0.0.1:0",
		Logger: discardLogger(),
	}
	go func() { done <- Run(ctx, cfg) }()
	select {
	case err := <-done:
		t.Fatalf("Run returned with NATS down: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	n.Restart()
	dir.Start()
	u := dir.AddUser(directus.User{})
	tok := dir.Login(t, u)
	client := auth.NewClient(n.Connect(t), time.Second)
	testkit.Eventually(t, 20*time.Second, func() error {
		_, err := client.Session(context.Background(), auth.SessionRequest{Cookie: tok})
		return err
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestClientWithoutService: no authsvc on NATS is "unavailable".
func TestClientWithoutService(t *testing.T) {
	t.Parallel()
	n := testkit.StartNATS(t)
	c := auth.NewClient(n.Connect(t), 500*time.Millisecond)
	_, err := c.Session(context.Background(), auth.SessionRequest{Cookie: "x"})
	wantErr(t, err, auth.ErrUnavailable)
	_, err = c.Authorize(context.Background(), auth.User{ID: directus.NewID()}, directus.NewID())
	wantErr(t, err, auth.ErrUnavailable)
}

// TestShutdownWithNATSDown: with NATS unreachable there is nothing to drain
// or flush, so shutdown must not wait for AUTHSVC_SHUTDOWN_TIMEOUT (an
// hour here).
func TestShutdownWithNATSDown(t *testing.T) {
	t.Parallel()
	n := testkit.StartNATS(t)
	n.Shutdown()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logs := &syncBuffer{}
	go func() {
		done <- Run(ctx, Config{
			NATSURL: n.URL, DatabaseURL: "postgres://127.0.0.1:1/x", DirectusURL: "http://127.0.0.1:1",
			HTTPAddr: "127.0.0.1:0", ShutdownTimeout: time.Hour,
			Logger: slog.New(slog.NewTextHandler(logs, nil)),
		})
	}()
	testkit.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(logs.String(), "authsvc serving") {
			return fmt.Errorf("not serving yet")
		}
		return nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("shutdown with NATS down waits for the shutdown timeout")
	}
}
