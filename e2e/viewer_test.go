package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"trm-live/testkit"
)

// viewerStats is window.trmViewer.stats() of the viewer page.
type viewerStats struct {
	Connection string  `json:"connection"`
	User       *string `json:"user"`
	Topic      string  `json:"topic"`
	Devices    int     `json:"devices"`
	Positions  int     `json:"positions"`
	Rate       float64 `json:"rate"`
	LastClose  *struct {
		Code int `json:"code"`
	} `json:"lastClose"`
}

func (c *chromium) stats(t *testing.T) viewerStats {
	t.Helper()
	var s viewerStats
	if err := c.eval(`window.trmViewer ? window.trmViewer.stats() : null`, &s); err != nil {
		t.Fatalf("viewer stats: %v", err)
	}
	return s
}

// loginInPage types the credentials into the viewer's login form and
// submits it, as a person would.
func (c *chromium) loginInPage(t *testing.T, email, password string) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, func() error {
		var shown bool
		if err := c.eval(`!!document.getElementById("login-view") && !document.getElementById("login-view").hidden`, &shown); err != nil {
			return err
		}
		if !shown {
			return errors.New("login form not shown")
		}
		return nil
	})
	js := fmt.Sprintf(`(() => {
		document.getElementById("email").value = %q;
		document.getElementById("password").value = %q;
		document.getElementById("login-form").requestSubmit();
		return true;
	})()`, email, password)
	if err := c.eval(js, nil); err != nil {
		t.Fatalf("fill login form: %v", err)
	}
}

// waitLive waits until the page follows topic with `devices` devices and
// positions arriving.
func (c *chromium) waitLive(t *testing.T, topic string, devices int) viewerStats {
	t.Helper()
	var s viewerStats
	testkit.Eventually(t, 60*time.Second, func() error {
		s = c.stats(t)
		if s.Connection != "open" || s.Topic != topic || s.Devices != devices || s.Rate <= 0 {
			return fmt.Errorf("viewer: %+v, want open on %s with %d devices and positions/s > 0", s, topic, devices)
		}
		var rows int
		if err := c.eval(`document.querySelectorAll("#devices tbody tr").length`, &rows); err != nil {
			return err
		}
		if rows != devices {
			return fmt.Errorf("device table has %d rows, want %d", rows, devices)
		}
		return nil
	})
	return s
}

// TestViewerInChromium: the viewer page of the dev binary in headless
// Chromium logs in through its form, follows the seeded event over
// /ws-live and shows every simulated device with positions arriving; the
// screenshot is kept under .data/e2e. Logging out returns to the form.
func TestViewerInChromium(t *testing.T) {
	t.Parallel()
	const devices = 12
	p, _, origin := startDevBinary(t, devices, nil)
	startProc(t, p.dir, "simulate-run", bin(t, "simulate"), nil,
		"-redis-url", redisURL(t), "-database-url", p.dbURL, "-seed-db=false", "-maxlen", "0",
		"-stream", p.stream, "-devices", strconv.Itoa(devices), "-rate", "2", "-duration", "5m")

	c := startChromium(t)
	c.navigate(t, origin+"/")
	c.loginInPage(t, demoEmail, devPassword)
	s := c.waitLive(t, "event:"+p.eventID, devices)
	if s.User == nil || *s.User != demoEmail {
		t.Errorf("viewer shows user %v, want %s", s.User, demoEmail)
	}
	// A few seconds of trails make a readable picture; the assertions
	// above are what the test checks.
	testkit.Eventually(t, 30*time.Second, func() error {
		if s = c.stats(t); s.Positions < 8*devices {
			return fmt.Errorf("%d positions shown so far", s.Positions)
		}
		return nil
	})
	c.screenshot(t, filepath.Join(p.dir, "viewer.png"))
	t.Logf("viewer: %+v", s)

	// "Rewind 1 min": the page replays the last minute at 4× and the
	// server turns the rewind into the live subscription at the present
	// (the button comes back and the message clears on the live event).
	if err := c.eval(`document.getElementById("rewind").click(), true`, nil); err != nil {
		t.Fatal(err)
	}
	type rewindState struct {
		Disabled bool
		Message  string
	}
	rewind := func() (st rewindState) {
		if err := c.eval(`({Disabled: document.getElementById("rewind").disabled, Message: document.getElementById("message").textContent})`, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := rewind(); !st.Disabled || !strings.HasPrefix(st.Message, "rewinding") {
		t.Fatalf("after the click: %+v, want the rewind running", st)
	}
	testkit.Eventually(t, 2*time.Minute, func() error {
		if st := rewind(); st.Disabled || st.Message != "" {
			return fmt.Errorf("rewind not back to live: %+v", st)
		}
		return nil
	})
	s = c.waitLive(t, "event:"+p.eventID, devices)
	c.screenshot(t, filepath.Join(p.dir, "viewer-after-rewind.png"))
	t.Logf("viewer after the rewind: %+v", s)

	if err := c.eval(`document.getElementById("logout").click(), true`, nil); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 15*time.Second, func() error {
		var shown bool
		if err := c.eval(`!document.getElementById("login-view").hidden`, &shown); err != nil {
			return err
		}
		if st := c.stats(t); !shown || st.Connection != "idle" {
			return fmt.Errorf("after logout: login form shown %v, %+v", shown, st)
		}
		return nil
	})
}

// TestViewerWithDirectusReconnects: the dev binary in front of the real
// Directus (DIRECTUS_URL: the origin proxies Directus's paths, authsvc calls
// it, the workers share its database). A Directus user logs in through the
// page's form; then the dev binary is restarted under the open page: the
// page sees the socket close, reconnects with backoff, re-subscribes with
// the same (still valid) session cookie, and positions flow again.
func TestViewerWithDirectusReconnects(t *testing.T) {
	t.Parallel()
	const devices = 8
	d := realDirectus(t)
	a := directusAdmin(t, d)
	p := newBaseOn(t, devices, d.DatabaseURL)
	fx := a.newFixture(t, testkit.Unique("viewer"))
	var org string
	if err := p.pool.QueryRow(context.Background(), `SELECT organization_id::text FROM events WHERE id = $1`, p.eventID).Scan(&org); err != nil {
		t.Fatal(err)
	}
	a.must(t, http.MethodPost, "/items/organization_users", map[string]any{"organization_id": org, "user_id": fx.Member.ID}, nil)

	dev, origin := startDevBinaryOn(t, p, map[string]string{"DIRECTUS_URL": d.URL})
	startProc(t, p.dir, "simulate-run", bin(t, "simulate"), nil,
		"-redis-url", redisURL(t), "-database-url", p.dbURL, "-seed-db=false", "-maxlen", "0",
		"-stream", p.stream, "-devices", strconv.Itoa(devices), "-rate", "2", "-duration", "5m")

	c := startChromium(t)
	c.navigate(t, origin+"/?event="+p.eventID)
	c.loginInPage(t, fx.Member.Email, fx.Member.Password)
	topic := "event:" + p.eventID
	before := c.waitLive(t, topic, devices)

	dev.Stop()
	testkit.Eventually(t, 30*time.Second, func() error {
		if s := c.stats(t); s.Connection == "open" {
			return fmt.Errorf("page still open: %+v", s)
		}
		return nil
	})
	dev.Start()
	for name := range devPorts {
		waitReady(t, dev, p.addrs[name], 60*time.Second)
	}
	testkit.Eventually(t, 60*time.Second, func() error {
		s := c.stats(t)
		if s.LastClose != nil && s.LastClose.Code == 4401 {
			t.Fatalf("page was told its session ended after the restart: %+v", s)
		}
		if s.Connection != "open" || s.Topic != topic || s.Devices != devices || s.Positions < before.Positions+2*devices {
			return fmt.Errorf("page after restart: %+v (had %d positions before)", s, before.Positions)
		}
		return nil
	})
	c.screenshot(t, filepath.Join(p.dir, "viewer-after-reconnect.png"))
}

// TestViewerSessionEnds: the viewer (on @trm-live/client) is open when the
// dev binary restarts; its dev auth backend forgets every session with the
// process, so the page's reconnect is closed 4401: the client stops, and
// the page shows the login form saying the session ended.
func TestViewerSessionEnds(t *testing.T) {
	t.Parallel()
	const devices = 4
	p, dev, origin := startDevBinary(t, devices, nil)
	startProc(t, p.dir, "simulate-run", bin(t, "simulate"), nil,
		"-redis-url", redisURL(t), "-database-url", p.dbURL, "-seed-db=false", "-maxlen", "0",
		"-stream", p.stream, "-devices", strconv.Itoa(devices), "-rate", "2", "-duration", "5m")

	c := startChromium(t)
	c.navigate(t, origin+"/")
	c.loginInPage(t, demoEmail, devPassword)
	c.waitLive(t, "event:"+p.eventID, devices)

	dev.Stop()
	dev.Start()
	for name := range devPorts {
		waitReady(t, dev, p.addrs[name], 60*time.Second)
	}
	testkit.Eventually(t, 60*time.Second, func() error {
		var form struct {
			Shown bool   `json:"shown"`
			Error string `json:"error"`
		}
		if err := c.eval(`({shown: !document.getElementById("login-view").hidden, error: document.getElementById("login-error").textContent})`, &form); err != nil {
			return err
		}
		s := c.stats(t)
		if !form.Shown || s.Connection != "unauthorized" || s.LastClose == nil || s.LastClose.Code != 4401 || form.Error != "Your session has ended; log in again." {
			return fmt.Errorf("after the restart: form %+v, %+v", form, s)
		}
		return nil
	})
	c.screenshot(t, filepath.Join(p.dir, "viewer-session-ended.png"))
}
