package ws

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// badRequestFrame is the error frame a server sends for data: the
// parser's message, id and topic echoed.
func badRequestFrame(data string) []byte {
	_, err := ParseRequest([]byte(data))
	var re *RequestError
	if !errors.As(err, &re) {
		panic(fmt.Sprintf("%s was accepted", data))
	}
	return AppendError(nil, Error{Code: CodeBadRequest, Topic: re.Topic, ID: re.ID, Replay: re.Replay, Message: re.Message})
}

// goldenOptions is every form of the subscription options and their
// errors.
func goldenOptions() map[string][]byte {
	from := time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)
	sub := `{"type":"subscribe","topic":"` + topic + `","id":"o1"`
	return map[string][]byte{
		"subscribe_max_hz": Request{Type: TypeSubscribe, Topic: topic, ID: "o1",
			Options: SubscribeOptions{MaxHz: 1}}.Encode(),
		"subscribe_devices": Request{Type: TypeSubscribe, Topic: topic, ID: "o2",
			Options: SubscribeOptions{Devices: []string{"356938035643809", "dev-1"}}}.Encode(),
		"subscribe_max_hz_devices": Request{Type: TypeSubscribe, Topic: topic, ID: "o3",
			Options: SubscribeOptions{MaxHz: 2.5, Devices: []string{"dev-1"}}}.Encode(),
		"replay_subscribe_options": Request{Type: TypeSubscribe, Topic: topic, ID: "r2", Replay: true,
			ReplayOptions: ReplayOptions{From: from, To: from.Add(time.Hour), Speed: 10},
			Options:       SubscribeOptions{MaxHz: 0.5, Devices: []string{"dev-1", "dev_2"}}}.Encode(),
		"error_bad_request_max_hz":          badRequestFrame(sub + `,"max_hz":0}`),
		"error_bad_request_max_hz_too_high": badRequestFrame(sub + `,"max_hz":250}`),
		"error_bad_request_devices":         badRequestFrame(sub + `,"devices":["dev-1","a.b"]}`),
		"error_bad_request_devices_empty":   badRequestFrame(sub + `,"devices":[]}`),
		"error_bad_request_devices_twice":   badRequestFrame(sub + `,"devices":["dev-1","dev-1"]}`),
		"replay_error_bad_request_max_hz": badRequestFrame(`{"type":"subscribe","topic":"` + topic +
			`","id":"r2","max_hz":"fast","replay":{"from":"2026-05-03T10:00:00.000Z"}}`),
	}
}

func TestGoldenOptions(t *testing.T) {
	for name, got := range goldenOptions() {
		t.Run(name, func(t *testing.T) {
			want, probe := golden(t, name, got)
			if probe.Type == TypeSubscribe {
				r, err := ParseRequest(want)
				if err != nil {
					t.Fatal(err)
				}
				if r.Options.IsZero() {
					t.Fatalf("parsed %+v: no options", r)
				}
				if !bytes.Equal(append(r.Encode(), '\n'), want) {
					t.Fatalf("request round trip: %s", r.Encode())
				}
				return
			}
			f, err := DecodeFrame(want)
			if err != nil {
				t.Fatal(err)
			}
			if f.Type != TypeError || f.Code != CodeBadRequest || f.Topic != topic || f.ID == "" {
				t.Fatalf("frame %+v: want bad_request echoing id and topic", f)
			}
		})
	}
}

func TestParseOptions(t *testing.T) {
	sub := func(extra string) string {
		return `{"type":"subscribe","topic":"` + topic + `","id":"a"` + extra + `}`
	}
	for name, tc := range map[string]struct {
		data string
		want SubscribeOptions
	}{
		"none":           {sub(``), SubscribeOptions{}},
		"max_hz":         {sub(`,"max_hz":1`), SubscribeOptions{MaxHz: 1}},
		"max_hz lowest":  {sub(`,"max_hz":0.01`), SubscribeOptions{MaxHz: 0.01}},
		"max_hz limit":   {sub(`,"max_hz":100`), SubscribeOptions{MaxHz: 100}},
		"devices":        {sub(`,"devices":["b","a"]`), SubscribeOptions{Devices: []string{"b", "a"}}},
		"both on replay": {sub(`,"max_hz":2,"devices":["x"],"replay":{"from":"2026-05-03T10:00:00Z"}`), SubscribeOptions{MaxHz: 2, Devices: []string{"x"}}},
	} {
		t.Run(name, func(t *testing.T) {
			r, err := ParseRequest([]byte(tc.data))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(r.Options, tc.want) {
				t.Fatalf("options %+v, want %+v", r.Options, tc.want)
			}
		})
	}
	many := make([]string, MaxDevices)
	for i := range many {
		many[i] = fmt.Sprintf(`"%064d"`, i) // the longest ids
	}
	most := sub(`,"max_hz":100,"devices":[` + strings.Join(many, ",") + `]`)
	if len(most) > MaxClientMessage {
		t.Fatalf("a subscribe of %d longest ids is %d bytes, over MaxClientMessage %d", MaxDevices, len(most), MaxClientMessage)
	}
	if r, err := ParseRequest([]byte(most)); err != nil || len(r.Options.Devices) != MaxDevices {
		t.Fatalf("%d devices: %v", MaxDevices, err)
	}
	tooMany := sub(`,"devices":[` + strings.Join(append(many, `"x"`), ",") + `]`)

	for name, tc := range map[string]struct {
		data, msg string
		replay    bool
	}{
		"max_hz zero":     {data: sub(`,"max_hz":0`), msg: "max_hz must be"},
		"max_hz negative": {data: sub(`,"max_hz":-1`), msg: "max_hz must be"},
		"max_hz tiny":     {data: sub(`,"max_hz":1e-300`), msg: "max_hz must be a number from 0.01 to 100"},
		"max_hz high":     {data: sub(`,"max_hz":100.5`), msg: "max_hz must be"},
		"max_hz string":   {data: sub(`,"max_hz":"1"`), msg: "max_hz must be"},
		"max_hz null":     {data: sub(`,"max_hz":null`), msg: "max_hz must be"},
		"devices object":  {data: sub(`,"devices":{"a":1}`), msg: "devices must be an array"},
		"devices null":    {data: sub(`,"devices":null`), msg: "devices must be an array"},
		"devices numbers": {data: sub(`,"devices":[1]`), msg: "devices must be an array"},
		"devices empty":   {data: sub(`,"devices":[]`), msg: "devices must list 1 to 500"},
		"devices many":    {data: tooMany, msg: "devices must list 1 to 500 device ids, got 501"},
		"device bad":      {data: sub(`,"devices":["ok","a b"]`), msg: `devices[1]: "a b" is not a device id`},
		"device long":     {data: sub(`,"devices":["` + strings.Repeat("x", 65) + `"]`), msg: "devices[0]:"},
		"device twice":    {data: sub(`,"devices":["a","b","a"]`), msg: `devices[2]: "a" is listed twice`},
		"on unsubscribe":  {data: `{"type":"unsubscribe","topic":"` + topic + `","id":"a","max_hz":1}`, msg: "max_hz is only allowed on subscribe"},
		"on control":      {data: `{"type":"replay","topic":"` + topic + `","id":"a","action":"pause","devices":["x"]}`, msg: "devices is only allowed on subscribe", replay: true},
		"replay max_hz":   {data: sub(`,"max_hz":0,"replay":{"from":"2026-05-03T10:00:00Z"}`), msg: "max_hz must be", replay: true},
		"replay devices":  {data: sub(`,"devices":["*"],"replay":{"from":"2026-05-03T10:00:00Z"}`), msg: "devices[0]", replay: true},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseRequest([]byte(tc.data))
			var re *RequestError
			if !errors.As(err, &re) || re.ID != "a" || re.Topic != topic || re.Replay != tc.replay || !strings.Contains(re.Message, tc.msg) {
				t.Fatalf("err = %+v, want a RequestError (replay %v) with id a, the topic, saying %q", err, tc.replay, tc.msg)
			}
		})
	}
}

func TestOptionsInterval(t *testing.T) {
	for hz, want := range map[float64]time.Duration{0: 0, 0.01: 100 * time.Second, 1: time.Second, 4: 250 * time.Millisecond, 3: 333333334, 100: 10 * time.Millisecond, 0.5: 2 * time.Second} {
		if got := (SubscribeOptions{MaxHz: hz}).Interval(); got != want {
			t.Errorf("Interval at %v Hz = %v, want %v", hz, got, want)
		}
	}
}
