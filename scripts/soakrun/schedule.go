package soakrun

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Kind is a class of fault.
type Kind string

// The faults a soak injects.
const (
	// KillWorker is kill -9 of one worker instance, restarted after Down.
	KillWorker Kind = "kill-worker"
	// KillNATS is kill -9 of one NATS node, restarted after Down.
	KillNATS Kind = "kill-nats"
	// RestartPostgres stops PostgreSQL at once (pg_ctl -m immediate) and
	// starts it after Down.
	RestartPostgres Kind = "restart-postgres"
	// RestartRedis is kill -9 of redis-server, restarted after Down.
	RestartRedis Kind = "restart-redis"
	// Directus5xx makes the Directus stand-in answer 503 for Down.
	Directus5xx Kind = "directus-5xx"
	// DirectusHang makes the Directus stand-in hold every request for Down.
	DirectusHang Kind = "directus-hang"
	// DropTable is DROP TABLE positions.
	DropTable Kind = "drop-table"
	// Logout revokes one viewer's session; it must be closed with 4401.
	Logout Kind = "logout"
)

// Kinds is every fault kind, in a fixed order.
var Kinds = []Kind{KillWorker, KillNATS, RestartPostgres, RestartRedis, Directus5xx, DirectusHang, DropTable, Logout}

// Fault is one scheduled fault.
type Fault struct {
	// At is the time from the start of the load.
	At   time.Duration
	Kind Kind
	// Target names the instance (bridge-2, nats-3) or the viewer (viewer-17).
	Target string
	// Down is how long the target stays down, answers 5xx or hangs.
	Down time.Duration
}

func (f Fault) String() string {
	s := fmt.Sprintf("%8s %-16s", f.At.Round(time.Second), f.Kind)
	if f.Target != "" {
		s += " " + f.Target
	}
	if f.Down > 0 {
		s += fmt.Sprintf(" for %s", f.Down.Round(100*time.Millisecond))
	}
	return s
}

// ScheduleConfig is what a schedule is drawn from.
type ScheduleConfig struct {
	Seed uint64
	// Duration is the load time; faults start after Warmup and none starts
	// in the last Quiet.
	Duration, Warmup, Quiet time.Duration
	// Gap is the least quiet time between the end of a fault and the next;
	// each gap is drawn from [Gap, 2×Gap).
	Gap time.Duration
	// Workers are the worker instance names (bridge-1, ...).
	Workers []string
	// NATSNodes is how many NATS nodes (nats-1 ...).
	NATSNodes int
	// Viewers is how many viewers; Logout picks one not yet logged out.
	Viewers int
	// MaxLogouts bounds the viewers logged out in one run.
	MaxLogouts int
}

// Schedule draws the faults of a run. The same config gives the same
// schedule. Faults never overlap: one ends (its target is back) before the
// gap to the next starts, so at most one NATS node is ever down. Kinds are
// dealt from shuffled decks of every kind, so each appears once in every
// len(Kinds) faults.
func Schedule(c ScheduleConfig) []Fault {
	rnd := rand.New(rand.NewPCG(c.Seed, 0x50a4))
	dur := func(lo, hi time.Duration) time.Duration {
		return lo + time.Duration(rnd.Int64N(int64(hi-lo)))
	}
	var deck []Kind
	loggedOut := map[int]bool{}
	var out []Fault
	at := c.Warmup
	for {
		if len(deck) == 0 {
			deck = append(deck, Kinds...)
			rnd.Shuffle(len(deck), func(i, j int) { deck[i], deck[j] = deck[j], deck[i] })
		}
		k := deck[0]
		deck = deck[1:]
		f := Fault{At: at, Kind: k}
		switch k {
		case KillWorker:
			if len(c.Workers) == 0 {
				continue
			}
			f.Target = c.Workers[rnd.IntN(len(c.Workers))]
			f.Down = dur(500*time.Millisecond, 5*time.Second)
		case KillNATS:
			if c.NATSNodes < 2 {
				continue
			}
			f.Target = fmt.Sprintf("nats-%d", rnd.IntN(c.NATSNodes)+1)
			f.Down = dur(time.Second, 6*time.Second)
		case RestartPostgres, RestartRedis:
			f.Down = dur(500*time.Millisecond, 5*time.Second)
		case Directus5xx, DirectusHang:
			f.Down = dur(3*time.Second, 10*time.Second)
		case Logout:
			if len(loggedOut) >= c.MaxLogouts || len(loggedOut) >= c.Viewers {
				continue
			}
			v := rnd.IntN(c.Viewers)
			for loggedOut[v] {
				v = (v + 1) % c.Viewers
			}
			loggedOut[v] = true
			f.Target = ViewerName(v)
		}
		if f.At+f.Down > c.Duration-c.Quiet {
			return out
		}
		out = append(out, f)
		at = f.At + f.Down + dur(c.Gap, 2*c.Gap)
	}
}

// ViewerName is the name of viewer i in reports and schedules.
func ViewerName(i int) string { return fmt.Sprintf("viewer-%d", i) }
