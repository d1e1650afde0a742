package bridge

import (
	"errors"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract"
	"trm-live/contract/streams"
)

// deniedSubjects remembers when the server last refused a publish for want
// of permission. The refusal reaches the connection's error handler only
// (no reply ever comes, so the publish's future times out): a future that
// failed on a subject refused after it was sent failed for good.
type deniedSubjects struct {
	log *slog.Logger
	mu  sync.Mutex
	at  map[string]time.Time // subject → last refusal
}

// maxDenied bounds the subjects remembered; past it the memory starts over.
const maxDenied = 10000

var deniedRe = regexp.MustCompile(`(?i)publish to "([^"]+)"`)

func newDeniedSubjects(log *slog.Logger) *deniedSubjects {
	return &deniedSubjects{log: log, at: make(map[string]time.Time)}
}

// record is the connection's asynchronous error handler.
func (d *deniedSubjects) record(err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		d.log.Warn("nats async error", "err", err)
		return
	}
	m := deniedRe.FindStringSubmatch(err.Error())
	if m == nil {
		d.log.Warn("nats permissions violation", "err", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.at) >= maxDenied {
		clear(d.at)
	}
	if _, seen := d.at[m[1]]; !seen {
		d.log.Warn("nats refused a publish: permissions violation", "subject", m[1])
	}
	d.at[m[1]] = time.Now()
}

// since reports whether a publish to subject was refused at or after t.
func (d *deniedSubjects) since(subject string, t time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	at, ok := d.at[subject]
	return ok && !at.Before(t)
}

// fullStreams tracks the JetStream streams that refuse publishes because
// they reached a limit (MaxBytes with DiscardNew, or the server's store is
// full). Those publishes are retried like any failure: their entries stay
// pending in Redis until there is room again.
type fullStreams struct {
	log   *slog.Logger
	gauge *prometheus.GaugeVec
	mu    sync.Mutex
	full  map[string]bool
	any   atomic.Bool // some stream is full: clear, on every PubAck, looks no further without it
}

func newFullStreams(log *slog.Logger, gauge *prometheus.GaugeVec) *fullStreams {
	for _, s := range []string{streams.Positions, streams.DLQ} {
		gauge.WithLabelValues(s).Set(0)
	}
	return &fullStreams{log: log, gauge: gauge, full: make(map[string]bool)}
}

// streamOf names the stream a subject of the bridge's publishes lands in.
func streamOf(subject string) string {
	if subject == contract.DLQSubject {
		return streams.DLQ
	}
	return streams.Positions
}

// check marks the stream of subject full when err says so.
func (f *fullStreams) check(subject string, err error) {
	if !storeFull(err) {
		return
	}
	s := streamOf(subject)
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.full[s] {
		f.full[s] = true
		f.any.Store(true)
		f.gauge.WithLabelValues(s).Set(1)
		f.log.Warn("jetstream stream full: publishes refused; entries stay pending in redis and are re-sent with backoff",
			"stream", s, "err", err)
	}
}

// clear marks the stream of subject as taking publishes again.
func (f *fullStreams) clear(subject string) {
	if !f.any.Load() {
		return
	}
	s := streamOf(subject)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.full[s] {
		f.full[s] = false
		f.any.Store(slices.Contains(slices.Collect(maps.Values(f.full)), true))
		f.gauge.WithLabelValues(s).Set(0)
		f.log.Info("jetstream stream takes publishes again", "stream", s)
	}
}

// list is the full streams, sorted.
func (f *fullStreams) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for s, full := range f.full {
		if full {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// JetStream API error codes of a store that refuses to grow.
const (
	errCodeInsufficientResources = 10023 // the server's or account's store is full
	errCodeStoreFailed           = 10077 // "maximum bytes exceeded", "maximum messages exceeded"
)

// storeFull reports whether err is a stream or server limit refusing the
// message (not the message itself being too large).
func storeFull(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case errCodeInsufficientResources:
		return true
	case errCodeStoreFailed:
		return strings.Contains(apiErr.Description, "maximum")
	}
	return false
}
