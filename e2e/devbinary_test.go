package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"trm-live/contract/ws"
	"trm-live/testkit"
)

// Demo login of the dev binary's auth backend (scripts/cmd/trm-dev).
const devPassword = "demo"

// devPorts is the dev binary's worker ports before -http-port-offset
// (scripts/cmd/trm-dev/workers.go).
var devPorts = map[string]int{"bridge": 8081, "persister": 8082, "authsvc": 8083, "broadcaster": 8084}

// freeOffset finds an -http-port-offset under which every worker port is
// free. The ports stay below Linux's ephemeral range (32768 and up), where
// the random ports of other tests' clients and listeners would come and go
// between this check and the dev binary's listen.
func freeOffset(t *testing.T) int {
	t.Helper()
	for try := 0; try < 100; try++ {
		off := 9000 + rand.IntN(150)*100 // worker ports 17081 … 32084
		free := true
		for _, p := range devPorts {
			ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+off))
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			return off
		}
	}
	t.Fatal("e2e: no free port range for the dev binary")
	return 0
}

// startDevBinary runs the dev binary (embedded NATS, every worker through
// its Run, the one browser origin) on the test's own Redis stream and
// database. extra adds environment (e.g. DIRECTUS_URL for a real Directus).
func startDevBinary(t *testing.T, devices int, extra map[string]string) (*pipeline, *proc, string) {
	t.Helper()
	p := newBase(t, devices)
	dev, origin := startDevBinaryOn(t, p, extra)
	return p, dev, origin
}

// startDevBinaryOn runs the dev binary on base's stream and database.
func startDevBinaryOn(t *testing.T, p *pipeline, extra map[string]string) (*proc, string) {
	t.Helper()
	free := testkit.FreeAddrs(t, 2)
	natsAddr, origin := free[0], free[1]
	_, natsPort, _ := net.SplitHostPort(natsAddr)
	p.natsURL = "nats://" + natsAddr
	off := freeOffset(t)
	for name, port := range devPorts {
		p.addrs[name] = "127.0.0.1:" + strconv.Itoa(port+off)
	}
	p.wsURL = "ws://" + origin + ws.Path
	env := map[string]string{
		"REDIS_URL": redisURL(t), "DATABASE_URL": p.dbURL, "BRIDGE_STREAMS": p.stream, "DEV_HTTP_ADDR": origin,
	}
	for k, v := range extra {
		env[k] = v
	}
	dev := startProc(t, p.dir, "trm-dev", bin(t, "trm-dev"), env,
		"-data", t.TempDir(), "-nats-port", natsPort, "-nats-http-port", "0", "-http-port-offset", strconv.Itoa(off))
	for name := range devPorts {
		waitReady(t, dev, p.addrs[name], 60*time.Second)
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		resp, err := http.Get("http://" + origin + "/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("origin /: %d", resp.StatusCode)
		}
		return nil
	})
	return dev, "http://" + origin
}

// TestDevBinaryPipeline: the dev binary (all workers in one process, one
// origin) with the simulator: the demo login works on the origin and
// satisfies the Directus contract, the event list comes from
// /items/events, and every position is stored once, dead-lettered with
// its reason, or delivered over the origin's /ws-live.
func TestDevBinaryPipeline(t *testing.T) {
	t.Parallel()
	const devices, rate, count = 20, 2, 400
	p, _, origin := startDevBinary(t, devices, nil)

	t.Run("contract", func(t *testing.T) { directusContract(t, origin, demoEmail, devPassword) })

	cookie := login(t, origin, demoEmail, devPassword)
	req, _ := http.NewRequest(http.MethodGet, origin+"/items/events?fields=id,name", nil)
	req.AddCookie(&http.Cookie{Name: cookieName, Value: cookie})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var evs struct {
		Data []struct{ ID, Name string } `json:"data"`
	}
	err = json.NewDecoder(resp.Body).Decode(&evs)
	resp.Body.Close()
	if err != nil || len(evs.Data) != 1 || evs.Data[0].ID != p.eventID {
		t.Fatalf("/items/events on the origin: %v %+v, want the seeded event %s", err, evs, p.eventID)
	}

	c := mustDialWS(t, p.wsURL, cookie)
	if f := c.subscribe(t, p.eventID, "s1"); f.Type != ws.TypeSubscribed {
		t.Fatalf("subscribe: %+v", f)
	}
	p.simulate(t, "run", "-seed-db=false", "-stream", p.stream, "-devices", strconv.Itoa(devices),
		"-rate", strconv.Itoa(rate), "-count", strconv.Itoa(count), "-bad", "0.05")
	tr := p.truth(t)
	col := &collector{perDevice: map[string][]time.Time{}}
	testkit.Eventually(t, 60*time.Second, func() error {
		col.drain(t, c)
		if m := col.latestMissing(tr); len(m) > 0 {
			return fmt.Errorf("client lacks the newest position of %d devices", len(m))
		}
		if withheld := p.notDelivered(t); col.total+withheld < len(tr.valid) {
			return fmt.Errorf("client has %d of %d positions", col.total, len(tr.valid))
		}
		if _, rows := p.dbRows(t); rows < len(tr.valid) {
			return fmt.Errorf("database has %d of %d positions", rows, len(tr.valid))
		}
		if _, n := p.dlq(t); n < len(tr.bad) {
			return fmt.Errorf("DLQ has %d of %d bad entries", n, len(tr.bad))
		}
		return nil
	})
	p.reconcile(t, tr, col, true)

	// Logout on the origin revokes the session at once (the dev backend
	// forgets it; authsvc's session reuse is the default 30 s, so the
	// refusal is checked on the origin, where the browser would see it).
	logout(t, origin, cookie)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, origin+"/users/me", nil)
	req.AddCookie(&http.Cookie{Name: cookieName, Value: cookie})
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/users/me after logout: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}
