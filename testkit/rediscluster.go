package testkit

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisNode is one redis-server process of a RedisCluster or a
// RedisSentinel setup (a sentinel is one too, started with --sentinel).
type RedisNode struct {
	Port int
	// Addr is 127.0.0.1:<Port>.
	Addr string
	Dir  string
	// Password is the node's requirepass ("" none).
	Password string
	cmd      *exec.Cmd
	done     chan struct{}
}

// startNode runs redis-server with the config file text conf (written to
// Dir/redis.conf) and the extra arguments, and waits until it answers PING
// (authenticated with password, its requirepass, when not empty).
func startNode(tb testing.TB, port int, dir, password, conf string, args ...string) *RedisNode {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Fatal("testkit: redis-server is not on PATH: install Debian's redis-server package (scripts/test does)")
	}
	n := &RedisNode{Port: port, Addr: "127.0.0.1:" + strconv.Itoa(port), Dir: dir, Password: password, done: make(chan struct{})}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	conf = fmt.Sprintf("bind 127.0.0.1\nport %d\ndir %s\nlogfile %s\nsave \"\"\nappendonly no\ndaemonize no\nprotected-mode yes\n",
		port, dir, filepath.Join(dir, "redis.log")) + conf
	confPath := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		tb.Fatal(err)
	}
	n.cmd = exec.Command("redis-server", append([]string{confPath}, args...)...)
	if err := n.cmd.Start(); err != nil {
		tb.Fatalf("testkit: start redis-server: %v", err)
	}
	go func() { _ = n.cmd.Wait(); close(n.done) }()
	tb.Cleanup(n.Kill)
	rdb := redis.NewClient(&redis.Options{Addr: n.Addr, Password: password, MaxRetries: -1})
	defer rdb.Close()
	Eventually(tb, 10*time.Second, func() error {
		select {
		case <-n.done:
			return fmt.Errorf("redis-server on %s exited; see %s", n.Addr, filepath.Join(dir, "redis.log"))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		return rdb.Ping(ctx).Err()
	})
	return n
}

// Kill stops the process with SIGKILL, as a crash would, and waits for it
// to exit. Safe to call twice.
func (n *RedisNode) Kill() {
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.done
}

// Client is a plain client of this one process.
func (n *RedisNode) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: n.Addr, Password: n.Password, MaxRetries: -1})
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// RedisCluster is a private Redis Cluster of redis-server processes on
// loopback, data under t.TempDir(), killed at cleanup.
type RedisCluster struct {
	tb    testing.TB
	Nodes []*RedisNode
	// URL is redis+cluster://<every node>, the bridge's REDIS_URL form.
	URL string
}

// StartRedisCluster starts masters × (1 + replicas) nodes, joins them with
// redis-cli --cluster create (--cluster-replicas replicas), and waits until
// every node reports cluster_state:ok and every master has its replicas
// online. The node timeout is 1 s, so a killed master's replica takes over
// within a few seconds.
func StartRedisCluster(tb testing.TB, masters, replicas int) *RedisCluster {
	tb.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		tb.Fatal("testkit: redis-cli is not on PATH: install Debian's redis-tools package (scripts/test does)")
	}
	total := masters * (1 + replicas)
	ports := FreePorts(tb, 2*total) // client ports, then cluster bus ports
	root := tb.TempDir()
	c := &RedisCluster{tb: tb}
	var addrs []string
	for i := range total {
		conf := fmt.Sprintf("cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-port %d\n"+
			"cluster-node-timeout 1000\ncluster-replica-validity-factor 0\ncluster-allow-replica-migration no\n"+
			"repl-diskless-sync yes\nrepl-diskless-sync-delay 0\n", ports[total+i])
		n := startNode(tb, ports[i], filepath.Join(root, fmt.Sprintf("node-%d", i)), "", conf)
		c.Nodes = append(c.Nodes, n)
		addrs = append(addrs, n.Addr)
	}
	c.URL = "redis+cluster://" + strings.Join(addrs, ",")
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		tb.Fatalf("testkit: redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitHealthy(30 * time.Second)
	return c
}

// Client is a cluster client of every node, closed at cleanup.
func (c *RedisCluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	var addrs []string
	for _, n := range c.Nodes {
		addrs = append(addrs, n.Addr)
	}
	// A short reload interval: after a failover the client finds the new
	// master soon (go-redis does not reload on connection errors).
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ClusterStateReloadInterval: 200 * time.Millisecond})
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// alive is the nodes not killed.
func (c *RedisCluster) alive() []*RedisNode {
	var live []*RedisNode
	for _, n := range c.Nodes {
		select {
		case <-n.done:
		default:
			live = append(live, n)
		}
	}
	return live
}

// WaitHealthy waits until every live node reports cluster_state:ok and
// every live replica's link to its master is up (synced).
func (c *RedisCluster) WaitHealthy(timeout time.Duration) {
	c.tb.Helper()
	Eventually(c.tb, timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for _, n := range c.alive() {
			rdb := redis.NewClient(&redis.Options{Addr: n.Addr, MaxRetries: -1})
			info, err := rdb.ClusterInfo(ctx).Result()
			if err == nil && !strings.Contains(info, "cluster_state:ok") {
				err = errors.New("cluster_state not ok")
			}
			var repl string
			if err == nil {
				repl, err = rdb.Info(ctx, "replication").Result()
			}
			_ = rdb.Close()
			if err == nil && strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
				err = errors.New("replica not synced yet")
			}
			if err != nil {
				return fmt.Errorf("node %s: %w", n.Addr, err)
			}
		}
		return nil
	})
}

// slotsOf is the number of slots the node serves as a master.
func slotsOf(ctx context.Context, n *RedisNode) int {
	rdb := redis.NewClient(&redis.Options{Addr: n.Addr, MaxRetries: -1})
	defer rdb.Close()
	shards, err := rdb.ClusterShards(ctx).Result()
	if err != nil {
		return 0
	}
	for _, s := range shards {
		for _, sn := range s.Nodes {
			if sn.Port == int64(n.Port) && sn.Role == "master" {
				total := 0
				for _, r := range s.Slots {
					total += int(r.End-r.Start) + 1
				}
				return total
			}
		}
	}
	return 0
}

// Masters is the live nodes that serve slots as masters now.
func (c *RedisCluster) Masters() []*RedisNode {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var ms []*RedisNode
	for _, n := range c.alive() {
		if slotsOf(ctx, n) > 0 {
			ms = append(ms, n)
		}
	}
	return ms
}

// MasterOf is the live node serving key's slot as a master, nil while
// there is none (its master died and no replica took over yet).
func (c *RedisCluster) MasterOf(key string) *RedisNode {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, n := range c.alive() {
		rdb := redis.NewClient(&redis.Options{Addr: n.Addr, MaxRetries: -1})
		slot, err := rdb.ClusterKeySlot(ctx, key).Result()
		var shards []redis.ClusterShard
		if err == nil {
			shards, err = rdb.ClusterShards(ctx).Result()
		}
		_ = rdb.Close()
		if err != nil {
			continue
		}
		for _, s := range shards {
			in := false
			for _, r := range s.Slots {
				in = in || slot >= r.Start && slot <= r.End
			}
			if !in {
				continue
			}
			for _, sn := range s.Nodes {
				if sn.Role != "master" || sn.Health != "online" {
					continue
				}
				for _, m := range c.alive() {
					if int64(m.Port) == sn.Port {
						return m
					}
				}
			}
		}
	}
	return nil
}

// RedisSentinel is a private Sentinel setup: one master, one replica and
// three sentinels (quorum 2) watching it as MasterName, on loopback, data
// under t.TempDir(), killed at cleanup. A killed master is replaced in a
// few seconds (down-after-milliseconds 1000).
type RedisSentinel struct {
	tb         testing.TB
	Master     *RedisNode // the master at start; see CurrentMaster
	Replica    *RedisNode
	Sentinels  []*RedisNode
	MasterName string
	// Password is the master's and the replica's requirepass and
	// masterauth; SentinelPassword the sentinels' requirepass ("" none).
	Password, SentinelPassword string
	// URL is redis+sentinel://[:Password@]<every sentinel>/<MasterName>/0,
	// the bridge's REDIS_URL form (SentinelPassword goes in
	// REDIS_SENTINEL_PASSWORD).
	URL string
}

// StartRedisSentinel starts the setup without passwords and waits until
// every sentinel knows the replica and the other sentinels (a failover
// needs both).
func StartRedisSentinel(tb testing.TB) *RedisSentinel {
	tb.Helper()
	return StartRedisSentinelWithPasswords(tb, "", "")
}

// StartRedisSentinelWithPasswords is StartRedisSentinel with password the
// Redis servers' requirepass (and masterauth) and sentinelPassword the
// sentinels' own requirepass; either may be empty.
func StartRedisSentinelWithPasswords(tb testing.TB, password, sentinelPassword string) *RedisSentinel {
	tb.Helper()
	ports := FreePorts(tb, 5)
	root := tb.TempDir()
	s := &RedisSentinel{tb: tb, MasterName: "trm-master", Password: password, SentinelPassword: sentinelPassword}
	data := "repl-diskless-sync yes\nrepl-diskless-sync-delay 0\n"
	if password != "" {
		data += fmt.Sprintf("requirepass %q\nmasterauth %[1]q\n", password)
	}
	s.Master = startNode(tb, ports[0], filepath.Join(root, "master"), password, data)
	s.Replica = startNode(tb, ports[1], filepath.Join(root, "replica"), password, data+
		fmt.Sprintf("replicaof 127.0.0.1 %d\n", ports[0]))
	var addrs []string
	for i, p := range ports[2:] {
		conf := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds %[1]s 1000\nsentinel failover-timeout %[1]s 10000\n"+
			"sentinel parallel-syncs %[1]s 1\n", s.MasterName, ports[0])
		if password != "" {
			conf += fmt.Sprintf("sentinel auth-pass %s %q\n", s.MasterName, password)
		}
		if sentinelPassword != "" {
			conf += fmt.Sprintf("requirepass %q\nsentinel sentinel-pass %[1]q\n", sentinelPassword)
		}
		n := startNode(tb, p, filepath.Join(root, fmt.Sprintf("sentinel-%d", i)), sentinelPassword, conf, "--sentinel")
		s.Sentinels = append(s.Sentinels, n)
		addrs = append(addrs, n.Addr)
	}
	cred := ""
	if password != "" {
		cred = url.UserPassword("", password).String() + "@"
	}
	s.URL = "redis+sentinel://" + cred + strings.Join(addrs, ",") + "/" + s.MasterName + "/0"
	Eventually(tb, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for _, n := range s.Sentinels {
			sc := redis.NewSentinelClient(&redis.Options{Addr: n.Addr, Password: s.SentinelPassword, MaxRetries: -1})
			replicas, err := sc.Replicas(ctx, s.MasterName).Result()
			var others []map[string]string
			if err == nil {
				others, err = sc.Sentinels(ctx, s.MasterName).Result()
			}
			_ = sc.Close()
			switch {
			case err != nil:
				return fmt.Errorf("sentinel %s: %w", n.Addr, err)
			case len(replicas) != 1 || strings.Contains(replicas[0]["flags"], "down"):
				return fmt.Errorf("sentinel %s: knows %d replicas", n.Addr, len(replicas))
			case len(others) != len(s.Sentinels)-1:
				return fmt.Errorf("sentinel %s: knows %d other sentinels", n.Addr, len(others))
			}
		}
		return nil
	})
	return s
}

// Client is a Sentinel-backed client of the master, closed at cleanup.
func (s *RedisSentinel) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	var addrs []string
	for _, n := range s.Sentinels {
		addrs = append(addrs, n.Addr)
	}
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: s.MasterName, SentinelAddrs: addrs,
		Password: s.Password, SentinelPassword: s.SentinelPassword})
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// CurrentMaster is the master's address as the live sentinels agree on it
// ("" while they disagree).
func (s *RedisSentinel) CurrentMaster() string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var addr string
	for _, n := range s.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: n.Addr, Password: s.SentinelPassword, MaxRetries: -1})
		a, err := sc.GetMasterAddrByName(ctx, s.MasterName).Result()
		_ = sc.Close()
		if err != nil || len(a) != 2 {
			return ""
		}
		got := a[0] + ":" + a[1]
		if addr != "" && got != addr {
			return ""
		}
		addr = got
	}
	return addr
}
