package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"trm-live/contract"
	"trm-live/contract/streams"
	"trm-live/contract/ws"
	"trm-live/testkit"
	"trm-live/testkit/directus"
)

// pipeline is every worker as its own process (the binaries stage and prod
// run) on one test's NATS, Redis stream key and database, with the Directus
// stand-in of testkit for sessions.
type pipeline struct {
	dir                                   string
	natsURL                               string
	js                                    jetstream.JetStream
	rdb                                   *redis.Client
	stream                                string
	dbURL                                 string
	pool                                  *pgxpool.Pool
	dx                                    *directus.Server
	demo                                  directus.User
	eventID, demoID                       string
	bridge, persister, authsvc, broadcast *proc
	addrs                                 map[string]string
	wsURL                                 string
}

const demoEmail = "demo@trm-live.local" // seeded by the simulator

// newBase gives a test its own Redis stream key and database, seeded by
// the simulator: one organization, one event, every device assigned to it,
// a demo member and an outsider. It runs before any worker starts, so the
// bridge's first routing load already has the assignments. The seed run's
// one entry goes to a stream nobody reads. The devices are the simulator's
// first `devices` ones, as in every later run.
func newBase(t *testing.T, devices int) *pipeline {
	t.Helper()
	return newBaseOn(t, devices, testkit.Postgres(t))
}

// newBaseOn is newBase on a given database (the real Directus's).
func newBaseOn(t *testing.T, devices int, dbURL string) *pipeline {
	t.Helper()
	p := &pipeline{dir: artifacts(t), addrs: map[string]string{}}
	p.rdb = testkit.Redis(t)
	p.stream = testkit.Unique("e2e:positions")
	p.dbURL = dbURL
	p.pool = testkit.Pool(t, p.dbURL)
	p.simulate(t, "seed", "-count", "1", "-devices", strconv.Itoa(devices), "-stream", p.stream+":seed")
	ctx := context.Background()
	if err := p.pool.QueryRow(ctx, `SELECT id::text FROM directus_users WHERE email = $1`, demoEmail).Scan(&p.demoID); err != nil {
		t.Fatalf("e2e: seeded demo user: %v", err)
	}
	if err := p.pool.QueryRow(ctx, `SELECT e.id::text FROM events e JOIN organizations o ON o.id = e.organization_id
		WHERE o.name = 'Demo Racing Club' ORDER BY e.name LIMIT 1`).Scan(&p.eventID); err != nil {
		t.Fatalf("e2e: seeded event: %v", err)
	}
	return p
}

func startPipeline(t *testing.T, devices int) *pipeline {
	t.Helper()
	return startPipelineWith(t, devices, nil)
}

// startPipelineWith is startPipeline with extra environment per worker
// (worker name -> variable -> value).
func startPipelineWith(t *testing.T, devices int, extra map[string]map[string]string) *pipeline {
	t.Helper()
	with := func(name string, env map[string]string) map[string]string {
		for k, v := range extra[name] {
			env[k] = v
		}
		return env
	}
	p := newBase(t, devices)
	p.natsURL = testkit.StartNATS(t).URL
	p.dx = directus.Start(t)
	p.demo = p.dx.AddUser(directus.User{ID: p.demoID, Email: demoEmail, Password: "demo"})

	workers := []string{"bridge", "persister", "authsvc", "broadcaster"}
	for i, a := range testkit.FreeAddrs(t, len(workers)) {
		p.addrs[workers[i]] = a
	}
	p.wsURL = "ws://" + p.addrs["broadcaster"] + ws.Path
	p.bridge = startProc(t, p.dir, "bridge", bin(t, "bridge"), with("bridge", map[string]string{
		"NATS_URL": p.natsURL, "REDIS_URL": redisURL(t), "DATABASE_URL": p.dbURL, "HTTP_ADDR": p.addrs["bridge"],
		"BRIDGE_STREAMS": p.stream, "BRIDGE_CONSUMER": "e2e-bridge",
		// A killed bridge's pending entries are claimed after 2 s (its
		// restart also re-reads them itself).
		"BRIDGE_CLAIM_MIN_IDLE": "2s", "BRIDGE_CLAIM_INTERVAL": "1s",
	}))
	p.persister = startProc(t, p.dir, "persister", bin(t, "persister"), with("persister", map[string]string{
		"NATS_URL": p.natsURL, "DATABASE_URL": p.dbURL, "HTTP_ADDR": p.addrs["persister"],
	}))
	p.authsvc = startProc(t, p.dir, "authsvc", bin(t, "authsvc"), with("authsvc", map[string]string{
		"NATS_URL": p.natsURL, "DATABASE_URL": p.dbURL, "DIRECTUS_URL": p.dx.URL, "HTTP_ADDR": p.addrs["authsvc"],
	}))
	p.broadcast = startProc(t, p.dir, "broadcaster", bin(t, "broadcaster"), with("broadcaster", map[string]string{
		"NATS_URL": p.natsURL, "HTTP_ADDR": p.addrs["broadcaster"],
	}))
	p.waitReady(t)
	return p
}

func (p *pipeline) procs() map[string]*proc {
	return map[string]*proc{"bridge": p.bridge, "persister": p.persister, "authsvc": p.authsvc, "broadcaster": p.broadcast}
}

func (p *pipeline) waitReady(t *testing.T) {
	t.Helper()
	for name, pr := range p.procs() {
		waitReady(t, pr, p.addrs[name], 60*time.Second)
	}
}

func redisURL(tb testing.TB) string {
	return env(tb, testkit.EnvRedisURL, "the URL of scripts/test's Redis")
}

// simulate runs the race simulator to completion against the pipeline's
// Redis and database.
func (p *pipeline) simulate(t *testing.T, logName string, args ...string) {
	t.Helper()
	seedSQL := filepath.Join(testkit.RepoRoot(t), "deploy", "seed", "directus-standin.sql")
	args = append([]string{"-redis-url", redisURL(t), "-database-url", p.dbURL, "-seed-sql", seedSQL, "-maxlen", "0"}, args...)
	sim := startProc(t, p.dir, "simulate-"+logName, bin(t, "simulate"), nil, args...)
	testkit.Eventually(t, 5*time.Minute, func() error {
		exited, err := sim.Exited()
		if !exited {
			return errors.New("simulator still running")
		}
		if err != nil {
			t.Fatalf("e2e: simulator failed: %v; see %s", err, sim.log)
		}
		return nil
	})
}

// truth classifies every entry the simulator wrote with the contract's own
// parser: the valid positions (by Nats-Msg-Id), and the rejection reason of
// every bad entry (by Redis entry id).
type truth struct {
	valid map[string]contract.Position
	bad   map[string]contract.Reason
}

func (p *pipeline) truth(t *testing.T) truth {
	t.Helper()
	tr := truth{valid: map[string]contract.Position{}, bad: map[string]contract.Reason{}}
	ctx := context.Background()
	start := "-"
	for {
		msgs, err := p.rdb.XRangeN(ctx, p.stream, start, "+", 2000).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			pos, err := contract.ParseEntry(m.Values, time.Now())
			if err != nil {
				tr.bad[m.ID] = contract.ReasonOf(err)
				continue
			}
			if _, dup := tr.valid[pos.MsgID()]; dup {
				t.Fatalf("e2e: simulator wrote %s twice", pos.MsgID())
			}
			tr.valid[pos.MsgID()] = pos
		}
		if len(msgs) < 2000 {
			break
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
	return tr
}

// dbRows returns the Nats-Msg-Id of every row of positions, and the number
// of rows (more than the ids when a key were stored twice).
func (p *pipeline) dbRows(t *testing.T) (map[string]bool, int) {
	t.Helper()
	rows, err := p.pool.Query(context.Background(), `SELECT device_id, ts FROM positions`)
	if err != nil {
		t.Fatalf("e2e: read positions: %v", err)
	}
	defer rows.Close()
	ids, n := map[string]bool{}, 0
	for rows.Next() {
		var dev string
		var ts time.Time
		if err := rows.Scan(&dev, &ts); err != nil {
			t.Fatal(err)
		}
		ids[contract.MsgID(dev, ts)] = true
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids, n
}

// dlq returns the reason of every dead letter by source entry id, and the
// number of dead letters.
func (p *pipeline) dlq(t *testing.T) (map[string]contract.Reason, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if p.js == nil {
		nc, err := nats.Connect(p.natsURL, nats.MaxReconnects(-1))
		if err != nil {
			t.Fatalf("e2e: connect %s: %v", p.natsURL, err)
		}
		t.Cleanup(nc.Close)
		if p.js, err = jetstream.New(nc); err != nil {
			t.Fatal(err)
		}
	}
	s, err := p.js.Stream(ctx, streams.DLQ)
	if err != nil {
		t.Fatalf("e2e: DLQ stream: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]contract.Reason{}
	n := 0
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("e2e: DLQ message %d: %v", seq, err)
		}
		n++
		if m.Header.Get(contract.HeaderSourceStream) != p.stream {
			t.Errorf("e2e: dead letter %d from stream %q", seq, m.Header.Get(contract.HeaderSourceStream))
		}
		out[m.Header.Get(contract.HeaderSourceID)] = contract.Reason(m.Header.Get(contract.HeaderReason))
	}
	return out, n
}

// collector reads one subscribed client's frames and keeps, per device,
// the fix times received in order.
type collector struct {
	perDevice map[string][]time.Time
	total     int
}

func (c *collector) add(t *testing.T, f ws.Frame) {
	if f.Type != ws.TypePositions && f.Type != ws.TypeSubscribed {
		if f.Type == ws.TypeError {
			t.Errorf("e2e: error frame: %+v", f)
		}
		return
	}
	for _, pos := range items(t, f) {
		tss := c.perDevice[pos.DeviceID]
		if f.Type == ws.TypeSubscribed && len(tss) > 0 && !pos.TS.After(tss[len(tss)-1]) {
			// A snapshot after a reconnect may repeat the latest position
			// already received; a client drops it, as the viewer does.
			continue
		}
		c.perDevice[pos.DeviceID] = append(tss, pos.TS)
		c.total++
	}
}

// drain adds every frame already received.
func (c *collector) drain(t *testing.T, cl *wsClient) {
	for {
		select {
		case f, ok := <-cl.frames:
			if !ok {
				t.Fatalf("client closed: %v", cl.closeErr())
			}
			c.add(t, f)
		default:
			return
		}
	}
}

// metric reads one unlabelled counter from a worker's /metrics.
func metric(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("e2e: metrics of %s: %v", addr, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("e2e: metric %s: %v", name, err)
			}
			return f
		}
	}
	return 0
}

// notDelivered is what the broadcaster legitimately withheld from its
// clients (design: a client that lags gets the latest position per device,
// older pending ones are replaced; one that already has a newer position
// is not sent an older one). Both are counted.
func (p *pipeline) notDelivered(t *testing.T) int {
	t.Helper()
	a := p.addrs["broadcaster"]
	return int(metric(t, a, "broadcaster_positions_coalesced_total") + metric(t, a, "broadcaster_positions_stale_total"))
}

// latestReceived reports the devices whose newest valid position the
// client has not (yet) received; the design always delivers it.
func (c *collector) latestMissing(tr truth) []string {
	newest := map[string]time.Time{}
	for _, pos := range tr.valid {
		if pos.TS.After(newest[pos.DeviceID]) {
			newest[pos.DeviceID] = pos.TS
		}
	}
	var out []string
	for dev, ts := range newest {
		got := c.perDevice[dev]
		if len(got) == 0 || !got[len(got)-1].Equal(ts) {
			out = append(out, dev)
		}
	}
	sort.Strings(out)
	return out
}

// reconcile asserts that the database, the DLQ and the client saw exactly
// what the simulator wrote.
func (p *pipeline) reconcile(t *testing.T, tr truth, col *collector, wsExact bool) {
	t.Helper()
	ids, rows := p.dbRows(t)
	if rows != len(tr.valid) || len(ids) != len(tr.valid) {
		t.Errorf("positions table: %d rows (%d distinct keys), want %d valid entries exactly once", rows, len(ids), len(tr.valid))
	}
	missing := 0
	for id := range tr.valid {
		if !ids[id] {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("positions table: %d valid positions missing", missing)
	}
	dl, n := p.dlq(t)
	if n != len(tr.bad) || len(dl) != len(tr.bad) {
		t.Errorf("DLQ: %d dead letters (%d distinct entries), want %d bad entries exactly once", n, len(dl), len(tr.bad))
	}
	for id, reason := range tr.bad {
		if dl[id] != reason {
			t.Errorf("DLQ: entry %s has reason %q, want %q", id, dl[id], reason)
		}
	}
	// Per device, the client received fix times in increasing order.
	for dev, tss := range col.perDevice {
		if !sort.SliceIsSorted(tss, func(i, j int) bool { return tss[i].Before(tss[j]) }) {
			t.Errorf("client: device %s received out of order", dev)
		}
		for i := 1; i < len(tss); i++ {
			if tss[i].Equal(tss[i-1]) {
				t.Errorf("client: device %s received %s twice in a row", dev, tss[i].Format(time.RFC3339Nano))
			}
		}
	}
	if wsExact {
		// Every valid position reached the client, except those the
		// broadcaster counted as coalesced for a lagging client (zero
		// unless the machine starved its writer); the newest of every
		// device always arrives.
		withheld := p.notDelivered(t)
		if col.total+withheld != len(tr.valid) {
			t.Errorf("client: received %d positions and the broadcaster withheld %d, want %d", col.total, withheld, len(tr.valid))
		}
		if withheld > 0 {
			t.Logf("broadcaster coalesced %d positions for the lagging client (latest per device kept)", withheld)
		}
	}
	if m := col.latestMissing(tr); len(m) > 0 {
		t.Errorf("client: newest position of %d devices not received: %v", len(m), m)
	}
	t.Logf("reconciled: %d entries = %d valid (rows %d, client %d) + %d bad (dead letters %d)",
		len(tr.valid)+len(tr.bad), len(tr.valid), rows, col.total, len(tr.bad), n)
}

// TestPipelineProcesses: simulator → Redis → bridge → JetStream →
// persister → PostgreSQL, and → broadcaster → a subscribed WebSocket
// client, every worker its own process. Every valid position is stored
// exactly once and reaches the client in order per device; every bad entry
// is dead-lettered with its reason.
func TestPipelineProcesses(t *testing.T) {
	t.Parallel()
	const devices, rate, count = 20, 2, 400 // 10 s of a 20-car race, 5% bad
	p := startPipeline(t, devices)
	cookie := p.dx.Login(t, p.demo)
	c := mustDialWS(t, p.wsURL, cookie)
	if f := c.subscribe(t, p.eventID, "s1"); f.Type != ws.TypeSubscribed {
		t.Fatalf("subscribe: %+v", f)
	}

	p.simulate(t, "run", "-seed-db=false", "-stream", p.stream, "-devices", strconv.Itoa(devices),
		"-rate", strconv.Itoa(rate), "-count", strconv.Itoa(count), "-bad", "0.05")
	tr := p.truth(t)
	if len(tr.valid)+len(tr.bad) != count || len(tr.bad) == 0 {
		t.Fatalf("simulator wrote %d valid + %d bad entries, want %d with some bad", len(tr.valid), len(tr.bad), count)
	}

	col := &collector{perDevice: map[string][]time.Time{}}
	testkit.Eventually(t, 60*time.Second, func() error {
		col.drain(t, c)
		if m := col.latestMissing(tr); len(m) > 0 {
			return fmt.Errorf("client lacks the newest position of %d devices", len(m))
		}
		if withheld := p.notDelivered(t); col.total+withheld < len(tr.valid) {
			return fmt.Errorf("client has %d of %d positions (%d withheld)", col.total, len(tr.valid), withheld)
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
}
