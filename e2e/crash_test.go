package e2e

import (
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"trm-live/contract/ws"
	"trm-live/testkit"
)

// TestKill9EachWorker kills each worker in turn with SIGKILL while the
// simulator writes, and restarts it: the database still holds every valid
// position exactly once and the DLQ every bad entry exactly once, and a
// client that reconnects after the broadcaster's death keeps receiving in
// order.
func TestKill9EachWorker(t *testing.T) {
	t.Parallel()
	const devices, rate, count = 20, 5, 2500 // 25 s of simulated race, 5% bad
	p := startPipeline(t, devices)
	cookie := p.dx.Login(t, p.demo)
	col := &collector{perDevice: map[string][]time.Time{}}
	connect := func() *wsClient {
		c := mustDialWS(t, p.wsURL, cookie)
		if f := c.subscribe(t, p.eventID, "k"); f.Type != ws.TypeSubscribed {
			t.Fatalf("subscribe: %+v", f)
		}
		return c
	}
	c := connect()

	seedSQL := testkitSeedSQL(t)
	sim := startProc(t, p.dir, "simulate-run", bin(t, "simulate"), nil,
		"-redis-url", redisURL(t), "-database-url", p.dbURL, "-seed-sql", seedSQL, "-maxlen", "0", "-seed-db=false",
		"-stream", p.stream, "-devices", strconv.Itoa(devices), "-rate", strconv.Itoa(rate), "-count", strconv.Itoa(count), "-bad", "0.05")

	// Wait until positions flow, then kill and restart one worker at a
	// time, each once the previous one is ready again.
	rowsAtLeast := func(n int) {
		testkit.Eventually(t, 60*time.Second, func() error {
			if _, rows := p.dbRows(t); rows < n {
				return fmt.Errorf("%d rows, waiting for %d", rows, n)
			}
			return nil
		})
	}
	rowsAtLeast(100)
	for i, name := range []string{"bridge", "persister", "broadcaster", "authsvc"} {
		pr := p.procs()[name]
		pr.Kill9()
		t.Logf("killed %s (kill -9)", name)
		if name == "broadcaster" {
			// The browser sees the socket drop, then reconnects and
			// re-subscribes, as the viewer does.
			col.drainUntilClosed(t, c)
		}
		pr.Start()
		waitReady(t, pr, p.addrs[name], 60*time.Second)
		if name == "broadcaster" {
			c = connect()
		}
		col.drain(t, c)
		rowsAtLeast(100 + 150*(i+1))
	}
	testkit.Eventually(t, 2*time.Minute, func() error {
		exited, err := sim.Exited()
		if !exited {
			return errors.New("simulator still running")
		}
		if err != nil {
			t.Fatalf("simulator failed: %v; see %s", err, sim.log)
		}
		return nil
	})
	tr := p.truth(t)
	if len(tr.valid)+len(tr.bad) != count {
		t.Fatalf("simulator wrote %d entries, want %d", len(tr.valid)+len(tr.bad), count)
	}
	testkit.Eventually(t, 2*time.Minute, func() error {
		col.drain(t, c)
		if _, rows := p.dbRows(t); rows < len(tr.valid) {
			return fmt.Errorf("database has %d of %d positions", rows, len(tr.valid))
		}
		if _, n := p.dlq(t); n < len(tr.bad) {
			return fmt.Errorf("DLQ has %d of %d bad entries", n, len(tr.bad))
		}
		return nil
	})
	// Live delivery is not exact across the broadcaster's death (what was
	// published while it was down reaches a client as the snapshot's latest
	// per device), so the client is checked for order only, plus that it
	// got positions after its reconnect.
	before := col.total
	testkit.Eventually(t, 30*time.Second, func() error {
		col.drain(t, c)
		if col.total == 0 || col.total == before && before == 0 {
			return errors.New("client received nothing")
		}
		return nil
	})
	p.reconcile(t, tr, col, false)
}

func testkitSeedSQL(tb testing.TB) string {
	return testkit.RepoRoot(tb) + "/deploy/seed/directus-standin.sql"
}

// drainUntilClosed adds every frame until the connection ends.
func (c *collector) drainUntilClosed(t *testing.T, cl *wsClient) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case f, ok := <-cl.frames:
			if !ok {
				return
			}
			c.add(t, f)
		case <-timeout:
			t.Fatal("e2e: client still connected 30 s after the broadcaster was killed")
		}
	}
}
