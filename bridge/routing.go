package bridge

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// window is one event_devices row: the device belongs to event from
// `from` (inclusive) until `until` (exclusive), Unix ms; a null bound is
// open (MinInt64 / MaxInt64).
type window struct {
	event       string
	from, until int64
}

// routes is an immutable snapshot of event_devices: per device, its windows
// sorted by assigned_from descending, so the first window containing a fix
// time is the latest assignment, as the design wants.
type routes struct {
	byDevice map[string][]window
	rows     int
}

// event returns the event of device at ts, or "" when no window contains it.
func (r *routes) event(device string, ts time.Time) string {
	if r == nil {
		return ""
	}
	ms := ts.UnixMilli()
	for _, w := range r.byDevice[device] {
		if w.from <= ms && ms < w.until {
			return w.event
		}
	}
	return ""
}

// newRoutes builds the snapshot from rows in any order.
func newRoutes(rows map[string][]window) *routes {
	r := &routes{byDevice: rows}
	for _, ws := range rows {
		r.rows += len(ws)
		sort.Slice(ws, func(i, j int) bool {
			if ws[i].from != ws[j].from {
				return ws[i].from > ws[j].from
			}
			if ws[i].until != ws[j].until {
				return ws[i].until < ws[j].until
			}
			return ws[i].event < ws[j].event
		})
	}
	return r
}

// router keeps the whole event_devices table in memory and reloads it every
// RoutingRefresh. A failed reload keeps the last table: positions keep
// flowing with assignments at most a few refreshes old.
type router struct {
	pool    *pgxpool.Pool
	log     *slog.Logger
	m       *metrics
	every   time.Duration
	current atomic.Pointer[routes] // nil until the first successful load
	loaded  chan struct{}          // closed at the first successful load
}

func newRouter(pool *pgxpool.Pool, log *slog.Logger, m *metrics, every time.Duration) *router {
	return &router{pool: pool, log: log, m: m, every: every, loaded: make(chan struct{})}
}

// event routes one position; it never blocks.
func (r *router) event(device string, ts time.Time) string {
	return r.current.Load().event(device, ts)
}

func (r *router) ready() bool { return r.current.Load() != nil }

// run reloads the table until ctx ends.
func (r *router) run(ctx context.Context) error {
	t := time.NewTicker(r.every)
	defer t.Stop()
	failing := false
	for {
		lctx, cancel := context.WithTimeout(ctx, max(r.every, 5*time.Second))
		rt, err := r.load(lctx)
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return nil
		case err != nil:
			r.m.routingErrors.Inc()
			if !failing {
				r.log.Warn("routing table reload failed; keeping the last table", "err", err, "loaded", r.ready())
				failing = true
			}
		default:
			prev := r.current.Swap(rt)
			r.m.routingRows.Set(float64(rt.rows))
			r.m.routingLoaded.Set(float64(time.Now().Unix()))
			if prev == nil {
				close(r.loaded)
				r.log.Info("routing table loaded", "assignments", rt.rows, "devices", len(rt.byDevice))
			} else if failing {
				r.log.Info("routing table reloaded again", "assignments", rt.rows)
			}
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (r *router) load(ctx context.Context) (*routes, error) {
	rows, err := r.pool.Query(ctx,
		`SELECT event_id::text, device_id, assigned_from, assigned_until FROM event_devices`)
	if err != nil {
		return nil, fmt.Errorf("query event_devices: %w", err)
	}
	defer rows.Close()
	m := make(map[string][]window)
	for rows.Next() {
		var ev, dev string
		var from, until *time.Time
		if err := rows.Scan(&ev, &dev, &from, &until); err != nil {
			return nil, fmt.Errorf("scan event_devices: %w", err)
		}
		w := window{event: ev, from: math.MinInt64, until: math.MaxInt64}
		if from != nil {
			w.from = from.UnixMilli()
		}
		if until != nil {
			w.until = until.UnixMilli()
		}
		m[dev] = append(m[dev], w)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read event_devices: %w", err)
	}
	return newRoutes(m), nil
}
