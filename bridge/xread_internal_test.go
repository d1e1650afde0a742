package bridge

import (
	"context"
	"errors"
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"trm-live/testkit"
)

// sorted is reads with each entry's fields as sorted pairs, a repeated
// name's last value only: a raw parse keeps Redis's field order and every
// pair, a typed one builds a map.
func sorted(reads []streamRead) []streamRead {
	out := make([]streamRead, len(reads))
	for i, r := range reads {
		out[i].stream = r.stream
		for _, e := range r.entries {
			m := map[string]string{}
			for j := 0; j+1 < len(e.fields); j += 2 {
				m[e.fields[j]] = e.fields[j+1]
			}
			var pairs []string
			for _, k := range slices.Sorted(maps.Keys(m)) {
				pairs = append(pairs, k, m[k])
			}
			out[i].entries = append(out[i].entries, entry{id: e.id, fields: pairs, deleted: e.deleted})
		}
	}
	return out
}

// A raw XREADGROUP reply of a real Redis, in RESP2 and RESP3, parses to
// what go-redis's typed command reads from the same pending entries:
// several streams, a deleted pending entry, binary and empty values; a
// timed-out BLOCK is no streams; an error reply (NOGROUP) is
// errReplyError; a cut or foreign reply is an error that names it.
func TestParseXReadRealReplies(t *testing.T) {
	shared := testkit.Redis(t)
	ctx := context.Background()
	for _, proto := range []int{2, 3} {
		opts := *shared.Options()
		opts.Protocol = proto
		rdb := redis.NewClient(&opts)
		defer rdb.Close()
		a, b := testkit.Unique("xread:a"), testkit.Unique("xread:b")
		for _, s := range []string{a, b} {
			if err := rdb.XGroupCreateMkStream(ctx, s, "g", "0").Err(); err != nil {
				t.Fatal(err)
			}
		}
		var gone string
		for i := range 3 {
			rdb.XAdd(ctx, &redis.XAddArgs{Stream: a, Values: []any{"device_id", "d1", "ts", "1", "attrs", "{\"x\":\"\r\n\"}", "empty", ""}})
			id := rdb.XAdd(ctx, &redis.XAddArgs{Stream: b, Values: []any{"k", string([]byte{0, 255, '\r', '\n'}), "k", "again"}}).Val()
			if i == 1 {
				gone = id
			}
		}
		streams := []string{a, b, ">", ">"}
		raw, err := rdb.DoRaw(ctx, "xreadgroup", "group", "g", "c", "count", 10, "streams", a, b, ">", ">").Result()
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseXRead(raw)
		if err != nil {
			t.Fatalf("RESP%d: %v\n%q", proto, err, raw)
		}
		if len(got) != 2 || len(got[0].entries) != 3 || len(got[1].entries) != 3 {
			t.Fatalf("RESP%d: got %+v", proto, got)
		}
		// Both readers on the pending list, with one entry deleted.
		rdb.XDel(ctx, b, gone)
		streams[2], streams[3] = "0", "0"
		raw, err = rdb.DoRaw(ctx, "xreadgroup", "group", "g", "c", "count", 10, "streams", a, b, "0", "0").Result()
		if err != nil {
			t.Fatal(err)
		}
		got, err = parseXRead(raw)
		if err != nil {
			t.Fatalf("RESP%d pending: %v\n%q", proto, err, raw)
		}
		typed, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: streams, Count: 10}).Result()
		if err != nil {
			t.Fatal(err)
		}
		if want := readsOf(typed); !reflect.DeepEqual(sorted(got), sorted(want)) {
			t.Fatalf("RESP%d: raw parse\n%+v\nwant (typed)\n%+v", proto, got, want)
		}
		if !got[1].entries[1].deleted || got[1].entries[1].id != gone {
			t.Fatalf("RESP%d: deleted entry not marked: %+v", proto, got[1].entries[1])
		}
		if v := got[0].entries[0].fields; len(v) != 8 || v[5] != "{\"x\":\"\r\n\"}" || v[7] != "" {
			t.Fatalf("RESP%d: fields %q", proto, v)
		}
		if v := got[1].entries[0].fields; len(v) != 4 || v[1] != string([]byte{0, 255, '\r', '\n'}) || v[2] != "k" {
			t.Fatalf("RESP%d: repeated or binary fields %q", proto, v)
		}

		// BLOCK timed out: null.
		raw, err = rdb.DoRaw(ctx, "xreadgroup", "group", "g", "c", "count", 10, "block", 10, "streams", a, ">").Result()
		if err != nil {
			t.Fatal(err)
		}
		if got, err := parseXRead(raw); err != nil || got != nil {
			t.Fatalf("RESP%d timeout %q: %v, %v", proto, raw, got, err)
		}
		// An error reply.
		raw, err = rdb.DoRaw(ctx, "xreadgroup", "group", "nope", "c", "streams", a, ">").Result()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parseXRead(raw); !errors.Is(err, errReplyError) {
			t.Fatalf("RESP%d error reply %q: %v", proto, raw, err)
		}
	}
	for _, bad := range []string{"", "*1\r\n", "*1\r\n*2\r\n$3\r\nabc\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$9\r\nshort\r\n", ":1\r\n", "*1\r\n*2\r\n$1\r\na\r\n*0\r\nextra"} {
		if _, err := parseXRead([]byte(bad)); err == nil || errors.Is(err, errReplyError) {
			t.Errorf("parseXRead(%q) = %v, want a parse error", bad, err)
		}
	}
}

// The raw read path stays within the connection's read timeout: a raw
// command does not extend it by the BLOCK as go-redis's typed one does.
func TestRawBlockMax(t *testing.T) {
	for url, want := range map[string]time.Duration{
		"redis://127.0.0.1:6379/0":                      2 * time.Second,
		"redis://127.0.0.1:6379/0?read_timeout=10s":     9 * time.Second,
		"redis://127.0.0.1:6379/0?read_timeout=1s":      500 * time.Millisecond,
		"redis://127.0.0.1:6379/0?read_timeout=-1":      time.Duration(1<<63 - 1),
		"redis+cluster://127.0.0.1:7000,127.0.0.1:7001": 2 * time.Second,
	} {
		target, err := parseRedisURL(url, "")
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		if got := target.rawBlockMax(); got != want {
			t.Errorf("%s: rawBlockMax %s, want %s", url, got, want)
		}
	}
}
