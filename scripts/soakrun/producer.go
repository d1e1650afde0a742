package soakrun

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"trm-live/scripts/simulate"
)

// producer writes the simulator's race to the Redis stream: each tick's
// entries in ten slices spread over the tick, as unsynchronised trackers
// send, each with an explicit entry id (<fix ms>-<device index>) so a
// write retried after a Redis restart is never stored twice.
type producer struct {
	rdb    *redis.Client
	stream string
	sim    *simulate.Sim
	tick   time.Duration
	slot   []int // device index -> slice
	index  map[string]int

	mu     sync.Mutex
	ledger *Ledger
	late   time.Duration // furthest behind schedule
	sent   int64
}

const slices = 10

func newProducer(rdb *redis.Client, stream string, sim *simulate.Sim, rate float64) *producer {
	p := &producer{rdb: rdb, stream: stream, sim: sim, tick: time.Duration(float64(time.Second) / rate), index: map[string]int{}}
	devs := make([]string, len(sim.Devices))
	p.slot = make([]int, len(devs))
	for i, d := range sim.Devices {
		devs[i] = d.ID
		p.index[d.ID] = i
		p.slot[i] = i * slices / len(devs)
	}
	p.ledger = NewLedger(devs)
	return p
}

// scheduled is when the position of device with fix time ts was due to be
// written: the latency origin.
func (p *producer) scheduled(device string, ts int64) (time.Time, bool) {
	i, ok := p.index[device]
	if !ok {
		return time.Time{}, false
	}
	return time.UnixMilli(ts).Add(time.Duration(p.slot[i]) * p.tick / slices), true
}

// run writes ticks from start until until (exclusive).
func (p *producer) run(ctx context.Context, start, until time.Time) error {
	n := len(p.sim.Devices)
	for k := 0; ; k++ {
		at := start.Add(time.Duration(k) * p.tick)
		if !at.Before(until) {
			return nil
		}
		entries := p.sim.Tick(at)
		ms := at.UnixMilli()
		p.mu.Lock()
		p.ledger.AddTick(ms)
		p.mu.Unlock()
		for sl := 0; sl < slices; sl++ {
			due := at.Add(time.Duration(sl) * p.tick / slices)
			if d := time.Until(due); d > 0 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(d):
				}
			} else {
				p.mu.Lock()
				p.late = max(p.late, -d)
				p.mu.Unlock()
			}
			lo, hi := sl*n/slices, (sl+1)*n/slices
			if err := p.write(ctx, ms, lo, entries[lo:hi]); err != nil {
				return err
			}
		}
	}
}

func (p *producer) write(ctx context.Context, ms int64, lo int, entries []simulate.Entry) error {
	pipe := p.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(entries))
	ids := make([]string, len(entries))
	for j, e := range entries {
		ids[j] = fmt.Sprintf("%d-%d", ms, lo+j)
		cmds[j] = pipe.XAdd(ctx, &redis.XAddArgs{Stream: p.stream, ID: ids[j], Values: e.Values})
	}
	_, _ = pipe.Exec(ctx)
	for j, e := range entries {
		if err := cmds[j].Err(); err != nil {
			if err := p.retry(ctx, ids[j], e); err != nil {
				return err
			}
		}
		p.mu.Lock()
		p.sent++
		if e.Bad != "" {
			p.ledger.AddBad(p.sim.Devices[lo+j].ID, ms, ids[j], string(e.Bad))
		}
		p.mu.Unlock()
	}
	return nil
}

// retry writes one entry until Redis takes it; "equal or smaller" means an
// earlier attempt was stored.
func (p *producer) retry(ctx context.Context, id string, e simulate.Entry) error {
	backoff := 50 * time.Millisecond
	for {
		err := p.rdb.XAdd(ctx, &redis.XAddArgs{Stream: p.stream, ID: id, Values: e.Values}).Err()
		if err == nil || strings.Contains(err.Error(), "equal or smaller") {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}
