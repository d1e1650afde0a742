package testkit_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"trm-live/testkit"
)

// The cluster serves keys of every slot on three masters, and a killed
// master's replica takes its slots over.
func TestRedisCluster(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := testkit.StartRedisCluster(t, 3, 1)
	t.Logf("6-node cluster up in %s", time.Since(start).Round(time.Millisecond))
	if got := len(c.Masters()); got != 3 {
		t.Fatalf("%d masters, want 3", got)
	}
	ctx := context.Background()
	rdb := c.Client(t)
	for i := range 8 {
		if err := rdb.Set(ctx, fmt.Sprintf("k{%d}", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Replication is asynchronous: write k{0} on its master and WAIT for
	// the replica, or the kill may lose it.
	victim := c.MasterOf("k{0}")
	pipe := victim.Client(t).Pipeline()
	pipe.Set(ctx, "k{0}", "replicated", 0)
	wait := pipe.Do(ctx, "WAIT", 1, 5000)
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := wait.Int64(); n != 1 {
		t.Fatalf("WAIT 1: %d replicas acknowledged", n)
	}
	victim.Kill()
	start = time.Now()
	testkit.Eventually(t, 30*time.Second, func() error {
		if m := c.MasterOf("k{0}"); m == nil || m == victim {
			return fmt.Errorf("no new master serves k{0} yet")
		}
		return nil
	})
	c.WaitHealthy(30 * time.Second)
	t.Logf("replica promoted in %s", time.Since(start).Round(time.Millisecond))
	testkit.Eventually(t, 10*time.Second, func() error {
		v, err := rdb.Get(ctx, "k{0}").Result()
		if err == nil && v != "replicated" {
			return fmt.Errorf("k{0} = %q after the failover, want replicated", v)
		}
		return err
	})
}

// The sentinels replace a killed master by its replica.
func TestRedisSentinel(t *testing.T) {
	t.Parallel()
	start := time.Now()
	s := testkit.StartRedisSentinel(t)
	t.Logf("sentinel setup up in %s", time.Since(start).Round(time.Millisecond))
	if got := s.CurrentMaster(); got != s.Master.Addr {
		t.Fatalf("master %q, want %s", got, s.Master.Addr)
	}
	ctx := context.Background()
	rdb := s.Client(t)
	if err := rdb.Set(ctx, "k", 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Master.Kill()
	start = time.Now()
	testkit.Eventually(t, 30*time.Second, func() error {
		if got := s.CurrentMaster(); got != s.Replica.Addr {
			return fmt.Errorf("master %q, want %s", got, s.Replica.Addr)
		}
		return nil
	})
	t.Logf("replica promoted in %s", time.Since(start).Round(time.Millisecond))
	testkit.Eventually(t, 10*time.Second, func() error {
		return rdb.Set(ctx, "k", 2, 0).Err()
	})
}
