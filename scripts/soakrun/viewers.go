package soakrun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"trm-live/contract/ws"
	"trm-live/testkit/directus"
)

type viewerKind int

const (
	kindNormal viewerKind = iota
	// kindSlow reads a frame every 100 ms: the broadcaster coalesces.
	kindSlow
	// kindReconnecting closes and reconnects every 20–40 s.
	kindReconnecting
)

func (k viewerKind) String() string {
	return [...]string{"normal", "slow", "reconnecting"}[k]
}

// replyWait is how long a control request may wait for its reply on a
// connection that stays open.
const replyWait = 10 * time.Second

// viewer is one browser following the event, across reconnects.
type viewer struct {
	idx    int
	name   string
	kind   viewerKind
	urls   []string // broadcasters' /ws-live, tried in turn
	cookie string
	topic  string
	tl     *Timeline
	sched  func(device string, ts int64) (time.Time, bool)
	rnd    *rand.Rand
	// calm, once set, stops the churn (resubscribes, reconnects): the
	// load is over and the end state is being checked.
	calm *atomic.Bool

	mu             sync.Mutex
	held           map[string]int64 // current subscription's latest per device
	subscribed     bool
	connected      bool
	travel         []string
	requests       int
	missing        int
	missingEx      []string      // the first missing replies, for the report
	slowestReply   time.Duration // the longest wait of a reply that came
	slowestEx      string        // which
	loggedOut      bool
	closeCode      int
	unexpected4401 int
	connects       int
	pending        map[string]time.Time // request id -> sent
	seq            int
}

type wsPos struct {
	DeviceID string `json:"device_id"`
	TS       string `json:"ts"`
}

type wsFrame struct {
	Type      string  `json:"type"`
	ID        string  `json:"id"`
	Code      string  `json:"code"`
	Message   string  `json:"message"`
	Replay    bool    `json:"replay"`
	Snapshot  []wsPos `json:"snapshot"`
	Positions []wsPos `json:"positions"`
}

// run keeps the viewer connected until ctx ends or it is closed with 4401
// after its logout.
func (v *viewer) run(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for attempt := 0; ctx.Err() == nil; attempt++ {
		url := v.urls[(v.idx+attempt)%len(v.urls)]
		done, ok := v.session(ctx, url)
		if done {
			return
		}
		if ok {
			backoff = 200 * time.Millisecond
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff + time.Duration(v.rnd.Int64N(int64(backoff)))):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// session is one connection. done: the viewer is finished (logged out and
// closed with 4401); ok: the connection was established.
func (v *viewer) session(ctx context.Context, url string) (done, ok bool) {
	h := http.Header{}
	h.Set("Cookie", directus.CookieName+"="+v.cookie)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, _, err := websocket.DefaultDialer.DialContext(dctx, url, h)
	cancel()
	if err != nil {
		return false, false
	}
	v.mu.Lock()
	v.connected, v.subscribed, v.held, v.pending = true, false, map[string]int64{}, map[string]time.Time{}
	v.connects++
	v.mu.Unlock()
	var wmu sync.Mutex
	write := func(typ string) error {
		v.mu.Lock()
		v.seq++
		id := fmt.Sprintf("%c%d", typ[0], v.seq)
		v.pending[id] = time.Now()
		v.requests++
		v.mu.Unlock()
		wmu.Lock()
		defer wmu.Unlock()
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		return c.WriteMessage(websocket.TextMessage, ws.Request{Type: typ, Topic: v.topic, ID: id}.Encode())
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		<-sctx.Done()
		wmu.Lock()
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		wmu.Unlock()
		_ = c.Close()
	}()
	// Churn: normal viewers unsubscribe and subscribe again now and then;
	// reconnecting ones end the connection.
	go func() {
		for {
			d := 30*time.Second + time.Duration(v.rnd.Int64N(int64(30*time.Second)))
			if v.kind == kindReconnecting {
				d = 20*time.Second + time.Duration(v.rnd.Int64N(int64(20*time.Second)))
			}
			select {
			case <-sctx.Done():
				return
			case <-time.After(d):
			}
			if v.calm.Load() {
				continue
			}
			if v.kind == kindReconnecting {
				stop()
				return
			}
			v.mu.Lock()
			sub := v.subscribed
			v.mu.Unlock()
			if sub {
				_ = write(ws.TypeUnsubscribe)
			}
		}
	}()
	if err := write(ws.TypeSubscribe); err != nil {
		v.endConn()
		return false, true
	}
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			v.endConn()
			if errors.As(err, &ce) && ce.Code == 4401 {
				v.mu.Lock()
				defer v.mu.Unlock()
				if v.loggedOut {
					v.closeCode = 4401
					return true, true
				}
				v.unexpected4401++
			}
			return false, true
		}
		now := time.Now()
		var f wsFrame
		if err := json.Unmarshal(data, &f); err != nil {
			continue
		}
		v.handle(now, f, write)
		if v.kind == kindSlow {
			select {
			case <-sctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func (v *viewer) handle(now time.Time, f wsFrame, write func(string) error) {
	v.mu.Lock()
	if f.ID != "" {
		if at, ok := v.pending[f.ID]; ok {
			if d := now.Sub(at); d > v.slowestReply {
				v.slowestReply = d
				v.slowestEx = fmt.Sprintf("%s (%s) request %s sent at %s, %s after %.1f s",
					v.name, v.kind, f.ID, at.UTC().Format("15:04:05.000"), f.Type, d.Seconds())
			}
			delete(v.pending, f.ID)
		}
	}
	resubscribe := false
	switch f.Type {
	case ws.TypeSubscribed:
		v.subscribed = true
		v.held = map[string]int64{}
		for _, p := range f.Snapshot {
			if ts, ok := parseMS(p.TS); ok {
				v.held[p.DeviceID] = ts
			}
		}
	case ws.TypeUnsubscribed:
		v.subscribed = false
		resubscribe = true
	case ws.TypeError:
		if strings.HasPrefix(f.ID, "s") && !v.subscribed {
			resubscribe = true // e.g. unavailable while a NATS node is down
		}
	case ws.TypePositions:
		if f.Replay {
			break
		}
		for _, p := range f.Positions {
			ts, ok := parseMS(p.TS)
			if !ok {
				continue
			}
			if old, had := v.held[p.DeviceID]; had && ts < old {
				if len(v.travel) < 20 {
					v.travel = append(v.travel, fmt.Sprintf("%s %d after %d", p.DeviceID, ts, old))
				} else {
					v.travel = append(v.travel, "")
				}
			} else {
				v.held[p.DeviceID] = ts
			}
			// A slow viewer's lag is its own: it is left out of the latency.
			if at, ok := v.sched(p.DeviceID, ts); ok && v.kind != kindSlow {
				v.tl.Observe(now, now.Sub(at))
			}
		}
	}
	v.mu.Unlock()
	if resubscribe {
		go func() {
			if f.Type == ws.TypeError {
				time.Sleep(time.Second)
			}
			_ = write(ws.TypeSubscribe)
		}()
	}
}

// endConn counts the requests left without a reply although the
// connection stayed open replyWait after them.
func (v *viewer) endConn() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.countMissing(time.Now(), "connection ended")
	v.connected, v.subscribed = false, false
	v.pending = map[string]time.Time{}
}

// countMissing counts the pending requests older than replyWait, with a
// line for the report (the first few) saying which and when.
func (v *viewer) countMissing(now time.Time, why string) {
	for id, at := range v.pending {
		if now.Sub(at) >= replyWait {
			v.missing++
			if len(v.missingEx) < 5 {
				v.missingEx = append(v.missingEx, fmt.Sprintf("%s (%s) request %s sent at %s, no reply %.1f s later when the %s",
					v.name, v.kind, id, at.UTC().Format("15:04:05.000"), now.Sub(at).Seconds(), why))
			}
			delete(v.pending, id)
		}
	}
}

// result is the viewer's state for the model check.
func (v *viewer) result() ViewerResult {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.countMissing(time.Now(), "soak ended")
	held := make(map[string]int64, len(v.held))
	for d, ts := range v.held {
		held[d] = ts
	}
	return ViewerResult{Name: v.name, Connected: v.connected && v.subscribed, Held: held, TimeTravel: append([]string(nil), v.travel...),
		Requests: v.requests, MissingReplies: v.missing, MissingExamples: append([]string(nil), v.missingEx...), SlowestReply: v.slowestReply, SlowestExample: v.slowestEx, LoggedOut: v.loggedOut, CloseCode: v.closeCode, Unexpected4401: v.unexpected4401}
}

// heldAll reports whether the viewer holds every latest position (or is
// out of the check: logged out).
func (v *viewer) heldAll(latest map[string]int64) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.loggedOut {
		return v.closeCode == 4401
	}
	if !v.connected || !v.subscribed {
		return false
	}
	for d, ts := range latest {
		if v.held[d] != ts {
			return false
		}
	}
	return true
}

func parseMS(s string) (int64, bool) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, false
	}
	return t.UnixMilli(), true
}
