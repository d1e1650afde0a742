package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"trm-live/bridge"
	"trm-live/contract/streams"
	"trm-live/testkit"
)

// shards is the number of input streams of the cluster tests, spread over
// the slots by their hash tags {0}..{7} (over all three masters of a
// cluster created by redis-cli: slots 13907, 9842, 5649, 1584, 14039,
// 9974, 5781, 1716).
const shards = 8

// shardStreams are the test's input streams <prefix>:{0} .. {7}. Entry i
// (e.entry(i, shards)) goes to stream i % shards: device dev-00k always
// writes to stream k, as the ingestion service keeps a device on one
// stream.
func shardStreams(prefix string) []string {
	s := make([]string, shards)
	for k := range s {
		s[k] = fmt.Sprintf("%s:{%d}", prefix, k)
	}
	return s
}

// waitAllIn is waitAll for input streams ss on rdb (a cluster or a
// sentinel-managed master): POSITIONS holds want messages and nothing is
// pending in any of them.
func (e *env) waitAllIn(rdb redis.UniversalClient, ss []string, want uint64, timeout time.Duration) {
	e.t.Helper()
	testkit.Eventually(e.t, timeout, func() error {
		got, err := e.msgsErr(streams.Positions)
		if err != nil {
			return err
		}
		p, err := pendingAll(e.t, rdb, ss, e.group)
		if err != nil {
			return err
		}
		if got != want || p != 0 {
			return fmt.Errorf("POSITIONS has %d messages (want %d), %d entries pending", got, want, p)
		}
		return nil
	})
}

// pendingAll is the group's pending count summed over the streams.
func pendingAll(t *testing.T, rdb redis.UniversalClient, ss []string, group string) (int64, error) {
	t.Helper()
	var sum int64
	for _, s := range ss {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		p, err := rdb.XPending(ctx, s, group).Result()
		cancel()
		if err != nil {
			return 0, fmt.Errorf("xpending %s: %w", s, err)
		}
		sum += p.Count
	}
	return sum, nil
}

// Positions from every shard of a 3-master, 3-replica Redis Cluster arrive
// exactly once; a bridge that crashed before its XACKs leaves entries
// pending on every shard, a second bridge claims them (XAUTOCLAIM per
// stream) and the dead one is pruned from every stream; the window
// bookkeeping key is written (a single-key command on the cluster).
func TestClusterEveryShardExactlyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	start := time.Now()
	c := testkit.StartRedisCluster(t, 3, 1)
	t.Logf("cluster up in %s", time.Since(start).Round(time.Millisecond))
	rdb := c.Client(t)
	ss := shardStreams(testkit.Unique("positions"))
	ctx := context.Background()

	masters := map[string]bool{}
	for _, s := range ss {
		slot, err := rdb.ClusterKeySlot(ctx, s).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := bridge.KeySlot(s); int64(got) != slot {
			t.Fatalf("KeySlot(%q) = %d, CLUSTER KEYSLOT says %d", s, got, slot)
		}
		masters[c.MasterOf(s).Addr] = true
	}
	if len(masters) != 3 {
		t.Fatalf("the streams live on %d masters, want all 3", len(masters))
	}

	const n = 4000
	for lo := 0; lo < n; lo += 500 {
		pipe := rdb.Pipeline()
		for i := lo; i < lo+500; i++ {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: ss[i%shards], Values: e.entry(i, shards)})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}

	cfgA, _ := e.config("dead")
	cfgA.RedisURL, cfgA.Streams = c.URL, ss
	cfgA.Batch = 100
	runA := e.start(bridge.WithCrashBeforeAck(cfgA, func(int) bool { return true }))
	if err := runA.wait(t); !errors.Is(err, bridge.ErrCrash) {
		t.Fatalf("Run A returned %v, want the simulated crash", err)
	}
	left, err := pendingAll(t, rdb, ss, e.group)
	if err != nil || left == 0 {
		t.Fatalf("the crashed bridge left %d pending (%v); want some", left, err)
	}
	t.Logf("crashed bridge left %d entries pending", left)

	cfgB, regB := e.config("alive")
	cfgB.RedisURL, cfgB.Streams = c.URL, ss
	cfgB.ClaimInterval = 100 * time.Millisecond
	cfgB.ClaimMinIdle = 300 * time.Millisecond
	cfgB.ConsumerMaxIdle = 10 * cfgB.Block
	e.start(cfgB)
	e.waitAllIn(rdb, ss, n, 60*time.Second)
	if claimed := metric(t, regB, "bridge_entries_claimed_total"); claimed == 0 {
		t.Fatal("the second bridge claimed nothing: the test did not exercise XAUTOCLAIM on the cluster")
	}
	seen := e.msgIDs()
	for i := range n {
		if id := msgIDOf(t, e.entry(i, shards)); seen[id] != 1 {
			t.Fatalf("entry %d (%s, stream %s) stored %d times, want 1", i, id, ss[i%shards], seen[id])
		}
	}
	testkit.Eventually(t, 30*time.Second, func() error {
		for _, s := range ss {
			cs, err := rdb.XInfoConsumers(ctx, s, e.group).Result()
			if err != nil {
				return err
			}
			for _, co := range cs {
				if co.Name == "dead" {
					return fmt.Errorf("consumer dead still in the group of %s", s)
				}
			}
		}
		return nil
	})
	saved := "bridge:" + e.group + ":jetstream-acks:" + strings.Join(ss, ",")
	testkit.Eventually(t, 10*time.Second, func() error {
		if n, err := rdb.HLen(ctx, saved).Result(); err != nil || n == 0 {
			return fmt.Errorf("saved jetstream acks %s: %d fields, %v", saved, n, err)
		}
		return nil
	})
}

// writer appends positions to one stream the way a careful ingestion
// service does: each XADD followed by WAIT 1 on the same connection, and
// an entry counts as acknowledged only when a replica has it. After a
// failover the promoted master has no replica left (this test kills no
// more nodes), so there the master's OK is what acknowledges.
type writer struct {
	stream string
	k      int // entries are e.entry(k + shards*j, shards)
	// master finds the node to write to now ("" while there is none) and
	// whether it is a promoted one (no replica).
	master func() (addr string, promoted bool)

	mu        sync.Mutex
	confirmed []int // indexes acknowledged to the writer
	after     atomic.Int64
	failover  atomic.Bool // set by the test once the new master serves
}

func (w *writer) run(ctx context.Context, e *env) {
	var rdb *redis.Client
	addr := ""
	defer func() {
		if rdb != nil {
			_ = rdb.Close()
		}
	}()
	promoted := false
	for j := 0; ctx.Err() == nil; {
		if addr == "" {
			a, p := w.master()
			if a == "" {
				select {
				case <-ctx.Done():
				case <-time.After(20 * time.Millisecond): // the writer's retry backoff, not a wait of the test
				}
				continue
			}
			if rdb != nil {
				_ = rdb.Close()
			}
			rdb = redis.NewClient(&redis.Options{Addr: a, PoolSize: 1, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
			addr, promoted = a, p
		}
		i := w.k + shards*j
		j++ // a failed XADD may still have been stored: never reuse its index
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		pipe := rdb.Pipeline()
		add := pipe.XAdd(cctx, &redis.XAddArgs{Stream: w.stream, Values: e.entry(i, shards)})
		var wait *redis.Cmd
		if !promoted { // a promoted master has no replica to wait for
			wait = pipe.Do(cctx, "WAIT", 1, 1000) // one replica, at most 1 s
		}
		_, err := pipe.Exec(cctx)
		cancel()
		if err != nil || add.Err() != nil {
			addr = "" // the node may be gone: ask again
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		if promoted || replicasOf(wait) >= 1 {
			w.mu.Lock()
			w.confirmed = append(w.confirmed, i)
			w.mu.Unlock()
			if w.failover.Load() {
				w.after.Add(1)
			}
		}
	}
}

func replicasOf(wait *redis.Cmd) int64 {
	n, _ := wait.Int64()
	return n
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.confirmed)
}

// failoverRun starts one writer per stream, waits until each has some
// acknowledged entries, calls kill, waits until promoted() and each writer
// has more entries acknowledged after it, stops the writers and checks
// that every acknowledged position is in POSITIONS exactly once and that
// nothing stays pending.
func failoverRun(t *testing.T, e *env, rdb redis.UniversalClient, ss []string, ws []*writer, kill func(), promoted func() error) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Go(func() { w.run(ctx, e) })
	}
	defer func() { stop(); wg.Wait() }()
	enough := func(what string, n int, f func(*writer) int) {
		testkit.Eventually(t, 60*time.Second, func() error {
			for _, w := range ws {
				if got := f(w); got < n {
					return fmt.Errorf("%s: %s has %d acknowledged entries, want %d", what, w.stream, got, n)
				}
			}
			return nil
		})
	}
	enough("before the kill", 100, (*writer).count)
	before := 0
	for _, w := range ws {
		before += w.count()
	}
	killed := time.Now()
	kill()
	testkit.Eventually(t, 60*time.Second, promoted)
	t.Logf("replica promoted %s after the kill", time.Since(killed).Round(time.Millisecond))
	for _, w := range ws {
		w.failover.Store(true)
	}
	enough("after the failover", 100, func(w *writer) int { return int(w.after.Load()) })
	stop()
	wg.Wait()

	var confirmed []int
	for _, w := range ws {
		confirmed = append(confirmed, w.confirmed...)
	}
	t.Logf("%d entries acknowledged to the writers (%d before the kill)", len(confirmed), before)
	// 30 s is half of go-redis's own slot-map refresh period: a bridge that
	// waited for it after a master's death, instead of reloading the map
	// on its errors, would miss this deadline.
	testkit.Eventually(t, 30*time.Second, func() error {
		got, err := e.msgsErr(streams.Positions)
		if err != nil {
			return err
		}
		p, err := pendingAll(t, rdb, ss, e.group)
		if err != nil {
			return err
		}
		if got < uint64(len(confirmed)) || p != 0 {
			return fmt.Errorf("POSITIONS has %d messages (want at least %d), %d entries pending", got, len(confirmed), p)
		}
		return nil
	})
	seen := e.msgIDs()
	for _, i := range confirmed {
		if id := msgIDOf(t, e.entry(i, shards)); seen[id] != 1 {
			t.Fatalf("acknowledged entry %d (%s) stored %d times, want 1", i, id, seen[id])
		}
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("%s stored %d times", id, c)
		}
	}
}

// A cluster master killed (SIGKILL) while positions flow: its replica takes
// over, the consumer group (replicated with the stream) carries on, and
// every position acknowledged to the writer (XADD then WAIT 1) reaches
// POSITIONS exactly once.
func TestClusterMasterKilledWhilePositionsFlow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := testkit.StartRedisCluster(t, 3, 1)
	rdb := c.Client(t)
	ss := shardStreams(testkit.Unique("positions"))
	victim := c.MasterOf(ss[0])
	original := map[string]bool{}
	for _, m := range c.Masters() {
		original[m.Addr] = true
	}

	cfg, reg := e.config("a")
	cfg.RedisURL, cfg.Streams = c.URL, ss
	run := e.start(cfg)
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + run.addr + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	// The victim's readers fail until its replica is promoted: /readyz
	// says so (a PING to a live node alone would not).
	kill := func() {
		victim.Kill()
		testkit.Eventually(t, 10*time.Second, func() error {
			if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "stream readers failing") {
				return fmt.Errorf("/readyz %d %s", code, body)
			}
			return nil
		})
	}

	var ws []*writer
	for k, s := range ss {
		ws = append(ws, &writer{stream: s, k: k, master: func() (string, bool) {
			m := c.MasterOf(s)
			if m == nil {
				return "", false
			}
			return m.Addr, !original[m.Addr]
		}})
	}
	failoverRun(t, e, rdb, ss, ws, kill, func() error {
		if m := c.MasterOf(ss[0]); m == nil || m == victim {
			return fmt.Errorf("no new master for %s yet", ss[0])
		}
		return nil
	})
	testkit.Eventually(t, 30*time.Second, func() error {
		if code, body := readyz(); code != http.StatusOK {
			return fmt.Errorf("/readyz %d %s after the failover", code, body)
		}
		return nil
	})
	if errs := metric(t, reg, "bridge_redis_errors_total"); errs == 0 {
		t.Fatal("the bridge saw no Redis error: the kill did not hit it")
	}
}

// The Sentinel-managed master killed while positions flow: the sentinels
// promote its replica, the bridge reconnects to the new master and carries
// on, and every acknowledged position reaches POSITIONS exactly once.
func TestSentinelFailoverWhilePositionsFlow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := testkit.StartRedisSentinel(t)
	rdb := s.Client(t)
	ss := shardStreams(testkit.Unique("positions"))[:2]

	cfg, reg := e.config("a")
	cfg.RedisURL, cfg.Streams = s.URL, ss
	e.start(cfg)

	var ws []*writer
	for k, st := range ss {
		ws = append(ws, &writer{stream: st, k: k, master: func() (string, bool) {
			m := s.CurrentMaster()
			return m, m == s.Replica.Addr
		}})
	}
	failoverRun(t, e, rdb, ss, ws, s.Master.Kill, func() error {
		if m := s.CurrentMaster(); m != s.Replica.Addr {
			return fmt.Errorf("master %q, want the replica %s", m, s.Replica.Addr)
		}
		return nil
	})
	if errs := metric(t, reg, "bridge_redis_errors_total"); errs == 0 {
		t.Fatal("the bridge saw no Redis error: the kill did not hit it")
	}
}

// With passwords on the Redis servers and on the sentinels: the URL's
// password reaches the master, REDIS_SENTINEL_PASSWORD the sentinels (two
// different passwords, so a mix-up fails), and every position arrives.
func TestSentinelWithPasswords(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := testkit.StartRedisSentinelWithPasswords(t, "data-secret", "sentinel-secret")
	rdb := s.Client(t)
	ss := shardStreams(testkit.Unique("positions"))[:2]
	const n = 600
	ctx := context.Background()
	pipe := rdb.Pipeline()
	for i := range n {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: ss[i%2], Values: e.entry(i, shards)})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	cfg, _ := e.config("a")
	cfg.RedisURL, cfg.RedisSentinelPassword, cfg.Streams = s.URL, s.SentinelPassword, ss
	if !strings.Contains(cfg.RedisURL, ":data-secret@") {
		t.Fatalf("the sentinel URL %s carries no password", cfg.RedisURL)
	}
	e.start(cfg)
	e.waitAllIn(rdb, ss, n, 30*time.Second)
}
