package benchenv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// A gorilla server sends small, 16-bit and 64-bit length messages (the
// last larger than the read buffer), one fragmented message and a ping; RawConn reads them in order, answers the
// ping with its payload, its own text message arrives unmasked, and the
// server's close ends the reads.
func TestRawConn(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 100<<10) // over the 64 KiB read buffer
	mid := bytes.Repeat([]byte("m"), 1000)
	got := make(chan string, 1)
	pong := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Cookie") != "c=1" {
			http.Error(w, "no cookie", http.StatusUnauthorized)
			return
		}
		up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetPongHandler(func(s string) error { pong <- s; return nil })
		_, m, err := c.ReadMessage()
		if err != nil {
			return
		}
		got <- string(m)
		_ = c.WriteMessage(websocket.TextMessage, []byte("small"))
		_ = c.WriteControl(websocket.PingMessage, []byte("p1"), time.Now().Add(time.Second))
		_ = c.WriteMessage(websocket.TextMessage, mid)
		// One frame over the read buffer (gorilla would fragment it).
		_, _ = c.NetConn().Write(append(binary.BigEndian.AppendUint64([]byte{0x82, 127}, uint64(len(big))), big...))
		// A fragmented message, by hand: text without FIN, continuation,
		// continuation with FIN.
		_, _ = c.NetConn().Write([]byte("\x01\x04frag\x00\x04ment\x80\x02ed"))
		_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
		_, _, _ = c.ReadMessage() // the pong is read here
	}))
	defer srv.Close()
	wsURL := "ws" + strings.TrimPrefix(srv.URL, "http")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := DialRaw(ctx, wsURL, nil, 0); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("dial without the cookie: %v, want a refusal naming 401", err)
	}
	rc, err := DialRaw(ctx, wsURL, http.Header{"Cookie": {"c=1"}}, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := rc.WriteText([]byte(`{"type":"subscribe"}`)); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != `{"type":"subscribe"}` {
		t.Fatalf("server read %q", s)
	}
	for _, want := range [][]byte{[]byte("small"), mid, big, []byte("fragmented")} {
		m, err := rc.ReadMessage()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if !bytes.Equal(m, want) {
			t.Fatalf("read %d bytes %.20q, want %d bytes %.20q", len(m), m, len(want), want)
		}
	}
	if _, err := rc.ReadMessage(); !errors.Is(err, ErrClosed) {
		t.Fatalf("after the close frame: %v, want ErrClosed", err)
	}
	select {
	case s := <-pong:
		if s != "p1" {
			t.Fatalf("pong %q, want the ping's payload", s)
		}
	case <-ctx.Done():
		t.Fatal("no pong")
	}
}
