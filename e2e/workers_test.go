package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"trm-live/contract/streams"
	"trm-live/testkit"
)

// ensureStreams creates POSITIONS and POSITIONS_DLQ where no bridge runs
// (the bridge owns them, DECISIONS #6).
func ensureStreams(tb testing.TB, n *testkit.NATS) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := streams.Ensure(ctx, n.JetStream(tb), streams.Options{}); err != nil {
		tb.Fatal(err)
	}
}

// authStack is authsvc and the broadcaster as separate processes, in front
// of a Directus (real or stand-in) and its database. extra adds settings:
// BROADCASTER_* ones to the broadcaster, the others to authsvc.
type authStack struct {
	authsvc, broadcaster *proc
	wsURL                string
	broadcasterAddr      string
}

func startAuthStack(tb testing.TB, dir string, n *testkit.NATS, directusURL, dbURL string, extra map[string]string) authStack {
	tb.Helper()
	free := testkit.FreeAddrs(tb, 2)
	aAddr, bAddr := free[0], free[1]
	aEnv := map[string]string{
		"NATS_URL": n.URL, "DATABASE_URL": dbURL, "DIRECTUS_URL": directusURL, "HTTP_ADDR": aAddr,
		// A revoked cookie is refused within a second, so the logout test
		// does not wait out the default 30 s of reuse.
		"AUTHSVC_SESSION_TTL": "1s", "AUTHSVC_FAILURE_TTL": "1s",
	}
	bEnv := map[string]string{"NATS_URL": n.URL, "HTTP_ADDR": bAddr}
	for k, v := range extra {
		if strings.HasPrefix(k, "BROADCASTER_") {
			bEnv[k] = v
		} else {
			aEnv[k] = v
		}
	}
	s := authStack{broadcasterAddr: bAddr, wsURL: "ws://" + bAddr + "/ws-live"}
	s.authsvc = startProc(tb, dir, "authsvc", bin(tb, "authsvc"), aEnv)
	s.broadcaster = startProc(tb, dir, "broadcaster", bin(tb, "broadcaster"), bEnv)
	waitReady(tb, s.authsvc, aAddr, 60*time.Second)
	waitReady(tb, s.broadcaster, bAddr, 60*time.Second)
	return s
}
