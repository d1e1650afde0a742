package bridge

import (
	"cmp"
	"encoding/json"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"trm-live/contract/streams"
)

// pubAcks is the bridge's asynchronous JetStream publish (decision
// "Bridge: its own PubAck path"). Each publish carries the reply subject
// <prefix><seq>; one wildcard subscription takes every reply, and its
// handler completes the item at once: parsed, counted, handed to the
// acker, its in-flight slot freed. A reply that is not a PubAck (an API
// error, no stream for the subject) goes to the completer, as do the
// publishes that timed out or were pending when the connection dropped;
// the completer re-sends them with the same Nats-Msg-Id or dead-letters
// them.
//
// nats.go's PublishMsgAsync does the same with a future per publish: a
// map entry with a random token, a timer, two channels and a JSON decode
// per PubAck, and a goroutine of ours waiting on each future. That was a
// quarter of the bridge's CPU per entry.
type pubAcks struct {
	prefix string // the reply subject of publish seq is prefix + base-36 seq
	next   atomic.Uint64

	// The publishes awaiting their reply, under mu: publish seq in
	// ring[seq&mask] (item.seq says which publish holds a slot), or in
	// over when an older publish still holds that slot.
	mu   sync.Mutex
	ring []*item
	mask uint64
	over map[uint64]*item

	// failures are the items whose reply was an error. It never fills: an
	// item is in it at most once, and only while it holds an in-flight
	// slot (cap(failures) == cap(sem)).
	failures chan pubFailure
	// acked is set by each PubAck: the completer's backoff starts over.
	acked atomic.Bool
}

type pubFailure struct {
	it  *item
	err error
}

func newPubAcks(inbox string, maxInFlight int) *pubAcks {
	size := 64
	for size < 2*maxInFlight {
		size *= 2
	}
	return &pubAcks{
		prefix:   inbox + ".",
		ring:     make([]*item, size),
		mask:     uint64(size - 1),
		over:     make(map[uint64]*item),
		failures: make(chan pubFailure, maxInFlight),
	}
}

// subject is the wildcard subject of every reply.
func (p *pubAcks) subject() string { return p.prefix + "*" }

// register gives it a new reply subject and puts it among the pending
// publishes, sent at now, and returns its sequence.
func (p *pubAcks) register(it *item, now time.Time) uint64 {
	seq := p.next.Add(1)
	it.msg.Reply = p.prefix + strconv.FormatUint(seq, 36)
	p.mu.Lock()
	it.seq, it.sent = seq, now
	if slot := &p.ring[seq&p.mask]; *slot == nil {
		*slot = it
	} else {
		p.over[seq] = it
	}
	p.mu.Unlock()
	return seq
}

// take removes the publish seq from the pending ones and returns its item,
// nil when it is no longer pending (it timed out or failed with the
// connection and was taken by the completer).
func (p *pubAcks) take(seq uint64) *item {
	p.mu.Lock()
	defer p.mu.Unlock()
	if slot := &p.ring[seq&p.mask]; *slot != nil && (*slot).seq == seq {
		it := *slot
		*slot = nil
		return it
	}
	it := p.over[seq]
	if it != nil {
		delete(p.over, seq)
	}
	return it
}

// expired removes and returns the publishes sent before deadline.
func (p *pubAcks) expired(deadline time.Time) []*item {
	return p.remove(func(it *item) bool { return it.sent.Before(deadline) })
}

// all removes and returns every pending publish.
func (p *pubAcks) all() []*item {
	return p.remove(func(*item) bool { return true })
}

// remove removes and returns the pending publishes that match, oldest
// first.
func (p *pubAcks) remove(match func(*item) bool) []*item {
	p.mu.Lock()
	var out []*item
	for i, it := range p.ring {
		if it != nil && match(it) {
			p.ring[i] = nil
			out = append(out, it)
		}
	}
	for seq, it := range p.over {
		if match(it) {
			delete(p.over, seq)
			out = append(out, it)
		}
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b *item) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// seqOf is the sequence named by a reply subject, false when the subject is
// not one of ours.
func (p *pubAcks) seqOf(subject string) (uint64, bool) {
	if len(subject) <= len(p.prefix) || subject[:len(p.prefix)] != p.prefix {
		return 0, false
	}
	seq, err := strconv.ParseUint(subject[len(p.prefix):], 36, 64)
	return seq, err == nil
}

// pubAck is what the bridge reads of a PubAck.
type pubAck struct {
	stream    string
	seq       uint64
	duplicate bool
}

// statusNoResponders is the status of the reply nats-server sends when no
// stream takes a subject.
const statusNoResponders = "503"

// parsePubAck reads the reply to a JetStream publish: a PubAck, an API
// error (*jetstream.APIError, as nats.go returns it), or no responders
// (jetstream.ErrNoStreamResponse). Anything else is
// jetstream.ErrInvalidJSAck.
func parsePubAck(m *nats.Msg) (pubAck, error) {
	if len(m.Data) == 0 {
		if m.Header.Get("Status") == statusNoResponders {
			return pubAck{}, jetstream.ErrNoStreamResponse
		}
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	if pa, ok := scanPubAck(m.Data); ok {
		return pa, nil
	}
	var r struct {
		Error     *jetstream.APIError `json:"error"`
		Stream    string              `json:"stream"`
		Sequence  uint64              `json:"seq"`
		Duplicate bool                `json:"duplicate"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	if r.Error != nil {
		return pubAck{}, r.Error
	}
	if r.Stream == "" {
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	return pubAck{stream: internStream(r.Stream), seq: r.Sequence, duplicate: r.Duplicate}, nil
}

// scanPubAck reads a PubAck the way nats-server writes it, a flat JSON
// object such as {"stream":"POSITIONS","seq":7,"duplicate": true}, without
// a decoder's allocations. It returns false for anything else (an error
// object, an escaped string, a malformed reply): parsePubAck decodes those
// with encoding/json.
func scanPubAck(b []byte) (pubAck, bool) {
	var pa pubAck
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return pa, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return pa, false // no stream
	}
	for {
		key, j, ok := scanString(b, i)
		if !ok {
			return pa, false
		}
		i = skipSpace(b, j)
		if i >= len(b) || b[i] != ':' {
			return pa, false
		}
		i = skipSpace(b, i+1)
		switch string(key) {
		case "stream":
			s, j, ok := scanString(b, i)
			if !ok {
				return pa, false
			}
			pa.stream, i = internStream(string(s)), j
		case "seq":
			j := i
			for j < len(b) && b[j] >= '0' && b[j] <= '9' {
				j++
			}
			n, err := strconv.ParseUint(string(b[i:j]), 10, 64)
			if err != nil {
				return pa, false
			}
			pa.seq, i = n, j
		case "duplicate":
			switch {
			case hasWord(b[i:], "true"):
				pa.duplicate, i = true, i+4
			case hasWord(b[i:], "false"):
				i += 5
			default:
				return pa, false
			}
		case "error":
			return pa, false
		default: // domain, batch, count, val: a string, number or word
			if i < len(b) && b[i] == '"' {
				if _, j, ok = scanString(b, i); !ok {
					return pa, false
				}
				i = j
				break
			}
			j := i
			for j < len(b) && (b[j] == '-' || b[j] == '.' || b[j] == '+' ||
				b[j] >= '0' && b[j] <= '9' || b[j] >= 'a' && b[j] <= 'z' || b[j] >= 'A' && b[j] <= 'Z') {
				j++
			}
			if j == i {
				return pa, false // an object, an array, or nothing
			}
			i = j
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return pa, false
		}
		if b[i] == ',' {
			i = skipSpace(b, i+1)
			continue
		}
		if b[i] != '}' || skipSpace(b, i+1) != len(b) {
			return pa, false
		}
		return pa, pa.stream != ""
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanString reads the JSON string at b[i:] when it has no escapes and
// returns its contents and the index after it.
func scanString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '"':
			return b[i+1 : j], j + 1, true
		case '\\':
			return nil, i, false
		}
	}
	return nil, i, false
}

// hasWord reports whether b starts with w not followed by a letter.
func hasWord(b []byte, w string) bool {
	if len(b) < len(w) || string(b[:len(w)]) != w {
		return false
	}
	return len(b) == len(w) || !(b[len(w)] >= 'a' && b[len(w)] <= 'z')
}

// internStream returns the bridge's stream names as constants, so that a
// PubAck's name does not keep its reply's buffer alive.
func internStream(s string) string {
	switch s {
	case streams.Positions:
		return streams.Positions
	case streams.DLQ:
		return streams.DLQ
	}
	return s
}
