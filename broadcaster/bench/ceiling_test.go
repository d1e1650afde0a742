package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"trm-live/testkit/benchenv"
)

// The fan-out ceiling writes the recorded frames, unchanged and in turn
// from frame i, to client i, as many as its count says: the same frames,
// the same clients, the same count as the broadcaster's run.
func TestBlastRecorded(t *testing.T) {
	frames := [][]byte{[]byte(`{"type":"positions","n":0}`), []byte(`{"type":"positions","n":1}`), []byte(`{"type":"positions","n":2}`)}
	file := filepath.Join(t.TempDir(), "frames")
	if err := writeFrames(file, frames); err != nil {
		t.Fatal(err)
	}
	if got, err := readFrames(file); err != nil || !slices.EqualFunc(got, frames, slices.Equal) {
		t.Fatalf("readFrames: %q, %v", got, err)
	}
	addrs, err := benchenv.FreeAddrs(1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- runRaw(ctx, addrs[0]) }()
	if err := waitHTTP("http://"+addrs[0]+"/ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	conns := make([]*websocket.Conn, 2)
	for i := range conns {
		if conns[i], _, err = websocket.DefaultDialer.Dial(fmt.Sprintf("ws://%s/raw?i=%d", addrs[0], i), nil); err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close()
	}
	// The raw server registers a connection after the upgrade.
	deadline := time.Now().Add(10 * time.Second)
	for n := 0; n < len(conns); {
		resp, err := http.Get("http://" + addrs[0] + "/clients")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = fmt.Fscan(resp.Body, &n)
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatalf("%d clients registered, want %d", n, len(conns))
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, err := http.Post("http://"+addrs[0]+"/blast", "application/json", strings.NewReader(fmt.Sprintf(`{"file":%q,"counts":[2,4]}`, file)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := [][]string{{`"n":0`, `"n":1`}, {`"n":1`, `"n":2`, `"n":0`, `"n":1`}}
	got := make([][]string, 2)
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for range want[i] {
			_, m, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("client %d: %v after %q", i, err, got[i])
			}
			got[i] = append(got[i], string(m[len(`{"type":"positions",`):len(m)-1]))
		}
	}
	// Nothing more: a further frame would arrive before this one.
	if _, err := http.Post("http://"+addrs[0]+"/blast", "application/json", strings.NewReader(fmt.Sprintf(`{"file":%q,"counts":[1,1]}`, file))); err != nil {
		t.Fatal(err)
	}
	for i, c := range conns {
		if _, m, err := c.ReadMessage(); err != nil || string(m) != string(frames[i]) {
			t.Fatalf("client %d: next frame %q, %v, want the second blast's %q", i, m, err, frames[i])
		}
	}
	for i := range conns {
		if !slices.Equal(got[i], want[i]) {
			t.Errorf("client %d received %q, want %q", i, got[i], want[i])
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
