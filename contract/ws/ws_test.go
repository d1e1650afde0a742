package ws

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"trm-live/contract"
)

var update = flag.Bool("update", false, "rewrite golden files")

const (
	event = "7c1e4a52-8b7e-4b8e-9a51-2f0c6f1d9e3a"
	topic = "event:" + event
)

func ptr[T any](v T) *T { return &v }

func positions() [][]byte {
	ts := time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)
	a := contract.Position{DeviceID: "356938035643809", EventID: event, TS: ts, Lat: 45.07312, Lon: 7.68612,
		Alt: ptr(231.5), Speed: ptr(88.2), Heading: ptr(121.0), Sats: ptr(11), Attrs: json.RawMessage(`{"io239":1}`)}
	b := contract.Position{DeviceID: "dev-1", EventID: event, TS: ts.Add(123 * time.Millisecond), Lat: -33.5, Lon: -70.25}
	return [][]byte{a.Encode(), b.Encode()}
}

// goldenFrames is every message of contract v1, in both directions.
func goldenFrames() map[string][]byte {
	items := positions()
	return map[string][]byte{
		"subscribe":                    Request{Type: TypeSubscribe, Topic: topic, ID: "c1"}.Encode(),
		"subscribe_no_id":              Request{Type: TypeSubscribe, Topic: topic}.Encode(),
		"unsubscribe":                  Request{Type: TypeUnsubscribe, Topic: topic, ID: "c2"}.Encode(),
		"unsubscribe_no_id":            Request{Type: TypeUnsubscribe, Topic: topic}.Encode(),
		"subscribed":                   AppendSubscribed(nil, topic, "c1", items),
		"subscribed_no_id_empty":       AppendSubscribed(nil, topic, "", nil),
		"unsubscribed":                 AppendUnsubscribed(nil, topic, "c2"),
		"unsubscribed_no_id":           AppendUnsubscribed(nil, topic, ""),
		"positions":                    AppendPositions(nil, topic, items),
		"positions_one":                AppendPositions(nil, topic, items[1:]),
		"error_bad_request":            AppendError(nil, Error{Code: CodeBadRequest, Message: "malformed JSON: invalid character 'x' looking for beginning of value"}),
		"error_bad_request_id":         AppendError(nil, Error{Code: CodeBadRequest, Topic: topic, ID: "c3", Message: "already subscribed"}),
		"error_forbidden":              AppendError(nil, Error{Code: CodeForbidden, Topic: topic, ID: "c1", Message: "not a member of the event's organization"}),
		"error_forbidden_reauth":       AppendError(nil, Error{Code: CodeForbidden, Topic: topic, Message: "membership removed; subscription ended"}),
		"error_not_found":              AppendError(nil, Error{Code: CodeNotFound, Topic: topic, ID: "c1", Message: "no such event"}),
		"error_too_many_subscriptions": AppendError(nil, Error{Code: CodeTooManySubscriptions, Topic: topic, ID: "c9", Message: "at most 10 subscriptions per connection"}),
		"error_unavailable":            AppendError(nil, Error{Code: CodeUnavailable, Topic: topic, ID: "c1", Message: "authorization service unavailable; try again"}),
	}
}

func TestGoldenFrames(t *testing.T) {
	for name, got := range goldenFrames() {
		t.Run(name, func(t *testing.T) {
			want, probe := golden(t, name, got)
			switch probe.Type {
			case TypeSubscribe, TypeUnsubscribe:
				r, err := ParseRequest(want)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(append(r.Encode(), '\n'), want) {
					t.Fatalf("request round trip: %s", r.Encode())
				}
			default:
				f, err := DecodeFrame(want)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(append(reencode(t, f), '\n'), want) {
					t.Fatalf("frame round trip: %s", reencode(t, f))
				}
				items, err := f.Items()
				if err != nil {
					t.Fatal(err)
				}
				// Items are the Position.Encode() bytes, spliced unchanged.
				for i, p := range items {
					raw := f.Positions
					if f.Type == TypeSubscribed {
						raw = f.Snapshot
					}
					if !bytes.Equal(p.Encode(), raw[i]) {
						t.Fatalf("item %d: %s != %s", i, p.Encode(), raw[i])
					}
				}
			}
		})
	}
}

// reencode writes a decoded frame back with the server's encoders.
func reencode(t *testing.T, f Frame) []byte {
	t.Helper()
	raw := func(rs []json.RawMessage) [][]byte {
		out := make([][]byte, len(rs))
		for i, r := range rs {
			out[i] = r
		}
		return out
	}
	switch f.Type {
	case TypeSubscribed:
		return AppendSubscribed(nil, f.Topic, f.ID, raw(f.Snapshot))
	case TypeUnsubscribed:
		return AppendUnsubscribed(nil, f.Topic, f.ID)
	case TypePositions:
		return AppendPositions(nil, f.Topic, raw(f.Positions))
	case TypeError:
		return AppendError(nil, Error{Code: f.Code, Topic: f.Topic, ID: f.ID, Message: f.Message})
	}
	t.Fatalf("type %q", f.Type)
	return nil
}

func TestParseRequestRejects(t *testing.T) {
	long := string(bytes.Repeat([]byte("x"), MaxIDLength+1))
	for name, tc := range map[string]struct {
		data      string
		id, topic string
	}{
		"not json":        {data: `hello`},
		"array":           {data: `[1,2]`},
		"trailing":        {data: `{"type":"subscribe","topic":"` + topic + `"} {}`},
		"missing type":    {data: `{"topic":"` + topic + `","id":"a"}`, id: "a", topic: topic},
		"unknown type":    {data: `{"type":"publish","topic":"` + topic + `","id":"a"}`, id: "a", topic: topic},
		"type not string": {data: `{"type":1,"topic":"` + topic + `"}`},
		"missing topic":   {data: `{"type":"subscribe","id":"b"}`, id: "b"},
		"bad topic":       {data: `{"type":"subscribe","topic":"event:ABC","id":"b"}`, id: "b", topic: "event:ABC"},
		"upper uuid":      {data: `{"type":"subscribe","topic":"event:7C1E4A52-8B7E-4B8E-9A51-2F0C6F1D9E3A"}`, topic: "event:7C1E4A52-8B7E-4B8E-9A51-2F0C6F1D9E3A"},
		"not event":       {data: `{"type":"unsubscribe","topic":"device:1"}`, topic: "device:1"},
		"long id":         {data: `{"type":"subscribe","topic":"` + topic + `","id":"` + long + `"}`},
		"empty":           {data: ``},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseRequest([]byte(tc.data))
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("err = %v, want *RequestError", err)
			}
			if re.Message == "" || re.ID != tc.id || re.Topic != tc.topic {
				t.Fatalf("got %+v, want id %q topic %q", re, tc.id, tc.topic)
			}
		})
	}
}

func TestParseTopic(t *testing.T) {
	if id, ok := ParseTopic(EventTopic(event)); !ok || id != event {
		t.Fatalf("ParseTopic = %q %v", id, ok)
	}
	for _, bad := range []string{"", "event:", event, "event:" + event + "x", "Event:" + event} {
		if _, ok := ParseTopic(bad); ok {
			t.Fatalf("ParseTopic(%q) accepted", bad)
		}
	}
}

func TestDecodeFrameRejects(t *testing.T) {
	for _, bad := range []string{`nope`, `{"type":"subscribe","topic":"x"}`, `{}`} {
		if _, err := DecodeFrame([]byte(bad)); !errors.Is(err, ErrBadFrame) {
			t.Fatalf("DecodeFrame(%s) = %v", bad, err)
		}
	}
}

func TestErrorEscapes(t *testing.T) {
	b := AppendError(nil, Error{Code: CodeBadRequest, Message: "quote \" and <tag> and \x01"})
	var f Frame
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if f.Message != "quote \" and <tag> and \x01" {
		t.Fatalf("message %q", f.Message)
	}
}

// golden compares got, an encoded frame, with the golden file
// testdata/ws/<name>.json (written first with -update), checks that the
// file is compact JSON, and returns it with its type.
func golden(t *testing.T, name string, got []byte) (want []byte, probe struct{ Type string }) {
	t.Helper()
	path := filepath.Join("..", "testdata", "ws", name+".json")
	got = append(got, '\n')
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update once to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("encode:\n got %s\nwant %s", got, want)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, want); err != nil || !bytes.Equal(buf.Bytes(), bytes.TrimSpace(want)) {
		t.Fatalf("golden is not compact JSON: %v", err)
	}
	if err := json.Unmarshal(want, &probe); err != nil {
		t.Fatal(err)
	}
	return want, probe
}
