package testkit

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// EnvRedisURL names the shared Redis that scripts/test starts.
const EnvRedisURL = "TRM_TEST_REDIS_URL"

// Redis returns a client of the shared test Redis (TRM_TEST_REDIS_URL). Tests
// isolate themselves with Unique key names; the client is closed at cleanup.
func Redis(tb testing.TB) *redis.Client {
	tb.Helper()
	opts, err := redis.ParseURL(mustEnv(tb, EnvRedisURL, "a running redis-server"))
	if err != nil {
		tb.Fatalf("testkit: %s: %v", EnvRedisURL, err)
	}
	rdb := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		tb.Fatalf("testkit: ping %s: %v (is scripts/test's redis-server running?)", EnvRedisURL, err)
	}
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// RedisServer is a private redis-server process for one test, for tests
// that stop and restart Redis. It keeps its port and its data directory
// (append-only file on) across Stop and Start.
type RedisServer struct {
	tb   testing.TB
	Port int
	Dir  string
	// URL is redis://127.0.0.1:<port>/0.
	URL string
	cmd *exec.Cmd
}

// StartRedis starts a private redis-server on a free loopback port with its
// data under t.TempDir(), stopped at cleanup. redis-server must be on PATH
// (scripts/test installs it).
func StartRedis(tb testing.TB) *RedisServer {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Fatal("testkit: redis-server is not on PATH: install Debian's redis-server package (scripts/test does)")
	}
	r := &RedisServer{tb: tb, Port: freePort(tb), Dir: tb.TempDir()}
	r.URL = fmt.Sprintf("redis://127.0.0.1:%d/0", r.Port)
	r.Start()
	tb.Cleanup(r.Stop)
	return r
}

// Start starts the server (again) and waits until it answers PING.
func (r *RedisServer) Start() {
	r.tb.Helper()
	if r.cmd != nil {
		return
	}
	cmd := exec.Command("redis-server",
		"--bind", "127.0.0.1", "--port", strconv.Itoa(r.Port),
		"--dir", r.Dir, "--appendonly", "yes", "--appendfsync", "always",
		"--save", "", "--protected-mode", "yes", "--daemonize", "no",
		"--logfile", filepath.Join(r.Dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		r.tb.Fatalf("testkit: start redis-server: %v", err)
	}
	r.cmd = cmd
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.Port), MaxRetries: -1})
	defer rdb.Close()
	Eventually(r.tb, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		return rdb.Ping(ctx).Err()
	})
}

// Stop stops the server (SIGTERM, so the append-only file is flushed) and
// waits for it to exit. Safe to call twice.
func (r *RedisServer) Stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-done
	}
	r.cmd = nil
}

func freePort(tb testing.TB) int {
	tb.Helper()
	return FreePorts(tb, 1)[0]
}

// handedOut holds every port FreePorts returned in this process.
var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// FreePorts returns n distinct loopback ports that were free a moment ago
// and that no earlier call in this test process returned: parallel tests
// each get their own, even when a port is closed and the kernel would hand
// it out again before its server binds it. The listeners stay open until
// all n are chosen.
func FreePorts(tb testing.TB, n int) []int {
	tb.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[int]bool{}
	}
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries == 100*n {
			tb.Fatal("testkit: no free loopback port not handed out already")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		defer l.Close()
		p := l.Addr().(*net.TCPAddr).Port
		if handedOut.ports[p] {
			continue
		}
		handedOut.ports[p] = true
		ports = append(ports, p)
	}
	return ports
}

// FreeAddrs is FreePorts as 127.0.0.1:port addresses.
func FreeAddrs(tb testing.TB, n int) []string {
	tb.Helper()
	addrs := make([]string, n)
	for i, p := range FreePorts(tb, n) {
		addrs[i] = "127.0.0.1:" + strconv.Itoa(p)
	}
	return addrs
}
