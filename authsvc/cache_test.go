package authsvc

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"trm-live/contract/auth"
	"trm-live/testkit"
)

func TestCacheExpiresAndEvictsLeastRecentlyUsed(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newCache[string, int](3)
	c.put("a", 1, now.Add(10*time.Second))
	c.put("b", 2, now.Add(time.Second))
	c.put("c", 3, now.Add(10*time.Second))
	if v, ok := c.get("b", now); !ok || v != 2 {
		t.Fatalf("get b: %v %v", v, ok)
	}
	if _, ok := c.get("b", now.Add(time.Second)); ok {
		t.Fatal("b still there at its expiry")
	}
	if c.len() != 2 {
		t.Fatalf("expired entry kept: len %d", c.len())
	}
	c.put("b", 2, now.Add(10*time.Second))
	c.get("a", now) // a is now the most recently used; c the least
	c.put("d", 4, now.Add(10*time.Second))
	if c.len() != 3 {
		t.Fatalf("len %d, want the cap 3", c.len())
	}
	if _, ok := c.get("c", now); ok {
		t.Fatal("least recently used entry c not evicted")
	}
	for _, k := range []string{"a", "b", "d"} {
		if _, ok := c.get(k, now); !ok {
			t.Fatalf("%s evicted", k)
		}
	}
	c.put("a", 10, now.Add(20*time.Second)) // update in place
	if v, _ := c.get("a", now.Add(15*time.Second)); v != 10 || c.len() != 3 {
		t.Fatalf("update: %v, len %d", v, c.len())
	}
}

func TestCredentialKeySeparatesKinds(t *testing.T) {
	a := credentialKey(auth.SessionRequest{Cookie: "tok"})
	b := credentialKey(auth.SessionRequest{Bearer: "tok"})
	if a == b || a != credentialKey(auth.SessionRequest{Cookie: "tok"}) {
		t.Fatal("credential keys must be stable and differ by kind")
	}
}

func TestFlightCollapsesConcurrentCalls(t *testing.T) {
	var f flight[int]
	var joined atomic.Int64
	release := make(chan struct{})
	calls := 0
	results := make(chan int, 10)
	go func() {
		v, _ := f.do("k", func() { joined.Add(1) }, func() (int, error) { calls++; <-release; return 42, nil })
		results <- v
	}()
	// Wait until the first call is in flight, then pile on.
	testkit.Eventually(t, 10*time.Second, func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		if n := len(f.calls); n != 1 {
			return fmt.Errorf("%d calls in flight, want 1", n)
		}
		return nil
	})
	for i := 0; i < 9; i++ {
		go func() {
			v, _ := f.do("k", func() { joined.Add(1) }, func() (int, error) { calls++; return -1, nil })
			results <- v
		}()
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		if n := joined.Load(); n != 9 {
			return fmt.Errorf("%d callers joined, want 9", n)
		}
		return nil
	})
	close(release)
	for i := 0; i < 10; i++ {
		if v := <-results; v != 42 {
			t.Fatalf("result %d, want 42 from the one call", v)
		}
	}
	if calls != 1 {
		t.Fatalf("fn ran %d times, want 1", calls)
	}
	// The key is free again: the next call runs fn.
	if v, _ := f.do("k", func() { t.Fatal("joined a finished call") }, func() (int, error) { return 7, nil }); v != 7 {
		t.Fatalf("after the flight: %d", v)
	}
}
