package authsvc

import (
	"testing"
	"time"
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
	a := credentialKey(credential{value: "tok"})
	b := credentialKey(credential{bearer: true, value: "tok"})
	if a == b || a != credentialKey(credential{value: "tok"}) {
		t.Fatal("credential keys must be stable and differ by kind")
	}
}
