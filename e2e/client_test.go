package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"trm-live/contract"
	"trm-live/contract/ws"
)

const cookieName = "directus_session_token"

// login posts {email,password,mode:"session"} to base/auth/login, as the
// browser app does, and returns the directus_session_token cookie value.
func login(tb testing.TB, base, email, password string) string {
	tb.Helper()
	body, _ := json.Marshal(map[string]string{"email": email, "password": password, "mode": "session"})
	resp, err := http.Post(base+"/auth/login", "application/json", bytes.NewReader(body))
	if err != nil {
		tb.Fatalf("e2e: login %s: %v", email, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("e2e: login %s at %s: %d %s", email, base, resp.StatusCode, b)
	}
	for _, c := range resp.Cookies() {
		if c.Name == cookieName && c.Value != "" {
			if !c.HttpOnly {
				tb.Errorf("e2e: session cookie from %s is not HttpOnly", base)
			}
			return c.Value
		}
	}
	tb.Fatalf("e2e: login %s at %s: no %s cookie in %v", email, base, cookieName, resp.Header.Values("Set-Cookie"))
	return ""
}

// logout posts {mode:"session"} with the cookie to base/auth/logout.
func logout(tb testing.TB, base, cookie string) {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/auth/logout", strings.NewReader(`{"mode":"session"}`))
	req.Header.Set("Content-Type", "application/json")
	req.AddCookie(&http.Cookie{Name: cookieName, Value: cookie})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("e2e: logout: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		tb.Fatalf("e2e: logout at %s: %d", base, resp.StatusCode)
	}
}

// wsClient is a browser-like /ws-live client: the session cookie on the
// upgrade, a same-origin Origin header, frames read by one goroutine into a
// channel.
type wsClient struct {
	conn   *websocket.Conn
	frames chan ws.Frame
	mu     sync.Mutex
	closed error // the close error, once the read loop ended
	done   chan struct{}
}

// dialWS opens wsURL (ws://host/ws-live) with the cookie (none when "").
func dialWS(ctx context.Context, wsURL, cookie string) (*wsClient, *http.Response, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return nil, nil, err
	}
	h := http.Header{}
	h.Set("Origin", "http://"+u.Host)
	if cookie != "" {
		h.Set("Cookie", cookieName+"="+cookie)
	}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 64 << 10}
	conn, resp, err := d.DialContext(ctx, wsURL, h)
	if err != nil {
		return nil, resp, err
	}
	c := &wsClient{conn: conn, frames: make(chan ws.Frame, 1<<16), done: make(chan struct{})}
	go c.readLoop()
	return c, resp, nil
}

func mustDialWS(tb testing.TB, wsURL, cookie string) *wsClient {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, resp, err := dialWS(ctx, wsURL, cookie)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		tb.Fatalf("e2e: dial %s: %v (HTTP %d)", wsURL, err, status)
	}
	tb.Cleanup(c.Close)
	return c
}

func (c *wsClient) readLoop() {
	defer close(c.done)
	defer close(c.frames)
	for {
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			c.mu.Lock()
			c.closed = err
			c.mu.Unlock()
			return
		}
		f, err := ws.DecodeFrame(data)
		if err != nil {
			c.mu.Lock()
			c.closed = fmt.Errorf("undecodable frame %q: %w", data, err)
			c.mu.Unlock()
			_ = c.conn.Close()
			return
		}
		c.frames <- f
	}
}

// Close closes the connection.
func (c *wsClient) Close() { _ = c.conn.Close() }

func (c *wsClient) send(tb testing.TB, r ws.Request) {
	tb.Helper()
	if err := c.conn.WriteMessage(websocket.TextMessage, r.Encode()); err != nil {
		tb.Fatalf("e2e: ws write: %v", err)
	}
}

// next returns the next frame, failing after timeout or when the connection
// closed.
func (c *wsClient) next(tb testing.TB, timeout time.Duration) ws.Frame {
	tb.Helper()
	select {
	case f, ok := <-c.frames:
		if !ok {
			tb.Fatalf("e2e: ws closed: %v", c.closeErr())
		}
		return f
	case <-time.After(timeout):
		tb.Fatalf("e2e: no ws frame in %s", timeout)
	}
	return ws.Frame{}
}

// subscribe sends a subscribe and returns the reply (subscribed or error).
func (c *wsClient) subscribe(tb testing.TB, eventID, id string) ws.Frame {
	tb.Helper()
	c.send(tb, ws.Request{Type: ws.TypeSubscribe, Topic: ws.EventTopic(eventID), ID: id})
	for {
		f := c.next(tb, 15*time.Second)
		if f.ID == id && (f.Type == ws.TypeSubscribed || f.Type == ws.TypeError) {
			return f
		}
	}
}

func (c *wsClient) closeErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// closeCode waits for the connection to end and returns its close code (0
// when it ended without a close frame).
func (c *wsClient) closeCode(tb testing.TB, timeout time.Duration) int {
	tb.Helper()
	select {
	case <-c.done:
	case <-time.After(timeout):
		tb.Fatalf("e2e: ws still open after %s", timeout)
	}
	var ce *websocket.CloseError
	if errors.As(c.closeErr(), &ce) {
		return ce.Code
	}
	return 0
}

// items decodes the positions of a frame.
func items(tb testing.TB, f ws.Frame) []contract.Position {
	tb.Helper()
	ps, err := f.Items()
	if err != nil {
		tb.Fatalf("e2e: frame items: %v", err)
	}
	return ps
}
