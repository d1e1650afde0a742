package broadcaster

import (
	"fmt"
	"testing"
	"time"
)

// TestHandshakeGate: the bucket refills at the rate, refunds restore a
// token, refilled buckets are forgotten, and past the address cap the
// gate stops tracking instead of growing.
func TestHandshakeGate(t *testing.T) {
	now := time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)
	g := newHandshakeGate(2, 3, 10)
	g.now = func() time.Time { return now }
	for i := range 3 {
		if !g.take("a") {
			t.Fatalf("take %d refused within the burst", i)
		}
	}
	if g.take("a") {
		t.Fatal("take past the burst allowed")
	}
	g.refund("a")
	if !g.take("a") {
		t.Fatal("refunded token not available")
	}
	now = now.Add(500 * time.Millisecond) // 2/s: one token back
	if !g.take("a") || g.take("a") {
		t.Fatal("refill at the rate")
	}
	if !g.take("b") {
		t.Fatal("another address is limited")
	}
	now = now.Add(2 * time.Second) // both full again
	g.prune()
	if n := g.tracked(); n != 0 {
		t.Fatalf("%d buckets after prune, want 0", n)
	}

	g.maxIPs = 4
	for i := range 4 {
		g.take(fmt.Sprint("ip", i))
	}
	if !g.take("new") || g.tracked() != 4 {
		t.Fatalf("past the cap: tracked %d, want 4 and the new address let through", g.tracked())
	}

	off := newHandshakeGate(-1, 1, 1)
	for range 100 {
		if !off.take("x") {
			t.Fatal("rate -1 limits")
		}
	}
	if !off.enter() || off.enter() {
		t.Fatal("global bound of 1")
	}
	off.leave()
	if !off.enter() {
		t.Fatal("leave frees the slot")
	}
}
