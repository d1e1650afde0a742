package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"trm-live/contract"
	"trm-live/contract/ws"
	"trm-live/testkit"
)

// TestRealDirectusSessions runs authsvc and the broadcaster as processes
// against the real Directus of scripts/test: users created over REST log in
// with mode "session", and their real directus_session_token cookies go on
// the WebSocket upgrades. A member follows the event and receives a
// position; a user of no organization is refused the subscription; no
// cookie, a bogus one and a logged-out one get close code 4401.
func TestRealDirectusSessions(t *testing.T) {
	t.Parallel()
	d := realDirectus(t)
	a := directusAdmin(t, d)
	fx := a.newFixture(t, testkit.Unique("sess"))
	dir := artifacts(t)
	n := testkit.StartNATS(t)
	ensureStreams(t, n)
	st := startAuthStack(t, dir, n, d.URL, d.DatabaseURL, nil)

	// The Directus behaviour the workers and the viewer rely on, on a
	// throw-away session of the member (the same checks run against the
	// dev binary in TestDevBinaryPipeline).
	t.Run("contract", func(t *testing.T) { directusContract(t, d.URL, fx.Member.Email, fx.Member.Password) })

	member := login(t, d.URL, fx.Member.Email, fx.Member.Password)
	other := login(t, d.URL, fx.Other.Email, fx.Other.Password)

	mc := mustDialWS(t, st.wsURL, member)
	f := mc.subscribe(t, fx.EventID, "m1")
	if f.Type != ws.TypeSubscribed {
		t.Fatalf("member subscribe: %+v", f)
	}

	// A position published on the event's subject reaches the member.
	js := n.JetStream(t)
	p := contract.Position{DeviceID: "e2e-sess-1", EventID: fx.EventID, TS: time.Now().UTC().Truncate(time.Millisecond), Lat: 45.1, Lon: 7.6}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, p.Subject(), p.Encode()); err != nil {
		t.Fatal(err)
	}
	for {
		f := mc.next(t, 15*time.Second)
		if f.Type != ws.TypePositions {
			continue
		}
		got := items(t, f)
		if len(got) != 1 || got[0].DeviceID != p.DeviceID || !got[0].TS.Equal(p.TS) {
			t.Fatalf("positions frame: %+v", got)
		}
		break
	}

	oc := mustDialWS(t, st.wsURL, other)
	if f := oc.subscribe(t, fx.EventID, "o1"); f.Type != ws.TypeError || f.Code != ws.CodeForbidden {
		t.Fatalf("outsider subscribe: want forbidden error, got %+v", f)
	}

	for name, cookie := range map[string]string{"no cookie": "", "bogus cookie": "bogus", "forged cookie": forge(member)} {
		c := mustDialWS(t, st.wsURL, cookie)
		if code := c.closeCode(t, 15*time.Second); code != ws.CloseUnauthorized {
			t.Errorf("%s: close code %d, want %d", name, code, ws.CloseUnauthorized)
		}
	}

	// Logout revokes the session in Directus: the next connection with the
	// same cookie is closed with 4401 (once authsvc's 1 s reuse has passed).
	logout(t, d.URL, member)
	testkit.Eventually(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, _, err := dialWS(ctx, st.wsURL, member)
		if err != nil {
			return err
		}
		defer c.Close()
		// The server may already have closed it (the refusal): a failed
		// write is expected then, the close code below is the verdict.
		_ = c.conn.WriteMessage(websocket.TextMessage, ws.Request{Type: ws.TypeSubscribe, Topic: ws.EventTopic(fx.EventID), ID: "again"}.Encode())
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			return fmt.Errorf("logged-out cookie still accepted")
		}
		if code := c.closeCode(t, time.Second); code != ws.CloseUnauthorized {
			return fmt.Errorf("close code %d, want %d", code, ws.CloseUnauthorized)
		}
		return nil
	})
}

// forge changes the JWT's payload (another user id) and keeps the
// signature: Directus answers 403 INVALID_TOKEN.
func forge(jwt string) string {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return "x.y.z"
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	var claims map[string]any
	if err != nil || json.Unmarshal(raw, &claims) != nil {
		return "x.y.z"
	}
	claims["id"] = "00000000-0000-4000-8000-000000000000"
	raw, _ = json.Marshal(claims)
	return parts[0] + "." + base64.RawURLEncoding.EncodeToString(raw) + "." + parts[2]
}
