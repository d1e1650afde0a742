package bridge

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// entry is one Redis stream entry as the bridge handles it: its id and
// its fields as name, value pairs in the order Redis sent them. deleted
// is an entry still pending but gone from the stream (XDEL, trimming).
type entry struct {
	id      string
	fields  []string
	deleted bool
}

// streamRead is the entries of one stream in one read.
type streamRead struct {
	stream  string
	entries []entry
}

// entryOf converts an entry go-redis parsed (claims, re-publishes, the
// typed read path). go-redis always gives string values; anything else is
// formatted, and its field then fails to parse as a number or time.
func entryOf(msg redis.XMessage) entry {
	if msg.Values == nil {
		return entry{id: msg.ID, deleted: true}
	}
	pairs := make([]string, 0, 2*len(msg.Values))
	for k, v := range msg.Values {
		switch s := v.(type) {
		case string:
			pairs = append(pairs, k, s)
		case []byte:
			pairs = append(pairs, k, string(s))
		default:
			pairs = append(pairs, k, fmt.Sprint(v))
		}
	}
	return entry{id: msg.ID, fields: pairs}
}

// readsOf converts a typed XREADGROUP reply.
func readsOf(res []redis.XStream) []streamRead {
	out := make([]streamRead, len(res))
	for i, xs := range res {
		out[i].stream = xs.Stream
		out[i].entries = make([]entry, len(xs.Messages))
		for j, msg := range xs.Messages {
			out[i].entries[j] = entryOf(msg)
		}
	}
	return out
}

// rawDoer is a go-redis client that can return a reply unparsed: every
// client the bridge builds (single, cluster, sentinel) is one.
type rawDoer interface {
	DoRaw(ctx context.Context, args ...any) *redis.RawCmd
}

// errReplyError is a Redis error reply on the raw read path; the caller
// repeats the read through go-redis's typed command, which handles it
// (MOVED and ASK redirects, NOGROUP, LOADING...) as it does any error.
var errReplyError = errors.New("redis answered an error")

// xreadgroup is one XREADGROUP of streams (names, then ids) with COUNT
// count; block < 0 omits BLOCK. With raw set, it asks for the reply
// unparsed and parses it here (parseXRead): one string per reply instead
// of a map and a string per field, which was a fifth of the bridge's own
// CPU per entry. An error reply is read again through go-redis's typed
// command, which follows redirects and returns the error; a reply this
// parser does not expect turns raw reads off.
func (b *bridge) xreadgroup(ctx context.Context, streams []string, count int, block time.Duration) ([]streamRead, error) {
	if b.raw != nil && block < b.rawBlockMax && !b.rawOff.Load() {
		args := make([]any, 0, 9+len(streams))
		args = append(args, "xreadgroup", "group", b.cfg.Group, b.cfg.Consumer, "count", count)
		if block >= 0 {
			args = append(args, "block", block.Milliseconds())
		}
		args = append(args, "streams")
		for _, s := range streams {
			args = append(args, s)
		}
		buf, err := b.raw.DoRaw(ctx, args...).Result()
		if err != nil {
			return nil, err
		}
		reads, err := parseXRead(buf)
		if err == nil {
			return reads, nil
		}
		if !errors.Is(err, errReplyError) {
			// Redis may have delivered entries this parser could not read:
			// the error makes the reader re-read its pending list, through
			// the typed command from now on.
			b.rawOff.Store(true)
			b.log.Error("unexpected XREADGROUP reply; reading through go-redis's typed command from now on", "err", err)
			return nil, fmt.Errorf("XREADGROUP reply: %w", err)
		}
		// An error reply delivered nothing: the typed command below gets
		// the same error, or follows a redirect.
	}
	res, err := b.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: b.cfg.Group, Consumer: b.cfg.Consumer, Streams: streams,
		Count: int64(count), Block: block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return readsOf(res), nil
}

// parseXRead parses a raw XREAD or XREADGROUP reply, RESP2 or RESP3:
// null (BLOCK timed out), or an array (RESP2) or map (RESP3) of streams,
// each a name and an array of entries, each an id and an array of fields
// (null for an entry deleted while pending). Every string is a substring
// of one copy of buf. An error reply is errReplyError; anything else
// unexpected is an error saying where.
func parseXRead(buf []byte) ([]streamRead, error) {
	r := respReader{s: string(buf)}
	n, null, err := r.array(true)
	if err != nil || null {
		return nil, err
	}
	reads := make([]streamRead, n)
	for i := range reads {
		if !r.mapped {
			if err := r.pair("stream", i); err != nil {
				return nil, err
			}
		}
		if reads[i].stream, err = r.bulk(); err != nil {
			return nil, err
		}
		m, _, err := r.array(false)
		if err != nil {
			return nil, err
		}
		entries := make([]entry, m)
		for j := range entries {
			if err := r.pair("entry", j); err != nil {
				return nil, err
			}
			if entries[j].id, err = r.bulk(); err != nil {
				return nil, err
			}
			f, null, err := r.array(false)
			if err != nil {
				return nil, err
			}
			if null {
				entries[j].deleted = true
				continue
			}
			fields := make([]string, f)
			for k := range fields {
				if fields[k], err = r.bulk(); err != nil {
					return nil, err
				}
			}
			entries[j].fields = fields
		}
		reads[i].entries = entries
	}
	if r.pos != len(r.s) {
		return nil, fmt.Errorf("%d bytes after the reply", len(r.s)-r.pos)
	}
	return reads, nil
}

// respReader reads RESP2/RESP3 values from s.
type respReader struct {
	s      string
	pos    int
	mapped bool // the top-level aggregate was a RESP3 map
}

// line returns the type byte and the rest of the next line.
func (r *respReader) line() (byte, string, error) {
	for i := r.pos; i+1 < len(r.s); i++ {
		if r.s[i] == '\r' && r.s[i+1] == '\n' {
			if i == r.pos {
				return 0, "", fmt.Errorf("empty line at byte %d", r.pos)
			}
			t, rest := r.s[r.pos], r.s[r.pos+1:i]
			r.pos = i + 2
			return t, rest, nil
		}
	}
	return 0, "", fmt.Errorf("reply cut at byte %d", r.pos)
}

// array reads an array's length, or null. At the top (top set) it also
// takes a RESP3 map, n pairs (mapped is set), and an error reply
// (errReplyError).
func (r *respReader) array(top bool) (n int, null bool, err error) {
	t, rest, err := r.line()
	if err != nil {
		return 0, false, err
	}
	switch {
	case t == '*' || top && t == '%':
		n, err = strconv.Atoi(rest)
		if err != nil {
			return 0, false, fmt.Errorf("length %q at byte %d: %w", rest, r.pos, err)
		}
		if top {
			r.mapped = t == '%'
		}
		return max(n, 0), n < 0, nil
	case t == '_':
		return 0, true, nil
	case top && (t == '-' || t == '!'):
		return 0, false, errReplyError
	}
	return 0, false, fmt.Errorf("unexpected %q where an array belongs (byte %d)", t, r.pos)
}

// pair reads the header of an array of two elements, the i-th what.
func (r *respReader) pair(what string, i int) error {
	k, _, err := r.array(false)
	if err == nil && k != 2 {
		err = fmt.Errorf("%s %d: %d elements, want 2", what, i, k)
	}
	return err
}

// bulk reads a bulk string (or a simple one).
func (r *respReader) bulk() (string, error) {
	t, rest, err := r.line()
	if err != nil {
		return "", err
	}
	switch t {
	case '$':
		n, err := strconv.Atoi(rest)
		if err != nil || n < 0 {
			return "", fmt.Errorf("bulk length %q at byte %d", rest, r.pos)
		}
		if r.pos+n+2 > len(r.s) || r.s[r.pos+n:r.pos+n+2] != "\r\n" {
			return "", fmt.Errorf("bulk string of %d bytes cut at byte %d", n, r.pos)
		}
		v := r.s[r.pos : r.pos+n]
		r.pos += n + 2
		return v, nil
	case '+':
		return rest, nil
	}
	return "", fmt.Errorf("unexpected %q where a string belongs (byte %d)", t, r.pos)
}
