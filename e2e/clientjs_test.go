package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"trm-live/contract/ws"
	"trm-live/testkit"
)

// clientOrigin is the one browser origin of TestClientLibraryInChromium, as
// a production front end has it: the page and the library (clients/js as
// files, no build step), /auth/* and /users/* to Directus (here the
// testkit stand-in), /ws-live to the broadcaster process. It counts the
// WebSocket handshakes the browser makes.
type clientOrigin struct {
	srv        *httptest.Server
	handshakes atomic.Int64
	// withQuery counts handshakes with a query string: none may carry
	// anything in the URL (the credential is the cookie).
	withQuery atomic.Int64
}

func startClientOrigin(t *testing.T, directusURL, broadcasterAddr string) *clientOrigin {
	t.Helper()
	root := testkit.RepoRoot(t)
	dx, err := url.Parse(directusURL)
	if err != nil {
		t.Fatal(err)
	}
	// The proxy keeps the browser's Host, so the broadcaster's same-origin
	// check sees the page's origin, as behind a real reverse proxy.
	toDirectus := httputil.NewSingleHostReverseProxy(dx)
	toBroadcaster := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: broadcasterAddr})
	// While the broadcaster is down the browser's handshake gets a 502,
	// as from a real proxy (the log line would only be noise).
	toBroadcaster.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) {
		w.WriteHeader(http.StatusBadGateway)
	}
	o := &clientOrigin{}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		http.ServeFile(w, r, filepath.Join(root, "e2e", "testdata", "clientjs.html"))
	})
	mux.Handle("/client/", http.StripPrefix("/client/", http.FileServer(http.Dir(filepath.Join(root, "clients", "js")))))
	mux.Handle("/auth/", toDirectus)
	mux.Handle("/users/", toDirectus)
	mux.HandleFunc(ws.Path, func(w http.ResponseWriter, r *http.Request) {
		o.handshakes.Add(1)
		if r.URL.RawQuery != "" {
			o.withQuery.Add(1)
		}
		toBroadcaster.ServeHTTP(w, r)
	})
	o.srv = httptest.NewServer(mux)
	t.Cleanup(o.srv.Close)
	return o
}

// clientSnap is window.snap() of the page.
type clientSnap struct {
	State       string            `json:"state"`
	States      []string          `json:"states"`
	Topic       string            `json:"topic"`
	Latest      map[string]string `json:"latest"`
	Snapshots   int               `json:"snapshots"`
	Positions   int               `json:"positions"`
	Regressions []string          `json:"regressions"`
	Errors      []string          `json:"errors"`
	Replay      struct {
		Snapshots   int      `json:"snapshots"`
		Positions   int      `json:"positions"`
		Ends        int      `json:"ends"`
		Regressions []string `json:"regressions"`
	} `json:"replay"`
}

func (c *chromium) clientSnap(t *testing.T) clientSnap {
	t.Helper()
	var s clientSnap
	if err := c.eval(`window.snap()`, &s); err != nil {
		t.Fatalf("page snap: %v", err)
	}
	if len(s.Regressions) > 0 || len(s.Replay.Regressions) > 0 {
		t.Fatalf("a device went back in time: live %v, replay %v", s.Regressions, s.Replay.Regressions)
	}
	return s
}

func (c *chromium) evalT(t *testing.T, expr string, out any) {
	t.Helper()
	if err := c.eval(expr, out); err != nil {
		t.Fatalf("page: %s: %v", expr, err)
	}
}

// TestClientLibraryInChromium: @trm-live/client (clients/js, loaded as an
// ES module) in headless Chromium against the broadcaster process of the
// pipeline, through one origin. It connects with the session cookie,
// receives the snapshot and live positions; the broadcaster is killed
// (SIGKILL) and restarted: the client reconnects by itself, resubscribes
// and catches up, with no device going back in time; a replay runs to
// replay_end; with authsvc down a reconnect gets 1013 and the client
// reports unavailable, then recovers alone; after logout and a broadcaster
// restart the client reports unauthorized and makes no further handshake.
func TestClientLibraryInChromium(t *testing.T) {
	t.Parallel()
	const devices = 6
	// A session is re-checked at every handshake (no reuse), so the
	// logged-out cookie is refused at the next one.
	p := startPipelineWith(t, devices, map[string]map[string]string{"authsvc": {"AUTHSVC_SESSION_TTL": "1ms"}})
	startProc(t, p.dir, "simulate-run", bin(t, "simulate"), nil,
		"-redis-url", redisURL(t), "-database-url", p.dbURL, "-seed-sql", testkitSeedSQL(t), "-seed-db=false", "-maxlen", "0",
		"-stream", p.stream, "-devices", strconv.Itoa(devices), "-rate", "2", "-duration", "10m")
	origin := startClientOrigin(t, p.dx.URL, p.addrs["broadcaster"])
	topic := ws.EventTopic(p.eventID)

	c := startChromium(t)
	c.navigate(t, origin.srv.URL+"/")
	testkit.Eventually(t, 30*time.Second, func() error {
		var ok bool
		if err := c.eval(`window.ready === true`, &ok); err != nil || !ok {
			return fmt.Errorf("page not ready: %v", err)
		}
		return nil
	})
	var status int
	c.evalT(t, fmt.Sprintf(`window.login(%q, %q)`, demoEmail, "demo"), &status)
	if status != http.StatusOK {
		t.Fatalf("login through the origin: %d", status)
	}

	// 1. Connect (the cookie goes with the handshake), snapshot and live.
	c.evalT(t, fmt.Sprintf(`window.client.subscribe(%q), window.client.connect(), true`, p.eventID), nil)
	var before clientSnap
	testkit.Eventually(t, 60*time.Second, func() error {
		s := c.clientSnap(t)
		if s.State != "open" || s.Topic != topic || s.Snapshots < 1 || len(s.Latest) != devices || s.Positions < 2*devices {
			return fmt.Errorf("page: %s on %q, %d snapshots, %d devices, %d positions, errors %v",
				s.State, s.Topic, s.Snapshots, len(s.Latest), s.Positions, s.Errors)
		}
		before = s
		return nil
	})
	t.Logf("live: %d positions of %d devices, states %v", before.Positions, len(before.Latest), before.States)

	// 2. The broadcaster dies and comes back: the page reconnects alone,
	// resubscribes (a second snapshot) and catches up: every device newer
	// than before the crash, none ever older (clientSnap checks).
	p.broadcast.Kill9()
	testkit.Eventually(t, 30*time.Second, func() error {
		if s := c.clientSnap(t); s.State == "open" {
			return fmt.Errorf("page still open after the broadcaster died")
		}
		return nil
	})
	p.broadcast.Start()
	waitReady(t, p.broadcast, p.addrs["broadcaster"], 60*time.Second)
	var after clientSnap
	testkit.Eventually(t, 60*time.Second, func() error {
		s := c.clientSnap(t)
		if s.State != "open" || s.Snapshots < before.Snapshots+1 || s.Positions < before.Positions+2*devices {
			return fmt.Errorf("page after the restart: %s, %d snapshots, %d positions (had %d), errors %v",
				s.State, s.Snapshots, s.Positions, before.Positions, s.Errors)
		}
		for dev, ts := range before.Latest {
			if s.Latest[dev] <= ts {
				return fmt.Errorf("device %s at %s, not past %s from before the crash", dev, s.Latest[dev], ts)
			}
		}
		after = s
		return nil
	})
	t.Logf("after the restart: %d positions, states %v", after.Positions, after.States)
	c.screenshot(t, filepath.Join(p.dir, "clientjs.png"))

	// 3. Replay a stretch of what the page saw live, with every control,
	// to its replay_end.
	var from string
	for _, ts := range before.Latest {
		if from == "" || ts < from {
			from = ts
		}
	}
	to := after.Latest[firstKey(after.Latest)]
	// Slowly at first, so every control meets a running replay: pause,
	// seek back to the start (a second snapshot), speed max, resume.
	var controls []string
	c.evalT(t, fmt.Sprintf(`(async () => {
		const r = window.replay = window.client.replay(%q, {from: %q, to: %q, speed: 0.1});
		await new Promise((ok) => r.on("snapshot", ok));
		const out = [];
		out.push((await r.pause()).state);
		out.push((await r.seek(%q)).action);
		out.push(String((await r.speed("max")).speed));
		out.push((await r.resume()).state);
		return out;
	})()`, topic, from, to, from), &controls)
	if strings.Join(controls, " ") != "paused seek max playing" {
		t.Fatalf("replay controls answered %v", controls)
	}
	testkit.Eventually(t, 60*time.Second, func() error {
		s := c.clientSnap(t)
		if s.Replay.Ends != 1 {
			return fmt.Errorf("replay: %d snapshots, %d positions, no replay_end yet; errors %v", s.Replay.Snapshots, s.Replay.Positions, s.Errors)
		}
		if s.Replay.Snapshots != 2 || s.Replay.Positions == 0 {
			return fmt.Errorf("replay ended with %d snapshots and %d positions", s.Replay.Snapshots, s.Replay.Positions)
		}
		return nil
	})
	var replayState string
	c.evalT(t, `window.replay.state`, &replayState)
	if replayState != "ended" {
		t.Errorf("replay state %q after replay_end, want ended", replayState)
	}

	// 4. authsvc is down when the page reconnects: the broadcaster closes
	// with 1013, the page reports unavailable and keeps trying (longer
	// waits); once authsvc is back it is open and live again by itself.
	// (The broadcaster is not ready without authsvc, but serves: /healthz.)
	p.authsvc.Kill9()
	p.broadcast.Kill9()
	p.broadcast.Start()
	testkit.Eventually(t, 60*time.Second, func() error {
		resp, err := http.Get("http://" + p.addrs["broadcaster"] + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("broadcaster /healthz: %d", resp.StatusCode)
		}
		return nil
	})
	testkit.Eventually(t, 60*time.Second, func() error {
		if s := c.clientSnap(t); s.State != "unavailable" || s.States[len(s.States)-1] != "unavailable 1013" {
			return fmt.Errorf("page with authsvc down: %s, states %v", s.State, s.States)
		}
		return nil
	})
	p.authsvc.Start()
	waitReady(t, p.authsvc, p.addrs["authsvc"], 60*time.Second)
	testkit.Eventually(t, 60*time.Second, func() error {
		s := c.clientSnap(t)
		if s.State != "open" || s.Snapshots < after.Snapshots+1 || s.Positions < after.Positions+devices {
			return fmt.Errorf("page after authsvc came back: %s, %d snapshots, %d positions (had %d), states %v",
				s.State, s.Snapshots, s.Positions, after.Positions, s.States)
		}
		return nil
	})

	// 5. Logout: the open socket is not re-checked (docs/broadcaster.md),
	// so the broadcaster is restarted (SIGTERM: close 1001); the page's
	// next handshake is refused with 4401: it reports unauthorized and
	// stops.
	c.evalT(t, `window.logout()`, &status)
	if status != http.StatusNoContent {
		t.Fatalf("logout: %d", status)
	}
	p.broadcast.Stop()
	p.broadcast.Start()
	waitReady(t, p.broadcast, p.addrs["broadcaster"], 60*time.Second)
	testkit.Eventually(t, 60*time.Second, func() error {
		if s := c.clientSnap(t); s.State != "unauthorized" {
			return fmt.Errorf("page after logout: %s, states %v", s.State, s.States)
		}
		return nil
	})
	n := origin.handshakes.Load()
	unauthorized := func() float64 {
		return metric(t, p.addrs["broadcaster"], `broadcaster_connections_total{result="unauthorized"}`)
	}
	if u := unauthorized(); u != 1 {
		t.Errorf("broadcaster counted %v unauthorized handshakes since its restart, want 1", u)
	}
	// No retry storm: over a window of twice the page's longest backoff
	// (2 s) a reconnect loop would make at least two more handshakes. This
	// is an observation window for something that must not happen, not a
	// wait for an event.
	<-time.After(5 * time.Second)
	s := c.clientSnap(t)
	if got := origin.handshakes.Load(); got != n {
		t.Errorf("the page made %d handshakes after unauthorized", got-n)
	}
	if u := unauthorized(); u != 1 {
		t.Errorf("broadcaster counted %v unauthorized handshakes, want still 1", u)
	}
	if s.State != "unauthorized" || s.States[len(s.States)-1] != "unauthorized 4401" {
		t.Errorf("page state %s, states %v", s.State, s.States)
	}
	if a := metric(t, p.addrs["broadcaster"], `broadcaster_connections_total{result="accepted"}`); a != 0 {
		t.Errorf("broadcaster accepted %v connections with the logged-out cookie", a)
	}
	c.screenshot(t, filepath.Join(p.dir, "clientjs-unauthorized.png"))
	if q := origin.withQuery.Load(); q != 0 {
		t.Errorf("%d handshakes carried a query string", q)
	}
	states, _ := json.Marshal(s.States)
	t.Logf("handshakes through the origin: %d in all; states %s", n, states)
	if strings.Contains(strings.Join(s.Errors, "\n"), "forbidden") {
		t.Errorf("errors: %v", s.Errors)
	}
}

func firstKey(m map[string]string) string {
	for k := range m {
		return k
	}
	return ""
}
