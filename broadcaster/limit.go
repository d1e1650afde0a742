package broadcaster

import (
	"sync"
	"sync/atomic"
	"time"
)

// handshakeGate bounds the handshakes that may cost an authsvc request,
// before any is made (Config.HandshakeRate, HandshakeBurst,
// MaxPendingHandshakes):
//
//   - per client address, a token bucket of HandshakeBurst tokens refilled
//     at HandshakeRate per second. Every handshake takes a token before its
//     credential is looked at; an accepted one gives it back, so the bucket
//     limits the refused handshakes of an address (and its concurrent
//     unauthenticated ones), never a crowd of real users behind one NAT;
//   - over all addresses, at most MaxPendingHandshakes waiting for authsvc.
//
// Its methods are safe for concurrent use; mu guards ips.
type handshakeGate struct {
	rate, burst float64 // rate < 0: no per-address limit
	maxPending  int64
	maxIPs      int
	now         func() time.Time

	pending atomic.Int64

	mu  sync.Mutex
	ips map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// maxTrackedIPs bounds the addresses the gate remembers; past it, buckets
// that have refilled are dropped at once, and an address that still finds
// no room is not limited (memory stays bounded under a spoofed-source
// flood; the global bound still holds).
const maxTrackedIPs = 1 << 17

func newHandshakeGate(rate float64, burst, maxPending int) *handshakeGate {
	return &handshakeGate{rate: rate, burst: float64(burst), maxPending: int64(maxPending),
		maxIPs: maxTrackedIPs, now: time.Now, ips: make(map[string]*bucket)}
}

// take takes one token of ip's bucket; false means over the rate.
func (g *handshakeGate) take(ip string) bool {
	if g.rate < 0 {
		return true
	}
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	b := g.ips[ip]
	if b == nil {
		if len(g.ips) >= g.maxIPs {
			g.pruneLocked(now)
			if len(g.ips) >= g.maxIPs {
				return true
			}
		}
		b = &bucket{tokens: g.burst, last: now}
		g.ips[ip] = b
	}
	b.tokens = min(g.burst, b.tokens+now.Sub(b.last).Seconds()*g.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// refund gives back the token of an accepted handshake (or of one that
// failed through no fault of the client: authsvc unavailable).
func (g *handshakeGate) refund(ip string) {
	if g.rate < 0 {
		return
	}
	g.mu.Lock()
	if b := g.ips[ip]; b != nil {
		b.tokens = min(g.burst, b.tokens+1)
	}
	g.mu.Unlock()
}

// enter counts a handshake waiting for authsvc; false means the global
// bound is reached (nothing counted).
func (g *handshakeGate) enter() bool {
	if g.pending.Add(1) > g.maxPending {
		g.pending.Add(-1)
		return false
	}
	return true
}

func (g *handshakeGate) leave() { g.pending.Add(-1) }

// prune drops the buckets that are full again: they hold nothing a new
// bucket would not.
func (g *handshakeGate) prune() {
	now := g.now()
	g.mu.Lock()
	g.pruneLocked(now)
	g.mu.Unlock()
}

func (g *handshakeGate) pruneLocked(now time.Time) {
	for ip, b := range g.ips {
		if b.tokens+now.Sub(b.last).Seconds()*g.rate >= g.burst {
			delete(g.ips, ip)
		}
	}
}

// tracked is the number of addresses with a bucket.
func (g *handshakeGate) tracked() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.ips)
}
