package devorigin

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"trm-live/scripts/devauth"
)

// TestRoutes: the page, the Directus paths and /ws-live (with its Host
// kept for the broadcaster's same-origin check) on one loopback origin.
func TestRoutes(t *testing.T) {
	t.Parallel()
	up := websocket.Upgrader{CheckOrigin: func(r *http.Request) bool {
		return r.Header.Get("Origin") == "http://"+r.Host // same-origin, as the broadcaster
	}}
	bc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		ck, _ := r.Cookie(devauth.CookieName)
		_ = c.WriteMessage(websocket.TextMessage, []byte(r.URL.Path+" "+ck.Value))
	}))
	defer bc.Close()
	da := devauth.New(devauth.Config{Users: []devauth.User{{ID: "0b8f0c36-5a51-4f0e-9d0e-0a2b3c4d5e6f", Email: "d@x", Password: "p"}}})
	h, err := Handler(Config{BroadcasterURL: bc.URL, Auth: da})
	if err != nil {
		t.Fatal(err)
	}
	origin := httptest.NewServer(h)
	defer origin.Close()

	resp, err := http.Get(origin.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "viewer.js") {
		t.Fatalf("page: %d", resp.StatusCode)
	}
	resp, err = http.Post(origin.URL+"/auth/login", "application/json", strings.NewReader(`{"email":"d@x","password":"p","mode":"session"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var cookie string
	for _, c := range resp.Cookies() {
		if c.Name == devauth.CookieName {
			cookie = c.Value
		}
	}
	if cookie == "" {
		t.Fatalf("login through the origin: %d, no cookie", resp.StatusCode)
	}
	wsURL := "ws" + strings.TrimPrefix(origin.URL, "http") + "/ws-live"
	hdr := http.Header{"Origin": {origin.URL}, "Cookie": {devauth.CookieName + "=" + cookie}}
	c, _, err := websocket.DefaultDialer.Dial(wsURL, hdr)
	if err != nil {
		t.Fatalf("ws through the origin: %v", err)
	}
	defer c.Close()
	_, msg, err := c.ReadMessage()
	if err != nil || string(msg) != "/ws-live "+cookie {
		t.Fatalf("ws echo: %q %v", msg, err)
	}
}

func TestRunRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = Run(t.Context(), Config{Listener: ln, BroadcasterURL: "http://127.0.0.1:1", Auth: devauth.New(devauth.Config{})})
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("Run on 0.0.0.0: %v, want a loopback refusal", err)
	}
}
