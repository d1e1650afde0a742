package ws

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// goldenReplay is every replay message, in both directions.
func goldenReplay() map[string][]byte {
	items := positions()
	from := time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)
	to := from.Add(2 * time.Hour)
	wall := time.Date(2026, 11, 29, 12, 0, 0, 250e6, time.UTC)
	playing := ReplayStatus{From: from, To: to, Speed: 60, State: StatePlaying, At: from, Wall: wall}
	paused := ReplayStatus{From: from, Speed: SpeedMax, State: StatePaused, At: from.Add(90 * time.Second)}
	seek := ReplayStatus{From: from, To: to, Speed: 0.5, State: StatePlaying, At: from.Add(time.Hour), Wall: wall}
	return map[string][]byte{
		"replay_subscribe": Request{Type: TypeSubscribe, Topic: topic, ID: "r1", Replay: true,
			ReplayOptions: ReplayOptions{From: from, To: to, Speed: 60}}.Encode(),
		"replay_subscribe_open_max": Request{Type: TypeSubscribe, Topic: topic, Replay: true,
			ReplayOptions: ReplayOptions{From: from, Speed: SpeedMax}}.Encode(),
		"replay_subscribe_rewind": Request{Type: TypeSubscribe, Topic: topic, ID: "w1", Replay: true,
			ReplayOptions: ReplayOptions{From: from, Speed: 4}}.Encode(),
		"replay_subscribed_rewind": AppendReplaySubscribed(nil, topic, "w1",
			ReplayStatus{From: from, Speed: 4, State: StatePlaying, At: from, Wall: wall}, items),
		"replay_live":        AppendLive(nil, topic, "w1"),
		"replay_unsubscribe": Request{Type: TypeUnsubscribe, Topic: topic, ID: "r9", Replay: true}.Encode(),
		"replay_pause":       Request{Type: TypeReplay, Topic: topic, ID: "p1", Control: ReplayControl{Action: ActionPause}}.Encode(),
		"replay_resume":      Request{Type: TypeReplay, Topic: topic, Control: ReplayControl{Action: ActionResume}}.Encode(),
		"replay_seek": Request{Type: TypeReplay, Topic: topic, ID: "s1",
			Control: ReplayControl{Action: ActionSeek, To: from.Add(time.Hour)}}.Encode(),
		"replay_speed": Request{Type: TypeReplay, Topic: topic, ID: "v1",
			Control: ReplayControl{Action: ActionSpeed, Speed: 2.5}}.Encode(),
		"replay_subscribed":      AppendReplaySubscribed(nil, topic, "r1", playing, items),
		"replay_positions":       AppendReplayPositions(nil, topic, items),
		"replay_state_paused":    AppendReplayState(nil, topic, "p1", ActionPause, paused, false, nil),
		"replay_state_seek":      AppendReplayState(nil, topic, "s1", ActionSeek, seek, true, items[:1]),
		"replay_end":             AppendReplayEnd(nil, topic, "r1"),
		"replay_unsubscribed":    AppendReplayUnsubscribed(nil, topic, "r9"),
		"replay_error_not_found": AppendError(nil, Error{Code: CodeNotFound, Topic: topic, ID: "r1", Replay: true, Message: "no positions of this event are retained"}),
	}
}

func TestGoldenReplay(t *testing.T) {
	for name, got := range goldenReplay() {
		t.Run(name, func(t *testing.T) {
			want, probe := golden(t, name, got)
			switch probe.Type {
			case TypeSubscribe, TypeUnsubscribe, TypeReplay:
				r, err := ParseRequest(want)
				if err != nil {
					t.Fatal(err)
				}
				if !r.Replay {
					t.Fatalf("parsed %+v: Replay not set", r)
				}
				if !bytes.Equal(append(r.Encode(), '\n'), want) {
					t.Fatalf("request round trip: %s", r.Encode())
				}
			default:
				f, err := DecodeFrame(want)
				if err != nil {
					t.Fatal(err)
				}
				if !f.Replay {
					t.Fatalf("frame %+v: replay not set", f)
				}
				if !bytes.Equal(append(reencodeReplay(t, f), '\n'), want) {
					t.Fatalf("frame round trip: %s", reencodeReplay(t, f))
				}
				if _, err := f.Items(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// reencodeReplay writes a decoded replay frame back with the encoders.
func reencodeReplay(t *testing.T, f Frame) []byte {
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
		st, err := f.Status()
		if err != nil {
			t.Fatal(err)
		}
		return AppendReplaySubscribed(nil, f.Topic, f.ID, st, raw(f.Snapshot))
	case TypeReplayState:
		st, err := f.Status()
		if err != nil {
			t.Fatal(err)
		}
		return AppendReplayState(nil, f.Topic, f.ID, f.Action, st, f.Snapshot != nil, raw(f.Snapshot))
	case TypePositions:
		return AppendReplayPositions(nil, f.Topic, raw(f.Positions))
	case TypeReplayEnd:
		return AppendReplayEnd(nil, f.Topic, f.ID)
	case TypeLive:
		return AppendLive(nil, f.Topic, f.ID)
	case TypeUnsubscribed:
		return AppendReplayUnsubscribed(nil, f.Topic, f.ID)
	case TypeError:
		return AppendError(nil, Error{Code: f.Code, Topic: f.Topic, ID: f.ID, Message: f.Message, Replay: f.Replay})
	}
	t.Fatalf("type %q", f.Type)
	return nil
}

func TestParseReplayRequest(t *testing.T) {
	r, err := ParseRequest([]byte(`{"type":"subscribe","topic":"` + topic + `","replay":{"from":"2026-05-03T12:00:00+02:00"}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)
	if !r.Replay || !r.ReplayOptions.From.Equal(want) || !r.ReplayOptions.To.IsZero() || r.ReplayOptions.Speed != 1 {
		t.Fatalf("defaults: %+v", r)
	}
	// No to and "to":"live" are the same rewind.
	rw, err := ParseRequest([]byte(`{"type":"subscribe","topic":"` + topic + `","replay":{"from":"2026-05-03T10:00:00Z","to":"live","speed":4}}`))
	if err != nil || !rw.ReplayOptions.To.IsZero() || rw.ReplayOptions.Speed != 4 || !rw.ReplayOptions.From.Equal(want) {
		t.Fatalf("to live: %+v %v", rw, err)
	}
	// A live subscribe is unchanged, and unsubscribe "replay":false is live.
	for _, live := range []string{
		`{"type":"subscribe","topic":"` + topic + `"}`,
		`{"type":"unsubscribe","topic":"` + topic + `","replay":false}`,
	} {
		if r, err := ParseRequest([]byte(live)); err != nil || r.Replay {
			t.Fatalf("%s: %+v %v", live, r, err)
		}
	}
	for name, tc := range map[string]struct{ data, msg string }{
		"replay not object": {`{"type":"subscribe","topic":"` + topic + `","id":"a","replay":[1]}`, "replay must be an object"},
		"no from":           {`{"type":"subscribe","topic":"` + topic + `","id":"a","replay":{"to":"2026-05-03T10:00:00Z"}}`, "replay.from is required"},
		"bad to":            {`{"type":"subscribe","topic":"` + topic + `","id":"a","replay":{"from":"2026-05-03T10:00:00Z","to":"soon"}}`, `replay.to: "soon" is not an RFC 3339 time`},
		"to LIVE":           {`{"type":"subscribe","topic":"` + topic + `","id":"a","replay":{"from":"2026-05-03T10:00:00Z","to":"LIVE"}}`, `replay.to: "LIVE" is not an RFC 3339 time`},
		"speed too low":     {`{"type":"subscribe","topic":"` + topic + `","id":"a","replay":{"from":"2026-05-03T10:00:00Z","speed":0.05}}`, "replay.speed must be a number from 0.1 to 1000"},
		"speed MAX":         {`{"type":"subscribe","topic":"` + topic + `","id":"a","replay":{"from":"2026-05-03T10:00:00Z","speed":"MAX"}}`, "replay.speed must be"},
		"unknown field":     {`{"type":"subscribe","topic":"` + topic + `","id":"a","replay":{"from":"2026-05-03T10:00:00Z","loop":true}}`, `unknown field "loop"`},
		"unsubscribe flag":  {`{"type":"unsubscribe","topic":"` + topic + `","id":"a","replay":"yes"}`, "replay must be true or false"},
		"no action":         {`{"type":"replay","topic":"` + topic + `","id":"a"}`, "missing action"},
		"action type":       {`{"type":"replay","topic":"` + topic + `","id":"a","action":1}`, "action must be a string"},
		"seek no to":        {`{"type":"replay","topic":"` + topic + `","id":"a","action":"seek"}`, "seek needs to"},
		"seek bad to":       {`{"type":"replay","topic":"` + topic + `","id":"a","action":"seek","to":5}`, "to must be an RFC 3339 string"},
		"speed missing":     {`{"type":"replay","topic":"` + topic + `","id":"a","action":"speed"}`, "speed action needs speed"},
		"bad topic":         {`{"type":"replay","topic":"event:x","id":"a","action":"pause"}`, "topic must be"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseRequest([]byte(tc.data))
			var re *RequestError
			if !errors.As(err, &re) || !re.Replay || re.ID != "a" || !strings.Contains(re.Message, tc.msg) {
				t.Fatalf("err = %+v, want a replay RequestError with id a saying %q", err, tc.msg)
			}
		})
	}
}

func TestReplayStatusDue(t *testing.T) {
	at := time.Date(2026, 5, 3, 10, 0, 0, 0, time.UTC)
	wall := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	st := ReplayStatus{State: StatePlaying, Speed: 60, At: at, Wall: wall}
	if due, ok := st.Due(at.Add(time.Minute)); !ok || !due.Equal(wall.Add(time.Second)) {
		t.Fatalf("Due = %v %v, want one second after wall", due, ok)
	}
	for _, st := range []ReplayStatus{
		{State: StatePaused, Speed: 60, At: at},
		{State: StatePlaying, Speed: SpeedMax, At: at},
	} {
		if _, ok := st.Due(at); ok {
			t.Fatalf("%+v has a schedule", st)
		}
	}
	if _, err := (Frame{Type: TypeSubscribed}).Status(); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("live frame status: %v", err)
	}
}
