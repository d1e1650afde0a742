package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"trm-live/testkit"
)

// chromium is a headless Debian Chromium driven over the Chrome DevTools
// Protocol. A few CDP calls (Page.navigate, Runtime.evaluate,
// Page.captureScreenshot) on gorilla/websocket, already a dependency, are
// all the tests need: no CDP library.
type chromium struct {
	cmd  *exec.Cmd
	conn *websocket.Conn
	seq  atomic.Int64
	mu   sync.Mutex // guards pending and conn writes
	wmu  sync.Mutex
	pend map[int64]chan cdpReply
	done chan struct{}
}

type cdpReply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// chromiumPath finds the browser; scripts/test installs Debian's chromium.
func chromiumPath(tb testing.TB) string {
	tb.Helper()
	for _, p := range []string{os.Getenv("TRM_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	tb.Fatal("e2e: no Chromium: install Debian's package (apt-get install chromium; scripts/test does) or set TRM_CHROMIUM")
	return ""
}

// startChromium starts a headless Chromium with a fresh profile and attaches
// to its first page. It is closed at cleanup.
func startChromium(tb testing.TB) *chromium {
	tb.Helper()
	dir := tb.TempDir()
	logf, err := os.Create(filepath.Join(dir, "chromium.log"))
	if err != nil {
		tb.Fatal(err)
	}
	// Flags of the machine notes: without the background-networking ones
	// Chromium keeps dialling out of a machine with no network.
	cmd := exec.Command(chromiumPath(tb),
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-extensions", "--disable-default-apps", "--mute-audio",
		"--user-data-dir="+filepath.Join(dir, "profile"), "--remote-debugging-port=0",
		"--window-size=1280,800", "about:blank")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so cleanup ends the renderers and helpers too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("e2e: start chromium: %v", err)
	}
	c := &chromium{cmd: cmd, pend: map[int64]chan cdpReply{}, done: make(chan struct{})}
	tb.Cleanup(func() {
		if c.conn != nil {
			_ = c.conn.Close()
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		_ = logf.Close()
	})
	// Chromium writes the port it picked to DevToolsActivePort.
	var port string
	testkit.Eventually(tb, 30*time.Second, func() error {
		b, err := os.ReadFile(filepath.Join(dir, "profile", "DevToolsActivePort"))
		if line, _, _ := strings.Cut(string(b), "\n"); err == nil && line != "" {
			port = strings.TrimSpace(line)
			return nil
		}
		out, _ := os.ReadFile(filepath.Join(dir, "chromium.log"))
		return fmt.Errorf("chromium gave no DevTools port yet; its log:\n%s", out)
	})
	if _, err := strconv.Atoi(port); err != nil {
		tb.Fatalf("e2e: bad DevToolsActivePort %q", port)
	}
	var targets []struct {
		Type string `json:"type"`
		WS   string `json:"webSocketDebuggerUrl"`
	}
	resp, err := http.Get("http://127.0.0.1:" + port + "/json/list")
	if err != nil {
		tb.Fatalf("e2e: chromium /json/list: %v", err)
	}
	err = json.NewDecoder(resp.Body).Decode(&targets)
	resp.Body.Close()
	if err != nil {
		tb.Fatalf("e2e: chromium /json/list: %v", err)
	}
	for _, t := range targets {
		if t.Type == "page" {
			c.conn, _, err = websocket.DefaultDialer.Dial(t.WS, nil)
			if err != nil {
				tb.Fatalf("e2e: attach to chromium page: %v", err)
			}
			break
		}
	}
	if c.conn == nil {
		tb.Fatal("e2e: chromium has no page target")
	}
	go c.readLoop()
	c.call(tb, "Page.enable", nil, nil)
	c.call(tb, "Runtime.enable", nil, nil)
	return c
}

func (c *chromium) readLoop() {
	defer close(c.done)
	for {
		var m struct {
			ID int64 `json:"id"`
			cdpReply
		}
		if err := c.conn.ReadJSON(&m); err != nil {
			return
		}
		if m.ID == 0 {
			continue // an event; the tests poll instead
		}
		c.mu.Lock()
		ch := c.pend[m.ID]
		delete(c.pend, m.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- m.cdpReply
		}
	}
}

// call sends one CDP command and decodes its result into out (may be nil).
func (c *chromium) call(tb testing.TB, method string, params, out any) {
	tb.Helper()
	if err := c.try(method, params, out); err != nil {
		tb.Fatalf("e2e: chromium %s: %v", method, err)
	}
}

func (c *chromium) try(method string, params, out any) error {
	id := c.seq.Add(1)
	ch := make(chan cdpReply, 1)
	c.mu.Lock()
	c.pend[id] = ch
	c.mu.Unlock()
	if params == nil {
		params = map[string]any{}
	}
	c.wmu.Lock()
	err := c.conn.WriteJSON(map[string]any{"id": id, "method": method, "params": params})
	c.wmu.Unlock()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	select {
	case r := <-ch:
		if r.Error != nil {
			return fmt.Errorf("%s", r.Error.Message)
		}
		if out != nil {
			return json.Unmarshal(r.Result, out)
		}
		return nil
	case <-c.done:
		return fmt.Errorf("connection to chromium closed")
	case <-ctx.Done():
		return fmt.Errorf("no answer in 30 s")
	}
}

// navigate opens url in the page.
func (c *chromium) navigate(tb testing.TB, url string) {
	tb.Helper()
	var r struct {
		ErrorText string `json:"errorText"`
	}
	c.call(tb, "Page.navigate", map[string]any{"url": url}, &r)
	if r.ErrorText != "" {
		tb.Fatalf("e2e: chromium navigate %s: %s", url, r.ErrorText)
	}
}

// eval evaluates a JavaScript expression in the page (promises awaited) and
// decodes its JSON value into out (may be nil).
func (c *chromium) eval(expr string, out any) error {
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := c.try("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &r); err != nil {
		return err
	}
	if r.Exception != nil {
		return fmt.Errorf("js: %s %s", r.Exception.Text, r.Exception.Exception.Description)
	}
	if out != nil && len(r.Result.Value) > 0 {
		return json.Unmarshal(r.Result.Value, out)
	}
	return nil
}

// screenshot saves a PNG of the page to path.
func (c *chromium) screenshot(tb testing.TB, path string) {
	tb.Helper()
	var r struct {
		Data string `json:"data"`
	}
	c.call(tb, "Page.captureScreenshot", map[string]any{"format": "png"}, &r)
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("screenshot: %s", path)
}
