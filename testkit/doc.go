// Package testkit starts the real servers tests run against: an embedded
// nats-server per test, a private redis-server or PostgreSQL when a test must
// stop and restart one, a private Redis Cluster (StartRedisCluster) or
// Sentinel setup (StartRedisSentinel) from the same redis-server binary,
// and isolated keys and databases on the shared Redis and PostgreSQL that
// scripts/test starts.
//
// It is imported only by _test.go files (its subpackages directus and
// benchenv also by the dev tooling and the benchmark programs). A missing
// server or setting fails the test with one actionable message; nothing
// here ever skips.
package testkit

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// Eventually polls check every 20 ms until it returns nil or timeout passes,
// then fails the test with the last error. It is the checkFor of
// nats-server's tests: poll with a deadline, never sleep.
func Eventually(tb testing.TB, timeout time.Duration, check func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("not true after %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// RepoRoot returns the repository root: the nearest parent folder of the
// working directory that holds go.work.
func RepoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("testkit: no go.work above the working directory; run tests inside the repository")
		}
		dir = parent
	}
}

var uniq atomic.Int64

// Unique returns a name unique to this test process and call, for stream
// keys, groups, consumers and databases: prefix_<pid>_<n>_<ms>.
func Unique(prefix string) string {
	return fmt.Sprintf("%s_%d_%d_%d", prefix, os.Getpid(), uniq.Add(1), time.Now().UnixMilli()%100000)
}

func mustEnv(tb testing.TB, name, what string) string {
	tb.Helper()
	v := os.Getenv(name)
	if v == "" {
		tb.Fatalf("testkit: %s is not set: it must point at %s. Run the tests through scripts/test, which starts the servers and sets it.", name, what)
	}
	return v
}
